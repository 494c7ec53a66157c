//! Unlocking a container: unwrapping the master key, judging the
//! signature, replaying a pending journal record and loading and verifying
//! the block table. Nothing is written before every check has passed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use super::cipher::{self, DataKey, MasterKey};
use super::disk::Unlocked;
use super::header::{self, COPY_OFFSETS, Header};
use super::image::{Candidate, EvhdImage};
use super::keys::{Fingerprint, PrivateKey};
use super::table::{self, ENTRIES_PER_PAGE, Entry, PAGE_SIZE};
use super::{EvhdDisk, TABLE, fallback, journal, no_recipient, signature, trusted};
use crate::error::{Error, ErrorKind, Result};
use crate::fixed::FixedStruct;
use crate::io::{Storage, io_err, read_struct};
use crate::report::{Warning, WarningKind};

/// The secrets a key unwrapped from a header: the master key, the key's
/// fingerprint and the epochs' data keys.
type Unwrapped = (MasterKey, Fingerprint, Vec<DataKey>);

impl EvhdDisk {
    /// Open the container in `storage` with one of the keys in `opts`.
    /// Without keys it is a `KeyRequired` error, after the checks that need
    /// no key (a locked image is an [`EvhdImage`]). Nothing is written
    /// before a key has unwrapped the master key and the header MAC
    /// verified.
    pub fn open(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &crate::OpenOptions,
    ) -> Result<EvhdDisk> {
        let c = Candidate::read(storage, path)?;
        if opts.keys.is_empty() {
            if opts.writable {
                return Err(c.image.key_required());
            }
            let image = c.locked(opts)?;
            return Err(image.key_required());
        }
        let Candidate {
            mut image,
            bytes,
            assessment,
            len,
        } = c;
        let state = match unlock_and_load(&mut image, bytes, opts, len) {
            Ok(s) => s,
            Err(e) => return Err(fallback::explain(e, assessment)),
        };
        let seq = image.header.sequence;
        let verdict = assessment.and_then(|a| a.verdict(Some(seq), &opts.keys));
        // Writing now would make a possibly rolled-back state the newest
        // commit and erase the evidence (the damaged copy is overwritten).
        if let Some(f) = verdict
            .as_ref()
            .filter(|f| f.lost && opts.writable && !opts.vouch)
        {
            return Err(Error::new(
                ErrorKind::NeedsRepair,
                format!(
                    "refusing to write: {}; a commit would make that older state the newest and overwrite the evidence",
                    f.message
                ),
            )
            .with_hint(crate::Hint::AcceptOlderState));
        }
        image.note_fallback(verdict, opts);
        Ok(EvhdDisk::new(image, state, opts.writable))
    }
}

/// Unwrap the master key of `h` with one of `keys` and verify the header
/// MAC and the epoch keys. Writes nothing.
pub(super) fn unlock(
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

/// Unlock `image` (its current copy `bytes`) with the keys of `opts`,
/// replaying a journal record one sequence ahead, and load the table.
fn unlock_and_load(
    image: &mut EvhdImage,
    bytes: Vec<u8>,
    opts: &crate::OpenOptions,
    len: u64,
) -> Result<Unlocked> {
    let keys = &opts.keys[..];
    let trusted = trusted(opts);
    let cur = image.header.clone();
    let record = journal::decode(
        cur.journal_offset,
        cur.journal_len,
        &cur.container_id,
        cur.table_pages,
        |buf, o| {
            read_struct(
                image.storage.as_ref(),
                journal::STRUCTURE,
                buf,
                cur.journal_offset + o,
            )
        },
    )?;
    // A record one sequence ahead is a flush that did not finish
    // installing: its header and pages are the newest state. A record
    // of the current sequence is complete (the pages were synced before
    // the header), so it is ignored: replaying it would hide damage to
    // the table from the MAC checks.
    if let Some(rec) = record.as_ref().filter(|r| r.sequence == cur.sequence + 1) {
        let at = cur.journal_offset + journal::RECORD_HEADER as u64;
        if let Ok(h) = Header::decode(&rec.header, at, len)
            && h.container_id == cur.container_id
            && h.sequence == rec.sequence
            && let Ok(u) = unlock(&h, &rec.header, at, keys)
        {
            // Its MAC verified: the journaled header is judged like a
            // header copy, and a bad signature is tampering.
            let status = signature::verify(&h, &rec.header, at, &trusted)?;
            image.judge(status, opts)?;
            return finish_load(
                image,
                opts.writable,
                h,
                rec.header.clone(),
                Some(rec),
                u,
                keys,
            );
        }
    }
    let at = COPY_OFFSETS[image.current_copy];
    let u = unlock(&cur, &bytes, at, keys)?;
    let status = signature::verify(&cur, &bytes, at, &trusted)?;
    image.judge(status, opts)?;
    finish_load(image, opts.writable, cur, bytes, None, u, keys)
}

/// Load and verify the table of `h` (the header `bytes` unlocked into
/// the secrets given), applying the pages of a journal `record`; installs
/// the record when `writable`.
fn finish_load(
    image: &mut EvhdImage,
    writable: bool,
    h: Header,
    bytes: Vec<u8>,
    record: Option<&journal::Record>,
    (mk, key, data_keys): Unwrapped,
    keys: &[Arc<PrivateKey>],
) -> Result<Unlocked> {
    let pages = h.table_pages as usize;
    let mut tbl = vec![0u8; pages * PAGE_SIZE];
    read_struct(image.storage.as_ref(), TABLE, &mut tbl, h.table_offset)?;
    let mut replay_pages = Vec::new();
    if let Some(rec) = record {
        for (p, page) in &rec.pages {
            let dst = &mut tbl[*p as usize * PAGE_SIZE..(*p as usize + 1) * PAGE_SIZE];
            if dst != &page[..] {
                dst.copy_from_slice(page);
                replay_pages.push(*p);
            }
        }
    }
    let mut macs = Vec::with_capacity(pages);
    let mut bad_pages = BTreeMap::new();
    let blocks = h.blocks() as usize;
    let mut entries = Vec::with_capacity(blocks);
    for p in 0..pages {
        let page = &tbl[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
        let at = h.table_offset + (p * PAGE_SIZE) as u64;
        macs.push(table::stored_mac(page));
        if let Err(f) = table::verify_page(&mk.table_mac, &h.container_id, p as u64, page) {
            let why = match f {
                table::PageFault::Mac => "page MAC mismatch: the page was modified or damaged",
                table::PageFault::Reserved => "reserved bytes after the page MAC are not zero",
            };
            bad_pages.insert(p as u64, why.to_string());
        }
        // Entry by entry: a whole `table::Page` is moved too often on the
        // way out of the parser for a table read whole on every open.
        let room = (blocks - entries.len().min(blocks)).min(ENTRIES_PER_PAGE);
        for i in 0..room {
            let o = i * table::ENTRY_SIZE;
            entries.push(Entry::parse(&page[o..], at + o as u64)?);
        }
    }
    if !cipher::ct_eq(&table::root(&macs), &h.table_root) {
        return Err(Error::new(
            ErrorKind::Authentication,
            "table root mismatch: a page MAC was damaged or a table page was replaced by an older copy",
        )
        .at(TABLE, h.table_offset));
    }
    // Entries of verified pages are trusted; still refuse impossible
    // values rather than index with them.
    let mut seen = vec![false; h.slot_count as usize + 1];
    for (i, e) in entries.iter().enumerate() {
        let page = (i / ENTRIES_PER_PAGE) as u64;
        if e.slot == 0 || bad_pages.contains_key(&page) {
            continue;
        }
        let off = h.table_offset
            + ((i / ENTRIES_PER_PAGE) * PAGE_SIZE + (i % ENTRIES_PER_PAGE) * table::ENTRY_SIZE)
                as u64;
        if e.slot > h.slot_count || seen[e.slot as usize] {
            return Err(Error::corrupt(
                TABLE,
                off,
                format!(
                    "block {i}: slot {} is beyond the {} slots or used twice",
                    e.slot, h.slot_count
                ),
            ));
        }
        seen[e.slot as usize] = true;
        if !data_keys.iter().any(|k| k.epoch() == e.epoch) {
            return Err(Error::corrupt(
                TABLE,
                off,
                format!("block {i}: epoch {} has no key", e.epoch),
            ));
        }
    }
    let free = (1..=h.slot_count).filter(|&s| !seen[s as usize]).collect();
    let install = record.is_some() && h.sequence != image.header.sequence;
    // The key is verified: a pending journal record may now be installed.
    if writable && (install || !replay_pages.is_empty()) {
        for &p in &replay_pages {
            let o = h.table_offset + p * PAGE_SIZE as u64;
            image
                .storage
                .write_at(
                    &tbl[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE],
                    o,
                )
                .map_err(io_err(TABLE, o))?;
        }
        image
            .storage
            .flush()
            .map_err(io_err(TABLE, h.table_offset))?;
        if install {
            let target = 1 - image.current_copy;
            let o = COPY_OFFSETS[target];
            image
                .storage
                .write_at(&bytes, o)
                .map_err(io_err(header::STRUCTURE, o))?;
            image
                .storage
                .flush()
                .map_err(io_err(header::STRUCTURE, o))?;
            image.current_copy = target;
        }
    } else if install {
        image.warnings.push(
            Warning::new(
                WarningKind::JournalInMemory,
                format!(
                    "an unfinished flush (sequence {}) was found in the journal and applied in memory; open writable to install it",
                    h.sequence
                ),
            )
            .at("EVHD journal", h.journal_offset),
        );
    }
    for (p, why) in &bad_pages {
        let at = h.table_offset + p * PAGE_SIZE as u64;
        image.warnings.push(
            Warning::new(
                WarningKind::UnreadableTablePage,
                format!("block table page {p} at {at:#x}: {why}; its blocks cannot be read"),
            )
            .at("EVHD block table", at),
        );
    }
    image.header = h;
    // The key that opened the image signs; the others are fallbacks for
    // a commit that removes it from the recipients.
    let mut signers: Vec<Arc<PrivateKey>> = keys.to_vec();
    signers.sort_by_key(|k| k.fingerprint() != key);
    Ok(Unlocked {
        mk,
        key: Some(key),
        signers,
        data_keys,
        entries,
        macs,
        bad_pages,
        dirty: BTreeSet::new(),
        header_dirty: false,
        committed: seen,
        pending_free: Vec::new(),
        free,
    })
}
