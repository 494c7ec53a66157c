//! Virtual Hard Disk (VHD): fixed, dynamic and differencing disks, as in
//! the "Virtual Hard Disk Image Format Specification" (2006).
//!
//! Layout: fixed disks are the data followed by a [`footer::Footer`];
//! dynamic and differencing disks are a footer copy, a
//! [`dynamic_header::DynamicHeader`], the [`bat`], blocks (each a sector
//! bitmap then data) and the footer.

pub mod bat;
mod blocks;
pub mod check;
pub mod cloud;
mod compact;
pub mod create;
pub mod dynamic_header;
pub mod footer;
pub mod geometry;
mod info;
mod open;
pub mod parent_locator;
pub(crate) mod reparent;
pub mod resize;

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::disk::{Extent, ExtentKind, ExtentList, VirtualDisk, check_range};
use crate::error::Result;
use crate::fixed::FixedStruct;
use crate::io::{Storage, io_err, read_struct};
use crate::layer::{self, BitmapCache};
use crate::parent::Parent;
use crate::report::{ImageInfo, Warning};
pub(crate) use blocks::VhdBlocks;
use dynamic_header::DynamicHeader;
use footer::{FOOTER_COOKIE, FOOTER_SIZE, Footer, VhdType};
use geometry::SECTOR;

pub use create::{VhdBuilder, create};
pub use open::parent_spec_from_headers;

/// Largest virtual size: 0xFF000000 sectors (about 2040 GiB), the limit of
/// the specification and of Windows.
pub const MAX_VIRTUAL_SIZE: u64 = 0xFF00_0000 * SECTOR;
/// Size of a legacy (pre Virtual PC 2004) footer that lacks its last byte.
pub const LEGACY_FOOTER_SIZE: u64 = 511;
/// Differencing writes mark sectors present in groups of this many bytes:
/// eight sectors, one byte of the sector bitmap.
pub const BITMAP_GROUP: u64 = 8 * SECTOR;

/// Where the footer in use was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FooterSource {
    /// The 512 bytes at the end of the file.
    End,
    /// A legacy 511-byte footer at the end of the file.
    EndLegacy,
    /// The copy at offset 0 (the end one is missing or damaged).
    Copy,
}

/// State of a dynamic or differencing disk.
#[derive(Debug)]
struct Sparse {
    header: DynamicHeader,
    header_offset: u64,
    bat: Vec<u32>,
    block_size: u64,
    /// Bytes of the sector bitmap in front of each block (whole sectors).
    bitmap_size: u64,
    /// Where the next block is placed: the footer's offset at the end.
    next_free: u64,
}

impl Sparse {
    fn block_file_offset(&self, entry: u32) -> u64 {
        u64::from(entry) * SECTOR
    }
}

/// An open VHD.
pub struct VhdDisk {
    storage: Box<dyn Storage>,
    path: Option<PathBuf>,
    footer: Footer,
    footer_source: FooterSource,
    /// Whether the copy at offset 0 is present and matches (dynamic disks).
    copy_ok: bool,
    sparse: Option<Sparse>,
    parent: Option<Parent>,
    warnings: Vec<Warning>,
    /// Sync data to disk before linking a new block into the BAT.
    barriers: bool,
    /// Fixed disks: where the data ends in the file (the footer's offset).
    /// Bytes of the disk past it read as zeros, never as the footer.
    data_end: u64,
    /// Under `--salvage`: where blocks past the end of the file are
    /// recorded as read as zeros (otherwise reading them is an error).
    salvage: Option<std::sync::Arc<crate::damage::SalvageLog>>,
    /// Sector bitmaps of differencing blocks read lately.
    bitmap_cache: BitmapCache,
}

impl std::fmt::Debug for VhdDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdDisk")
            .field("path", &self.path)
            .field("type", &self.footer.vhd_type())
            .field("size", &self.footer.current_size)
            .finish()
    }
}

/// Whether `storage` holds a VHD: a footer cookie at the end (512 or 511
/// bytes before it) or a footer copy at offset 0.
pub fn probe(storage: &dyn Storage) -> bool {
    let len = storage.len().unwrap_or(0);
    let mut cookie = [0u8; 8];
    for back in [FOOTER_SIZE as u64, LEGACY_FOOTER_SIZE] {
        if len >= back
            && storage.read_at(&mut cookie, len - back).is_ok()
            && cookie == FOOTER_COOKIE
        {
            return true;
        }
    }
    // A copy at offset 0 alone (the end footer lost) counts only for the
    // types that keep one: dynamic and differencing.
    let mut head = [0u8; 64];
    len >= 2 * FOOTER_SIZE as u64
        && storage.read_at(&mut head, 0).is_ok()
        && head[..8] == FOOTER_COOKIE
        && sparse_type_code(&head)
}

/// Whether the footer bytes `head` (at least 64) name a dynamic or
/// differencing disk.
fn sparse_type_code(head: &[u8]) -> bool {
    let code = u32::from_be_bytes([head[60], head[61], head[62], head[63]]);
    matches!(
        VhdType::from_code(code),
        Some(VhdType::Dynamic | VhdType::Differencing)
    )
}

fn read_footer_at(storage: &dyn Storage, offset: u64, size: usize) -> Result<Footer> {
    let mut b = [0u8; FOOTER_SIZE];
    read_struct(storage, "VHD footer", &mut b[..size], offset)?;
    Footer::parse(&b, offset)
}

impl VhdDisk {
    /// The decoded parent locators of a sparse disk.
    pub fn locators(&self) -> Result<Vec<parent_locator::Locator>> {
        let Some(sparse) = &self.sparse else {
            return Ok(Vec::new());
        };
        sparse
            .header
            .parent_locators
            .iter()
            .filter(|e| e.is_used())
            .map(|e| e.decode(self.storage.as_ref()))
            .collect()
    }

    /// The footer in use.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The dynamic header, for dynamic and differencing disks.
    pub fn dynamic_header(&self) -> Option<&DynamicHeader> {
        self.sparse.as_ref().map(|s| &s.header)
    }

    /// The block allocation table, for dynamic and differencing disks.
    pub fn bat(&self) -> Option<&[u32]> {
        self.sparse.as_ref().map(|s| s.bat.as_slice())
    }

    /// The disk type.
    pub fn vhd_type(&self) -> VhdType {
        self.footer.vhd_type().expect("validated at open")
    }

    /// Problems found at open.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The open parent of a differencing disk.
    pub fn parent(&self) -> Option<&Parent> {
        self.parent.as_ref()
    }

    /// Whether new blocks are synced to disk before the BAT links them
    /// (on by default; off for images being built into a temporary file).
    pub fn set_write_barriers(&mut self, on: bool) {
        self.barriers = on;
    }

    fn is_differencing(&self) -> bool {
        self.vhd_type() == VhdType::Differencing
    }

    /// The engine's view of a sparse disk's blocks.
    fn blocks<'a>(&'a self, sparse: &'a Sparse) -> VhdBlocks<'a> {
        VhdBlocks { disk: self, sparse }
    }
}

impl VirtualDisk for VhdDisk {
    fn virtual_size(&self) -> u64 {
        self.footer.current_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.virtual_size(), offset, buf.len())?;
        let Some(sparse) = &self.sparse else {
            let avail = self.data_end.saturating_sub(offset).min(buf.len() as u64) as usize;
            buf[avail..].fill(0);
            return self
                .storage
                .read_at_or_zero(&mut buf[..avail], offset)
                .map_err(io_err("VHD data", offset));
        };
        layer::read(&self.blocks(sparse), buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(self.virtual_size(), offset, buf.len())?;
        self.ensure_writable()?;
        if buf.is_empty() {
            return Ok(());
        }
        if self.sparse.is_none() {
            return self
                .storage
                .write_at(buf, offset)
                .map_err(io_err("VHD data", offset));
        }
        if self.is_differencing() {
            // Sectors become present in whole groups of eight (one bitmap
            // byte): the partial groups at both ends are merged with what
            // they read as now. Whole bytes are also what libvhdi reads
            // right; it misreads a byte that is neither 0x00 nor 0xff.
            let size = self.virtual_size();
            let read = |b: &mut [u8], o: u64| self.read_at(b, o);
            if let Some((merged, at)) = layer::widen(read, size, BITMAP_GROUP, buf, offset)? {
                return self.write_sparse(&merged, at);
            }
        }
        self.write_sparse(buf, offset)
    }

    fn flush(&mut self) -> Result<()> {
        self.storage.flush().map_err(io_err("VHD file", 0))
    }

    fn parent_disk(&self) -> Option<&dyn VirtualDisk> {
        self.parent().and_then(Parent::open_disk)
    }

    fn map(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let size = self.virtual_size();
        let end = offset.saturating_add(length).min(size);
        let mut list = ExtentList::default();
        let Some(sparse) = &self.sparse else {
            list.push(
                offset,
                end.saturating_sub(offset),
                ExtentKind::Data,
                Some(offset),
            );
            return Ok(list.into_vec());
        };
        layer::map(&self.blocks(sparse), offset, end)
    }

    fn info(&self) -> ImageInfo {
        self.image_info()
    }

    fn parent_link_id(&self) -> Option<Uuid> {
        Some(self.footer.unique_id())
    }
}

/// The path of an open VHD, if it came from a file.
impl VhdDisk {
    /// Path the image was opened from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}
