//! Raw images: the file is the disk.

use std::path::PathBuf;

use crate::disk::{Extent, ExtentKind, ExtentList, VirtualDisk, check_range};
use crate::error::Result;
use crate::io::{Storage, io_err};
use crate::report::{DiskType, Format, ImageInfo};

/// A flat image whose bytes are the virtual disk's bytes.
pub struct RawDisk {
    storage: Box<dyn Storage>,
    size: u64,
    path: Option<PathBuf>,
    /// The format was detected, not stated (`-f raw`): writes that would
    /// make detection find another format are refused (see
    /// [`crate::detect::guard_probed_raw`]).
    probed: bool,
}

impl RawDisk {
    /// Wrap a storage; its current length is the disk size.
    pub fn open(storage: Box<dyn Storage>, path: Option<PathBuf>) -> Result<Self> {
        let size = storage.len().map_err(io_err("raw image", 0))?;
        Ok(RawDisk {
            storage,
            size,
            path,
            probed: false,
        })
    }

    /// Create a raw image of `size` bytes (sparse where the system allows).
    pub fn create(storage: Box<dyn Storage>, size: u64) -> Result<Self> {
        storage.set_len(size).map_err(io_err("raw image", 0))?;
        Ok(RawDisk {
            storage,
            size,
            path: None,
            probed: false,
        })
    }

    /// Mark the image as raw by detection (`true`) rather than by the
    /// caller's word: writes that would give it another format's signature
    /// are then refused.
    pub fn probed(mut self, yes: bool) -> Self {
        self.probed = yes;
        self
    }

    /// The path the image was opened from.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }
}

impl VirtualDisk for RawDisk {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size, offset, buf.len())?;
        self.storage
            .read_at(buf, offset)
            .map_err(io_err("raw image data", offset))
    }

    fn mapped(&self, offset: u64, len: usize) -> Option<&[u8]> {
        check_range(self.size, offset, len).ok()?;
        self.storage.mapped(offset, len)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(self.size, offset, buf.len())?;
        if self.probed {
            crate::detect::guard_probed_raw(self.storage.as_ref(), buf, offset)?;
        }
        self.storage
            .write_at(buf, offset)
            .map_err(io_err("raw image data", offset))
    }

    fn flush(&mut self) -> Result<()> {
        self.storage.flush().map_err(io_err("raw image", 0))
    }

    /// Data where the file system stores the file, zeros in its holes
    /// (found with `SEEK_DATA`/`SEEK_HOLE`, see [`Storage::data_runs`]), so
    /// that a copy never reads them; all data where the system cannot tell.
    fn map(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(length).min(self.size);
        if end <= offset {
            return Ok(Vec::new());
        }
        let runs = self
            .storage
            .data_runs(offset, end - offset)
            .map_err(io_err("raw image holes", offset))?
            .unwrap_or_else(|| vec![(offset, end - offset)]);
        let mut list = ExtentList::default();
        let mut pos = offset;
        // Runs out of order or outside the range (a storage's mistake) are
        // cut to what is left of it: never a hole where data may be.
        for (start, len) in runs {
            let start = start.clamp(pos, end);
            let stop = start.saturating_add(len).min(end);
            if stop > start {
                list.push(pos, start - pos, ExtentKind::Zero, None);
                list.push(start, stop - start, ExtentKind::Data, Some(start));
                pos = stop;
            }
        }
        list.push(pos, end - pos, ExtentKind::Zero, None);
        Ok(list.into_vec())
    }

    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: Format::Raw,
            disk_type: DiskType::Fixed,
            virtual_size: self.size,
            file_size: self.size,
            logical_sector_size: 512,
            physical_sector_size: 512,
            block_size: None,
            disk_id: None,
            creator: None,
            // A sparse file stores less than its length: what its file
            // system says it occupies (never more than the disk).
            allocated_bytes: self
                .storage
                .allocated_bytes()
                .map_or(self.size, |a| a.min(self.size)),
            parent: None,
            warnings: Vec::new(),
            vhd: None,
            vhdx: None,
            evhd: None,
        }
    }
}
