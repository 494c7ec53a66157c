//! Changing the virtual size of a fixed, dynamic or differencing VHD in
//! place.
//!
//! Every step leaves a file that opens as the old size or the new one,
//! with the data inside that size intact; each step is made durable before
//! the next one depends on it. The footer (and for dynamic disks its copy
//! at offset 0) records the size, so it is written last when growing:
//!
//! - fixed grow: a copy of the old footer at the new end (the gap before
//!   it is unused space until then), the gap zeroed, the new footer;
//! - dynamic (and differencing) grow: the block allocation table (BAT) grown in place when
//!   the sectors after it are free or hold only blocks (copied to the end
//!   of the file, the footer moved past them first, then their entries
//!   switched) or the footer (copied past the new table's end first),
//!   otherwise written anew after the last
//!   block (the file's footer moved first, as when a block is appended),
//!   then the dynamic header's first sector (table offset, max table
//!   entries and checksum all lie in it, so it changes atomically), the
//!   entries and block tail that become visible cleared, then the footer
//!   at the end and its copy;
//! - shrink: the footers first, then (dynamic) the entries past the new
//!   size unlinked and the file cut after the last block still in use
//!   (the footer moved down first), or (fixed) the file cut after the
//!   footer. A resize to the same size cuts what a crash left uncut.
//!
//! Between the end footer and its copy a crash leaves the copy at offset 0
//! differing from the footer at the end; the end footer is the one in use,
//! and running the resize again (or `check --repair`) rewrites the copy.
//! A fixed shrink writes the new footer over the first sector cut off
//! before the file is truncated: a crash between the two leaves that
//! sector (past the new end, in the range being cut) overwritten.

use crate::error::{Error, ErrorKind, Hint, Result};
use crate::fixed::FixedStruct;
use crate::io::{Storage, io_err, read_struct};

use super::bat::{self, UNUSED};
use super::dynamic_header::{DynamicHeader, HEADER_SIZE};
use super::footer::{FOOTER_COOKIE, FOOTER_SIZE, Footer, VhdType};
use super::geometry::{Geometry, SECTOR};
use super::{MAX_VIRTUAL_SIZE, read_footer_at};

/// Zeroing works in pieces of this size.
const ZERO_CHUNK: u64 = 1 << 20;

/// Whether a VHD in `storage` can be resized by [`resize`]: its footer at
/// the end of the file is whole and of a known type.
pub fn supported(storage: &dyn Storage) -> Result<()> {
    let (footer, at) = end_footer(storage)?;
    footer.validate(at).map(|_| ())
}

/// Set the virtual size of the VHD in `storage` to `new_size` (a multiple
/// of 512, at most [`MAX_VIRTUAL_SIZE`]). The caller has decided that
/// whatever a shrink cuts off may go.
pub fn resize(storage: &dyn Storage, new_size: u64) -> Result<()> {
    if !new_size.is_multiple_of(SECTOR) || new_size == 0 || new_size > MAX_VIRTUAL_SIZE {
        return Err(Error::invalid_argument(format!(
            "a VHD's size must be a non-zero multiple of 512 of at most {MAX_VIRTUAL_SIZE} bytes, not {new_size}"
        )));
    }
    let (footer, at) = end_footer(storage)?;
    match footer.validate(at)? {
        VhdType::Fixed => resize_fixed(storage, footer, at, new_size),
        // A differencing disk's layout is a dynamic one's; the caller
        // makes sure a grow shows no parent data.
        VhdType::Dynamic | VhdType::Differencing => {
            Dynamic::load(storage, footer, at)?.resize(storage, new_size)
        }
    }
}

/// The footer at the end of the file, which must be whole and valid: a
/// damaged image is repaired (`check --repair`) before it is resized.
fn end_footer(storage: &dyn Storage) -> Result<(Footer, u64)> {
    let len = storage.len().map_err(io_err("VHD file", 0))?;
    let at = len.checked_sub(FOOTER_SIZE as u64).ok_or_else(|| {
        Error::corrupt(
            "VHD footer",
            0,
            format!("file of {len} bytes is too small to hold a 512-byte footer"),
        )
    })?;
    let f = read_footer_at(storage, at, FOOTER_SIZE)?;
    if f.cookie != FOOTER_COOKIE || !f.checksum_ok() {
        return Err(Error::new(
            ErrorKind::NeedsRepair,
            "the footer at the end of the file is missing or damaged",
        )
        .at("VHD footer", at)
        .with_hint(Hint::Repair));
    }
    Ok((f, at))
}

/// `footer` with the size and geometry of a new disk of `size` bytes.
/// The original size follows too: libvhdi reads the disk's size from it.
fn sized(footer: &Footer, size: u64) -> Footer {
    let mut f = footer.clone();
    let g = Geometry::to_store(size);
    f.current_size = size;
    f.original_size = size;
    f.cylinders = g.cylinders;
    f.heads = g.heads;
    f.sectors_per_track = g.sectors_per_track;
    f.checksum = f.compute_checksum();
    f
}

fn write(storage: &dyn Storage, what: &'static str, buf: &[u8], at: u64) -> Result<()> {
    storage.write_at(buf, at).map_err(io_err(what, at))
}

fn flush(storage: &dyn Storage) -> Result<()> {
    storage.flush().map_err(io_err("VHD file", 0))
}

/// Make `[start, end)` of the file read as zeros, writing only the pieces
/// that do not already (a hole or zeros costs a read, not a write).
fn zero_range(storage: &dyn Storage, what: &'static str, start: u64, end: u64) -> Result<()> {
    let runs = storage
        .data_runs(start, end.saturating_sub(start))
        .map_err(io_err(what, start))?
        .unwrap_or_else(|| vec![(start, end.saturating_sub(start))]);
    let mut buf = vec![0u8; ZERO_CHUNK as usize];
    for (run, len) in runs {
        let (mut pos, stop) = (run.max(start), (run + len).min(end));
        while pos < stop {
            let n = (stop - pos).min(ZERO_CHUNK) as usize;
            storage
                .read_at_or_zero(&mut buf[..n], pos)
                .map_err(io_err(what, pos))?;
            if buf[..n].iter().any(|&b| b != 0) {
                buf[..n].fill(0);
                write(storage, what, &buf[..n], pos)?;
            }
            pos += n as u64;
        }
    }
    Ok(())
}

fn resize_fixed(storage: &dyn Storage, footer: Footer, at: u64, new_size: u64) -> Result<()> {
    let old = footer.current_size;
    if new_size < old {
        write(
            storage,
            "VHD footer",
            &sized(&footer, new_size).to_bytes(),
            new_size,
        )?;
        flush(storage)?;
        let len = new_size + FOOTER_SIZE as u64;
        storage.set_len(len).map_err(io_err("VHD file", len))?;
        return flush(storage);
    }
    if at == new_size && footer.current_size == new_size {
        return Ok(());
    }
    if at != new_size {
        // The old footer at the new end: the disk still reads as the old
        // size, the bytes before the new end are unused space.
        write(storage, "VHD footer", &footer.to_bytes(), new_size)?;
        flush(storage)?;
        if at > new_size {
            let len = new_size + FOOTER_SIZE as u64;
            storage.set_len(len).map_err(io_err("VHD file", len))?;
            flush(storage)?;
        }
    }
    // The old footer and any leftovers between the data and the new end.
    zero_range(storage, "VHD data", old, new_size)?;
    flush(storage)?;
    write(
        storage,
        "VHD footer",
        &sized(&footer, new_size).to_bytes(),
        new_size,
    )?;
    flush(storage)
}

/// A dynamic VHD's layout, as resize needs it.
struct Dynamic {
    footer: Footer,
    footer_at: u64,
    copy: Footer,
    header: DynamicHeader,
    header_at: u64,
    bat: Vec<u32>,
    block_size: u64,
    bitmap_size: u64,
}

impl Dynamic {
    fn load(storage: &dyn Storage, footer: Footer, footer_at: u64) -> Result<Dynamic> {
        let len = footer_at + FOOTER_SIZE as u64;
        let copy = read_footer_at(storage, 0, FOOTER_SIZE)?;
        let header_at = footer.data_offset;
        if header_at
            .checked_add(HEADER_SIZE as u64)
            .is_none_or(|e| e > footer_at)
        {
            return Err(Error::corrupt(
                "VHD footer",
                footer_at + 16,
                format!("dynamic header offset {header_at:#x} lies outside the {len:#x}-byte file"),
            ));
        }
        let mut b = [0u8; HEADER_SIZE];
        read_struct(storage, "VHD dynamic header", &mut b, header_at)?;
        let header = DynamicHeader::parse(&b, header_at)?;
        header.validate(header_at, footer.current_size, len)?;
        if !header.checksum_ok() {
            return Err(Error::new(
                ErrorKind::NeedsRepair,
                "the dynamic header's checksum is wrong",
            )
            .at("VHD dynamic header", header_at + 36)
            .with_hint(Hint::Repair));
        }
        let bat = bat::load(storage, header.table_offset, header.max_table_entries)?;
        let block_size = u64::from(header.block_size);
        let bitmap_size = (block_size / SECTOR).div_ceil(8).div_ceil(SECTOR) * SECTOR;
        Ok(Dynamic {
            footer,
            footer_at,
            copy,
            header,
            header_at,
            bat,
            block_size,
            bitmap_size,
        })
    }

    fn block_span(&self) -> u64 {
        self.bitmap_size + self.block_size
    }

    /// Where the next thing appended to the file goes: after the footer's
    /// offset and every block.
    fn next_free(&self) -> u64 {
        self.bat
            .iter()
            .filter(|&&e| e != UNUSED)
            .map(|&e| u64::from(e) * SECTOR + self.block_span())
            .fold(self.footer_at.div_ceil(SECTOR) * SECTOR, u64::max)
    }

    /// Whether `[start, end)` of the file is used by anything but the BAT.
    fn used(&self, start: u64, end: u64) -> bool {
        let hit = |s: u64, e: u64| s < end && start < e;
        let blocks = self.bat.iter().filter(|&&e| e != UNUSED).any(|&e| {
            hit(
                u64::from(e) * SECTOR,
                u64::from(e) * SECTOR + self.block_span(),
            )
        });
        let locators = self
            .header
            .parent_locators
            .iter()
            .filter(|l| l.is_used())
            .any(|l| {
                hit(
                    l.platform_data_offset,
                    l.platform_data_offset + u64::from(l.platform_data_space),
                )
            });
        blocks
            || locators
            || hit(0, FOOTER_SIZE as u64)
            || hit(self.header_at, self.header_at + HEADER_SIZE as u64)
            || end > self.footer_at
    }

    fn resize(mut self, storage: &dyn Storage, new_size: u64) -> Result<()> {
        let old = self.footer.current_size;
        let bs = self.block_size;
        let old_n = old.div_ceil(bs) as usize;
        let new_n = new_size.div_ceil(bs) as usize;
        let entries = u32::try_from(new_n).ok().filter(|&n| n != UNUSED);
        let Some(entries) = entries else {
            return Err(Error::invalid_argument(format!(
                "{new_size} bytes need {new_n} blocks of {bs} bytes, more than a VHD table holds"
            )));
        };
        if new_size > old {
            if entries > self.header.max_table_entries {
                self.grow_table(storage, entries)?;
            }
            // Entries past the old size become visible: any block they
            // still link (left by a shrink or another tool) is unlinked,
            // and the old last block's bytes past the old size zeroed.
            let stale = (old_n..new_n).filter(|&i| self.bat[i] != UNUSED);
            if stale.clone().next().is_some() {
                let first = stale.clone().min().unwrap_or(old_n);
                let last = stale.max().unwrap_or(old_n) + 1;
                self.unlink(storage, first, last)?;
            }
            let tail = old % bs;
            if tail != 0 && self.bat[old_n - 1] != UNUSED {
                let base = u64::from(self.bat[old_n - 1]) * SECTOR + self.bitmap_size;
                let stop = bs.min(new_size - (old_n as u64 - 1) * bs);
                zero_range(storage, "VHD block", base + tail, base + stop)?;
                flush(storage)?;
            }
        }
        let footer = sized(&self.footer, new_size);
        if footer != self.footer {
            write(storage, "VHD footer", &footer.to_bytes(), self.footer_at)?;
            flush(storage)?;
        }
        if footer != self.copy {
            write(storage, "VHD footer copy", &footer.to_bytes(), 0)?;
            flush(storage)?;
        }
        if new_size <= old {
            // Entries past the new size, wherever they are: a crash may
            // have left them linked after the footers changed.
            let stale = (new_n..self.bat.len()).filter(|&i| self.bat[i] != UNUSED);
            if let (Some(first), Some(last)) = (stale.clone().min(), stale.max()) {
                self.unlink(storage, first, last + 1)?;
            }
            // Blocks unlinked at the end of the file are given back: the
            // footer moves down over them (unused space until the file is
            // cut), then the file is cut after it. A shrink cut short
            // before that is completed by a resize to the same size.
            let end = self.used_end();
            if end < self.footer_at {
                write(storage, "VHD footer", &footer.to_bytes(), end)?;
                flush(storage)?;
                let len = end + FOOTER_SIZE as u64;
                storage.set_len(len).map_err(io_err("VHD file", len))?;
                flush(storage)?;
            }
        }
        Ok(())
    }

    /// The end of the last structure in the file before the footer.
    fn used_end(&self) -> u64 {
        let blocks = self
            .bat
            .iter()
            .filter(|&&e| e != UNUSED)
            .map(|&e| u64::from(e) * SECTOR + self.block_span());
        let locators = self
            .header
            .parent_locators
            .iter()
            .filter(|l| l.is_used())
            .map(|l| l.platform_data_offset + u64::from(l.platform_data_space));
        blocks
            .chain(locators)
            .chain([
                FOOTER_SIZE as u64,
                self.header_at + HEADER_SIZE as u64,
                self.header.table_offset + bat::table_bytes(self.header.max_table_entries),
            ])
            .max()
            .unwrap_or(0)
            .div_ceil(SECTOR)
            * SECTOR
    }

    /// Mark entries `[first, last)` unused (their blocks become leaked space).
    fn unlink(&mut self, storage: &dyn Storage, first: usize, last: usize) -> Result<()> {
        let at = bat::entry_offset(self.header.table_offset, first);
        let raw: Vec<u8> = UNUSED.to_be_bytes().repeat(last - first);
        write(storage, "VHD block allocation table", &raw, at)?;
        flush(storage)?;
        self.bat[first..last].fill(UNUSED);
        Ok(())
    }

    /// Whether `[start, end)` holds a structure other than a block or the
    /// BAT: the footer copy, the header, a parent locator's data.
    fn used_by_structures(&self, start: u64, end: u64) -> bool {
        let hit = |s: u64, e: u64| s < end && start < e;
        self.header
            .parent_locators
            .iter()
            .filter(|l| l.is_used())
            .any(|l| {
                hit(
                    l.platform_data_offset,
                    l.platform_data_offset + u64::from(l.platform_data_space),
                )
            })
            || hit(0, FOOTER_SIZE as u64)
            || hit(self.header_at, self.header_at + HEADER_SIZE as u64)
    }

    /// Move the blocks that lie in `[start, end)` (where the table grows)
    /// to the end of the file, past `end`: the footer first moves past
    /// their new place (as when a block is appended), the copies are made
    /// durable, then the table sectors pointing at them are rewritten and
    /// made durable. The space they leave is then free for the table, and
    /// no hole is left behind as when the table itself moves.
    fn move_blocks_out(&mut self, storage: &dyn Storage, start: u64, end: u64) -> Result<()> {
        let span = self.block_span();
        let hit = |e: u32| {
            let s = u64::from(e) * SECTOR;
            e != UNUSED && s < end && start < s + span
        };
        let mut moving: Vec<usize> = (0..self.bat.len()).filter(|&i| hit(self.bat[i])).collect();
        if moving.is_empty() {
            return Ok(());
        }
        moving.sort_unstable_by_key(|&i| self.bat[i]);
        let dest = self.next_free().max(end.div_ceil(SECTOR) * SECTOR);
        let footer_at = dest + moving.len() as u64 * span;
        write(storage, "VHD footer", &self.footer.to_bytes(), footer_at)?;
        flush(storage)?;
        self.footer_at = footer_at;
        let mut buf = vec![0u8; span as usize];
        let mut entries = Vec::with_capacity(moving.len());
        for (k, &i) in moving.iter().enumerate() {
            let from = u64::from(self.bat[i]) * SECTOR;
            let to = dest + k as u64 * span;
            storage
                .read_at_or_zero(&mut buf, from)
                .map_err(io_err("VHD block", from))?;
            write(storage, "VHD block", &buf, to)?;
            entries.push((i, (to / SECTOR) as u32));
        }
        flush(storage)?;
        let per_sector = (SECTOR / bat::ENTRY_SIZE) as usize;
        for &(i, e) in &entries {
            self.bat[i] = e;
        }
        let mut sectors: Vec<usize> = entries.iter().map(|&(i, _)| i / per_sector).collect();
        sectors.sort_unstable();
        sectors.dedup();
        for s in sectors {
            let first = s * per_sector;
            let at = bat::entry_offset(self.header.table_offset, first);
            let mut raw = vec![0u8; SECTOR as usize];
            storage
                .read_at_or_zero(&mut raw, at)
                .map_err(io_err("VHD block allocation table", at))?;
            for (k, e) in raw.chunks_exact_mut(4).enumerate() {
                if let Some(v) = self.bat.get(first + k) {
                    e.copy_from_slice(&v.to_be_bytes());
                }
            }
            write(storage, "VHD block allocation table", &raw, at)?;
        }
        flush(storage)
    }

    /// Give the BAT `entries` entries: in place when the sectors after it
    /// are free, hold only blocks (moved to the end first) or the footer
    /// (moved past the new table first), otherwise (a parent locator in
    /// the way) as a new table appended to the file.
    fn grow_table(&mut self, storage: &dyn Storage, entries: u32) -> Result<()> {
        let table = self.header.table_offset;
        let old_entries = self.header.max_table_entries;
        let old_end = table + bat::table_bytes(old_entries);
        let new_end = table + bat::table_bytes(entries);
        let unused = UNUSED.to_be_bytes();
        let added = (entries - old_entries) as usize;
        if self.used(old_end, new_end) && !self.used_by_structures(old_end, new_end) {
            self.move_blocks_out(storage, old_end, new_end)?;
        }
        // A table with nothing but the footer after it (a grow moved it
        // there, or the disk never had a block) grows over the footer: the
        // footer first moves past the new end, as when a block is appended.
        let at_end = new_end > self.footer_at
            && old_end <= self.footer_at
            && !self.used(old_end, self.footer_at);
        if at_end {
            write(storage, "VHD footer", &self.footer.to_bytes(), new_end)?;
            flush(storage)?;
            self.footer_at = new_end;
        }
        let new_table = if !self.used(old_end, new_end) {
            // The new entries and the old table's padding after its last
            // entry, up to the end of the new table's last sector.
            let at = bat::entry_offset(table, old_entries as usize);
            let raw = unused.repeat(((new_end - at) / bat::ENTRY_SIZE) as usize);
            write(storage, "VHD block allocation table", &raw, at)?;
            flush(storage)?;
            table
        } else {
            let at = self.next_free();
            let bytes = bat::table_bytes(entries);
            // The footer first moves past the new table, as when a block
            // is appended, so the file never ends in anything else.
            write(storage, "VHD footer", &self.footer.to_bytes(), at + bytes)?;
            flush(storage)?;
            self.footer_at = at + bytes;
            let mut raw: Vec<u8> = self.bat.iter().flat_map(|e| e.to_be_bytes()).collect();
            raw.resize(bytes as usize, 0);
            for e in raw[self.bat.len() * 4..].chunks_exact_mut(4) {
                e.copy_from_slice(&unused);
            }
            write(storage, "VHD block allocation table", &raw, at)?;
            flush(storage)?;
            at
        };
        let mut header = self.header.clone();
        header.table_offset = new_table;
        header.max_table_entries = entries;
        header.checksum = header.compute_checksum();
        // Only the first sector changes: one atomic write.
        let b = header.to_bytes();
        write(
            storage,
            "VHD dynamic header",
            &b[..SECTOR as usize],
            self.header_at,
        )?;
        flush(storage)?;
        self.header = header;
        self.bat.extend(std::iter::repeat_n(UNUSED, added));
        Ok(())
    }
}
