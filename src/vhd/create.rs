//! Creating new VHDs: lay out every structure first, then hand back an open disk.

use std::path::{Component, Path, PathBuf};

use uuid::Uuid;

use super::bat;
use super::dynamic_header::{
    DEFAULT_BLOCK_SIZE, DynamicHeader, HEADER_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
};
use super::footer::{FOOTER_SIZE, Footer, NO_DATA_OFFSET, VhdType, now_timestamp};
use super::geometry::SECTOR;
use super::parent_locator::{
    PLATFORM_MACX, PLATFORM_W2KU, PLATFORM_W2RU, ParentLocatorEntry, file_url, to_utf16le,
};
use super::{MAX_VIRTUAL_SIZE, VhdDisk};
use crate::error::{Error, ErrorKind, Result};
use crate::fixed::FixedStruct;
use crate::io::{Storage, io_err};
use crate::parent::Parent;
use crate::report::Format;

/// Settings for a new VHD. Consuming setters; [`VhdBuilder::create`] writes it.
#[derive(Debug, Clone)]
pub struct VhdBuilder {
    size: u64,
    kind: VhdType,
    block_size: u32,
    parent: Option<PathBuf>,
    unique_id: Option<Uuid>,
}

impl VhdBuilder {
    /// A dynamic disk of exactly `size` bytes (a multiple of 512).
    pub fn new(size: u64) -> Self {
        VhdBuilder {
            size,
            kind: VhdType::Dynamic,
            block_size: DEFAULT_BLOCK_SIZE,
            parent: None,
            unique_id: None,
        }
    }

    /// Make it a fixed disk.
    pub fn fixed(mut self) -> Self {
        self.kind = VhdType::Fixed;
        self
    }

    /// Make it a dynamic disk (the default).
    pub fn dynamic(mut self) -> Self {
        self.kind = VhdType::Dynamic;
        self
    }

    /// Make it a differencing disk over the VHD at `parent`; the size is the parent's.
    pub fn differencing(mut self, parent: impl Into<PathBuf>) -> Self {
        self.kind = VhdType::Differencing;
        self.parent = Some(parent.into());
        self
    }

    /// Block size of dynamic and differencing disks (power of two, 512 B to 256 MiB).
    pub fn block_size(mut self, bs: u32) -> Self {
        self.block_size = bs;
        self
    }

    /// Use this unique id instead of a random one.
    pub fn unique_id(mut self, id: Uuid) -> Self {
        self.unique_id = Some(id);
        self
    }

    /// Write the new image into `storage` (empty) and open it read-write.
    /// `path` is where the image will finally live: relative parent locators
    /// are computed from its folder.
    pub fn create(self, storage: Box<dyn Storage>, path: Option<&Path>) -> Result<VhdDisk> {
        let (parent, size) = match &self.parent {
            Some(p) => {
                let disk = crate::chain::open_new_parent(p)?;
                if disk.info().format != Format::Vhd {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "the parent of a differencing VHD must be a VHD",
                    )
                    .with_path(p));
                }
                let id = disk.parent_link_id().unwrap_or_default();
                let size = disk.virtual_size();
                (Some((disk, p.clone(), id)), size)
            }
            None => (None, self.size),
        };
        if !size.is_multiple_of(SECTOR) || size == 0 || size > MAX_VIRTUAL_SIZE {
            return Err(Error::invalid_argument(format!(
                "VHD size {size} must be a non-zero multiple of 512 up to {MAX_VIRTUAL_SIZE} bytes"
            )));
        }
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(Error::invalid_argument(format!(
                "VHD block size {bs} must be a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
            )));
        }
        let id = self.unique_id.unwrap_or_else(Uuid::new_v4);
        let ts = now_timestamp();
        let w = |buf: &[u8], off: u64, what: &'static str| {
            storage.write_at(buf, off).map_err(io_err(what, off))
        };

        if self.kind == VhdType::Fixed {
            let footer = Footer::new(VhdType::Fixed, size, NO_DATA_OFFSET, id, ts);
            storage.set_len(size).map_err(io_err("VHD data", 0))?;
            w(&footer.to_bytes(), size, "VHD footer")?;
            return VhdDisk::from_parts(storage, path.map(Path::to_path_buf), footer, None);
        }

        let header_offset = FOOTER_SIZE as u64;
        let table_offset = header_offset + HEADER_SIZE as u64;
        let entries = u32::try_from(size.div_ceil(u64::from(bs))).map_err(|_| {
            Error::invalid_argument("too many blocks for a VHD; use a larger block size")
        })?;
        let mut header = DynamicHeader::new(table_offset, entries, bs);
        let mut next = table_offset + bat::table_bytes(entries);
        let mut locator_data: Vec<(u64, Vec<u8>)> = Vec::new();
        if let Some((_, ppath, pid)) = &parent {
            header.parent_unique_id = *pid.as_bytes();
            header.parent_timestamp = file_timestamp(ppath);
            let name = ppath
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            header.set_parent_name(&name);
            let abs = std::fs::canonicalize(ppath).unwrap_or_else(|_| ppath.clone());
            let child_dir = path
                .and_then(Path::parent)
                .map(|d| {
                    if d.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        d
                    }
                })
                .and_then(|d| std::fs::canonicalize(d).ok());
            let mut locs = Vec::new();
            if let Some(rel) = child_dir.and_then(|d| relative_path(&d, &abs)) {
                locs.push((PLATFORM_W2RU, to_utf16le(&rel)));
            }
            locs.push(absolute_locator(&abs));
            for (i, (code, data)) in locs.into_iter().enumerate() {
                let space = (data.len() as u64).div_ceil(SECTOR).max(1) * SECTOR;
                header.parent_locators[i] = ParentLocatorEntry {
                    platform_code: code,
                    // Windows records the space in bytes; we do the same.
                    platform_data_space: space as u32,
                    platform_data_length: data.len() as u32,
                    reserved: 0,
                    platform_data_offset: next,
                };
                locator_data.push((next, data));
                next += space;
            }
        }
        header.checksum = header.compute_checksum();
        let footer = Footer::new(self.kind, size, header_offset, id, ts);
        let fb = footer.to_bytes();
        w(&fb, 0, "VHD footer copy")?;
        w(&header.to_bytes(), header_offset, "VHD dynamic header")?;
        let bat_bytes = vec![0xffu8; bat::table_bytes(entries) as usize];
        w(&bat_bytes, table_offset, "VHD block allocation table")?;
        for (off, data) in &locator_data {
            w(data, *off, "VHD parent locator data")?;
        }
        storage.set_len(next).map_err(io_err("VHD file", next))?;
        w(&fb, next, "VHD footer")?;
        let parent = parent.map(|(disk, path, expected_id)| Parent::Open {
            disk,
            path,
            expected_id,
            found_id: Some(expected_id),
            id_name: crate::parent::UNIQUE_ID,
        });
        VhdDisk::from_parts(storage, path.map(Path::to_path_buf), footer, parent)
    }
}

/// Create a VHD at `path` (which must not exist) with the given settings.
pub fn create(path: &Path, builder: VhdBuilder) -> Result<VhdDisk> {
    let storage = crate::io::FileStorage::create_new(path)?;
    builder
        .create(Box::new(storage), Some(path))
        .map_err(|e| e.with_path(path))
}

/// The absolute locator of the parent at `abs` (an absolute path of this
/// system), as (platform code, data). W2ku holds an absolute *Windows* path
/// (a drive or UNC path), which only Windows has; elsewhere the path is a
/// POSIX one, which the VHD specification stores as a MacX file URL
/// (UTF-8, RFC 2396), the one absolute locator for a path that is not a
/// Windows one. Windows and Hyper-V find the parent through the relative
/// W2ru locator written beside it.
pub(crate) fn absolute_locator(abs: &Path) -> (u32, Vec<u8>) {
    if cfg!(windows) {
        (PLATFORM_W2KU, to_utf16le(&abs.to_string_lossy()))
    } else {
        (PLATFORM_MACX, file_url(&abs.to_string_lossy()).into_bytes())
    }
}

/// Modification time of `p` as a VHD timestamp.
pub(crate) fn file_timestamp(p: &Path) -> u32 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64 - super::footer::VHD_EPOCH_UNIX)
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or(0)
}

/// `target` relative to the folder `from`, in Windows form (`.\a`, `..\b\c`).
pub(crate) fn relative_path(from: &Path, target: &Path) -> Option<String> {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = target.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return None;
    }
    let mut parts: Vec<String> = vec![".".into()];
    parts.extend(std::iter::repeat_n("..".to_string(), f.len() - common));
    if parts.len() > 1 {
        parts.remove(0);
    }
    parts.extend(
        t[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    Some(parts.join("\\"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/b/p.vhd")).unwrap(),
            ".\\p.vhd"
        );
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/c/p.vhd")).unwrap(),
            "..\\c\\p.vhd"
        );
    }
}
