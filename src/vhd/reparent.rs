//! Rewriting what a differencing VHD records about its parent (the parent
//! locators, the parent's name, unique id and time stamp) after the parent
//! moved: `set-parent`.
//!
//! A VHD has one dynamic header, of two sectors under one checksum, and
//! the parent's name and the locator entries span both: rewritten in place,
//! a write torn between its sectors would leave a header that is neither
//! the old nor the new one. So nothing in use is overwritten; in this
//! order, each step flushed before the next:
//!
//! 1. the footer is copied to the new end of the file, leaving room for a
//!    new header and its locator data where it was (the old footer becomes
//!    part of that room): the file stays a valid VHD at every point;
//! 2. the new header and locator data are written into that room;
//! 3. the footer at the end (one sector, written whole or not at all) is
//!    rewritten with its data offset pointing at the new header: this is
//!    the switch from the old record to the new one;
//! 4. the copy at offset 0 follows. Until it does, it is the old footer
//!    (pointing at the old header, which is left intact): `check` reports
//!    it as an interrupted update, and re-running `set-parent` or a repair
//!    rewrites it.
//!
//! The VHD specification puts the header at the footer's data offset, and
//! vhdkit, libvhdi and qemu read it there; writers that append blocks at
//! the footer (Windows, vhdkit) never reach it, as it lies before the
//! footer. The old header and locator data stay behind as a few
//! unreferenced sectors.

use uuid::Uuid;

use super::FooterSource;
use super::VhdDisk;
use super::dynamic_header::{HEADER_SIZE, LOCATOR_COUNT};
use super::footer::{FOOTER_SIZE, VhdType};
use super::geometry::SECTOR;
use super::parent_locator::ParentLocatorEntry;
use crate::error::{Error, ErrorKind, Result};
use crate::fixed::FixedStruct;
use crate::io::io_err;

/// What a differencing VHD is to record about its parent.
#[derive(Debug, Clone)]
pub struct NewParentRecord {
    /// The locators, best first: (platform code, data).
    pub locators: Vec<(u32, Vec<u8>)>,
    /// The parent's file name.
    pub name: String,
    /// The parent's unique id.
    pub unique_id: Uuid,
    /// The parent's modification time (VHD seconds since 2000).
    pub timestamp: u32,
}

impl VhdDisk {
    /// Whether the header already records exactly `rec` (locator data
    /// compared byte for byte): then there is nothing to write.
    fn records(&self, rec: &NewParentRecord) -> Result<bool> {
        let sparse = self.sparse.as_ref().expect("differencing disks are sparse");
        let h = &sparse.header;
        if h.parent_unique_id() != rec.unique_id || h.parent_name() != rec.name {
            return Ok(false);
        }
        let used: Vec<&ParentLocatorEntry> =
            h.parent_locators.iter().filter(|e| e.is_used()).collect();
        if used.len() != rec.locators.len() {
            return Ok(false);
        }
        let len = self.storage.len().map_err(io_err("VHD file", 0))?;
        for (e, (code, data)) in used.iter().zip(&rec.locators) {
            let end = e
                .platform_data_offset
                .checked_add(u64::from(e.platform_data_length));
            if e.platform_code != *code
                || e.platform_data_length as usize != data.len()
                || end.is_none_or(|end| end > len)
            {
                return Ok(false);
            }
            let mut have = vec![0u8; data.len()];
            self.storage
                .read_at(&mut have, e.platform_data_offset)
                .map_err(io_err("VHD parent locator data", e.platform_data_offset))?;
            if have != *data {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Record `rec` as the parent, crash safely (see the module comment).
    /// Returns whether anything was written.
    pub(crate) fn rewrite_parent(&mut self, rec: &NewParentRecord) -> Result<bool> {
        if self.footer.vhd_type() != Some(VhdType::Differencing) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "the image is not a differencing VHD: it has no parent to set",
            ));
        }
        if rec.locators.is_empty() || rec.locators.len() > LOCATOR_COUNT {
            return Err(Error::invalid_argument(format!(
                "a VHD holds 1 to {LOCATOR_COUNT} parent locators, not {}",
                rec.locators.len()
            )));
        }
        if self.footer_source != FooterSource::End {
            return Err(Error::corrupt(
                "VHD footer",
                self.data_end,
                "the footer at the end of the file is missing or damaged; run `check --repair` first",
            ));
        }
        if self.records(rec)? {
            return self.finish_copy();
        }
        let len = self.storage.len().map_err(io_err("VHD file", 0))?;
        let footer_off = len - FOOTER_SIZE as u64;
        // The room for the new header and locator data starts where the
        // footer is now.
        let start = footer_off.div_ceil(SECTOR) * SECTOR;
        let hoff = start;
        let data_start = hoff + HEADER_SIZE as u64;
        let mut data = Vec::new();
        let mut entries = [ParentLocatorEntry::default(); LOCATOR_COUNT];
        for (i, (code, bytes)) in rec.locators.iter().enumerate() {
            let space = (bytes.len() as u64).div_ceil(SECTOR).max(1) * SECTOR;
            entries[i] = ParentLocatorEntry {
                platform_code: *code,
                // Windows records the space in bytes, as create does.
                platform_data_space: space as u32,
                platform_data_length: bytes.len() as u32,
                reserved: 0,
                platform_data_offset: data_start + data.len() as u64,
            };
            let mut padded = bytes.clone();
            padded.resize(space as usize, 0);
            data.extend_from_slice(&padded);
        }
        let new_footer_off = data_start + data.len() as u64;
        let sparse = self.sparse.as_ref().expect("differencing disks are sparse");
        let mut h = sparse.header.clone();
        h.parent_locators = entries;
        h.parent_unique_id = *rec.unique_id.as_bytes();
        h.parent_timestamp = rec.timestamp;
        h.set_parent_name(&rec.name);
        h.checksum = h.compute_checksum();
        let mut room = h.to_bytes().to_vec();
        room.extend_from_slice(&data);
        let mut f = self.footer.clone();
        f.data_offset = hoff;
        f.checksum = f.compute_checksum();

        let s = self.storage.as_ref();
        let flush = |what: &'static str, off: u64| s.flush().map_err(io_err(what, off));
        // 1. The old footer at the new end: the file is a valid VHD with
        //    the old record throughout.
        let old = self.footer.to_bytes();
        s.write_at(&old, new_footer_off)
            .map_err(io_err("VHD footer", new_footer_off))?;
        flush("VHD footer", new_footer_off)?;
        // 2. The new header and locator data, where nothing points yet.
        s.write_at(&room, start)
            .map_err(io_err("VHD dynamic header", start))?;
        flush("VHD dynamic header", start)?;
        // 3. The switch: the end footer (one sector) points at the new
        //    header.
        s.write_at(&f.to_bytes(), new_footer_off)
            .map_err(io_err("VHD footer", new_footer_off))?;
        flush("VHD footer", new_footer_off)?;
        let sparse = self.sparse.as_mut().expect("differencing disks are sparse");
        sparse.header = h;
        sparse.header_offset = hoff;
        sparse.next_free = sparse.next_free.max(new_footer_off);
        self.footer = f;
        self.data_end = new_footer_off;
        // 4. The copy at offset 0.
        self.finish_copy()?;
        Ok(true)
    }

    /// Rewrite the footer copy at offset 0 when it is not the end footer
    /// (the state an interrupted update leaves). Returns whether it wrote.
    fn finish_copy(&mut self) -> Result<bool> {
        let mut c = [0u8; FOOTER_SIZE];
        self.storage
            .read_at(&mut c, 0)
            .map_err(io_err("VHD footer copy", 0))?;
        let fb = self.footer.to_bytes();
        if c[..] == fb[..] {
            return Ok(false);
        }
        let s = self.storage.as_ref();
        s.write_at(&fb, 0).map_err(io_err("VHD footer copy", 0))?;
        s.flush().map_err(io_err("VHD footer copy", 0))?;
        self.copy_ok = true;
        Ok(true)
    }

    /// Give the disk a new unique id: the footer at the end first (the one
    /// `open` trusts), flushed, then the copy at offset 0 of a dynamic or
    /// differencing disk. A crash between the two leaves the new id with a
    /// stale copy (`open` warns, `check --repair` rewrites the copy).
    pub(crate) fn reset_unique_id(&mut self) -> Result<Uuid> {
        if self.footer_source != FooterSource::End {
            return Err(Error::corrupt(
                "VHD footer",
                self.data_end,
                "the footer at the end of the file is missing or damaged; run `check --repair` first",
            ));
        }
        let id = Uuid::new_v4();
        let mut f = self.footer.clone();
        f.unique_id = *id.as_bytes();
        f.checksum = f.compute_checksum();
        let len = self.storage.len().map_err(io_err("VHD file", 0))?;
        let end = len - FOOTER_SIZE as u64;
        let s = self.storage.as_ref();
        s.write_at(&f.to_bytes(), end)
            .map_err(io_err("VHD footer", end))?;
        s.flush().map_err(io_err("VHD footer", end))?;
        if self.footer.vhd_type() != Some(VhdType::Fixed) {
            s.write_at(&f.to_bytes(), 0)
                .map_err(io_err("VHD footer copy", 0))?;
            s.flush().map_err(io_err("VHD footer copy", 0))?;
        }
        self.footer = f;
        Ok(id)
    }
}
