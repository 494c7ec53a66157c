//! Creating new VHDX files: lay out every region first, write them, then
//! hand back the open disk.
//!
//! Layout: the 1 MiB header area, the log, the 1 MiB metadata region, the
//! BAT (whole MiB), then payload blocks: all of them at once for a fixed
//! disk, appended as they are first written otherwise.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::VhdxDisk;
use super::bat::{self, Layout};
use super::file_identifier::FileIdentifier;
use super::header::{HEADER_OFFSETS, Header};
use super::metadata::{MAX_BLOCK_SIZE, MAX_VIRTUAL_SIZE, MIN_BLOCK_SIZE, NewMetadata};
use super::parent_locator::{
    KEY_ABSOLUTE_WIN32_PATH, KEY_PARENT_LINKAGE, KEY_RELATIVE_PATH, ParentLocator,
};
use super::region_table::{
    BAT_GUID, HEADER_AREA, METADATA_GUID, REGION_ALIGNMENT, REGION_TABLE_OFFSETS, RegionTable,
    RegionTableEntry,
};
use crate::error::{Error, ErrorKind, Result};
use crate::fixed::FixedStruct;
use crate::io::{Storage, io_err};
use crate::parent::Chain;
use crate::report::Format;

/// Default payload block size of fixed and dynamic disks: 32 MiB, as
/// Hyper-V uses.
pub const DEFAULT_BLOCK_SIZE: u32 = 32 << 20;
/// Default payload block size of differencing disks: 2 MiB, as Hyper-V
/// uses, so that small changes allocate little.
pub const DEFAULT_DIFFERENCING_BLOCK_SIZE: u32 = 2 << 20;
/// Default log size: 1 MiB, as Hyper-V and qemu use.
pub const DEFAULT_LOG_SIZE: u32 = 1 << 20;
/// Size of the metadata region we write: the 64 KiB table and a few
/// hundred bytes of values, on a whole MiB.
pub const METADATA_REGION_SIZE: u32 = 1 << 20;
/// Default logical sector size.
pub const DEFAULT_LOGICAL_SECTOR_SIZE: u32 = 512;
/// Default physical sector size: 4096, as on current disks and in Hyper-V.
pub const DEFAULT_PHYSICAL_SECTOR_SIZE: u32 = 4096;

/// The creator recorded in the file identifier of files we create.
pub fn creator() -> String {
    format!("vhdkit {}", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Fixed,
    Dynamic,
    Differencing(PathBuf),
}

/// Settings for a new VHDX. Consuming setters; [`VhdxBuilder::create`]
/// writes it.
#[derive(Debug, Clone)]
pub struct VhdxBuilder {
    size: u64,
    kind: Kind,
    block_size: Option<u32>,
    logical_sector_size: Option<u32>,
    physical_sector_size: Option<u32>,
    log_size: u32,
    page_83: Option<Uuid>,
}

/// Where each region of a new file goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLayout {
    /// The log region.
    pub log_offset: u64,
    /// Bytes of the log.
    pub log_length: u32,
    /// The metadata region.
    pub metadata_offset: u64,
    /// The BAT region.
    pub bat_offset: u64,
    /// Bytes of the BAT region (whole MiB).
    pub bat_length: u32,
    /// First byte after the regions: where payload blocks start.
    pub data_offset: u64,
    /// The BAT's shape.
    pub bat: Layout,
}

impl VhdxBuilder {
    /// A dynamic disk of exactly `size` bytes (a multiple of the logical
    /// sector size, at most 64 TiB).
    pub fn new(size: u64) -> Self {
        VhdxBuilder {
            size,
            kind: Kind::Dynamic,
            block_size: None,
            logical_sector_size: None,
            physical_sector_size: None,
            log_size: DEFAULT_LOG_SIZE,
            page_83: None,
        }
    }

    /// Make it a fixed disk: every block allocated up front.
    pub fn fixed(mut self) -> Self {
        self.kind = Kind::Fixed;
        self
    }

    /// Make it a dynamic disk (the default).
    pub fn dynamic(mut self) -> Self {
        self.kind = Kind::Dynamic;
        self
    }

    /// Make it a differencing disk over the VHDX at `parent`; size and
    /// sector sizes are the parent's.
    pub fn differencing(mut self, parent: impl Into<PathBuf>) -> Self {
        self.kind = Kind::Differencing(parent.into());
        self
    }

    /// Payload block size: a power of two from 1 MiB to 256 MiB (default
    /// 32 MiB, or 2 MiB for differencing disks).
    pub fn block_size(mut self, bs: u32) -> Self {
        self.block_size = Some(bs);
        self
    }

    fn effective_block_size(&self) -> u32 {
        self.block_size.unwrap_or(match self.kind {
            Kind::Differencing(_) => DEFAULT_DIFFERENCING_BLOCK_SIZE,
            _ => DEFAULT_BLOCK_SIZE,
        })
    }

    /// Logical sector size, 512 (default) or 4096.
    pub fn logical_sector_size(mut self, s: u32) -> Self {
        self.logical_sector_size = Some(s);
        self
    }

    /// Physical sector size, 512 or 4096 (default).
    pub fn physical_sector_size(mut self, s: u32) -> Self {
        self.physical_sector_size = Some(s);
        self
    }

    /// Log size: a non-zero multiple of 1 MiB (default 1 MiB).
    pub fn log_size(mut self, bytes: u32) -> Self {
        self.log_size = bytes;
        self
    }

    /// Use this Page 83 disk id instead of a random one.
    pub fn page_83(mut self, id: Uuid) -> Self {
        self.page_83 = Some(id);
        self
    }

    /// Check the settings for a disk of `size` bytes with these sector
    /// sizes and compute where every region goes.
    fn plan(&self, size: u64, lss: u32, pss: u32) -> Result<FileLayout> {
        for (what, v) in [("logical", lss), ("physical", pss)] {
            if v != 512 && v != 4096 {
                return Err(Error::invalid_argument(format!(
                    "VHDX {what} sector size {v} must be 512 or 4096"
                )));
            }
        }
        if size == 0 || size > MAX_VIRTUAL_SIZE || !size.is_multiple_of(u64::from(lss)) {
            return Err(Error::invalid_argument(format!(
                "VHDX size {size} must be a non-zero multiple of the {lss}-byte logical sector up to 64 TiB"
            )));
        }
        let bs = self.effective_block_size();
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(Error::invalid_argument(format!(
                "VHDX block size {bs} must be a power of two from 1 MiB to 256 MiB"
            )));
        }
        let log = u64::from(self.log_size);
        if log == 0 || !log.is_multiple_of(REGION_ALIGNMENT) {
            return Err(Error::invalid_argument(format!(
                "VHDX log size {log} must be a non-zero multiple of 1 MiB"
            )));
        }
        let differencing = matches!(self.kind, Kind::Differencing(_));
        let l = Layout::new(size, bs, lss, differencing);
        let bat_bytes = (l.total_entries * bat::ENTRY_SIZE)
            .div_ceil(REGION_ALIGNMENT)
            .max(1)
            * REGION_ALIGNMENT;
        let bat_length = u32::try_from(bat_bytes).map_err(|_| {
            Error::invalid_argument("the BAT would exceed 4 GiB; use a larger block size")
        })?;
        let log_offset = HEADER_AREA;
        let metadata_offset = log_offset + log;
        let bat_offset = metadata_offset + u64::from(METADATA_REGION_SIZE);
        Ok(FileLayout {
            log_offset,
            log_length: self.log_size,
            metadata_offset,
            bat_offset,
            bat_length,
            data_offset: bat_offset + bat_bytes,
            bat: l,
        })
    }

    /// Write the new image into `storage` (empty) and open it read-write.
    /// `path` is where the image will finally live: the relative parent
    /// locator is computed from its folder.
    pub fn create(self, storage: Box<dyn Storage>, path: Option<&Path>) -> Result<VhdxDisk> {
        let mut parent_path = None;
        let mut locator = None;
        let (size, lss, pss) = match &self.kind {
            Kind::Differencing(p) => {
                let parent = crate::chain::open_new_parent(p)?;
                if parent.info().format != Format::Vhdx {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "the parent of a differencing VHDX must be a VHDX",
                    )
                    .with_path(p));
                }
                let (plss, ppss) = (parent.logical_sector_size(), parent.physical_sector_size());
                if self.logical_sector_size.is_some_and(|s| s != plss) {
                    return Err(Error::invalid_argument(format!(
                        "a differencing VHDX has its parent's {plss}-byte logical sectors"
                    ))
                    .with_path(p));
                }
                let linkage = parent.parent_link_id().unwrap_or_default();
                let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                locator = Some(parent_locator(linkage, &abs, path)?);
                parent_path = Some(abs);
                (
                    parent.virtual_size(),
                    plss,
                    self.physical_sector_size.unwrap_or(ppss),
                )
            }
            _ => (
                self.size,
                self.logical_sector_size
                    .unwrap_or(DEFAULT_LOGICAL_SECTOR_SIZE),
                self.physical_sector_size
                    .unwrap_or(DEFAULT_PHYSICAL_SECTOR_SIZE),
            ),
        };
        let fl = self.plan(size, lss, pss)?;
        let fixed = self.kind == Kind::Fixed;
        let differencing = matches!(self.kind, Kind::Differencing(_));
        let w = |buf: &[u8], off: u64, what: &'static str| {
            storage.write_at(buf, off).map_err(io_err(what, off))
        };

        // The header area: identifier, two headers, two region tables; the
        // rest stays a hole (reads as zeros).
        w(
            &FileIdentifier::new(&creator()).to_bytes(),
            0,
            "VHDX file identifier",
        )?;
        let (fwg, dwg) = (Uuid::new_v4(), Uuid::new_v4());
        for (seq, &off) in HEADER_OFFSETS.iter().enumerate() {
            let h = Header::new(seq as u64, fwg, dwg, fl.log_offset, fl.log_length);
            w(&h.to_bytes(), off, "VHDX header")?;
        }
        let table = RegionTable::encode(&[
            RegionTableEntry::required_region(BAT_GUID, fl.bat_offset, fl.bat_length),
            RegionTableEntry::required_region(
                METADATA_GUID,
                fl.metadata_offset,
                METADATA_REGION_SIZE,
            ),
        ]);
        for &off in &REGION_TABLE_OFFSETS {
            w(&table, off, "VHDX region table")?;
        }

        let meta = NewMetadata {
            block_size: self.effective_block_size(),
            leave_block_allocated: fixed,
            virtual_size: size,
            page_83: self.page_83.unwrap_or_else(Uuid::new_v4),
            logical_sector_size: lss,
            physical_sector_size: pss,
            parent_locator: locator,
        };
        let region = meta.encode(METADATA_REGION_SIZE as usize);
        let used = region.len() - region.iter().rev().take_while(|&&b| b == 0).count();
        w(&region[..used], fl.metadata_offset, "VHDX metadata region")?;

        let mut end = fl.data_offset;
        if fixed {
            // Every payload block present, one after the other; written a
            // MiB of entries at a time.
            let l = &fl.bat;
            let per_piece = (REGION_ALIGNMENT / bat::ENTRY_SIZE) as usize;
            let mut piece = Vec::with_capacity(REGION_ALIGNMENT as usize);
            let mut at = fl.bat_offset;
            for i in 0..l.total_entries {
                let e = if l.is_bitmap_index(i) {
                    0
                } else {
                    let block = i - i / (l.chunk_ratio + 1);
                    bat::entry(
                        bat::PAYLOAD_FULLY_PRESENT,
                        fl.data_offset + block * l.block_size,
                    )
                };
                piece.extend_from_slice(&e.to_le_bytes());
                if piece.len() / 8 == per_piece || i + 1 == l.total_entries {
                    w(&piece, at, "VHDX BAT")?;
                    at += piece.len() as u64;
                    piece.clear();
                }
            }
            end += l.data_blocks * l.block_size;
        }
        if differencing {
            // Every chunk gets its sector-bitmap block now, all bits clear
            // (every sector from the parent): the blocks are holes past
            // the data, so they cost file length but no storage.
            // [MS-VHDX] allows a chunk without one while none of its blocks
            // is partially present, but libvhdi (20210425) reads the bitmap
            // of every block that is not fully present and, for a chunk
            // without one, takes bits from the start of the file instead.
            let l = &fl.bat;
            for chunk in 0..l.bitmap_blocks {
                let e = bat::entry(bat::BITMAP_PRESENT, end);
                let at = fl.bat_offset + l.bitmap_index(chunk) * bat::ENTRY_SIZE;
                w(&e.to_le_bytes(), at, "VHDX BAT")?;
                end += bat::BITMAP_BLOCK_SIZE;
            }
        }
        storage.set_len(end).map_err(io_err("VHDX file", end))?;

        let opts = crate::OpenOptions {
            writable: true,
            parent_path,
            ..crate::OpenOptions::default()
        };
        VhdxDisk::open(
            storage,
            path.map(Path::to_path_buf),
            &opts,
            &Chain::default(),
        )
    }
}

/// The locator of a child at `child` (if known) over the parent at
/// `parent` (absolute) whose DataWriteGuid is `linkage`.
pub(crate) fn parent_locator(
    linkage: Uuid,
    parent: &Path,
    child: Option<&Path>,
) -> Result<Vec<u8>> {
    let mut entries = vec![(KEY_PARENT_LINKAGE.to_string(), format!("{{{linkage}}}"))];
    let child_dir = child
        .and_then(Path::parent)
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .and_then(|d| std::fs::canonicalize(d).ok());
    if let Some(rel) = child_dir.and_then(|d| crate::vhd::create::relative_path(&d, parent)) {
        entries.push((KEY_RELATIVE_PATH.to_string(), rel));
    }
    // `absolute_win32_path` holds a Windows path ([MS-VHDX] 2.6.2.6.3): a
    // POSIX path there would be read by Windows as a path on the current
    // drive. Off Windows the relative path (always present: two absolute
    // POSIX paths share the root) is the locator; older vhdkit children
    // that hold a POSIX path under this key are still read.
    if let Some(win) = win32_absolute(parent) {
        entries.push((KEY_ABSOLUTE_WIN32_PATH.to_string(), win));
    }
    if entries.len() == 1 {
        return Err(Error::invalid_argument(format!(
            "cannot record the parent {} in a VHDX parent locator: no relative path \
             from the child's folder and no Windows absolute path",
            parent.display()
        )));
    }
    ParentLocator::new(entries).to_bytes()
}

/// `path` as an absolute Windows path (`C:\dir\p.vhdx`), or `None` when it
/// is not one (a POSIX path).
fn win32_absolute(path: &Path) -> Option<String> {
    let s = path.to_str()?;
    let b = s.as_bytes();
    let drive = b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':';
    (drive && (b[2] == b'\\' || b[2] == b'/')).then(|| s.replace('/', "\\"))
}

/// Create a VHDX at `path` (which must not exist) with the given settings.
pub fn create(path: &Path, builder: VhdxBuilder) -> Result<VhdxDisk> {
    let storage = crate::io::FileStorage::create_new(path)?;
    builder
        .create(Box::new(storage), Some(path))
        .map_err(|e| e.with_path(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhdx::parent_locator::ParentLocator;

    #[test]
    fn only_windows_paths_are_recorded_as_win32_paths() {
        assert_eq!(win32_absolute(Path::new("/srv/p.vhdx")), None);
        assert_eq!(win32_absolute(Path::new("p.vhdx")), None);
        assert_eq!(
            win32_absolute(Path::new("C:/vms/p.vhdx")).as_deref(),
            Some("C:\\vms\\p.vhdx")
        );
        assert_eq!(
            win32_absolute(Path::new("d:\\p.vhdx")).as_deref(),
            Some("d:\\p.vhdx")
        );
    }

    #[test]
    fn a_posix_parent_is_located_by_relative_path_only() {
        let dir = std::env::temp_dir();
        let child = dir.join("child.vhdx");
        let parent = dir.join("sub").join("parent.vhdx");
        let bytes = parent_locator(Uuid::nil(), &parent, Some(&child)).unwrap();
        let loc = ParentLocator::parse(&bytes, 0).unwrap();
        assert_eq!(loc.get(KEY_RELATIVE_PATH), Some(".\\sub\\parent.vhdx"));
        assert_eq!(loc.get(KEY_ABSOLUTE_WIN32_PATH), None);
    }
}
