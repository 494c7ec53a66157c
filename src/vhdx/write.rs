//! Writing a VHDX in place.
//!
//! Payload data goes straight to its block. Everything else a write changes
//! (BAT entries, sector bitmaps) changes in memory first and reaches the
//! file through the log at the next commit ([MS-VHDX] 2.3): the data is
//! flushed, one log entry holding every changed 4 KiB page is written and
//! flushed, and only then are the pages written in place. After a crash at
//! any point the replayed log leaves either all the old or all the new
//! pages of a commit, and no page ever points at data that was not durable
//! before it.
//!
//! Commits happen on `flush`, on close, and when the pages changed since
//! the last commit would no longer fit in one entry (half the log), so a
//! burst of allocating writes costs two syncs per entry, not per write.
//!
//! A session starts with the first change: the two-copy header update gives
//! the file a new FileWriteGuid, DataWriteGuid and LogGuid before anything
//! else is written. Closing commits, flushes and clears the LogGuid, so that
//! other tools see a file with nothing to replay.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::VhdxDisk;
use super::bat;
use super::header;
use super::log::{LOG_SECTOR, LogWriter, Op};
use super::region_table::REGION_ALIGNMENT;
use super::sector_bitmap;
use crate::disk::{check_range, is_zero};
use crate::error::Result;
use crate::io::{Storage, io_err};
use crate::layer;

/// Size of the pages the log carries.
const PAGE: u64 = LOG_SECTOR;
/// BAT entries per page.
const ENTRIES_PER_PAGE: u64 = PAGE / bat::ENTRY_SIZE;

/// State of a write session: what changed since the last commit.
#[derive(Debug)]
pub(super) struct Session {
    log: LogWriter,
    /// Changed pages of the BAT, by index within the region.
    dirty_bat: BTreeSet<u64>,
    /// Changed pages of sector bitmaps, as (chunk, page within its block).
    dirty_bitmaps: BTreeSet<(u64, u64)>,
    /// Where the next block goes: past everything in the file, on a MiB.
    pub(super) next_free: u64,
}

impl Session {
    fn dirty_pages(&self) -> u64 {
        (self.dirty_bat.len() + self.dirty_bitmaps.len()) as u64
    }
}

pub(super) fn align_mib(x: u64) -> u64 {
    x.div_ceil(REGION_ALIGNMENT) * REGION_ALIGNMENT
}

impl VhdxDisk {
    pub(super) fn ensure_writable(&self) -> Result<()> {
        crate::disk::ensure_writable(&self.storage, &self.warnings, self.parent.as_ref())
    }

    /// Start a session if none is open: new FileWriteGuid, DataWriteGuid
    /// (unless kept, see [`VhdxDisk::keep_data_write_id`]) and LogGuid,
    /// written with the two-copy header update.
    pub(super) fn begin_session(&mut self) -> Result<()> {
        self.begin_session_with(true)
    }

    /// [`Self::begin_session`], keeping the DataWriteGuid unless
    /// `new_data_id`: for changes that leave the content as it is
    /// (compaction), so that children still accept the image as parent.
    pub(super) fn begin_session_with(&mut self, new_data_id: bool) -> Result<()> {
        if self.session.is_some() {
            return Ok(());
        }
        self.ensure_writable()?;
        let mut h = self.s.header().clone();
        let log_guid = Uuid::new_v4();
        h.set_file_write_guid(Uuid::new_v4());
        if new_data_id && !self.keep_data_write_id {
            h.set_data_write_guid(Uuid::new_v4());
        }
        h.set_log_guid(log_guid);
        let next_free = self.first_free()?;
        let slots = header::update(&self.storage, &self.s.slots, self.s.current, &h)?;
        self.s.current = header::current(&slots)?;
        self.s.slots = slots;
        self.session = Some(Session {
            log: LogWriter::new(h.log_offset, u64::from(h.log_length), log_guid),
            dirty_bat: BTreeSet::new(),
            dirty_bitmaps: BTreeSet::new(),
            next_free,
        });
        self.add_missing_bitmaps()
    }

    /// A new DataWriteGuid: with the session's start when none is open,
    /// else by a header update of its own.
    pub(super) fn renew_data_write_id_(&mut self) -> Result<()> {
        if self.session.is_none() {
            return self.begin_session();
        }
        self.ensure_writable()?;
        let mut h = self.s.header().clone();
        h.set_data_write_guid(Uuid::new_v4());
        let slots = header::update(&self.storage, &self.s.slots, self.s.current, &h)?;
        self.s.current = header::current(&slots)?;
        self.s.slots = slots;
        Ok(())
    }

    /// Give every chunk of a differencing disk that holds a block not
    /// fully present a sector-bitmap block (all bits clear: a fresh block
    /// past the end of the file reads as zeros), so that libvhdi, which
    /// reads the bitmap of every such block, finds one (see
    /// [`super::create`]). Files made by vhdkit have them from the start;
    /// this completes older ones (and other tools' files) on their first
    /// write. Only the BAT entries change, through the log.
    fn add_missing_bitmaps(&mut self) -> Result<()> {
        if !self.s.metadata.has_parent {
            return Ok(());
        }
        let l = self.s.layout;
        for chunk in 0..l.bitmap_blocks {
            let idx = l.bitmap_index(chunk);
            if bat::state(self.s.bat[idx as usize]) != bat::BITMAP_NOT_PRESENT {
                continue;
            }
            let first = chunk * l.chunk_ratio;
            let last = (first + l.chunk_ratio).min(l.data_blocks);
            let needed = (first..last).any(|b| {
                bat::state(self.s.bat[l.payload_index(b) as usize]) != bat::PAYLOAD_FULLY_PRESENT
            });
            if needed {
                self.reserve_pages(1)?;
                let off = self.allocate(bat::BITMAP_BLOCK_SIZE);
                self.set_entry(idx, bat::entry(bat::BITMAP_PRESENT, off));
            }
        }
        Ok(())
    }

    /// The first MiB boundary past the file, every region and every block.
    fn first_free(&self) -> Result<u64> {
        let mut end = self
            .storage
            .len()
            .map_err(io_err("VHDX file", 0))?
            .max(self.s.file_len);
        for (_, e, _) in self.s.reserved_ranges() {
            end = end.max(e);
        }
        let l = &self.s.layout;
        for (i, &e) in self.s.bat.iter().enumerate() {
            let st = bat::state(e);
            let size = if l.is_bitmap_index(i as u64) {
                (st == bat::BITMAP_PRESENT).then_some(bat::BITMAP_BLOCK_SIZE)
            } else {
                matches!(
                    st,
                    bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT
                )
                .then_some(l.block_size)
            };
            if let Some(size) = size {
                end = end.max(bat::file_offset(e).saturating_add(size));
            }
        }
        Ok(align_mib(end))
    }

    fn session(&mut self) -> &mut Session {
        self.session.as_mut().expect("a write session is open")
    }

    /// Reserve `size` bytes (a whole number of MiB) at the end of the file.
    pub(super) fn allocate(&mut self, size: u64) -> u64 {
        let s = self.session();
        let off = s.next_free;
        s.next_free += size;
        let end = s.next_free;
        self.s.file_len = self.s.file_len.max(end);
        off
    }

    /// Change BAT entry `index` in memory; it reaches the file at the next commit.
    pub(super) fn set_entry(&mut self, index: u64, value: u64) {
        self.s.bat[index as usize] = value;
        self.session().dirty_bat.insert(index / ENTRIES_PER_PAGE);
    }

    /// Commit first if `pages` more changed pages would not fit in one entry.
    pub(super) fn reserve_pages(&mut self, pages: u64) -> Result<()> {
        let s = self.session();
        if s.dirty_pages() + pages > s.log.max_data_sectors() {
            self.commit()?;
        }
        Ok(())
    }

    /// Make sure the sector bitmap of `chunk` is in memory, allocating its
    /// block when `allocate` is set and it has none.
    fn load_bitmap(&mut self, chunk: u64, allocate: bool) -> Result<()> {
        if self.bitmaps.contains_key(&chunk) {
            return Ok(());
        }
        let idx = self.s.layout.bitmap_index(chunk);
        let entry = self.s.bat[idx as usize];
        let mut data = vec![0u8; bat::BITMAP_BLOCK_SIZE as usize].into_boxed_slice();
        match bat::state(entry) {
            bat::BITMAP_PRESENT => {
                let off = self.block_offset(idx, bat::BITMAP_BLOCK_SIZE)?;
                self.storage
                    .read_at_or_zero(&mut data, off)
                    .map_err(io_err("VHDX sector bitmap", off))?;
            }
            bat::BITMAP_NOT_PRESENT if allocate => {
                // A fresh block past the end of the file reads as zeros:
                // no sector present. Only changed pages are ever written.
                let off = self.allocate(bat::BITMAP_BLOCK_SIZE);
                self.set_entry(idx, bat::entry(bat::BITMAP_PRESENT, off));
            }
            st => {
                return Err(self.s.corrupt_entry(
                    idx,
                    format!(
                        "sector bitmap of chunk {chunk} has state {st} where a bitmap is needed"
                    ),
                ));
            }
        }
        self.bitmaps.insert(chunk, data);
        Ok(())
    }

    /// Set (or clear) the bitmap bits of sectors `[first, last)` of payload
    /// block `block`, marking the pages changed. The bitmap is loaded.
    fn set_bits(&mut self, block: u64, first: u64, last: u64, value: bool) {
        let l = self.s.layout;
        let chunk = block / l.chunk_ratio;
        let base = (block % l.chunk_ratio) * l.sectors_per_block();
        let (b0, b1) = (base + first, base + last);
        self.bitmap_cache.invalidate(block);
        let bm = self.bitmaps.get_mut(&chunk).expect("bitmap loaded");
        sector_bitmap::set_range(bm, b0, b1, value);
        let pages = (b0 / 8 / PAGE)..=((b1 - 1) / 8 / PAGE);
        let s = self.session();
        for p in pages {
            s.dirty_bitmaps.insert((chunk, p));
        }
    }

    /// The bitmap bits of sectors `[first, last)` of `block`: all set?
    /// (`Some(false)` when any is clear, `None` when all are clear).
    fn bits_state(&self, block: u64, first: u64, last: u64) -> (bool, bool) {
        let l = &self.s.layout;
        let chunk = block / l.chunk_ratio;
        let base = (block % l.chunk_ratio) * l.sectors_per_block();
        let bm = &self.bitmaps[&chunk];
        let (b0, b1) = (base + first, base + last);
        let all = sector_bitmap::all_set(bm, b0, b1);
        let none = bm[(b0 / 8) as usize..b1.div_ceil(8) as usize]
            .iter()
            .all(|&x| x == 0);
        (all, none)
    }

    /// Write `buf` at `offset` of the virtual disk.
    pub(super) fn write_impl(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(self.virtual_size_(), offset, buf.len())?;
        if buf.is_empty() {
            // Nothing user-visible changes, so neither does the
            // DataWriteGuid (nor anything else in the file).
            return self.ensure_writable();
        }
        self.begin_session()?;
        if self.s.metadata.has_parent {
            // A sector becomes present as a whole: partial sectors are
            // merged with what they read as now (possibly from the parent).
            let (size, ss) = (self.virtual_size_(), self.s.layout.sector_size);
            let read = |b: &mut [u8], o: u64| crate::VirtualDisk::read_at(self, b, o);
            if let Some((merged, at)) = layer::widen(read, size, ss, buf, offset)? {
                return self.write_blocks(&merged, at);
            }
        }
        self.write_blocks(buf, offset)
    }

    fn virtual_size_(&self) -> u64 {
        self.s.metadata.virtual_size
    }

    fn write_blocks(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let bs = self.s.layout.block_size;
        layer::write_blocks(
            self,
            |d| &d.bitmap_cache,
            bs,
            buf,
            offset,
            Self::write_block,
        )
    }

    fn write_data(&self, data: &[u8], off: u64) -> Result<()> {
        self.storage
            .write_at(data, off)
            .map_err(io_err("VHDX payload block", off))
    }

    /// Write `data` into payload block `block` at `in_off` (whole sectors
    /// for differencing disks).
    fn write_block(&mut self, block: u64, in_off: u64, data: &[u8]) -> Result<()> {
        let l = self.s.layout;
        let bs = l.block_size;
        let block_len = bs.min(self.virtual_size_() - block * bs);
        let idx = l.payload_index(block);
        let diff = self.s.metadata.has_parent;
        let ss = l.sector_size;
        // Worst case: the payload and bitmap BAT pages and the block's
        // bitmap pages; committing first keeps each block's change in one entry.
        self.reserve_pages(3 + l.sectors_per_block().div_ceil(8 * PAGE))?;
        let entry = self.s.bat[idx as usize];
        match bat::state(entry) {
            bat::PAYLOAD_FULLY_PRESENT => {
                let off = self.block_offset(idx, bs)?;
                self.write_data(data, off + in_off)
            }
            bat::PAYLOAD_PARTIALLY_PRESENT if diff => {
                let off = self.block_offset(idx, bs)?;
                self.load_bitmap(block / l.chunk_ratio, false)?;
                self.write_data(data, off + in_off)?;
                let (first, last) = (in_off / ss, (in_off + data.len() as u64) / ss);
                self.set_bits(block, first, last, true);
                if self.bits_state(block, 0, block_len / ss).0 {
                    self.set_entry(idx, bat::entry(bat::PAYLOAD_FULLY_PRESENT, off));
                }
                Ok(())
            }
            bat::PAYLOAD_NOT_PRESENT if diff => {
                let off = self.allocate(bs);
                self.write_data(data, off + in_off)?;
                if in_off == 0 && data.len() as u64 == block_len {
                    self.set_entry(idx, bat::entry(bat::PAYLOAD_FULLY_PRESENT, off));
                    return Ok(());
                }
                // The rest of the block still comes from the parent.
                self.load_bitmap(block / l.chunk_ratio, true)?;
                let sectors = block_len / ss;
                if !self.bits_state(block, 0, sectors).1 {
                    // Bits left by an earlier, discarded allocation.
                    self.set_bits(block, 0, sectors, false);
                }
                let (first, last) = (in_off / ss, (in_off + data.len() as u64) / ss);
                self.set_bits(block, first, last, true);
                self.set_entry(idx, bat::entry(bat::PAYLOAD_PARTIALLY_PRESENT, off));
                Ok(())
            }
            bat::PAYLOAD_NOT_PRESENT
            | bat::PAYLOAD_UNDEFINED
            | bat::PAYLOAD_ZERO
            | bat::PAYLOAD_UNMAPPED => {
                if is_zero(data) {
                    // The block reads as zeros already.
                    return Ok(());
                }
                // A fresh block past the end of the file reads as zeros
                // where `data` does not cover it.
                let off = self.allocate(bs);
                self.write_data(data, off + in_off)?;
                self.set_entry(idx, bat::entry(bat::PAYLOAD_FULLY_PRESENT, off));
                Ok(())
            }
            st => Err(self
                .s
                .corrupt_entry(idx, format!("payload block {block} has invalid state {st}"))),
        }
    }

    /// Deallocate the whole blocks inside `[offset, offset + len)`.
    pub(super) fn discard_impl(&mut self, offset: u64, len: u64) -> Result<u64> {
        let size = self.virtual_size_();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= size)
            .ok_or_else(|| crate::disk::out_of_range(size, offset, len))?;
        self.ensure_writable()?;
        if self.s.metadata.leave_block_allocated || len == 0 {
            // Fixed disks keep their blocks.
            return Ok(0);
        }
        let l = self.s.layout;
        let bs = l.block_size;
        let first = offset.div_ceil(bs);
        // The last block is whole when the range reaches the disk's end.
        let last = if end == size { l.data_blocks } else { end / bs };
        if first >= last {
            return Ok(0);
        }
        self.begin_session()?;
        let diff = self.s.metadata.has_parent;
        // Differencing disks must not fall through to the parent.
        let target = if diff {
            bat::PAYLOAD_ZERO
        } else {
            bat::PAYLOAD_UNMAPPED
        };
        let mut discarded = 0;
        for block in first..last {
            let idx = l.payload_index(block);
            let st = bat::state(self.s.bat[idx as usize]);
            let zeros_already = match st {
                bat::PAYLOAD_ZERO | bat::PAYLOAD_UNMAPPED | bat::PAYLOAD_UNDEFINED => true,
                bat::PAYLOAD_NOT_PRESENT => !diff,
                _ => false,
            };
            if !zeros_already {
                self.reserve_pages(3 + l.sectors_per_block().div_ceil(8 * PAGE))?;
                if st == bat::PAYLOAD_PARTIALLY_PRESENT {
                    // No stale bits for readers that look at them anyway.
                    self.load_bitmap(block / l.chunk_ratio, false)?;
                    let sectors = bs.min(size - block * bs) / l.sector_size;
                    self.set_bits(block, 0, sectors, false);
                }
                self.set_entry(idx, bat::entry(target, 0));
            }
            discarded += bs.min(size - block * bs);
        }
        Ok(discarded)
    }

    /// The changed pages as log updates, in file order.
    fn dirty_ops(&self) -> Result<Vec<Op>> {
        let s = self.session.as_ref().expect("a write session is open");
        let total = self.s.layout.total_entries;
        let mut ops = Vec::with_capacity(s.dirty_pages() as usize);
        for &p in &s.dirty_bat {
            let off = self.s.bat_region.file_offset + p * PAGE;
            let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
            let first = p * ENTRIES_PER_PAGE;
            if first + ENTRIES_PER_PAGE > total {
                // Keep whatever follows the last entry.
                self.storage
                    .read_at_or_zero(&mut page, off)
                    .map_err(io_err("VHDX BAT", off))?;
            }
            for (i, e) in page.chunks_exact_mut(8).enumerate() {
                if let Some(v) = self.s.bat.get((first + i as u64) as usize) {
                    e.copy_from_slice(&v.to_le_bytes());
                }
            }
            ops.push(Op::Data {
                offset: off,
                sector: page,
            });
        }
        for &(chunk, p) in &s.dirty_bitmaps {
            let idx = self.s.layout.bitmap_index(chunk);
            let base = bat::file_offset(self.s.bat[idx as usize]);
            let bm = &self.bitmaps[&chunk];
            ops.push(Op::Data {
                offset: base + p * PAGE,
                sector: bm[(p * PAGE) as usize..((p + 1) * PAGE) as usize].into(),
            });
        }
        ops.sort_by_key(|o| match o {
            Op::Data { offset, .. } | Op::Zero { offset, .. } => *offset,
        });
        Ok(ops)
    }

    /// Write the changed pages through the log: data durable, entry
    /// written and durable, pages applied.
    pub(super) fn commit(&mut self) -> Result<()> {
        self.commit_with(Vec::new())
    }

    /// [`Self::commit`] with `extra` pages (metadata, region tables) in
    /// the same log entry, so that they change with the BAT atomically.
    pub(super) fn commit_with(&mut self, extra: Vec<Op>) -> Result<()> {
        let Some(s) = &self.session else {
            return Ok(());
        };
        if s.dirty_pages() == 0 && extra.is_empty() {
            return Ok(());
        }
        const S: &str = "VHDX file";
        let mut ops = self.dirty_ops()?;
        ops.extend(extra);
        ops.sort_by_key(|o| match o {
            Op::Data { offset, .. } | Op::Zero { offset, .. } => *offset,
        });
        let storage = &self.storage;
        let s = self.session.as_mut().expect("a write session is open");
        let len = storage.len().map_err(io_err(S, 0))?;
        if len < s.next_free {
            storage
                .set_len(s.next_free)
                .map_err(io_err(S, s.next_free))?;
        }
        // The blocks the entry points at, and the file size, are durable
        // before the entry; so are the pages of every earlier entry, which
        // is why each entry can be its own tail.
        storage.flush().map_err(io_err(S, 0))?;
        let durable = len.max(s.next_free);
        s.log.append(storage, &ops, durable, durable)?;
        storage.flush().map_err(io_err("VHDX log", 0))?;
        for op in &ops {
            if let Op::Data { offset, sector } = op {
                storage
                    .write_at(sector, *offset)
                    .map_err(io_err("VHDX metadata page", *offset))?;
            }
        }
        s.dirty_bat.clear();
        s.dirty_bitmaps.clear();
        Ok(())
    }

    /// Commit, or just flush when nothing changed but data.
    pub(super) fn flush_impl(&mut self) -> Result<()> {
        if self.session.as_ref().is_some_and(|s| s.dirty_pages() > 0) {
            return self.commit();
        }
        self.storage.flush().map_err(io_err("VHDX file", 0))
    }

    /// End the session: commit, make the applied pages durable, clear the
    /// LogGuid so that nothing is left to replay.
    pub(super) fn close_session(&mut self) -> Result<()> {
        if self.session.is_none() {
            return Ok(());
        }
        self.commit()?;
        self.storage.flush().map_err(io_err("VHDX file", 0))?;
        let mut h = self.s.header().clone();
        h.set_log_guid(Uuid::nil());
        let slots = header::update(&self.storage, &self.s.slots, self.s.current, &h)?;
        self.s.current = header::current(&slots)?;
        self.s.slots = slots;
        self.session = None;
        Ok(())
    }
}
