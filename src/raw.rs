//! Raw images: the file is the disk.

use std::path::PathBuf;

use crate::disk::{Extent, ExtentKind, ExtentList, FastPaths, VirtualDisk, check_range};
use crate::error::Result;
use crate::io::{Storage, io_err};
use crate::report::{DiskType, Format, FormatDetails, ImageInfo};

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
        let mut runs = self
            .storage
            .data_runs(offset, end - offset)
            .map_err(io_err("raw image holes", offset))?
            .unwrap_or_else(|| vec![(offset, end - offset)]);
        // Runs out of order, overlapping or outside the range (a storage's
        // mistake) are sorted and cut to the range: never a hole where the
        // storage said data.
        runs.sort_unstable();
        let mut list = ExtentList::default();
        let mut pos = offset;
        for (start, len) in runs {
            let stop = start.saturating_add(len).min(end);
            let start = start.clamp(pos, end);
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
            data_write_id: None,
            creator: None,
            // A sparse file stores less than its length: what its file
            // system says it occupies (never more than the disk).
            minimum_size: None,
            allocated_bytes: self
                .storage
                .allocated_bytes()
                .map_or(self.size, |a| a.min(self.size)),
            parent: None,
            warnings: Vec::new(),
            details: FormatDetails::Raw,
        }
    }

    fn fast_paths(&self) -> Option<&dyn FastPaths> {
        Some(self)
    }

    fn fast_paths_mut(&mut self) -> Option<&mut dyn FastPaths> {
        Some(self)
    }
}

impl FastPaths for RawDisk {
    fn mapped(&self, offset: u64, len: usize) -> Option<&[u8]> {
        check_range(self.size, offset, len).ok()?;
        self.storage.mapped(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemStorage;

    /// A storage in memory that reports the given data runs.
    struct Runs(MemStorage, Vec<(u64, u64)>);

    impl Storage for Runs {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.0.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.0.write_at(buf, offset)
        }
        fn len(&self) -> std::io::Result<u64> {
            self.0.len()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.0.set_len(len)
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn is_writable(&self) -> bool {
            false
        }
        fn data_runs(&self, _: u64, _: u64) -> std::io::Result<Option<Vec<(u64, u64)>>> {
            Ok(Some(self.1.clone()))
        }
    }

    fn kinds(runs: Vec<(u64, u64)>, offset: u64, len: u64) -> Vec<(u64, u64, ExtentKind)> {
        let disk = RawDisk::open(
            Box::new(Runs(MemStorage::from_vec(vec![0; 1000]), runs)),
            None,
        )
        .unwrap();
        disk.map(offset, len)
            .unwrap()
            .iter()
            .map(|e| (e.start, e.length, e.kind))
            .collect()
    }

    #[test]
    fn holes_are_zero_runs_and_data_is_never_lost() {
        use ExtentKind::{Data, Zero};
        assert_eq!(
            kinds(vec![(100, 50), (500, 100)], 0, 1000),
            vec![
                (0, 100, Zero),
                (100, 50, Data),
                (150, 350, Zero),
                (500, 100, Data),
                (600, 400, Zero)
            ]
        );
        // Out of order, overlapping, past the end: still every data byte.
        assert_eq!(
            kinds(
                vec![(500, 100), (100, 50), (120, 100), (900, 5000)],
                0,
                1000
            ),
            vec![
                (0, 100, Zero),
                (100, 120, Data),
                (220, 280, Zero),
                (500, 100, Data),
                (600, 300, Zero),
                (900, 100, Data)
            ]
        );
        // A window.
        assert_eq!(
            kinds(vec![(100, 50)], 120, 100),
            vec![(120, 30, Data), (150, 70, Zero)]
        );
    }
}
