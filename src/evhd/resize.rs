//! Resizing an unlocked container in place (`vhdkit resize` of an EVHD).
//!
//! The virtual size lives in the header only (the origin record keeps the
//! source's format, type, block size and identity, not its size), and the
//! header MAC, the table root and the signature over the MAC are written
//! anew by every commit, so a resize is: change the table, change the
//! size, commit. What makes a crash leave the old or the new size:
//!
//! - a shrink frees the entries past the new end and zeroes the part of
//!   the new last block past the end (so a later grow reads zeros there),
//!   all in one journaled commit; the freed slots are then packed down
//!   and the file cut as a compact does ([`super::compact`]);
//! - a grow whose table still has room for its pages (the gap before the
//!   data area) writes the new, empty pages there first, where nothing
//!   committed points, then commits the header naming them;
//! - a grow that needs more table (or journal) than fits moves the data
//!   area up: first the stored blocks in the slots the new table and
//!   journal will cover are copied to new slots past the end (a normal
//!   commit), then the whole new table, its slots renumbered, is written
//!   into that now unused space, and one commit switches the header to the
//!   new layout. That commit's record goes to the journal of the committed
//!   header, where an open after a crash looks. Ciphertext moves without
//!   re-encryption: a block's AAD binds its index and generation, not its
//!   slot. The old journal and table stay behind as unused space.

use std::path::Path;
use std::sync::Arc;

use super::journal;
use super::table::{self, ENTRIES_PER_PAGE, Entry, PAGE_SIZE};
use super::{DATA, DATA_ALIGN, EvhdDisk, EvhdImage, TABLE};
use crate::disk::{VirtualDisk, is_zero};
use crate::error::{Error, ErrorKind, Result};
use crate::io::{Storage, io_err, read_struct};

/// Refuse to resize a container without a key, before anything is
/// written: the error names the recipients whose keys would do.
pub(crate) fn key_given(storage: &Arc<dyn Storage>, opts: &crate::OpenOptions) -> Result<()> {
    if !opts.keys.is_empty() {
        return Ok(());
    }
    let ro = opts.clone().writable(false).print_warnings(false);
    let image = EvhdImage::open(Box::new(storage.clone()), None, &ro)?;
    let to: Vec<String> = image
        .recipients()
        .iter()
        .map(|s| format!("{} {:?}", s.key.fingerprint().short(), s.label))
        .collect();
    Err(Error::new(
        ErrorKind::KeyRequired,
        format!(
            "resizing an encrypted (EVHD) image rewrites its block table and header, so it needs the private key of one of its recipients: {}",
            to.join(", ")
        ),
    )
    .with_hint(crate::Hint::Key))
}

/// Resize the container in `storage` to `new_size` bytes with a key of
/// `opts` (see the module documentation).
pub(crate) fn resize(
    storage: &Arc<dyn Storage>,
    path: Option<&Path>,
    opts: &crate::OpenOptions,
    new_size: u64,
) -> Result<()> {
    key_given(storage, opts)?;
    let rw = opts.clone().writable(true).print_warnings(false);
    let mut d = EvhdDisk::open(Box::new(storage.clone()), path.map(Path::to_path_buf), &rw)?;
    d.resize(new_size)?;
    d.close()
}

/// Table pages written at a time when a resize lays out new pages (4 MiB),
/// so that a large table is never held whole twice.
const TABLE_WRITE_PAGES: usize = 1024;

/// The most blocks a resize gives a container: the block table is held in
/// memory whole (48 bytes a block), so 2^28 blocks already take 12 GiB;
/// at the default 64 KiB block size that is a 16 TiB disk.
pub const MAX_BLOCKS: u64 = 1 << 28;

impl EvhdDisk {
    /// Refuse to `what` a container whose table has pages that failed
    /// verification: their entries may name any slot.
    pub(super) fn refuse_damaged(&self, what: &str) -> Result<()> {
        if let Some((p, why)) = self.state.bad_pages.iter().next() {
            return Err(Error::new(
                ErrorKind::NeedsRepair,
                format!("cannot {what} the image: block table page {p}: {why}"),
            )
            .at(TABLE, self.image.header.table_offset + p * PAGE_SIZE as u64));
        }
        Ok(())
    }

    /// After a commit that renumbered or dropped slots: the slots the
    /// table references are the committed ones, every other slot of the
    /// data area is free.
    pub(super) fn reset_slots(&mut self) {
        let count = self.image.header.slot_count;
        let st = &mut self.state;
        st.recompute_committed(count);
        st.pending_free.clear();
        st.free = (1..=count).filter(|&s| !st.committed[s as usize]).collect();
    }

    /// After a failed resize or compact the table and header in memory may
    /// be half way to a new layout: none of it is committed (not even when
    /// the disk is dropped) and the disk takes no more writes. The file
    /// keeps its last commit; a new open continues from there.
    pub(super) fn abandon(&mut self) {
        self.state.dirty.clear();
        self.state.header_dirty = false;
        self.writable = false;
    }

    /// Change the virtual size to `new_size` bytes (a multiple of the
    /// logical sector size; the caller has checked that a shrink cuts
    /// nothing it must keep). On an error the disk is left read-only and
    /// must be opened again to be written.
    pub(crate) fn resize(&mut self, new_size: u64) -> Result<()> {
        let r = self.resize_inner(new_size);
        if r.is_err() {
            self.abandon();
        }
        r
    }

    fn resize_inner(&mut self, new_size: u64) -> Result<()> {
        self.ensure_writable()?;
        self.refuse_damaged("resize")?;
        let bs = self.block_size();
        let sector = u64::from(self.image.header.logical_sector_size);
        if new_size == 0 || !new_size.is_multiple_of(sector) {
            return Err(Error::invalid_argument(format!(
                "EVHD size {new_size}; expected a multiple of the {sector}-byte sector above zero"
            )));
        }
        let blocks = new_size.div_ceil(bs);
        if blocks > MAX_BLOCKS {
            return Err(Error::invalid_argument(format!(
                "EVHD size {new_size} needs {blocks} blocks of {bs} bytes; at most {MAX_BLOCKS} are supported"
            )));
        }
        // Writes made before stay apart from the resize.
        self.commit()?;
        let old = self.image.header.virtual_size;
        if new_size < old {
            self.shrink_to(new_size)?;
            self.pack()?;
            self.truncate_data()
        } else if new_size > old {
            self.grow_to(new_size)
        } else {
            Ok(())
        }
    }

    /// Zero the bytes of the last block past `size` (when it is partial
    /// and stored and they are not zero already): the next grow shows them.
    fn zero_tail(&mut self, size: u64) -> Result<()> {
        let bs = self.block_size();
        let keep = (size % bs) as usize;
        let last = size.div_ceil(bs) - 1;
        if keep == 0 || self.state.entries[last as usize].slot == 0 {
            return Ok(());
        }
        let mut plain = self.read_block(last)?;
        if is_zero(&plain[keep..]) {
            return Ok(());
        }
        plain[keep..].fill(0);
        self.write_blocks(&[(last, &plain[..])])
    }

    fn shrink_to(&mut self, new_size: u64) -> Result<()> {
        let bs = self.block_size();
        self.zero_tail(new_size)?;
        let blocks = new_size.div_ceil(bs);
        let pages = table::pages_for(blocks);
        let st = &mut self.state;
        let cut: Vec<u64> = st.entries[blocks as usize..]
            .iter()
            .map(|e| e.slot)
            .collect();
        for slot in cut {
            st.release(slot);
        }
        st.entries.truncate(blocks as usize);
        st.macs.truncate(pages as usize);
        st.dirty.retain(|&p| p < pages);
        // The new last page holds no entries past the end.
        st.dirty.insert(pages - 1);
        let h = &mut self.image.header;
        h.virtual_size = new_size;
        h.table_pages = pages;
        st.header_dirty = true;
        self.commit()
    }

    fn grow_to(&mut self, new_size: u64) -> Result<()> {
        let old_size = self.image.header.virtual_size;
        self.zero_tail(old_size)?;
        // Committed on its own: the slot it superseded must be free
        // durably before the space of slots may be reused below.
        self.commit()?;
        let bs = self.block_size();
        let blocks = new_size.div_ceil(bs);
        let pages = table::pages_for(blocks);
        let h = self.image.header.clone();
        if pages == h.table_pages {
            // The pages already hold zero entries past the last block.
            self.state.entries.resize(blocks as usize, Entry::default());
            self.image.header.virtual_size = new_size;
            self.state.header_dirty = true;
            return self.commit();
        }
        let journal_fits = journal::record_len(pages) <= h.journal_len;
        let table_end = (pages * PAGE_SIZE as u64)
            .checked_add(h.table_offset)
            .ok_or_else(|| Error::invalid_argument("EVHD table beyond 2^64 bytes"))?;
        if journal_fits && table_end <= h.data_offset {
            return self.grow_table_in_place(new_size, blocks, pages);
        }
        self.grow_with_new_layout(new_size, blocks, pages, journal_fits)
    }

    /// Write the empty pages `from..to` (MACs included) at `offset` and
    /// return their MACs.
    fn write_empty_pages(&self, from: u64, to: u64, offset: u64) -> Result<Vec<[u8; 32]>> {
        let cid = self.image.header.container_id;
        let s = self.image.storage.as_ref();
        let mut macs = Vec::new();
        let mut p = from;
        while p < to {
            let n = (to - p).min(TABLE_WRITE_PAGES as u64);
            let mut bytes = Vec::with_capacity(n as usize * PAGE_SIZE);
            for q in p..p + n {
                let (page, mac) = table::encode_page(&self.state.mk.table_mac, &cid, q, &[]);
                bytes.extend_from_slice(&page);
                macs.push(mac);
            }
            let at = offset + (p - from) * PAGE_SIZE as u64;
            s.write_at(&bytes, at).map_err(io_err(TABLE, at))?;
            p += n;
        }
        Ok(macs)
    }

    fn grow_table_in_place(&mut self, new_size: u64, blocks: u64, pages: u64) -> Result<()> {
        let h = &self.image.header;
        let (old_pages, at) = (
            h.table_pages,
            h.table_offset + h.table_pages * PAGE_SIZE as u64,
        );
        // Past the committed table: nothing committed points here. The
        // commit syncs these pages before its journal record.
        let macs = self.write_empty_pages(old_pages, pages, at)?;
        let st = &mut self.state;
        st.macs.extend(macs);
        st.entries.resize(blocks as usize, Entry::default());
        let h = &mut self.image.header;
        h.virtual_size = new_size;
        h.table_pages = pages;
        st.header_dirty = true;
        self.commit()
    }

    fn grow_with_new_layout(
        &mut self,
        new_size: u64,
        blocks: u64,
        pages: u64,
        journal_fits: bool,
    ) -> Result<()> {
        let bs = self.block_size();
        let old = self.image.header.clone();
        let base = old.data_offset;
        let (journal_offset, journal_len) = if journal_fits {
            (old.journal_offset, old.journal_len)
        } else {
            (base, journal::region_len(pages))
        };
        let table_offset = if journal_fits {
            base
        } else {
            base + journal_len
        };
        let data_offset = (table_offset + pages * PAGE_SIZE as u64).next_multiple_of(DATA_ALIGN);
        // Slots 1..=k lie where the new journal and table go.
        let k = (data_offset - base) / bs;
        self.evacuate(k)?;
        let st = &mut self.state;
        let count = self.image.header.slot_count.max(k);
        let mut entries = std::mem::take(&mut st.entries);
        for e in entries.iter_mut().filter(|e| e.slot != 0) {
            e.slot -= k;
        }
        entries.resize(blocks as usize, Entry::default());
        let cid = old.container_id;
        let s = self.image.storage.as_ref();
        if !journal_fits {
            // No stale record in the new journal region.
            let zero = vec![0u8; journal::RECORD_HEADER];
            s.write_at(&zero, journal_offset)
                .map_err(io_err(journal::STRUCTURE, journal_offset))?;
        }
        // Nothing committed points at this space (see `evacuate`).
        let mut macs = Vec::with_capacity(pages as usize);
        let per_write = ENTRIES_PER_PAGE * TABLE_WRITE_PAGES;
        for (i, group) in entries.chunks(per_write).enumerate() {
            let mut bytes = Vec::with_capacity(TABLE_WRITE_PAGES * PAGE_SIZE);
            for (j, chunk) in group.chunks(ENTRIES_PER_PAGE).enumerate() {
                let p = (i * TABLE_WRITE_PAGES + j) as u64;
                let (page, mac) = table::encode_page(&st.mk.table_mac, &cid, p, chunk);
                bytes.extend_from_slice(&page);
                macs.push(mac);
            }
            let at = table_offset + (i * TABLE_WRITE_PAGES * PAGE_SIZE) as u64;
            s.write_at(&bytes, at).map_err(io_err(TABLE, at))?;
        }
        st.entries = entries;
        st.macs = macs;
        st.dirty.clear();
        // The new header counts the slots up to the old end of the data
        // area, which the file must hold.
        let end = base + count * bs;
        let len = s.len().map_err(io_err(DATA, end))?;
        if len < end {
            s.set_len(end).map_err(io_err(DATA, end))?;
        }
        let h = &mut self.image.header;
        h.virtual_size = new_size;
        h.table_offset = table_offset;
        h.table_pages = pages;
        h.data_offset = data_offset;
        h.slot_count = count - k;
        h.journal_offset = journal_offset;
        h.journal_len = journal_len;
        self.state.header_dirty = true;
        self.commit_through(old.journal_offset, old.journal_len)?;
        self.reset_slots();
        Ok(())
    }

    /// Copy the blocks stored in slots `1..=k` to new slots past every
    /// slot in use and commit, so that nothing committed points into the
    /// first `k` slots.
    fn evacuate(&mut self, k: u64) -> Result<()> {
        let bs = self.block_size();
        let movers: Vec<u64> = (0..self.state.entries.len() as u64)
            .filter(|&b| {
                let s = self.state.entries[b as usize].slot;
                s != 0 && s <= k
            })
            .collect();
        if movers.is_empty() {
            return Ok(());
        }
        let mut next = self.image.header.slot_count.max(k);
        let mut buf = vec![0u8; bs as usize];
        let storage = self.image.storage.clone();
        for b in movers {
            let from = self.slot_file_offset(b, self.state.entries[b as usize].slot)?;
            read_struct(storage.as_ref(), DATA, &mut buf, from)?;
            next += 1;
            self.image.header.slot_count = next;
            let to = self.slot_file_offset(b, next)?;
            storage.write_at(&buf, to).map_err(io_err(DATA, to))?;
            let st = &mut self.state;
            let old = st.entries[b as usize].slot;
            st.entries[b as usize].slot = next;
            st.release(old);
            st.dirty.insert(b / ENTRIES_PER_PAGE as u64);
        }
        self.state.header_dirty = true;
        self.commit()?;
        self.reset_slots();
        Ok(())
    }
}
