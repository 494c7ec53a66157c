//! Raw images: the file is the disk.

use std::path::PathBuf;

use crate::disk::{Extent, ExtentKind, VirtualDisk, check_range};
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

    fn map(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(length).min(self.size);
        if end <= offset {
            return Ok(Vec::new());
        }
        Ok(vec![Extent {
            start: offset,
            length: end - offset,
            kind: ExtentKind::Data,
            file_offset: Some(offset),
        }])
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
            data_write_id: None,
            creator: None,
            allocated_bytes: self.size,
            parent: None,
            warnings: Vec::new(),
            vhd: None,
            vhdx: None,
            evhd: None,
        }
    }
}
