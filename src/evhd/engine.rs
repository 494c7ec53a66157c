//! The parallel crypto engine of an unlocked disk: whole blocks read and
//! decrypted, or sealed under fresh nonces into free slots, in pieces that
//! rayon's workers handle one each; key epochs started and pruned.

use std::collections::BTreeSet;

use rayon::prelude::*;
use zeroize::Zeroizing;

use super::cipher::{self, DataKey, NONCE_LEN, block_aad, random_bytes, random_secret};
use super::header::{self, EpochKey};
use super::table::{self, ENTRIES_PER_PAGE, Entry, PAGE_SIZE};
use super::{DATA, EvhdDisk, TABLE};
use crate::disk::is_zero;
use crate::error::{Error, ErrorKind, Result};
use crate::io::{io_err, read_struct};

/// Bytes of data slots one worker encrypts and stores (or reads and
/// decrypts) in one piece: small enough that the piece is still in the
/// worker's cache when it is copied to or from the page cache. With 2 MiB
/// pieces the same work ran at a third of the speed on a 1 MiB-L2 core.
pub(super) const PIECE_BYTES: usize = 256 << 10;

/// The maximal runs `i..j` of `0..n` whose slots (`slot(i)`) follow each
/// other, so that each run is one read or write; unallocated blocks (slot
/// 0) form runs of their own.
pub(super) fn slot_runs(
    n: usize,
    slot: impl Fn(usize) -> u64,
) -> impl Iterator<Item = (usize, usize)> {
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

impl EvhdDisk {
    pub(super) fn block_size(&self) -> u64 {
        self.image.header.block_size()
    }

    /// File offset of the entry of `block`.
    pub(super) fn entry_offset(&self, block: u64) -> u64 {
        let page = block / ENTRIES_PER_PAGE as u64;
        self.image.header.table_offset
            + page * PAGE_SIZE as u64
            + (block % ENTRIES_PER_PAGE as u64) * table::ENTRY_SIZE as u64
    }

    /// File offset of `slot`, the slot the table entry of `block` names:
    /// an error naming the entry (block, table page, file offset) when the
    /// slot is not one of the data area's, never a wrapped offset.
    pub(super) fn slot_file_offset(&self, block: u64, slot: u64) -> Result<u64> {
        self.image.header.slot_offset(slot).ok_or_else(|| {
            Error::corrupt(
                TABLE,
                self.entry_offset(block),
                format!(
                    "block {block} (table page {}): slot {slot} is not in the data area of {} slots of {} bytes at {:#x}",
                    block / ENTRIES_PER_PAGE as u64,
                    self.image.header.slot_count,
                    self.block_size(),
                    self.image.header.data_offset
                ),
            )
        })
    }

    pub(super) fn check_page(&self, block: u64) -> Result<()> {
        let st = &self.state;
        let page = block / ENTRIES_PER_PAGE as u64;
        if let Some(why) = st.bad_pages.get(&page) {
            return Err(Error::new(
                ErrorKind::Authentication,
                format!("block {block}: its table page {page} failed verification: {why}"),
            )
            .at(
                TABLE,
                self.image.header.table_offset + page * PAGE_SIZE as u64,
            ));
        }
        Ok(())
    }

    /// Decrypt `buf` (the ciphertext of `block`) in place.
    pub(super) fn decrypt(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        let st = &self.state;
        let e = &st.entries[block as usize];
        let off = self.slot_file_offset(block, e.slot)?;
        let key = st.data_key(e.epoch).ok_or_else(|| {
            Error::corrupt(
                TABLE,
                self.entry_offset(block),
                format!("block {block}: epoch {} has no key", e.epoch),
            )
        })?;
        let aad = block_aad(&self.image.header.container_id, block, e.generation);
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
    pub(super) fn read_block(&self, block: u64) -> Result<Zeroizing<Vec<u8>>> {
        self.check_page(block)?;
        let bs = self.block_size() as usize;
        let mut buf = Zeroizing::new(vec![0u8; bs]);
        self.read_piece(block, &mut buf)?;
        Ok(buf)
    }

    /// Read and decrypt whole blocks `first..` into `out` (a multiple of
    /// the block size): one read per run of consecutive slots, zeros for
    /// unallocated blocks.
    pub(super) fn read_piece(&self, first: u64, out: &mut [u8]) -> Result<()> {
        let st = &self.state;
        let bs = self.block_size() as usize;
        let n = out.len() / bs;
        let slot = |k: usize| st.entries[(first + k as u64) as usize].slot;
        for (i, j) in slot_runs(n, slot) {
            if slot(i) == 0 {
                out[i * bs..j * bs].fill(0);
                continue;
            }
            let off = self.slot_file_offset(first + i as u64, slot(i))?;
            read_struct(
                self.image.storage.as_ref(),
                DATA,
                &mut out[i * bs..j * bs],
                off,
            )?;
            for k in i..j {
                self.decrypt(first + k as u64, &mut out[k * bs..(k + 1) * bs])?;
            }
        }
        Ok(())
    }

    /// Read whole blocks `first..` into `out` (a multiple of the block
    /// size), pieces of [`PIECE_BYTES`] read and decrypted in parallel.
    pub(super) fn read_full_blocks(&self, first: u64, out: &mut [u8]) -> Result<()> {
        let bs = self.block_size() as usize;
        let n = out.len() / bs;
        for b in first..first + n as u64 {
            self.check_page(b)?;
        }
        let per = (PIECE_BYTES / bs).max(1);
        out.par_chunks_mut(per * bs)
            .enumerate()
            .try_for_each(|(k, piece)| self.read_piece(first + (k * per) as u64, piece))
    }

    /// Encrypt and store whole-block plaintexts `blocks` (index, data),
    /// copy-on-write into free slots. All-zero blocks become unallocated.
    pub(super) fn write_blocks(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        let bs = self.block_size() as usize;
        let (zero, data): (Vec<_>, Vec<_>) = blocks.iter().partition(|(_, d)| is_zero(d));
        {
            let st = &mut self.state;
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
    pub(super) fn seal(&mut self, data: &[(u64, &[u8])], ct: &mut [u8], copy: bool) -> Result<()> {
        let bs = self.block_size() as usize;
        let cid = self.image.header.container_id;
        if self.image.header.epoch_writes + data.len() as u64 > self.epoch_write_limit {
            self.new_epoch()?;
        }
        let epoch = self.image.header.epoch;
        // Slots: free ones first, then new ones at the end of the data area.
        let mut slots = Vec::with_capacity(data.len());
        {
            let st = &mut self.state;
            while slots.len() < data.len() {
                match st.free.pop_first() {
                    Some(s) => slots.push(s),
                    None => break,
                }
            }
        }
        let old_count = self.image.header.slot_count;
        while slots.len() < data.len() {
            self.image.header.slot_count += 1;
            slots.push(self.image.header.slot_count);
        }
        let mut nonces = vec![[0u8; NONCE_LEN]; data.len()];
        random_bytes(nonces.as_flattened_mut());
        let mut tags = vec![[0u8; 16]; data.len()];
        let st = &self.state;
        let key = st.data_key(epoch).ok_or_else(|| {
            Error::corrupt(
                header::STRUCTURE,
                self.image.header.data_offset,
                format!("the current epoch {epoch} has no data key"),
            )
        })?;
        let storage = self.image.storage.as_ref();
        let header = &self.image.header;
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
        let st = &mut self.state;
        if let Err(e) = sealed {
            // Nothing references the new slots: reused ones are free again
            // and the data area shrinks back, so that a later commit does
            // not record slots the file may not reach.
            self.image.header.slot_count = old_count;
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
        self.image.header.epoch_writes += data.len() as u64;
        Ok(())
    }

    /// Start a new key epoch with a fresh random data key.
    pub(super) fn new_epoch(&mut self) -> Result<()> {
        self.prune_epoch_keys();
        let st = &mut self.state;
        if self.image.header.epoch_keys.len() >= header::MAX_EPOCH_KEYS {
            return Err(Error::new(
                ErrorKind::NeedsRepair,
                format!(
                    "all {} epoch key records are in use",
                    header::MAX_EPOCH_KEYS
                ),
            )
            .with_hint(crate::Hint::Rekey));
        }
        let epoch = self
            .image
            .header
            .epoch_keys
            .iter()
            .map(|k| k.epoch)
            .max()
            .unwrap_or(0)
            .wrapping_add(1);
        let key = DataKey::new(self.image.header.cipher, epoch, random_secret());
        let (nonce, wrapped) =
            cipher::wrap_epoch_key(&st.mk, &self.image.header.container_id, epoch, key.secret());
        self.image.header.epoch_keys.push(EpochKey {
            epoch,
            nonce,
            wrapped,
        });
        st.data_keys.push(key);
        self.image.header.epoch = epoch;
        self.image.header.epoch_writes = 0;
        st.header_dirty = true;
        Ok(())
    }

    /// Drop the keys of epochs no block uses any more (never the current one).
    pub(super) fn prune_epoch_keys(&mut self) {
        let st = &mut self.state;
        if self.image.header.epoch_keys.len() <= 1 {
            return;
        }
        let used: BTreeSet<u16> = st
            .entries
            .iter()
            .filter(|e| e.slot != 0)
            .map(|e| e.epoch)
            .collect();
        let cur = self.image.header.epoch;
        let before = self.image.header.epoch_keys.len();
        self.image
            .header
            .epoch_keys
            .retain(|k| k.epoch == cur || used.contains(&k.epoch));
        st.data_keys
            .retain(|k| k.epoch() == cur || used.contains(&k.epoch()));
        if self.image.header.epoch_keys.len() != before {
            st.header_dirty = true;
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
