//! EVHD: vhdkit's encrypted virtual disk container (format version 1, or
//! 2 for headers signed by a recipient's key: [`signature`]).
//!
//! The container holds its own sparse, encrypted copy of the virtual disk's
//! blocks. Layout of the file:
//!
//! | offset | size | region |
//! |---|---|---|
//! | 0 | 64 KiB | [`header`] copy A |
//! | 64 KiB | 64 KiB | header copy B |
//! | 128 KiB | [`journal::region_len`] | [`journal`] |
//! | table offset | 4 KiB per page | block [`table`] |
//! | data offset (1 MiB aligned) | block size per slot | data slots |
//!
//! Keys are in [`keys`] (RSA key files) and [`cipher`] (the symmetric key
//! hierarchy); recipients in [`recipient`]; header signatures in
//! [`signature`]; `check` in [`check`]; a fall back to the older header
//! copy that nothing confirms in [`fallback`]. The byte
//! layout is described in `docs/evhd-format.md`.

pub mod check;
pub mod cipher;
mod create;
pub mod fallback;
pub mod header;
pub mod journal;
pub mod keys;
mod open;
pub mod recipient;
mod rekey;
pub mod signature;
pub mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use uuid::Uuid;
use zeroize::Zeroizing;

use crate::disk::{
    Extent, ExtentKind, ExtentList, VirtualDisk, block_pieces, check_range, is_zero,
};
use crate::error::{Error, ErrorKind, Result};
use crate::io::{Storage, io_err, read_struct};
use crate::report::{
    DiskType, EvhdDetails, EvhdOriginDetails, EvhdRecipientDetails, EvhdSignatureDetails, Format,
    FormatDetails, ImageInfo, Warning, WarningKind,
};
use cipher::{CipherId, DataKey, MasterKey, NONCE_LEN, block_aad, random_bytes, random_secret};
use header::{COPY_OFFSETS, EpochKey, HEADER_SIZE, Header, Origin};
use keys::{Fingerprint, PrivateKey, PublicKey};
use recipient::Stanza;

pub use create::{EvhdBuilder, EvhdOptions};
use signature::Status;
use table::{ENTRIES_PER_PAGE, Entry, PAGE_SIZE};

/// File offset of the journal: right after the two header copies.
pub const JOURNAL_OFFSET: u64 = 2 * HEADER_SIZE as u64;
/// Alignment of the data area, so slots line up with large device blocks.
pub const DATA_ALIGN: u64 = 1 << 20;
/// Default block shift: 64 KiB blocks.
pub const DEFAULT_BLOCK_SHIFT: u8 = 16;
/// Block writes per key epoch before a new data key is started: random
/// 96-bit nonces under one AES-GCM key are safe for about 2^32 messages
/// (NIST SP 800-38D 8.3).
pub const EPOCH_WRITE_LIMIT: u64 = 1 << 32;
/// Blocks re-encrypted between two commits of a rekey (64 MiB at the
/// default block size): bounds the work a crash can lose.
pub const REKEY_BATCH: usize = 1024;
/// Bytes encrypted per step of a large write: bounds the ciphertext buffer.
const WRITE_BATCH_BYTES: usize = 8 << 20;
/// Structure names in errors.
const DATA: &str = "EVHD data block";
const TABLE: &str = "EVHD block table";

/// Whether `storage` holds an EVHD container: the signature at the start of
/// header copy A or B.
pub fn probe(storage: &dyn Storage) -> bool {
    COPY_OFFSETS.iter().any(|&o| {
        let mut m = [0u8; 8];
        storage.read_at(&mut m, o).is_ok() && m == header::MAGIC
    })
}

/// Bytes of data slots one worker encrypts and stores (or reads and
/// decrypts) in one piece: small enough that the piece is still in the
/// worker's cache when it is copied to or from the page cache. With 2 MiB
/// pieces the same work ran at a third of the speed on a 1 MiB-L2 core.
const PIECE_BYTES: usize = 256 << 10;

/// The maximal runs `i..j` of `0..n` whose slots (`slot(i)`) follow each
/// other, so that each run is one read or write; unallocated blocks (slot
/// 0) form runs of their own.
fn slot_runs(n: usize, slot: impl Fn(usize) -> u64) -> impl Iterator<Item = (usize, usize)> {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= n {
            return None;
        }
        let first = slot(i);
        let next = |k: usize| {
            if first == 0 {
                0
            } else {
                first + (k - i) as u64
            }
        };
        let mut j = i + 1;
        while j < n && slot(j) == next(j) {
            j += 1;
        }
        let run = (i, j);
        i = j;
        Some(run)
    })
}

/// Secrets and the decoded table of an unlocked container.
struct Unlocked {
    mk: MasterKey,
    /// Fingerprint of the key that opened it (`None` right after create).
    key: Option<Fingerprint>,
    /// Private keys that may sign commits, the one that opened it first:
    /// a commit is signed by the first that is a recipient of the new
    /// header. Empty: commits are unsigned (created from public keys).
    signers: Vec<Arc<PrivateKey>>,
    data_keys: Vec<DataKey>,
    entries: Vec<Entry>,
    /// MAC of every page as last encoded (stored or about to be).
    macs: Vec<[u8; 32]>,
    /// Pages whose MAC failed, with the reason.
    bad_pages: BTreeMap<u64, String>,
    /// Pages changed since the last flush.
    dirty: BTreeSet<u64>,
    /// Header fields changed since the last flush.
    header_dirty: bool,
    /// Slots referenced by the committed table (index = slot).
    committed: Vec<bool>,
    /// Committed slots superseded since the last flush: free after it.
    pending_free: Vec<u64>,
    /// Slots nothing references.
    free: BTreeSet<u64>,
}

impl Unlocked {
    fn data_key(&self, epoch: u16) -> Option<&DataKey> {
        self.data_keys.iter().find(|k| k.epoch() == epoch)
    }

    fn release(&mut self, slot: u64) {
        if slot == 0 {
            return;
        }
        if self.committed.get(slot as usize).copied().unwrap_or(false) {
            self.pending_free.push(slot);
        } else {
            self.free.insert(slot);
        }
    }

    fn recompute_committed(&mut self, slot_count: u64) {
        let mut c = vec![false; slot_count as usize + 1];
        // Entries of pages that failed verification may name any slot.
        for e in &self.entries {
            if let Some(used) = c.get_mut(e.slot as usize).filter(|_| e.slot != 0) {
                *used = true;
            }
        }
        self.committed = c;
    }
}

/// An open EVHD container.
///
/// Writes stay in memory (the block table) until [`VirtualDisk::flush`] or
/// [`VirtualDisk::close`] commits them; call one of them to learn whether
/// the commit succeeded. Dropping a writable disk with uncommitted writes
/// commits them best effort, as a VHDX does; a failure there cannot be
/// returned, so it is written to stderr (`vhdkit: warning: ...`) and the
/// file keeps its last committed state.
pub struct EvhdDisk {
    storage: Arc<dyn Storage>,
    path: Option<PathBuf>,
    /// The committed header with the pending in-memory changes.
    header: Header,
    /// Which copy (0 = A, 1 = B) holds the committed header.
    current_copy: usize,
    writable: bool,
    warnings: Vec<Warning>,
    /// Who signed the committed header, as this reader judges it.
    signature: Status,
    epoch_write_limit: u64,
    rekey_batch: usize,
    /// `None` when opened without a key: only public fields are known.
    state: Option<Unlocked>,
    /// A buffer reused by writes that seal a copy of the caller's data
    /// (it holds ciphertext between writes).
    scratch: Vec<u8>,
}

impl std::fmt::Debug for EvhdDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvhdDisk")
            .field("path", &self.path)
            .field("size", &self.header.virtual_size)
            .field("locked", &self.state.is_none())
            .finish()
    }
}

impl Drop for EvhdDisk {
    fn drop(&mut self) {
        let pending = self
            .state
            .as_ref()
            .is_some_and(|s| !s.dirty.is_empty() || s.header_dirty);
        if !self.writable || !pending {
            return;
        }
        if let Err(e) = self.commit() {
            let name = self
                .path
                .as_ref()
                .map_or_else(|| "EVHD image".to_string(), |p| p.display().to_string());
            eprintln!(
                "vhdkit: warning: {name}: writes since the last flush were lost when the disk was dropped (call flush or close to see such errors): {e}"
            );
        }
    }
}

/// The error for keys none of which is a recipient.
fn no_recipient(keys: &[Arc<PrivateKey>], header: &Header) -> Error {
    let tried: Vec<String> = keys.iter().map(|k| k.fingerprint().short()).collect();
    let to: Vec<String> = header
        .recipients
        .iter()
        .map(|s| format!("{} {:?}", s.key.fingerprint().short(), s.label))
        .collect();
    Error::new(
        ErrorKind::KeyMismatch,
        format!(
            "no recipient for key {}; this image is addressed to {}",
            tried.join(", "),
            to.join(", ")
        ),
    )
}

/// Read both header copies: each decoded or the reason it is unusable.
pub(crate) fn read_copies(storage: &dyn Storage, len: u64) -> [Result<(Header, Vec<u8>)>; 2] {
    COPY_OFFSETS.map(|o| {
        let mut b = vec![0u8; HEADER_SIZE];
        read_struct(storage, header::STRUCTURE, &mut b, o)?;
        Header::decode(&b, o, len).map(|h| (h, b))
    })
}

/// Unwrap the master key of `h` with one of `keys` and verify the header
/// MAC and the epoch keys. Writes nothing.
fn unlock(
    h: &Header,
    bytes: &[u8],
    at: u64,
    keys: &[Arc<PrivateKey>],
) -> Result<(MasterKey, Fingerprint, Vec<DataKey>)> {
    let mut stanza_off = at + header::RECIPIENTS_OFFSET as u64;
    let mut found = None;
    for s in &h.recipients {
        if let Some(k) = keys.iter().find(|k| k.fingerprint() == s.key.fingerprint()) {
            found = Some((k, s, stanza_off));
            break;
        }
        stanza_off += s.encoded_len() as u64;
    }
    let (key, stanza, off) = found.ok_or_else(|| no_recipient(keys, h))?;
    let raw = key.unwrap_key(&stanza.wrapped).map_err(|e| {
        Error::new(
            ErrorKind::Authentication,
            format!("recipient {}: {}", key.fingerprint().short(), e.message()),
        )
        .at("EVHD recipient stanza", off)
    })?;
    let mk = MasterKey::from_unwrapped(&raw, &h.container_id)
        .map_err(|e| e.at("EVHD recipient stanza", off))?;
    if !header::verify_mac(bytes, &mk) {
        return Err(Error::new(
            ErrorKind::Authentication,
            "header MAC mismatch: the header was modified or damaged",
        )
        .at(header::STRUCTURE, at + header::MAC_OFFSET as u64));
    }
    let mut data_keys = Vec::new();
    for (i, ek) in h.epoch_keys.iter().enumerate() {
        let secret =
            cipher::unwrap_epoch_key(&mk, &h.container_id, ek.epoch, &ek.nonce, &ek.wrapped)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Authentication,
                        format!("epoch {} data key does not unwrap", ek.epoch),
                    )
                    .at(
                        header::STRUCTURE,
                        at + (header::EPOCH_KEYS_OFFSET + i * header::EPOCH_KEY_RECORD) as u64,
                    )
                })?;
        data_keys.push(DataKey::new(h.cipher, ek.epoch, secret));
    }
    Ok((mk, key.fingerprint(), data_keys))
}

/// The fingerprints a reader trusts: its keys and its `--trust` keys.
fn trusted(opts: &crate::OpenOptions) -> Vec<Fingerprint> {
    opts.keys
        .iter()
        .map(|k| k.fingerprint())
        .chain(opts.trust.iter().map(|k| k.fingerprint()))
        .collect()
}

/// The status of a header this process just signed with its own key.
fn signed_by_self(h: &Header, rec: &header::SignerRecord) -> Status {
    Status::Signed {
        fingerprint: rec.fingerprint,
        label: h
            .recipients
            .iter()
            .find(|s| s.key.fingerprint() == rec.fingerprint)
            .map(|s| s.label.clone())
            .unwrap_or_default(),
        trusted: true,
    }
}

impl EvhdDisk {
    /// The header as committed plus pending changes.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Whether a key unlocked the container.
    pub fn is_unlocked(&self) -> bool {
        self.state.is_some()
    }

    /// The recipients of the master key.
    pub fn recipients(&self) -> &[Stanza] {
        &self.header.recipients
    }

    /// Warnings from opening.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Block table pages whose MAC failed, with the reason.
    pub fn bad_pages(&self) -> Vec<(u64, String)> {
        self.state
            .as_ref()
            .map(|s| s.bad_pages.iter().map(|(p, w)| (*p, w.clone())).collect())
            .unwrap_or_default()
    }

    /// Lower the per-epoch write limit (tests exercise epoch changes with it).
    #[doc(hidden)]
    pub fn set_epoch_write_limit(&mut self, n: u64) {
        self.epoch_write_limit = n.max(1);
    }

    /// Commit a rekey every `n` blocks (tests interrupt rekeys with it).
    #[doc(hidden)]
    pub fn set_rekey_batch(&mut self, n: usize) {
        self.rekey_batch = n.max(1);
    }

    fn unlocked(&self) -> Result<&Unlocked> {
        self.state.as_ref().ok_or_else(|| self.key_required())
    }

    fn ensure_writable(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                "the image is opened read-only",
            ));
        }
        self.unlocked().map(|_| ())
    }

    fn block_size(&self) -> u64 {
        self.header.block_size()
    }

    /// File offset of the entry of `block`.
    fn entry_offset(&self, block: u64) -> u64 {
        let page = block / ENTRIES_PER_PAGE as u64;
        self.header.table_offset
            + page * PAGE_SIZE as u64
            + (block % ENTRIES_PER_PAGE as u64) * table::ENTRY_SIZE as u64
    }

    /// File offset of `slot`, the slot the table entry of `block` names:
    /// an error naming the entry (block, table page, file offset) when the
    /// slot is not one of the data area's, never a wrapped offset.
    fn slot_file_offset(&self, block: u64, slot: u64) -> Result<u64> {
        self.header.slot_offset(slot).ok_or_else(|| {
            Error::corrupt(
                TABLE,
                self.entry_offset(block),
                format!(
                    "block {block} (table page {}): slot {slot} is not in the data area of {} slots of {} bytes at {:#x}",
                    block / ENTRIES_PER_PAGE as u64,
                    self.header.slot_count,
                    self.block_size(),
                    self.header.data_offset
                ),
            )
        })
    }

    fn check_page(&self, st: &Unlocked, block: u64) -> Result<()> {
        let page = block / ENTRIES_PER_PAGE as u64;
        if let Some(why) = st.bad_pages.get(&page) {
            return Err(Error::new(
                ErrorKind::Authentication,
                format!("block {block}: its table page {page} failed verification: {why}"),
            )
            .at(TABLE, self.header.table_offset + page * PAGE_SIZE as u64));
        }
        Ok(())
    }

    /// Decrypt `buf` (the ciphertext of `block`) in place.
    fn decrypt(&self, st: &Unlocked, block: u64, buf: &mut [u8]) -> Result<()> {
        let e = &st.entries[block as usize];
        let off = self.slot_file_offset(block, e.slot)?;
        let key = st.data_key(e.epoch).ok_or_else(|| {
            Error::corrupt(
                TABLE,
                self.entry_offset(block),
                format!("block {block}: epoch {} has no key", e.epoch),
            )
        })?;
        let aad = block_aad(&self.header.container_id, block, e.generation);
        if !key.open(&e.nonce, &aad, buf, &e.tag) {
            return Err(Error::new(
                ErrorKind::Authentication,
                format!(
                    "block {block} (slot {}): authentication tag mismatch: the data was modified, damaged, moved or replaced by an older copy",
                    e.slot
                ),
            )
            .at(DATA, off));
        }
        Ok(())
    }

    /// The plaintext of one whole block.
    fn read_block(&self, st: &Unlocked, block: u64) -> Result<Zeroizing<Vec<u8>>> {
        self.check_page(st, block)?;
        let bs = self.block_size() as usize;
        let mut buf = Zeroizing::new(vec![0u8; bs]);
        self.read_piece(st, block, &mut buf)?;
        Ok(buf)
    }

    /// Read and decrypt whole blocks `first..` into `out` (a multiple of
    /// the block size): one read per run of consecutive slots, zeros for
    /// unallocated blocks.
    fn read_piece(&self, st: &Unlocked, first: u64, out: &mut [u8]) -> Result<()> {
        let bs = self.block_size() as usize;
        let n = out.len() / bs;
        let slot = |k: usize| st.entries[(first + k as u64) as usize].slot;
        for (i, j) in slot_runs(n, slot) {
            if slot(i) == 0 {
                out[i * bs..j * bs].fill(0);
                continue;
            }
            let off = self.slot_file_offset(first + i as u64, slot(i))?;
            read_struct(self.storage.as_ref(), DATA, &mut out[i * bs..j * bs], off)?;
            for k in i..j {
                self.decrypt(st, first + k as u64, &mut out[k * bs..(k + 1) * bs])?;
            }
        }
        Ok(())
    }

    /// Read whole blocks `first..` into `out` (a multiple of the block
    /// size), pieces of [`PIECE_BYTES`] read and decrypted in parallel.
    fn read_full_blocks(&self, st: &Unlocked, first: u64, out: &mut [u8]) -> Result<()> {
        let bs = self.block_size() as usize;
        let n = out.len() / bs;
        for b in first..first + n as u64 {
            self.check_page(st, b)?;
        }
        let per = (PIECE_BYTES / bs).max(1);
        out.par_chunks_mut(per * bs)
            .enumerate()
            .try_for_each(|(k, piece)| self.read_piece(st, first + (k * per) as u64, piece))
    }

    /// Encrypt and store whole-block plaintexts `blocks` (index, data),
    /// copy-on-write into free slots. All-zero blocks become unallocated.
    fn write_blocks(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        let bs = self.block_size() as usize;
        let (zero, data): (Vec<_>, Vec<_>) = blocks.iter().partition(|(_, d)| is_zero(d));
        {
            let st = self.state.as_mut().expect("checked by the caller");
            for &(b, _) in &zero {
                let e = &mut st.entries[b as usize];
                let old = e.slot;
                let generation = e.generation + 1;
                *e = Entry {
                    generation,
                    ..Entry::default()
                };
                st.release(old);
                st.dirty.insert(b / ENTRIES_PER_PAGE as u64);
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut ct = std::mem::take(&mut self.scratch);
        ct.resize(bs * data.len(), 0);
        let r = self.seal(&data, &mut ct, true);
        self.scratch = ct;
        r
    }

    /// Seal the non-zero blocks `data` (index, plaintext) with fresh nonces
    /// into new slots, through `ct` (one block size per entry), and point
    /// the table at them. With `copy` the plaintexts are copied into `ct`
    /// first; without, `ct` already holds them in order and the slices in
    /// `data` are not read. `ct` holds ciphertext afterwards.
    ///
    /// Pieces of [`PIECE_BYTES`] are encrypted and written in parallel,
    /// each by one worker, so a piece is copied to the page cache while
    /// it is still in that worker's cache. The table changes only after
    /// every piece was written; on failure the table and the slot count
    /// are as before and the disk stays usable.
    fn seal(&mut self, data: &[(u64, &[u8])], ct: &mut [u8], copy: bool) -> Result<()> {
        let bs = self.block_size() as usize;
        let cid = self.header.container_id;
        if self.header.epoch_writes + data.len() as u64 > self.epoch_write_limit {
            self.new_epoch()?;
        }
        let epoch = self.header.epoch;
        // Slots: free ones first, then new ones at the end of the data area.
        let mut slots = Vec::with_capacity(data.len());
        {
            let st = self.state.as_mut().expect("checked by the caller");
            while slots.len() < data.len() {
                match st.free.pop_first() {
                    Some(s) => slots.push(s),
                    None => break,
                }
            }
        }
        let old_count = self.header.slot_count;
        while slots.len() < data.len() {
            self.header.slot_count += 1;
            slots.push(self.header.slot_count);
        }
        let mut nonces = vec![[0u8; NONCE_LEN]; data.len()];
        random_bytes(nonces.as_flattened_mut());
        let mut tags = vec![[0u8; 16]; data.len()];
        let st = self.state.as_ref().expect("checked by the caller");
        let key = st.data_key(epoch).expect("the current epoch has a key");
        let storage = self.storage.as_ref();
        let header = &self.header;
        let per = (PIECE_BYTES / bs).max(1);
        let sealed = ct[..data.len() * bs]
            .par_chunks_mut(per * bs)
            .zip(tags.par_chunks_mut(per))
            .enumerate()
            .try_for_each(|(k, (piece, tags))| {
                let lo = k * per;
                for (i, tag) in tags.iter_mut().enumerate() {
                    let (b, d) = data[lo + i];
                    let cb = &mut piece[i * bs..(i + 1) * bs];
                    if copy {
                        cb.copy_from_slice(d);
                    }
                    let generation = st.entries[b as usize].generation + 1;
                    *tag = key.seal(&nonces[lo + i], &block_aad(&cid, b, generation), cb);
                }
                // Runs of consecutive slots, one write each.
                slot_runs(tags.len(), |i| slots[lo + i]).try_for_each(|(i, j)| {
                    // New slots are at most the (raised) slot count.
                    let off = header.slot_offset(slots[lo + i]).ok_or_else(|| {
                        Error::corrupt(
                            DATA,
                            header.data_offset,
                            format!("new slot {} is beyond the data area", slots[lo + i]),
                        )
                    })?;
                    storage
                        .write_at(&piece[i * bs..j * bs], off)
                        .map_err(io_err(DATA, off))
                })
            });
        let st = self.state.as_mut().expect("checked by the caller");
        if let Err(e) = sealed {
            // Nothing references the new slots: reused ones are free again
            // and the data area shrinks back, so that a later commit does
            // not record slots the file may not reach.
            self.header.slot_count = old_count;
            st.free
                .extend(slots.into_iter().filter(|&s| s <= old_count));
            return Err(e);
        }
        for (k, (b, _)) in data.iter().enumerate() {
            let e = &mut st.entries[*b as usize];
            let old = e.slot;
            *e = Entry {
                slot: slots[k],
                generation: e.generation + 1,
                nonce: nonces[k],
                tag: tags[k],
                epoch,
                flags: 0,
            };
            st.release(old);
            st.dirty.insert(b / ENTRIES_PER_PAGE as u64);
        }
        self.header.epoch_writes += data.len() as u64;
        Ok(())
    }

    /// Start a new key epoch with a fresh random data key.
    fn new_epoch(&mut self) -> Result<()> {
        self.prune_epoch_keys();
        let st = self.state.as_mut().expect("checked by the caller");
        if self.header.epoch_keys.len() >= header::MAX_EPOCH_KEYS {
            return Err(Error::new(
                ErrorKind::NeedsRepair,
                format!(
                    "all {} epoch key records are in use; run `vhdkit rekey`",
                    header::MAX_EPOCH_KEYS
                ),
            ));
        }
        let epoch = self
            .header
            .epoch_keys
            .iter()
            .map(|k| k.epoch)
            .max()
            .unwrap_or(0)
            .wrapping_add(1);
        let key = DataKey::new(self.header.cipher, epoch, random_secret());
        let (nonce, wrapped) =
            cipher::wrap_epoch_key(&st.mk, &self.header.container_id, epoch, key.secret());
        self.header.epoch_keys.push(EpochKey {
            epoch,
            nonce,
            wrapped,
        });
        st.data_keys.push(key);
        self.header.epoch = epoch;
        self.header.epoch_writes = 0;
        st.header_dirty = true;
        Ok(())
    }

    /// Drop the keys of epochs no block uses any more (never the current one).
    fn prune_epoch_keys(&mut self) {
        let Some(st) = self.state.as_mut() else {
            return;
        };
        if self.header.epoch_keys.len() <= 1 {
            return;
        }
        let used: BTreeSet<u16> = st
            .entries
            .iter()
            .filter(|e| e.slot != 0)
            .map(|e| e.epoch)
            .collect();
        let cur = self.header.epoch;
        let before = self.header.epoch_keys.len();
        self.header
            .epoch_keys
            .retain(|k| k.epoch == cur || used.contains(&k.epoch));
        st.data_keys
            .retain(|k| k.epoch() == cur || used.contains(&k.epoch()));
        if self.header.epoch_keys.len() != before {
            st.header_dirty = true;
        }
    }

    /// Commit: journal record (header + changed pages), sync, install the
    /// pages, sync, write the other header copy, sync. See [`journal`].
    fn commit(&mut self) -> Result<()> {
        let Some(st) = self.state.as_mut() else {
            return Ok(());
        };
        if st.dirty.is_empty() && !st.header_dirty {
            return self.storage.flush().map_err(io_err("EVHD file", 0));
        }
        // Data slots must be durable before anything references them.
        self.storage
            .flush()
            .map_err(io_err(DATA, self.header.data_offset))?;
        let cid = self.header.container_id;
        let mut pages = Vec::with_capacity(st.dirty.len());
        for &p in &st.dirty {
            let start = p as usize * ENTRIES_PER_PAGE;
            let end = (start + ENTRIES_PER_PAGE).min(st.entries.len());
            let (bytes, mac) =
                table::encode_page(&st.mk.table_mac, &cid, p, &st.entries[start..end]);
            st.macs[p as usize] = mac;
            pages.push((p, bytes));
        }
        let mut h = self.header.clone();
        h.sequence += 1;
        h.table_root = table::root(&st.macs);
        let hbytes = if st.signers.is_empty() {
            h.signer = None;
            h.encode(&st.mk)?
        } else {
            let key = st
                .signers
                .iter()
                .find(|k| {
                    h.recipients
                        .iter()
                        .any(|s| s.key.fingerprint() == k.fingerprint())
                })
                .ok_or_else(|| {
                    let given: Vec<String> =
                        st.signers.iter().map(|k| k.fingerprint().short()).collect();
                    Error::new(
                        ErrorKind::KeyMismatch,
                        format!(
                            "no key given ({}) remains a recipient to sign this change; give the private key of a remaining recipient",
                            given.join(", ")
                        ),
                    )
                    .with_hint(crate::Hint::RecipientKey)
                })?;
            let (b, rec) = h.encode_signed(&st.mk, key)?;
            h.signer = Some(rec);
            b
        };
        let refs: Vec<(u64, &[u8])> = pages.iter().map(|(p, b)| (*p, &b[..])).collect();
        let rec = journal::encode(&cid, h.sequence, &hbytes, &refs);
        if rec.len() as u64 > h.journal_len {
            return Err(Error::corrupt(
                journal::STRUCTURE,
                h.journal_offset,
                format!(
                    "a record of {} bytes does not fit the journal of {}",
                    rec.len(),
                    h.journal_len
                ),
            ));
        }
        let s = self.storage.as_ref();
        s.write_at(&rec, h.journal_offset)
            .map_err(io_err(journal::STRUCTURE, h.journal_offset))?;
        s.flush()
            .map_err(io_err(journal::STRUCTURE, h.journal_offset))?;
        for (p, bytes) in &pages {
            let o = h.table_offset + p * PAGE_SIZE as u64;
            s.write_at(bytes, o).map_err(io_err(TABLE, o))?;
        }
        s.flush().map_err(io_err(TABLE, h.table_offset))?;
        let target = 1 - self.current_copy;
        let o = COPY_OFFSETS[target];
        s.write_at(&hbytes, o)
            .map_err(io_err(header::STRUCTURE, o))?;
        s.flush().map_err(io_err(header::STRUCTURE, o))?;
        self.current_copy = target;
        if let Some(rec) = &h.signer {
            self.signature = signed_by_self(&h, rec);
        }
        self.header = h;
        st.dirty.clear();
        st.header_dirty = false;
        st.recompute_committed(self.header.slot_count);
        let freed: Vec<u64> = st.pending_free.drain(..).collect();
        st.free.extend(freed);
        Ok(())
    }

    /// The path the image was opened from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Public facts about the container, for `info`.
    fn evhd_details(&self) -> EvhdDetails {
        let h = &self.header;
        let o = &h.origin;
        let warning = self.signature.warning();
        let signature = match &self.signature {
            Status::Unsigned => EvhdSignatureDetails::Unsigned {
                signed: false,
                warning,
            },
            Status::Signed {
                fingerprint,
                label,
                trusted,
            } => EvhdSignatureDetails::Signed {
                signed: true,
                signer: fingerprint.hex(),
                signer_label: label.clone(),
                signer_short: fingerprint.short(),
                trusted: *trusted,
                verified: if self.state.is_some() {
                    "signature and header MAC"
                } else {
                    "signature only (without a key the header MAC was not checked)"
                },
                warning,
            },
        };
        EvhdDetails {
            block_size: h.block_size(),
            cipher: h.cipher.as_str(),
            container_id: h.container_uuid(),
            header_copy: if self.current_copy == 0 { "A" } else { "B" },
            key_epoch: u64::from(h.epoch),
            live_epochs: h.epoch_keys.len() as u64,
            locked: self.state.is_none(),
            origin: EvhdOriginDetails {
                block_size: (o.block_size != 0).then_some(o.block_size),
                disk_id: o.disk_id,
                format: o.format,
                logical_sector_size: o.logical_sector_size,
                physical_sector_size: o.physical_sector_size,
                disk_type: o.disk_type,
            },
            recipients: h
                .recipients
                .iter()
                .map(|s| EvhdRecipientDetails {
                    bits: s.key.bits() as u64,
                    fingerprint: s.key.fingerprint().hex(),
                    label: s.label.clone(),
                    short: s.key.fingerprint().short(),
                })
                .collect(),
            rekey_in_progress: self.rekey_in_progress(),
            sequence: h.sequence,
            signature,
            unlocked_with: self.state.as_ref().and_then(|s| s.key).map(|k| k.short()),
            version: if h.signer.is_some() {
                header::VERSION_SIGNED
            } else {
                header::VERSION_UNSIGNED
            },
        }
    }
}

impl Origin {
    /// The origin recorded in an EVHD's `info` (its `evhd.origin` object).
    pub fn from_info(info: &ImageInfo) -> Option<Origin> {
        let o = &info.details.evhd()?.origin;
        Some(Origin {
            format: o.format,
            disk_type: o.disk_type,
            block_size: o.block_size.unwrap_or(0),
            logical_sector_size: o.logical_sector_size,
            physical_sector_size: o.physical_sector_size,
            disk_id: o.disk_id,
        })
    }

    /// The origin of converting `src` (an EVHD keeps its own origin).
    pub fn of(info: &ImageInfo) -> Origin {
        if info.format == Format::Evhd {
            return Origin::from_info(info).unwrap_or_default();
        }
        Origin {
            format: Some(info.format),
            disk_type: Some(match info.disk_type {
                DiskType::Differencing => DiskType::Dynamic,
                t => t,
            }),
            block_size: info
                .block_size
                .and_then(|b| u32::try_from(b).ok())
                .unwrap_or(0),
            logical_sector_size: info.logical_sector_size,
            physical_sector_size: info.physical_sector_size,
            disk_id: info
                .disk_id
                .as_deref()
                .and_then(|s| Uuid::parse_str(s).ok()),
        }
    }
}

impl VirtualDisk for EvhdDisk {
    fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    fn logical_sector_size(&self) -> u32 {
        self.header.logical_sector_size
    }

    fn physical_sector_size(&self) -> u32 {
        self.header.physical_sector_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.header.virtual_size, offset, buf.len())?;
        let st = self.unlocked()?;
        let bs = self.block_size();
        let mut pos = offset;
        let mut done = 0usize;
        while done < buf.len() {
            let block = pos / bs;
            let in_off = (pos % bs) as usize;
            let left = buf.len() - done;
            if in_off == 0 && left >= bs as usize {
                let n = left / bs as usize;
                let len = n * bs as usize;
                self.read_full_blocks(st, block, &mut buf[done..done + len])?;
                done += len;
                pos += len as u64;
                continue;
            }
            let take = (bs as usize - in_off).min(left);
            let plain = self.read_block(st, block)?;
            buf[done..done + take].copy_from_slice(&plain[in_off..in_off + take]);
            done += take;
            pos += take as u64;
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(self.header.virtual_size, offset, buf.len())?;
        self.ensure_writable()?;
        let bs = self.block_size() as usize;
        let first = offset / bs as u64;
        let last = (offset + buf.len() as u64).div_ceil(bs as u64);
        {
            let st = self.unlocked()?;
            for b in first..last {
                self.check_page(st, b)?;
            }
        }
        let mut pos = offset;
        let mut done = 0usize;
        while done < buf.len() {
            let block = pos / bs as u64;
            let in_off = (pos % bs as u64) as usize;
            let left = buf.len() - done;
            if in_off == 0 && left >= bs {
                let n = (left / bs).min(WRITE_BATCH_BYTES / bs).max(1);
                let items: Vec<(u64, &[u8])> = (0..n)
                    .map(|i| (block + i as u64, &buf[done + i * bs..done + (i + 1) * bs]))
                    .collect();
                self.write_blocks(&items)?;
                done += n * bs;
                pos += (n * bs) as u64;
                continue;
            }
            let take = (bs - in_off).min(left);
            let mut plain = self.read_block(self.unlocked()?, block)?;
            plain[in_off..in_off + take].copy_from_slice(&buf[done..done + take]);
            self.write_blocks(&[(block, &plain[..])])?;
            done += take;
            pos += take as u64;
        }
        Ok(())
    }

    /// Whole blocks are copied into the writing workers' pieces.
    fn copies_writes(&self) -> bool {
        true
    }

    /// Whole non-zero blocks are sealed in place in `buf` (it holds
    /// ciphertext afterwards), saving a copy.
    fn write_in_place(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let bs = self.block_size() as usize;
        if buf.is_empty() || !offset.is_multiple_of(bs as u64) || !buf.len().is_multiple_of(bs) {
            return self.write_at(buf, offset);
        }
        check_range(self.header.virtual_size, offset, buf.len())?;
        self.ensure_writable()?;
        let first = offset / bs as u64;
        let n = buf.len() / bs;
        {
            let st = self.unlocked()?;
            for b in first..first + n as u64 {
                self.check_page(st, b)?;
            }
        }
        if buf.chunks(bs).any(is_zero) {
            return self.write_at(buf, offset);
        }
        let items: Vec<(u64, &[u8])> = (0..n).map(|i| (first + i as u64, &[][..])).collect();
        self.seal(&items, buf, false)
    }

    fn flush(&mut self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.commit()
    }

    fn map(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let st = self.unlocked()?;
        let end = offset.saturating_add(length).min(self.header.virtual_size);
        let mut list = ExtentList::default();
        for p in block_pieces(offset, end.saturating_sub(offset), self.block_size()) {
            // A block of a page that failed verification has no trusted
            // entry: an error, as for reads.
            self.check_page(st, p.block)?;
            let e = &st.entries[p.block as usize];
            let (kind, file_offset) = match e.slot {
                0 => (ExtentKind::Zero, None),
                slot => (
                    ExtentKind::Data,
                    Some(self.slot_file_offset(p.block, slot)? + p.in_block),
                ),
            };
            list.push(p.pos, p.len as u64, kind, file_offset);
        }
        Ok(list.into_vec())
    }

    fn info(&self) -> ImageInfo {
        let bs = self.block_size();
        let allocated = match &self.state {
            Some(st) => st.entries.iter().filter(|e| e.slot != 0).count() as u64 * bs,
            None => self.header.slot_count * bs,
        };
        ImageInfo {
            format: Format::Evhd,
            disk_type: DiskType::Dynamic,
            virtual_size: self.header.virtual_size,
            file_size: self.storage.len().unwrap_or(0),
            logical_sector_size: self.header.logical_sector_size,
            physical_sector_size: self.header.physical_sector_size,
            block_size: Some(bs),
            disk_id: Some(self.header.container_uuid().to_string()),
            data_write_id: None,
            creator: None,
            allocated_bytes: allocated,
            parent: None,
            warnings: self
                .warnings
                .iter()
                .cloned()
                .chain(self.signature.as_warning())
                .collect(),
            details: FormatDetails::Evhd(Box::new(self.evhd_details())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::slot_runs;

    #[test]
    fn slot_runs_split_where_slots_stop_following_each_other() {
        let slots = [5, 6, 7, 0, 0, 1, 9, 10, 3];
        let runs: Vec<_> = slot_runs(slots.len(), |i| slots[i]).collect();
        assert_eq!(runs, [(0, 3), (3, 5), (5, 6), (6, 8), (8, 9)]);
        assert_eq!(slot_runs(0, |_| 1).count(), 0);
    }
}
