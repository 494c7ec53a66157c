//! Virtual Hard Disk (VHD): fixed, dynamic and differencing disks, as in
//! the "Virtual Hard Disk Image Format Specification" (2006).
//!
//! Layout: fixed disks are the data followed by a [`footer::Footer`];
//! dynamic and differencing disks are a footer copy, a
//! [`dynamic_header::DynamicHeader`], the [`bat`], blocks (each a sector
//! bitmap then data) and the footer.

pub mod bat;
pub mod check;
pub mod create;
pub mod dynamic_header;
pub mod footer;
pub mod geometry;
mod info;
pub mod parent_locator;

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::damage::Stored;
use crate::disk::{
    Extent, ExtentKind, ExtentList, VirtualDisk, block_pieces, check_range, is_zero, presence_runs,
};
use crate::error::{Error, ErrorKind, Result};
use crate::io::{Storage, io_err, read_struct};
use crate::parent::{Candidate, Chain, Parent, ParentSpec};
use crate::report::{ImageInfo, Warning, WarningKind};
use dynamic_header::{DynamicHeader, HEADER_SIZE};
use footer::{FOOTER_COOKIE, FOOTER_SIZE, Footer, VhdType};
use geometry::SECTOR;

pub use create::{VhdBuilder, create};

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
    /// Open a VHD held in `storage`.
    pub fn open(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &crate::OpenOptions,
        chain: &Chain,
    ) -> Result<VhdDisk> {
        let len = storage.len().map_err(io_err("VHD file", 0))?;
        if len < FOOTER_SIZE as u64 {
            return Err(Error::corrupt(
                "VHD footer",
                0,
                format!("file of {len} bytes is too small to hold a 512-byte footer"),
            ));
        }
        let mut warnings = Vec::new();

        // The footer at the end: 512 bytes, or 511 in legacy images.
        let mut end: Option<(Footer, FooterSource, u64)> = None;
        for (size, src) in [
            (FOOTER_SIZE, FooterSource::End),
            (LEGACY_FOOTER_SIZE as usize, FooterSource::EndLegacy),
        ] {
            let off = len - size as u64;
            let f = read_footer_at(storage.as_ref(), off, size)?;
            if f.cookie == FOOTER_COOKIE {
                end = Some((f, src, off));
                break;
            }
        }
        let end_ok = end.as_ref().is_some_and(|(f, _, _)| f.checksum_ok());
        // The copy at offset 0, present in dynamic and differencing disks.
        let copy = if len >= 2 * FOOTER_SIZE as u64 {
            let f = read_footer_at(storage.as_ref(), 0, FOOTER_SIZE)?;
            (f.cookie == FOOTER_COOKIE && sparse_type_code(&f.to_bytes())).then_some(f)
        } else {
            None
        };
        let copy_valid = copy.as_ref().is_some_and(|f| f.checksum_ok());

        let (footer, source, footer_offset) = match (end, copy) {
            (Some((f, src, off)), _) if end_ok => (f, src, off),
            (Some((f, _, off)), Some(c)) if copy_valid => {
                let at = off + footer::CHECKSUM_FIELD as u64;
                warnings.push(
                    Warning::new(
                        WarningKind::CopyUnusable,
                        format!(
                            "VHD footer at {at:#x}: bad checksum: stored {:#010x}, computed {:#010x}; using the copy at offset 0",
                            f.checksum,
                            f.compute_checksum()
                        ),
                    )
                    .at("VHD footer", at),
                );
                (c, FooterSource::Copy, off)
            }
            (Some((f, src, off)), _) => {
                let at = off + footer::CHECKSUM_FIELD as u64;
                warnings.push(
                    Warning::new(
                        WarningKind::Checksum,
                        format!(
                            "VHD footer at {at:#x}: bad checksum: stored {:#010x}, computed {:#010x}",
                            f.checksum,
                            f.compute_checksum()
                        ),
                    )
                    .at("VHD footer", at),
                );
                (f, src, off)
            }
            (None, Some(c)) => {
                if !copy_valid {
                    warnings.push(
                        Warning::new(
                            WarningKind::Checksum,
                            format!(
                                "VHD footer copy at {:#x}: bad checksum: stored {:#010x}, computed {:#010x}",
                                footer::CHECKSUM_FIELD,
                                c.checksum,
                                c.compute_checksum()
                            ),
                        )
                        .at("VHD footer copy", footer::CHECKSUM_FIELD as u64),
                    );
                }
                let at = len - FOOTER_SIZE as u64;
                warnings.push(
                    Warning::new(
                        WarningKind::CopyUnusable,
                        format!(
                            "no footer at the end of the file (offset {at:#x}); using the copy at offset 0"
                        ),
                    )
                    .at("VHD footer", at),
                );
                (c, FooterSource::Copy, len)
            }
            (None, None) => {
                return Err(Error::corrupt(
                    "VHD footer",
                    len - FOOTER_SIZE as u64,
                    "no \"conectix\" cookie at the end of the file or at offset 0",
                ));
            }
        };
        let footer_at = if source == FooterSource::Copy {
            0
        } else {
            footer_offset
        };
        let kind = footer.validate(footer_at)?;

        let mut copy_ok = true;
        if kind != VhdType::Fixed && source != FooterSource::Copy {
            let c = read_footer_at(storage.as_ref(), 0, FOOTER_SIZE)?;
            copy_ok = c.cookie == FOOTER_COOKIE && c.checksum_ok() && c == footer;
            if !copy_ok {
                warnings.push(if c.cookie != FOOTER_COOKIE {
                    Warning::new(
                        WarningKind::CopyUnusable,
                        "footer copy at offset 0 is missing",
                    )
                    .at("VHD footer copy", 0)
                } else if !c.checksum_ok() {
                    Warning::new(
                        WarningKind::CopyUnusable,
                        format!(
                            "VHD footer copy at {:#x}: bad checksum: stored {:#010x}, computed {:#010x}",
                            footer::CHECKSUM_FIELD,
                            c.checksum,
                            c.compute_checksum()
                        ),
                    )
                    .at("VHD footer copy", footer::CHECKSUM_FIELD as u64)
                } else {
                    Warning::new(
                        WarningKind::CopyDiffers,
                        "footer copy at offset 0 differs from the footer at the end",
                    )
                    .at("VHD footer copy", 0)
                });
            }
        }

        let mut disk = VhdDisk {
            storage,
            path,
            footer,
            footer_source: source,
            copy_ok,
            sparse: None,
            parent: None,
            warnings,
            barriers: true,
            data_end: footer_offset,
            salvage: opts.salvage.clone(),
        };
        match kind {
            VhdType::Fixed => {
                let data_end = footer_offset;
                if data_end < disk.footer.current_size {
                    disk.warnings.push(
                        Warning::new(
                            WarningKind::Truncated,
                            format!(
                                "file holds {data_end} data bytes before the footer but the disk is {} bytes; the rest reads as zeros",
                                disk.footer.current_size
                            ),
                        )
                        .at("VHD data", data_end),
                    );
                }
            }
            VhdType::Dynamic | VhdType::Differencing => {
                disk.load_sparse(len, footer_offset)?;
            }
        }
        if kind == VhdType::Differencing {
            let spec = disk.parent_spec()?;
            let parent = crate::parent::resolve(disk.path.as_deref(), &spec, opts, chain)?;
            disk.parent = Some(parent);
        }
        Ok(disk)
    }

    fn load_sparse(&mut self, len: u64, footer_offset: u64) -> Result<()> {
        let header_offset = self.footer.data_offset;
        if header_offset
            .checked_add(HEADER_SIZE as u64)
            .is_none_or(|e| e > len)
        {
            let footer_at = match self.footer_source {
                FooterSource::Copy => 0,
                _ => footer_offset,
            };
            return Err(Error::corrupt(
                "VHD footer",
                footer_at + 16,
                format!(
                    "dynamic header offset {header_offset:#x} lies outside the {len:#x}-byte file"
                ),
            ));
        }
        let mut b = [0u8; HEADER_SIZE];
        read_struct(
            self.storage.as_ref(),
            "VHD dynamic header",
            &mut b,
            header_offset,
        )?;
        let header = DynamicHeader::parse(&b, header_offset)?;
        header.validate(header_offset, self.footer.current_size, len)?;
        if !header.checksum_ok() {
            let at = header_offset + dynamic_header::CHECKSUM_FIELD as u64;
            self.warnings.push(
                Warning::new(
                    WarningKind::Checksum,
                    format!(
                        "VHD dynamic header at {at:#x}: bad checksum: stored {:#010x}, computed {:#010x}",
                        header.checksum,
                        header.compute_checksum()
                    ),
                )
                .at("VHD dynamic header", at),
            );
        }
        let bat = bat::load(
            self.storage.as_ref(),
            header.table_offset,
            header.max_table_entries,
        )?;
        let block_size = u64::from(header.block_size);
        let bitmap_size = (block_size / SECTOR).div_ceil(8).div_ceil(SECTOR) * SECTOR;
        let used = self.footer.current_size.div_ceil(block_size) as usize;
        let mut next_free = footer_offset.div_ceil(SECTOR) * SECTOR;
        for (i, &e) in bat.iter().enumerate().take(used) {
            if e == bat::UNUSED {
                continue;
            }
            let start = u64::from(e) * SECTOR;
            let stop = start + bitmap_size + block_size;
            if stop > footer_offset {
                self.warnings.push(
                    Warning::new(
                        WarningKind::Truncated,
                        format!(
                            "block {i} at {start:#x} extends past the end of the data at {footer_offset:#x}; what lies past the end of the file cannot be read"
                        ),
                    )
                    .at("VHD block", start),
                );
            }
            next_free = next_free.max(stop);
        }
        self.warn_overlaps(
            &header,
            header_offset,
            &bat[..used.min(bat.len())],
            bitmap_size + block_size,
        );
        self.sparse = Some(Sparse {
            header,
            header_offset,
            bat,
            block_size,
            bitmap_size,
            next_free,
        });
        Ok(())
    }

    /// Warn about blocks that overlap the metadata or each other: a write
    /// through one would corrupt the other, so such an image must be
    /// repaired before it is written. One warning per kind of overlap, so
    /// that a hostile table cannot make millions of messages.
    fn warn_overlaps(&mut self, header: &DynamicHeader, hoff: u64, bat: &[u32], span: u64) {
        let mut meta: Vec<(u64, u64, String)> = vec![
            (0, FOOTER_SIZE as u64, "footer copy".to_string()),
            (
                hoff,
                hoff + HEADER_SIZE as u64,
                "dynamic header".to_string(),
            ),
            (
                header.table_offset,
                header.table_offset + bat::table_bytes(header.max_table_entries),
                "block allocation table".to_string(),
            ),
        ];
        for (i, e) in header.parent_locators.iter().enumerate() {
            if e.is_used() && e.platform_data_length > 0 {
                let start = e.platform_data_offset;
                if let Some(end) = start.checked_add(u64::from(e.platform_data_length)) {
                    meta.push((start, end, format!("parent locator {i} data")));
                }
            }
        }
        // (sector, index) pairs of 8 bytes, allocated once: a table of
        // millions of entries costs twice its size in the file.
        let count = bat.iter().filter(|&&e| e != bat::UNUSED).count();
        let mut blocks: Vec<(u32, u32)> = Vec::with_capacity(count);
        blocks.extend(
            bat.iter()
                .enumerate()
                .filter(|&(_, &e)| e != bat::UNUSED)
                .map(|(i, &e)| (e, i as u32)),
        );
        let mut on_meta: Option<String> = None;
        let mut on_meta_count = 0usize;
        for &(sector, i) in &blocks {
            let (start, i) = (u64::from(sector) * SECTOR, i as usize);
            if let Some((ms, me, what)) = meta
                .iter()
                .find(|(ms, me, _)| start < *me && *ms < start + span)
            {
                on_meta_count += 1;
                on_meta.get_or_insert_with(|| {
                    format!(
                        "block {i} at {start:#x} (BAT entry at {:#x}) overlaps the {what} at {ms:#x}..{me:#x}",
                        bat::entry_offset(header.table_offset, i)
                    )
                });
            }
        }
        if let Some(w) = on_meta {
            self.warnings.push(
                Warning::new(
                    WarningKind::Overlap,
                    format!("{w} ({on_meta_count} such block(s))"),
                )
                .in_structure("VHD block allocation table"),
            );
        }
        blocks.sort_unstable();
        let mut shared: Option<String> = None;
        let mut shared_count = 0usize;
        for w in blocks.windows(2) {
            let ((a, ia), (b, ib)) = (w[0], w[1]);
            let (a, b) = (u64::from(a) * SECTOR, u64::from(b) * SECTOR);
            let (ia, ib) = (ia as usize, ib as usize);
            if b < a + span {
                shared_count += 1;
                shared.get_or_insert_with(|| {
                    format!(
                        "blocks {ia} and {ib} overlap at {a:#x} and {b:#x} (BAT entries at {:#x} and {:#x})",
                        bat::entry_offset(header.table_offset, ia),
                        bat::entry_offset(header.table_offset, ib)
                    )
                });
            }
        }
        if let Some(w) = shared {
            self.warnings.push(
                Warning::new(
                    WarningKind::Overlap,
                    format!("{w} ({shared_count} overlap(s))"),
                )
                .in_structure("VHD block allocation table"),
            );
        }
    }

    /// Where the parent may be, best first: the relative locators (W2ru,
    /// Wi2r), the absolute ones (W2ku, Wi2k, MacX), then the parent's name
    /// beside the child.
    fn parent_spec(&self) -> Result<ParentSpec> {
        let sparse = self.sparse.as_ref().expect("differencing disks are sparse");
        parent_spec_of(self.storage.as_ref(), &sparse.header, sparse.header_offset)
    }

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

    pub(crate) fn from_parts(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        footer: Footer,
        parent: Option<Parent>,
    ) -> Result<VhdDisk> {
        let len = storage.len().map_err(io_err("VHD file", 0))?;
        let mut d = VhdDisk {
            storage,
            path,
            footer,
            footer_source: FooterSource::End,
            copy_ok: true,
            sparse: None,
            parent,
            warnings: Vec::new(),
            barriers: true,
            data_end: len.saturating_sub(FOOTER_SIZE as u64),
            salvage: None,
        };
        if d.vhd_type() != VhdType::Fixed {
            d.load_sparse(len, len - FOOTER_SIZE as u64)?;
        }
        Ok(d)
    }

    fn is_differencing(&self) -> bool {
        self.vhd_type() == VhdType::Differencing
    }

    fn parent_read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.parent {
            Some(p) => p.read_at(buf, offset),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// What a read of block `block` (at BAT `entry`) names when the file
    /// does not hold it.
    fn stored(&self, sparse: &Sparse, block: usize, entry: u32) -> Stored<'_> {
        Stored {
            structure: "VHD block",
            block: block as u64,
            block_offset: sparse.block_file_offset(entry),
            block_len: sparse.bitmap_size + sparse.block_size,
            path: self.path.as_deref(),
            salvage: self.salvage.as_deref(),
            reserved_len: 0,
        }
    }

    /// The sector bitmap of the block at `entry`, or `None` when the file
    /// ends before it is complete (a damaged block).
    fn read_bitmap_if_present(&self, sparse: &Sparse, entry: u32) -> Result<Option<Vec<u8>>> {
        let off = sparse.block_file_offset(entry);
        let mut bm = vec![0u8; sparse.bitmap_size as usize];
        match self.storage.read_at(&mut bm, off) {
            Ok(()) => Ok(Some(bm)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(io_err("VHD sector bitmap", off)(e)),
        }
    }

    fn read_bitmap(&self, sparse: &Sparse, entry: u32) -> Result<Vec<u8>> {
        let off = sparse.block_file_offset(entry);
        let mut bm = vec![0u8; sparse.bitmap_size as usize];
        self.storage
            .read_at_or_zero(&mut bm, off)
            .map_err(io_err("VHD sector bitmap", off))?;
        Ok(bm)
    }

    /// Read `out` from block `block` at `in_off` inside it; `vpos` is the
    /// virtual disk offset of `out[0]`. A block the file does not fully
    /// hold is an error, or under salvage reads as zeros where it is
    /// missing.
    fn read_block(&self, block: usize, in_off: u64, out: &mut [u8], vpos: u64) -> Result<()> {
        let sparse = self.sparse.as_ref().expect("sparse");
        let entry = sparse.bat[block];
        if entry == bat::UNUSED {
            return if self.is_differencing() {
                self.parent_read(out, vpos)
            } else {
                out.fill(0);
                Ok(())
            };
        }
        let stored = self.stored(sparse, block, entry);
        let data = sparse.block_file_offset(entry) + sparse.bitmap_size;
        if !self.is_differencing() {
            return stored.read(self.storage.as_ref(), out, data + in_off, vpos);
        }
        let Some(bitmap) = self.read_bitmap_if_present(sparse, entry)? else {
            // Without its bitmap nothing of the block can be read: the
            // bitmap comes first, so its data is missing too.
            let file_len = self.storage.len().map_err(io_err("VHD file", 0))?;
            out.fill(0);
            let from = file_len.max(sparse.block_file_offset(entry));
            return stored.missing(from, file_len, vpos, out.len() as u64);
        };
        for (start, len, present) in sector_runs(&bitmap, in_off, out.len() as u64) {
            let piece = &mut out[(start - in_off) as usize..(start - in_off + len) as usize];
            let at = vpos + (start - in_off);
            if present {
                stored.read(self.storage.as_ref(), piece, data + start, at)?;
            } else {
                self.parent_read(piece, at)?;
            }
        }
        Ok(())
    }

    fn ensure_writable(&self) -> Result<()> {
        crate::disk::ensure_writable(self.storage.as_ref(), &self.warnings, self.parent.as_ref())
    }

    /// Append a new block: footer at the new end first, made durable
    /// before the bitmap overwrites the old footer (otherwise a crash could
    /// leave the file ending in a bitmap), then the bitmap. The caller
    /// writes the data and links the block into the BAT last.
    fn allocate_block(&mut self) -> Result<u32> {
        let diff = self.is_differencing();
        let sparse = self.sparse.as_mut().expect("sparse");
        let start = sparse.next_free;
        let entry = u32::try_from(start / SECTOR)
            .ok()
            .filter(|&e| e != bat::UNUSED)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    "the file has grown past the 2 TiB that VHD block offsets can address",
                )
            })?;
        let new_end = start + sparse.bitmap_size + sparse.block_size;
        let fb = self.footer.to_bytes();
        self.storage
            .write_at(&fb, new_end)
            .map_err(io_err("VHD footer", new_end))?;
        if self.barriers {
            self.storage.flush().map_err(io_err("VHD file", 0))?;
        }
        // Dynamic disks mark every sector present (the block reads as
        // zeros until written); differencing disks start with none present.
        let fill = if diff { 0x00 } else { 0xff };
        let bm = vec![fill; sparse.bitmap_size as usize];
        self.storage
            .write_at(&bm, start)
            .map_err(io_err("VHD sector bitmap", start))?;
        sparse.next_free = new_end;
        Ok(entry)
    }

    fn link_block(&mut self, block: usize, entry: u32) -> Result<()> {
        if self.barriers {
            self.storage.flush().map_err(io_err("VHD file", 0))?;
        }
        let sparse = self.sparse.as_mut().expect("sparse");
        let off = bat::entry_offset(sparse.header.table_offset, block);
        self.storage
            .write_at(&entry.to_be_bytes(), off)
            .map_err(io_err("VHD block allocation table", off))?;
        sparse.bat[block] = entry;
        Ok(())
    }

    /// Write `data` into block `block` at `in_off` (sector-aligned for
    /// differencing disks).
    fn write_block(&mut self, block: usize, in_off: u64, data: &[u8]) -> Result<()> {
        let diff = self.is_differencing();
        let sparse = self.sparse.as_ref().expect("sparse");
        let mut entry = sparse.bat[block];
        let fresh = entry == bat::UNUSED;
        if fresh {
            if !diff && is_zero(data) {
                return Ok(());
            }
            entry = self.allocate_block()?;
        }
        let sparse = self.sparse.as_ref().expect("sparse");
        let base = sparse.block_file_offset(entry);
        let data_off = base + sparse.bitmap_size + in_off;
        self.storage
            .write_at(data, data_off)
            .map_err(io_err("VHD block", data_off))?;
        if diff {
            let mut bm = self.read_bitmap(sparse, entry)?;
            let first = in_off / SECTOR;
            let last = (in_off + data.len() as u64).div_ceil(SECTOR);
            let mut changed = false;
            for s in first..last {
                let (byte, mask) = ((s / 8) as usize, 0x80u8 >> (s % 8));
                if bm[byte] & mask == 0 {
                    bm[byte] |= mask;
                    changed = true;
                }
            }
            if changed {
                // In a linked block, sectors must not become present
                // before their data is durable, or a crash would expose
                // stale bytes in place of the parent's.
                if !fresh && self.barriers {
                    self.storage.flush().map_err(io_err("VHD file", 0))?;
                }
                self.storage
                    .write_at(&bm, base)
                    .map_err(io_err("VHD sector bitmap", base))?;
            }
        }
        if fresh {
            self.link_block(block, entry)?;
        }
        Ok(())
    }

    fn write_sparse(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let bs = self.sparse.as_ref().expect("sparse").block_size;
        for p in block_pieces(offset, buf.len() as u64, bs) {
            self.write_block(p.block as usize, p.in_block, &buf[p.done..p.done + p.len])?;
        }
        Ok(())
    }
}

/// Runs of equal presence in a VHD sector bitmap (most-significant bit
/// first) over the byte range `[in_off, in_off + len)` of a block, as
/// `(start, length, present)` in bytes from the block's start.
pub fn sector_runs(bitmap: &[u8], in_off: u64, len: u64) -> Vec<(u64, u64, bool)> {
    presence_runs(in_off, len, SECTOR, |s| {
        bitmap
            .get((s / 8) as usize)
            .is_some_and(|b| b & (0x80 >> (s % 8)) != 0)
    })
}

/// Where the parent of a differencing VHD whose dynamic header (at
/// `header_offset`) is `header` may be, best first: the relative locators
/// (W2ru, Wi2r), the absolute ones (W2ku, Wi2k, MacX), then the parent's
/// name beside the child.
fn parent_spec_of(
    storage: &dyn Storage,
    header: &DynamicHeader,
    header_offset: u64,
) -> Result<ParentSpec> {
    let mut relative = Vec::new();
    let mut absolute = Vec::new();
    for (i, entry) in header.parent_locators.iter().enumerate() {
        if !entry.is_used() {
            continue;
        }
        let loc = entry.decode(storage)?;
        if let Some(p) = loc.path.filter(|p| !p.is_empty()) {
            let c = Candidate {
                recorded: p,
                relative: loc.relative,
                structure: "VHD parent locator",
                offset: header_offset
                    + dynamic_header::LOCATORS_FIELD
                    + i as u64 * parent_locator::ENTRY_SIZE,
            };
            if loc.relative {
                relative.push(c);
            } else {
                absolute.push(c);
            }
        }
    }
    let mut candidates = relative;
    candidates.extend(absolute);
    let name = header.parent_name();
    if let Some(base) = name.rsplit(['\\', '/']).next().filter(|b| !b.is_empty()) {
        candidates.push(Candidate {
            recorded: base.to_string(),
            relative: true,
            structure: "VHD dynamic header",
            offset: header_offset + dynamic_header::PARENT_NAME_FIELD,
        });
    }
    Ok(ParentSpec {
        candidates,
        expected_id: header.parent_unique_id(),
        id_name: crate::parent::UNIQUE_ID,
    })
}

/// The parent record of the VHD in `storage`, read from its footer and
/// dynamic header only (no BAT): `None` when it is not a differencing
/// disk. For finding an image's children cheaply.
pub fn parent_spec_from_headers(storage: &dyn Storage) -> Result<Option<ParentSpec>> {
    let len = storage.len().map_err(io_err("VHD file", 0))?;
    let mut footer = None;
    for (size, off) in [
        (FOOTER_SIZE, len.checked_sub(FOOTER_SIZE as u64)),
        (
            LEGACY_FOOTER_SIZE as usize,
            len.checked_sub(LEGACY_FOOTER_SIZE),
        ),
        (FOOTER_SIZE, (len >= 2 * FOOTER_SIZE as u64).then_some(0)),
    ] {
        let Some(off) = off else { continue };
        let f = read_footer_at(storage, off, size)?;
        if f.cookie == FOOTER_COOKIE {
            footer = Some((f, off));
            break;
        }
    }
    let Some((footer, at)) = footer else {
        return Ok(None);
    };
    if footer.validate(at)? != VhdType::Differencing {
        return Ok(None);
    }
    let header_offset = footer.data_offset;
    if header_offset
        .checked_add(HEADER_SIZE as u64)
        .is_none_or(|e| e > len)
    {
        return Ok(None);
    }
    let mut b = [0u8; HEADER_SIZE];
    read_struct(storage, "VHD dynamic header", &mut b, header_offset)?;
    let header = DynamicHeader::parse(&b, header_offset)?;
    parent_spec_of(storage, &header, header_offset).map(Some)
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
        for p in block_pieces(offset, buf.len() as u64, sparse.block_size) {
            let out = &mut buf[p.done..p.done + p.len];
            self.read_block(p.block as usize, p.in_block, out, p.pos)?;
        }
        Ok(())
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
        let end = offset + buf.len() as u64;
        if self.is_differencing() {
            // Sectors become present in whole groups of eight (one bitmap
            // byte): merge the partial groups at both ends with what they
            // read as now (possibly from the parent). Whole bytes are also
            // what libvhdi reads right; it misreads a byte that is neither
            // 0x00 nor 0xff.
            let size = self.virtual_size();
            let a = offset / BITMAP_GROUP * BITMAP_GROUP;
            let b = (end.div_ceil(BITMAP_GROUP) * BITMAP_GROUP).min(size);
            if a < offset || end < b {
                let mut merged = vec![0u8; (b - a) as usize];
                let head_end = (a + BITMAP_GROUP).min(b);
                if a < offset {
                    self.read_at(&mut merged[..(head_end - a) as usize], a)?;
                }
                let tail = (end - 1) / BITMAP_GROUP * BITMAP_GROUP;
                if end < b && (a == offset || tail >= head_end) {
                    self.read_at(&mut merged[(tail - a) as usize..], tail)?;
                }
                merged[(offset - a) as usize..(end - a) as usize].copy_from_slice(buf);
                return self.write_sparse(&merged, a);
            }
        }
        self.write_sparse(buf, offset)
    }

    fn flush(&mut self) -> Result<()> {
        self.storage.flush().map_err(io_err("VHD file", 0))
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
        let absent = if self.is_differencing() {
            ExtentKind::Parent
        } else {
            ExtentKind::Zero
        };
        for p in block_pieces(offset, end.saturating_sub(offset), sparse.block_size) {
            let (pos, in_off, n) = (p.pos, p.in_block, p.len as u64);
            let entry = sparse.bat[p.block as usize];
            if entry == bat::UNUSED {
                list.push(pos, n, absent, None);
            } else {
                let data = sparse.block_file_offset(entry) + sparse.bitmap_size;
                if self.is_differencing() {
                    let bm = self.read_bitmap(sparse, entry)?;
                    for (s, l, present) in sector_runs(&bm, in_off, n) {
                        let vpos = pos - in_off + s;
                        if present {
                            list.push(vpos, l, ExtentKind::Data, Some(data + s));
                        } else {
                            list.push(vpos, l, ExtentKind::Parent, None);
                        }
                    }
                } else {
                    list.push(pos, n, ExtentKind::Data, Some(data + in_off));
                }
            }
        }
        Ok(list.into_vec())
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
