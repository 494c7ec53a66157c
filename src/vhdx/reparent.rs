//! Changing a VHDX's metadata items in place through the log: the parent
//! locator (`set-parent`) and the physical sector size (`set`).
//!
//! Every changed 4 KiB page of the metadata region goes into one log entry
//! ([MS-VHDX] 2.3): the header takes a new LogGuid (and FileWriteGuid),
//! the entry is written and flushed, the pages are written in place and
//! flushed, and the LogGuid is cleared. A crash before the entry is durable
//! leaves the old metadata; after it, the next open replays the entry and
//! finds the new. The DataWriteGuid stays: the virtual disk's content does
//! not change, so children of this image keep their link.

use uuid::Uuid;

use super::VhdxDisk;
use super::header;
use super::log::{LOG_SECTOR, LogWriter, Op};
use super::metadata::{self, PARENT_LOCATOR, PHYSICAL_SECTOR_SIZE};
use crate::error::{Error, ErrorKind, Result};
use crate::io::{Storage, io_err};

/// Size of the pages the log carries.
const PAGE: u64 = LOG_SECTOR;

impl VhdxDisk {
    /// The metadata region's bytes (table and values).
    fn metadata_region_bytes(&self) -> Result<Vec<u8>> {
        let r = &self.s.metadata_region;
        let mut b = vec![0u8; r.length as usize];
        self.storage
            .read_at(&mut b, r.file_offset)
            .map_err(io_err("VHDX metadata region", r.file_offset))?;
        Ok(b)
    }

    /// Index of system item `id` in the metadata table.
    fn item_index(&self, id: Uuid) -> Option<usize> {
        self.s
            .metadata
            .entries
            .iter()
            .position(|e| !e.is_user() && e.item_id() == id)
    }

    /// Write the metadata region `new` (same length as the region) through
    /// the log: only the 4 KiB pages that differ from the file's.
    fn log_metadata_region(&mut self, new: &[u8]) -> Result<bool> {
        let old = self.metadata_region_bytes()?;
        let base = self.s.metadata_region.file_offset;
        let mut ops = Vec::new();
        for (i, (o, n)) in old
            .chunks(PAGE as usize)
            .zip(new.chunks(PAGE as usize))
            .enumerate()
        {
            if o != n {
                let mut sector = vec![0u8; PAGE as usize];
                sector[..n.len()].copy_from_slice(n);
                ops.push(Op::Data {
                    offset: base + i as u64 * PAGE,
                    sector: sector.into_boxed_slice(),
                });
            }
        }
        if ops.is_empty() {
            return Ok(false);
        }
        self.log_pages(&ops)?;
        Ok(true)
    }

    /// One log transaction writing `ops` (see the module comment).
    fn log_pages(&mut self, ops: &[Op]) -> Result<()> {
        if self.session.is_some() {
            // Another writer's session would share the log.
            self.close_session()?;
        }
        let storage: &dyn Storage = &self.storage;
        let len = storage.len().map_err(io_err("VHDX file", 0))?;
        let mut h = self.s.header().clone();
        let log_guid = Uuid::new_v4();
        h.set_file_write_guid(Uuid::new_v4());
        h.set_log_guid(log_guid);
        let slots = header::update(storage, &self.s.slots, self.s.current, &h)?;
        self.s.current = header::current(&slots)?;
        self.s.slots = slots;
        let mut log = LogWriter::new(h.log_offset, u64::from(h.log_length), log_guid);
        log.append(storage, ops, len, len)?;
        storage.flush().map_err(io_err("VHDX log", h.log_offset))?;
        for op in ops {
            if let Op::Data { offset, sector } = op {
                storage
                    .write_at(sector, *offset)
                    .map_err(io_err("VHDX metadata page", *offset))?;
            }
        }
        storage.flush().map_err(io_err("VHDX metadata region", 0))?;
        h.set_log_guid(Uuid::nil());
        let slots = header::update(storage, &self.s.slots, self.s.current, &h)?;
        self.s.current = header::current(&slots)?;
        self.s.slots = slots;
        Ok(())
    }

    /// Replace the parent locator item with `item` (an encoded locator),
    /// through the log. The value stays where it is when it fits there,
    /// else it moves after the last value in the region; a region too
    /// small for it is refused. Returns whether anything was written.
    pub(crate) fn rewrite_parent_locator(&mut self, item: &[u8]) -> Result<bool> {
        const S: &str = "VHDX metadata table";
        let region_off = self.s.metadata_region.file_offset;
        let idx = self.item_index(PARENT_LOCATOR).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                "the image is not a differencing VHDX: it has no parent locator to set",
            )
        })?;
        let mut region = self.metadata_region_bytes()?;
        let entries = &self.s.metadata.entries;
        let e = entries[idx];
        let new_len = u32::try_from(item.len())
            .ok()
            .filter(|&l| l <= metadata::MAX_ITEM_LENGTH)
            .ok_or_else(|| {
                Error::invalid_argument("the new parent locator is longer than 1 MiB")
            })?;
        let offset = if new_len <= e.length {
            e.offset
        } else {
            // After every value in the region, on an 8-byte boundary.
            let end = entries
                .iter()
                .map(|x| u64::from(x.offset) + u64::from(x.length))
                .max()
                .unwrap_or(metadata::TABLE_SIZE as u64)
                .max(metadata::TABLE_SIZE as u64)
                .next_multiple_of(8);
            let fits = end + u64::from(new_len) <= region.len() as u64;
            if !fits {
                return Err(Error::unsupported(
                    S,
                    region_off,
                    format!(
                        "the new parent locator ({new_len} bytes) does not fit in the metadata \
                         region ({:#x} bytes, values up to offset {end:#x} in use)",
                        region.len()
                    ),
                ));
            }
            end as u32
        };
        // The old value is cleared, then the new one placed.
        let (os, oe) = (e.offset as usize, (e.offset + e.length) as usize);
        region[os..oe].fill(0);
        let ns = offset as usize;
        region[ns..ns + item.len()].copy_from_slice(item);
        let at = metadata::HEADER_SIZE + idx * metadata::ENTRY_SIZE;
        region[at + 16..at + 20].copy_from_slice(&offset.to_le_bytes());
        region[at + 20..at + 24].copy_from_slice(&new_len.to_le_bytes());
        self.log_metadata_region(&region)
    }

    /// Set the Physical Sector Size item (512 or 4096) through the log.
    /// Returns whether anything was written.
    pub(crate) fn rewrite_physical_sector_size(&mut self, size: u32) -> Result<bool> {
        if size != 512 && size != 4096 {
            return Err(Error::invalid_argument(format!(
                "physical sector size {size} is not 512 or 4096"
            )));
        }
        let idx = self.item_index(PHYSICAL_SECTOR_SIZE).ok_or_else(|| {
            Error::corrupt(
                "VHDX metadata table",
                self.s.metadata_region.file_offset,
                "the Physical Sector Size item is missing",
            )
        })?;
        let mut region = self.metadata_region_bytes()?;
        let at = self.s.metadata.entries[idx].offset as usize;
        region[at..at + 4].copy_from_slice(&size.to_le_bytes());
        self.log_metadata_region(&region)
    }

    /// Give the virtual disk a new id (the Page 83 data, what
    /// `Set-VHD -ResetDiskIdentifier` changes), through the log. The
    /// DataWriteGuid, which children record, stays. Returns the new id.
    pub(crate) fn reset_disk_id(&mut self) -> Result<Uuid> {
        let idx = self.item_index(metadata::PAGE_83_DATA).ok_or_else(|| {
            Error::corrupt(
                "VHDX metadata table",
                self.s.metadata_region.file_offset,
                "the Page 83 Data item is missing",
            )
        })?;
        let mut region = self.metadata_region_bytes()?;
        let at = self.s.metadata.entries[idx].offset as usize;
        let id = Uuid::new_v4();
        region[at..at + 16].copy_from_slice(&crate::guid::to_ms_bytes(id));
        self.log_metadata_region(&region)?;
        Ok(id)
    }
}
