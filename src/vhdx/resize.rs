//! Changing the virtual size of a fixed or dynamic VHDX in place.
//!
//! The virtual disk size metadata item, the BAT entries that come into
//! use and, when the BAT region must grow, the region table (both copies)
//! change in one log entry ([MS-VHDX] 2.3), so a crash replays all of them
//! or none. Everything that entry points at is written and made durable
//! before it, where nothing refers to it yet:
//!
//! - the bytes of the old last block past the old size, zeroed;
//! - fixed disks: the new blocks, appended (the file grows with zeros);
//! - a BAT region too small for the new size: a new region after the end
//!   of the file holding the whole table; the old one becomes unused.
//!
//! Shrinking changes the size item alone: the entries past the new size
//! stay in the region, outside the table, and a later grow rewrites them.

use crate::error::{Error, ErrorKind, Result};
use crate::io::{Storage, io_err};

use super::VhdxDisk;
use super::bat::{self, Layout};
use super::log::{LOG_SECTOR, Op};
use super::metadata::{MAX_VIRTUAL_SIZE, VIRTUAL_DISK_SIZE};
use super::region_table::{BAT_GUID, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, RegionTable};
use super::write::align_mib;

/// Size of the pages the log carries.
const PAGE: u64 = LOG_SECTOR;

impl VhdxDisk {
    /// Set the virtual size to `new_size` (a multiple of the logical sector
    /// size). The caller has decided that whatever a shrink cuts off may
    /// go; it closes the disk afterwards.
    pub fn resize(&mut self, new_size: u64) -> Result<()> {
        if self.is_differencing() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "resizing a differencing VHDX is not supported yet",
            ));
        }
        let sector = u64::from(self.s.metadata.logical_sector_size);
        if new_size == 0 || !new_size.is_multiple_of(sector) || new_size > MAX_VIRTUAL_SIZE {
            return Err(Error::invalid_argument(format!(
                "a VHDX's size must be a non-zero multiple of its {sector}-byte logical sector of at most {MAX_VIRTUAL_SIZE} bytes, not {new_size}"
            )));
        }
        let old = self.s.metadata.virtual_size;
        if new_size == old {
            return Ok(());
        }
        self.begin_session()?;
        // A fixed disk stores every block.
        let fixed = self.s.metadata.leave_block_allocated;
        let m = &self.s.metadata;
        let new_layout = Layout::new(new_size, m.block_size, m.logical_sector_size, false);
        let old_layout = self.s.layout;
        let mut extra = Vec::new();
        if new_size > old {
            let bs = old_layout.block_size;
            let tail = old % bs;
            let last = old_layout.payload_index(old_layout.data_blocks - 1);
            if tail != 0 && bat::state(self.s.bat[last as usize]) == bat::PAYLOAD_FULLY_PRESENT {
                let base = bat::file_offset(self.s.bat[last as usize]);
                let stop = bs.min(new_size - (old_layout.data_blocks - 1) * bs);
                let zeros = vec![0u8; (stop - tail) as usize];
                self.storage
                    .write_at(&zeros, base + tail)
                    .map_err(io_err("VHDX block", base + tail))?;
            }
            let new_total = new_layout.total_entries;
            let need = new_total * bat::ENTRY_SIZE;
            let relocate = need > u64::from(self.s.bat_region.length);
            self.s.bat.resize(new_total as usize, 0);
            self.s.layout = new_layout;
            // Entries past the old table: whatever a shrink left there goes.
            let mut values: Vec<(u64, u64)> = (old_layout.total_entries..new_total)
                .map(|i| (i, 0))
                .collect();
            if fixed {
                for b in old_layout.data_blocks..new_layout.data_blocks {
                    let off = self.allocate(bs);
                    let i = new_layout.payload_index(b);
                    values.retain(|&(j, _)| j != i);
                    values.push((i, bat::entry(bat::PAYLOAD_FULLY_PRESENT, off)));
                }
            }
            if relocate {
                for (i, v) in values {
                    self.s.bat[i as usize] = v;
                }
                extra.extend(self.move_bat(need)?);
            } else {
                for (i, v) in values {
                    self.reserve_pages(1)?;
                    self.set_entry(i, v);
                }
            }
        } else {
            self.s.layout = new_layout;
            self.s.bat.truncate(new_layout.total_entries as usize);
        }
        extra.push(self.size_page(new_size)?);
        self.commit_with(extra)?;
        self.s.metadata.virtual_size = new_size;
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

    /// Write the whole BAT to a new region of `need` bytes (rounded up to a
    /// MiB) after the end of the file; returns the log pages that point
    /// both region tables at it.
    fn move_bat(&mut self, need: u64) -> Result<Vec<Op>> {
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
        let mut entries = self.s.region_table.entries.clone();
        let region = entries
            .iter_mut()
            .find(|e| e.guid() == BAT_GUID)
            .expect("the BAT region was validated at open");
        region.file_offset = at;
        region.length = length;
        let region = *region;
        let table = RegionTable::encode(&entries);
        let mut ops = Vec::new();
        for off in REGION_TABLE_OFFSETS {
            let mut old = vec![0u8; REGION_TABLE_SIZE];
            self.storage
                .read_at(&mut old, off)
                .map_err(io_err("VHDX region table", off))?;
            for (i, (new, was)) in table
                .chunks(PAGE as usize)
                .zip(old.chunks(PAGE as usize))
                .enumerate()
            {
                if new != was {
                    ops.push(Op::Data {
                        offset: off + i as u64 * PAGE,
                        sector: new.into(),
                    });
                }
            }
        }
        self.s.bat_region = region;
        self.s.region_table.entries = entries;
        Ok(ops)
    }
}
