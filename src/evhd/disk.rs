//! An unlocked container: the disk a key opened, its writes kept in the
//! block table in memory until a commit (journal record, table pages, the
//! other header copy) makes them durable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::cipher::{DataKey, MasterKey};
use super::header::{self, COPY_OFFSETS, Header};
use super::image::EvhdImage;
use super::info::{self, Keyed};
use super::keys::{Fingerprint, PrivateKey};
use super::recipient::Stanza;
use super::signature::Status;
use super::table::{self, ENTRIES_PER_PAGE, Entry, PAGE_SIZE};
use super::{DATA, EPOCH_WRITE_LIMIT, REKEY_BATCH, TABLE, journal, signed_by_self};
use crate::disk::{
    Extent, ExtentKind, ExtentList, FastPaths, VirtualDisk, block_pieces, check_range, is_zero,
};
use crate::error::{Error, ErrorKind, Result};
use crate::io::io_err;
use crate::report::{ImageInfo, Warning};

/// Bytes encrypted per step of a large write: bounds the ciphertext buffer.
const WRITE_BATCH_BYTES: usize = 8 << 20;

/// Secrets and the decoded table of an unlocked container.
pub(super) struct Unlocked {
    pub(super) mk: MasterKey,
    /// Fingerprint of the key that opened it (`None` right after create).
    pub(super) key: Option<Fingerprint>,
    /// Private keys that may sign commits, the one that opened it first:
    /// a commit is signed by the first that is a recipient of the new
    /// header. Empty: commits are unsigned (created from public keys).
    pub(super) signers: Vec<Arc<PrivateKey>>,
    pub(super) data_keys: Vec<DataKey>,
    pub(super) entries: Vec<Entry>,
    /// MAC of every page as last encoded (stored or about to be).
    pub(super) macs: Vec<[u8; 32]>,
    /// Pages whose MAC failed, with the reason.
    pub(super) bad_pages: BTreeMap<u64, String>,
    /// Pages changed since the last flush.
    pub(super) dirty: BTreeSet<u64>,
    /// Header fields changed since the last flush.
    pub(super) header_dirty: bool,
    /// Slots referenced by the committed table (index = slot).
    pub(super) committed: Vec<bool>,
    /// Committed slots superseded since the last flush: free after it.
    pub(super) pending_free: Vec<u64>,
    /// Slots nothing references.
    pub(super) free: BTreeSet<u64>,
}

impl Unlocked {
    pub(super) fn data_key(&self, epoch: u16) -> Option<&DataKey> {
        self.data_keys.iter().find(|k| k.epoch() == epoch)
    }

    pub(super) fn release(&mut self, slot: u64) {
        if slot == 0 {
            return;
        }
        if self.committed.get(slot as usize).copied().unwrap_or(false) {
            self.pending_free.push(slot);
        } else {
            self.free.insert(slot);
        }
    }

    pub(super) fn recompute_committed(&mut self, slot_count: u64) {
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

/// An EVHD container unlocked with a recipient's key: a virtual disk.
///
/// Writes stay in memory (the block table) until [`VirtualDisk::flush`] or
/// [`VirtualDisk::close`] commits them; call one of them to learn whether
/// the commit succeeded. Dropping a writable disk with uncommitted writes
/// commits them best effort, as a VHDX does; a failure there cannot be
/// returned, so it is written to stderr (`vhdkit: warning: ...`) and the
/// file keeps its last committed state.
pub struct EvhdDisk {
    /// The header (committed, with the pending in-memory changes) and
    /// what a locked image knows.
    pub(super) image: EvhdImage,
    pub(super) writable: bool,
    pub(super) epoch_write_limit: u64,
    pub(super) rekey_batch: usize,
    /// The secrets and the decoded block table.
    pub(super) state: Unlocked,
    /// A buffer reused by writes that seal a copy of the caller's data
    /// (it holds ciphertext between writes).
    pub(super) scratch: Vec<u8>,
}

impl std::fmt::Debug for EvhdDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvhdDisk")
            .field("path", &self.image.path)
            .field("size", &self.image.header.virtual_size)
            .field("writable", &self.writable)
            .finish()
    }
}

impl Drop for EvhdDisk {
    fn drop(&mut self) {
        let pending = !self.state.dirty.is_empty() || self.state.header_dirty;
        if !self.writable || !pending {
            return;
        }
        if let Err(e) = self.commit() {
            eprintln!(
                "vhdkit: warning: {}: writes since the last flush were lost when the disk was dropped (call flush or close to see such errors): {e}",
                self.image.display_name()
            );
        }
    }
}

impl EvhdDisk {
    /// A disk over `image` unlocked into `state`.
    pub(super) fn new(image: EvhdImage, state: Unlocked, writable: bool) -> EvhdDisk {
        EvhdDisk {
            image,
            writable,
            epoch_write_limit: EPOCH_WRITE_LIMIT,
            rekey_batch: REKEY_BATCH,
            state,
            scratch: Vec::new(),
        }
    }

    /// What the container shows without a key.
    pub fn image(&self) -> &EvhdImage {
        &self.image
    }

    /// The header as committed plus pending changes.
    pub fn header(&self) -> &Header {
        &self.image.header
    }

    /// The recipients of the master key.
    pub fn recipients(&self) -> &[Stanza] {
        &self.image.header.recipients
    }

    /// Warnings from opening.
    pub fn warnings(&self) -> &[Warning] {
        &self.image.warnings
    }

    /// Who signed the committed header, and whether this reader trusts it.
    pub fn signature(&self) -> &Status {
        &self.image.signature
    }

    /// Whether a rekey was started and has not finished.
    pub fn rekey_in_progress(&self) -> bool {
        self.image.rekey_in_progress()
    }

    /// The path the image was opened from.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.image.path()
    }

    /// Block table pages whose MAC failed, with the reason.
    pub fn bad_pages(&self) -> Vec<(u64, String)> {
        self.state
            .bad_pages
            .iter()
            .map(|(p, w)| (*p, w.clone()))
            .collect()
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

    pub(super) fn ensure_writable(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                "the image is opened read-only",
            ));
        }
        Ok(())
    }

    /// Commit: journal record (header + changed pages), sync, install the
    /// pages, sync, write the other header copy, sync. See [`journal`].
    pub(super) fn commit(&mut self) -> Result<()> {
        let h = &self.image.header;
        self.commit_through(h.journal_offset, h.journal_len)
    }

    /// [`Self::commit`] with the journal record written to the region at
    /// `journal_offset` of `journal_len` bytes: the committed header's,
    /// which a commit that moves the journal must still use, since that is
    /// where an open after a crash looks for it.
    pub(super) fn commit_through(&mut self, journal_offset: u64, journal_len: u64) -> Result<()> {
        let st = &mut self.state;
        if st.dirty.is_empty() && !st.header_dirty {
            return self.image.storage.flush().map_err(io_err("EVHD file", 0));
        }
        // Data slots must be durable before anything references them.
        self.image
            .storage
            .flush()
            .map_err(io_err(DATA, self.image.header.data_offset))?;
        let cid = self.image.header.container_id;
        let mut pages = Vec::with_capacity(st.dirty.len());
        for &p in &st.dirty {
            let start = p as usize * ENTRIES_PER_PAGE;
            let end = (start + ENTRIES_PER_PAGE).min(st.entries.len());
            let (bytes, mac) =
                table::encode_page(&st.mk.table_mac, &cid, p, &st.entries[start..end]);
            st.macs[p as usize] = mac;
            pages.push((p, bytes));
        }
        let mut h = self.image.header.clone();
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
        if rec.len() as u64 > journal_len {
            return Err(Error::corrupt(
                journal::STRUCTURE,
                journal_offset,
                format!(
                    "a record of {} bytes does not fit the journal of {journal_len}",
                    rec.len(),
                ),
            ));
        }
        let s = self.image.storage.as_ref();
        s.write_at(&rec, journal_offset)
            .map_err(io_err(journal::STRUCTURE, journal_offset))?;
        s.flush()
            .map_err(io_err(journal::STRUCTURE, journal_offset))?;
        for (p, bytes) in &pages {
            let o = h.table_offset + p * PAGE_SIZE as u64;
            s.write_at(bytes, o).map_err(io_err(TABLE, o))?;
        }
        s.flush().map_err(io_err(TABLE, h.table_offset))?;
        let target = 1 - self.image.current_copy;
        let o = COPY_OFFSETS[target];
        s.write_at(&hbytes, o)
            .map_err(io_err(header::STRUCTURE, o))?;
        s.flush().map_err(io_err(header::STRUCTURE, o))?;
        self.image.current_copy = target;
        if let Some(rec) = &h.signer {
            self.image.signature = signed_by_self(&h, rec);
        }
        self.image.header = h;
        st.dirty.clear();
        st.header_dirty = false;
        st.recompute_committed(self.image.header.slot_count);
        let freed: Vec<u64> = st.pending_free.drain(..).collect();
        st.free.extend(freed);
        Ok(())
    }
}

impl VirtualDisk for EvhdDisk {
    fn virtual_size(&self) -> u64 {
        self.image.header.virtual_size
    }

    fn logical_sector_size(&self) -> u32 {
        self.image.header.logical_sector_size
    }

    fn physical_sector_size(&self) -> u32 {
        self.image.header.physical_sector_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.image.header.virtual_size, offset, buf.len())?;
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
                self.read_full_blocks(block, &mut buf[done..done + len])?;
                done += len;
                pos += len as u64;
                continue;
            }
            let take = (bs as usize - in_off).min(left);
            let plain = self.read_block(block)?;
            buf[done..done + take].copy_from_slice(&plain[in_off..in_off + take]);
            done += take;
            pos += take as u64;
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(self.image.header.virtual_size, offset, buf.len())?;
        self.ensure_writable()?;
        let bs = self.block_size() as usize;
        let first = offset / bs as u64;
        let last = (offset + buf.len() as u64).div_ceil(bs as u64);
        for b in first..last {
            self.check_page(b)?;
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
            let mut plain = self.read_block(block)?;
            plain[in_off..in_off + take].copy_from_slice(&buf[done..done + take]);
            self.write_blocks(&[(block, &plain[..])])?;
            done += take;
            pos += take as u64;
        }
        Ok(())
    }

    fn fast_paths(&self) -> Option<&dyn FastPaths> {
        Some(self)
    }

    fn fast_paths_mut(&mut self) -> Option<&mut dyn FastPaths> {
        Some(self)
    }

    fn flush(&mut self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.commit()
    }

    fn map(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let st = &self.state;
        let end = offset
            .saturating_add(length)
            .min(self.image.header.virtual_size);
        let mut list = ExtentList::default();
        for p in block_pieces(offset, end.saturating_sub(offset), self.block_size()) {
            // A block of a page that failed verification has no trusted
            // entry: an error, as for reads.
            self.check_page(p.block)?;
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
        let keyed = Keyed {
            allocated_blocks: self.state.entries.iter().filter(|e| e.slot != 0).count() as u64,
            unlocked_with: self.state.key,
        };
        info::image_info(&self.image, Some(&keyed))
    }
}

impl FastPaths for EvhdDisk {
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
        check_range(self.image.header.virtual_size, offset, buf.len())?;
        self.ensure_writable()?;
        let first = offset / bs as u64;
        let n = buf.len() / bs;
        for b in first..first + n as u64 {
            self.check_page(b)?;
        }
        if buf.chunks(bs).any(is_zero) {
            return self.write_at(buf, offset);
        }
        let items: Vec<(u64, &[u8])> = (0..n).map(|i| (first + i as u64, &[][..])).collect();
        self.seal(&items, buf, false)
    }
}
