//! Changing the virtual size of a VHDX in place (fixed, dynamic or
//! differencing).
//!
//! The virtual disk size metadata item and the BAT entries that come into
//! use change in one log entry ([MS-VHDX] 2.3), so a crash replays all of
//! them or none. Everything that entry points at is written and made
//! durable before it, where nothing refers to it yet:
//!
//! - the bytes of the old last block past the old size, zeroed;
//! - fixed disks: the new blocks, appended (the file grows with zeros);
//! - differencing disks: a sector bitmap block (all clear) for every new
//!   chunk, as [`super::create`] gives every chunk one.
//!
//! A BAT region too small for the new size is moved first, on its own: the
//! whole table is copied to a new, larger region after the end of the
//! file, then the region table is switched to it copy by copy (the log
//! may not write the header area). Only the table's first sector changes,
//! so each copy changes in one atomic sector write, and both copies are
//! valid at every point: the first is the one in use. A resize finding the
//! second copy behind (a crash between the two) brings it up to date.
//!
//! A shrink changes the size item first, alone; then the entries of the
//! blocks wholly past the new size (now outside the disk, whatever a
//! crash leaves of them) are unlinked through the log, the session is
//! closed (nothing left to replay), and only then is the file cut after
//! the last block and region still in use: a crash before the cut leaves
//! leaked space at the end, which a new resize (to any size, the same one
//! included) gives back.
//!
//! A differencing disk reads its parent where it stores nothing: the
//! caller makes sure a grow does not show parent data in the range that
//! comes into use (its parent ends at or before the old size).

use crate::error::{Error, Result};
use crate::io::{Storage, io_err};

use super::VhdxDisk;
use super::bat::{self, Layout};
use super::log::{LOG_SECTOR, Op};
use super::metadata::{MAX_VIRTUAL_SIZE, VIRTUAL_DISK_SIZE};
use super::region_table::{BAT_GUID, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, RegionTable};
use super::write::align_mib;

/// Size of the pages the log carries.
const PAGE: u64 = LOG_SECTOR;
/// The device's atomic unit: a region table copy changes one sector at a
/// time.
const SECTOR: usize = 512;

impl VhdxDisk {
    /// Set the virtual size to `new_size` (a multiple of the logical sector
    /// size). The caller has decided that whatever a shrink cuts off may
    /// go; it closes the disk afterwards.
    pub fn resize(&mut self, new_size: u64) -> Result<()> {
        let sector = u64::from(self.s.metadata.logical_sector_size);
        if new_size == 0 || !new_size.is_multiple_of(sector) || new_size > MAX_VIRTUAL_SIZE {
            return Err(Error::invalid_argument(format!(
                "a VHDX's size must be a non-zero multiple of its {sector}-byte logical sector of at most {MAX_VIRTUAL_SIZE} bytes, not {new_size}"
            )));
        }
        let old = self.s.metadata.virtual_size;
        if new_size == old {
            // A shrink cut short is completed.
            let total = self.s.layout.total_entries;
            return self.finish_shrink(total..total);
        }
        self.begin_session()?;
        self.sync_region_tables()?;
        // A fixed disk stores every block.
        let fixed = self.s.metadata.leave_block_allocated;
        let m = &self.s.metadata;
        let new_layout = Layout::new(new_size, m.block_size, m.logical_sector_size, m.has_parent);
        let old_layout = self.s.layout;
        if new_size > old {
            let bs = old_layout.block_size;
            let tail = old % bs;
            let last = old_layout.payload_index(old_layout.data_blocks - 1);
            let stored = matches!(
                bat::state(self.s.bat[last as usize]),
                bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT
            );
            // A partially present block's sectors past the old size read
            // the parent (which ends before them) or these zeros.
            if tail != 0 && stored {
                let base = bat::file_offset(self.s.bat[last as usize]);
                let stop = bs.min(new_size - (old_layout.data_blocks - 1) * bs);
                let zeros = vec![0u8; (stop - tail) as usize];
                self.storage
                    .write_at(&zeros, base + tail)
                    .map_err(io_err("VHDX block", base + tail))?;
            }
            let new_total = new_layout.total_entries;
            let need = new_total * bat::ENTRY_SIZE;
            if need > u64::from(self.s.bat_region.length) {
                self.move_bat(need)?;
            }
            self.s.bat.resize(new_total as usize, 0);
            self.s.layout = new_layout;
            // Entries past the old table, and the payload entries of a
            // differencing disk's last chunk past the old last block:
            // whatever a shrink left there goes.
            let mut values: Vec<(u64, u64)> = (old_layout.data_blocks..new_layout.data_blocks)
                .map(|b| new_layout.payload_index(b))
                .filter(|&i| i < old_layout.total_entries && self.s.bat[i as usize] != 0)
                .chain(old_layout.total_entries..new_total)
                .map(|i| (i, 0))
                .collect();
            if self.s.metadata.has_parent {
                // The old last chunk too: its new blocks are not present.
                for c in old_layout.bitmap_blocks - 1..new_layout.bitmap_blocks {
                    let i = new_layout.bitmap_index(c);
                    if i < old_layout.total_entries
                        && bat::state(self.s.bat[i as usize]) == bat::BITMAP_PRESENT
                    {
                        continue;
                    }
                    let off = self.allocate(bat::BITMAP_BLOCK_SIZE);
                    values.retain(|&(j, _)| j != i);
                    values.push((i, bat::entry(bat::BITMAP_PRESENT, off)));
                }
            }
            if fixed {
                for b in old_layout.data_blocks..new_layout.data_blocks {
                    let off = self.allocate(bs);
                    let i = new_layout.payload_index(b);
                    values.retain(|&(j, _)| j != i);
                    values.push((i, bat::entry(bat::PAYLOAD_FULLY_PRESENT, off)));
                }
            }
            for (i, v) in values {
                self.reserve_pages(1)?;
                self.set_entry(i, v);
            }
            let size = self.size_page(new_size)?;
            self.commit_with(vec![size])?;
            self.s.metadata.virtual_size = new_size;
            return Ok(());
        }
        // The BAT keeps its old length until the entries past the new
        // table are unlinked: the log pages carry them.
        self.s.layout = new_layout;
        let size = self.size_page(new_size)?;
        self.commit_with(vec![size])?;
        self.s.metadata.virtual_size = new_size;
        self.finish_shrink(new_layout.total_entries..old_layout.total_entries)
    }

    /// Unlink the blocks past the end of the disk (the entries of payload
    /// blocks past the last one that lie in the table, and `beyond`, past
    /// the table but still in memory), drop `beyond` from memory, and cut
    /// the file ([`Self::trim`]). The size is already the new one: the
    /// entries changed are outside the disk, so any crash leaves it as it
    /// is.
    fn finish_shrink(&mut self, beyond: std::ops::Range<u64>) -> Result<()> {
        let l = self.s.layout;
        let stale: Vec<u64> = (l.data_blocks..)
            .map(|b| l.payload_index(b))
            .take_while(|&i| i < l.total_entries)
            .chain(beyond)
            .filter(|&i| self.s.bat[i as usize] != 0)
            .collect();
        if !stale.is_empty() {
            self.begin_session()?;
            for i in stale {
                self.reserve_pages(1)?;
                self.set_entry(i, 0);
            }
            self.commit()?;
        }
        self.s.bat.truncate(l.total_entries as usize);
        self.trim()
    }

    /// Close the session (nothing left in the log to replay), then cut the
    /// file after the last region and block still in use, when space is
    /// left past them.
    fn trim(&mut self) -> Result<()> {
        const S: &str = "VHDX file";
        self.close_session()?;
        let l = self.s.layout;
        let mut end = self
            .s
            .reserved_ranges()
            .into_iter()
            .map(|(_, e, _)| e)
            .max()
            .unwrap_or(0);
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
        let end = align_mib(end);
        let len = self.storage.len().map_err(io_err(S, 0))?;
        if end < len {
            self.storage.set_len(end).map_err(io_err(S, end))?;
            self.storage.flush().map_err(io_err(S, 0))?;
            self.s.file_len = end;
        }
        Ok(())
    }

    /// The log page that records `size` in the virtual disk size item.
    fn size_page(&self, size: u64) -> Result<Op> {
        let at = self.s.metadata.item_file_offset(VIRTUAL_DISK_SIZE);
        if at == self.s.metadata.region_offset {
            return Err(Error::corrupt(
                "VHDX metadata",
                at,
                "the virtual disk size item is missing",
            ));
        }
        let page_at = at / PAGE * PAGE;
        let mut page = vec![0u8; PAGE as usize];
        self.storage
            .read_at(&mut page, page_at)
            .map_err(io_err("VHDX metadata", page_at))?;
        let i = (at - page_at) as usize;
        page[i..i + 8].copy_from_slice(&size.to_le_bytes());
        Ok(Op::Data {
            offset: page_at,
            sector: page.into(),
        })
    }

    /// Copy the BAT to a new region of `need` bytes (rounded up to a MiB)
    /// after the end of the file, then point the region table at it.
    fn move_bat(&mut self, need: u64) -> Result<()> {
        let len = align_mib(need);
        let length = u32::try_from(len).map_err(|_| {
            Error::invalid_argument(format!(
                "a BAT of {need} bytes does not fit in a VHDX region"
            ))
        })?;
        let at = self.allocate(len);
        let mut raw: Vec<u8> = self.s.bat.iter().flat_map(|e| e.to_le_bytes()).collect();
        raw.resize(len as usize, 0);
        self.storage
            .write_at(&raw, at)
            .map_err(io_err("VHDX BAT", at))?;
        self.storage.flush().map_err(io_err("VHDX file", 0))?;
        let mut entries = self.s.region_table.entries.clone();
        let region = entries
            .iter_mut()
            .find(|e| e.guid() == BAT_GUID)
            .expect("the BAT region was validated at open");
        region.file_offset = at;
        region.length = length;
        let region = *region;
        let table = RegionTable::encode(&entries);
        for off in REGION_TABLE_OFFSETS {
            self.write_changed(&table, off)?;
        }
        self.s.bat_region = region;
        self.s.region_table.entries = entries;
        Ok(())
    }

    /// Write the sectors of `table` that differ from the region table copy
    /// at `off`, then flush.
    fn write_changed(&self, table: &[u8], off: u64) -> Result<()> {
        const S: &str = "VHDX region table";
        let mut old = vec![0u8; REGION_TABLE_SIZE];
        self.storage
            .read_at(&mut old, off)
            .map_err(io_err(S, off))?;
        for (i, (new, was)) in table.chunks(SECTOR).zip(old.chunks(SECTOR)).enumerate() {
            if new != was {
                let at = off + (i * SECTOR) as u64;
                self.storage.write_at(new, at).map_err(io_err(S, at))?;
            }
        }
        self.storage.flush().map_err(io_err(S, off))
    }

    /// When the first region table copy is in use and the second differs
    /// from it (a BAT move cut short between the two), bring the second
    /// up to date.
    fn sync_region_tables(&self) -> Result<()> {
        if self.s.region_table_used != 0 {
            return Ok(());
        }
        let mut first = vec![0u8; REGION_TABLE_SIZE];
        let at = REGION_TABLE_OFFSETS[0];
        self.storage
            .read_at(&mut first, at)
            .map_err(io_err("VHDX region table", at))?;
        self.write_changed(&first, REGION_TABLE_OFFSETS[1])
    }
}
