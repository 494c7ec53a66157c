//! Opening a VHD: choosing the footer, reading the dynamic header and the
//! BAT, and what the image records about its parent.

use std::path::{Path, PathBuf};

use super::dynamic_header::{self, DynamicHeader, HEADER_SIZE};
use super::footer::{self, FOOTER_COOKIE, FOOTER_SIZE, Footer, VhdType};
use super::geometry::SECTOR;
use super::{
    FooterSource, LEGACY_FOOTER_SIZE, Sparse, VhdDisk, bat, parent_locator, read_footer_at,
    sparse_type_code,
};
use crate::chain::ChildLayer;
use crate::damage::PastEnd;
use crate::error::{Error, Result};
use crate::fixed::FixedStruct;
use crate::io::{Storage, io_err, read_struct};
use crate::layer::BitmapCache;
use crate::parent::{Candidate, Parent, ParentSpec};
use crate::report::{Warning, WarningKind};

impl VhdDisk {
    /// Open the VHD held in `storage` alone: a differencing disk comes
    /// without its parent, which [`crate::unstable::chain`] opens from
    /// what the image records about it and attaches
    /// ([`VhdDisk::open`] does both).
    pub fn open_layer(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &crate::OpenOptions,
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
                let field = off + footer::CHECKSUM_FIELD as u64;
                warnings.push(
                    Warning::new(
                        WarningKind::CopyUnusable,
                        format!(
                            "VHD footer at {off:#x}: bad checksum (its checksum field at {field:#x}): stored {:#010x}, computed {:#010x}; using the copy at offset 0",
                            f.checksum,
                            f.compute_checksum()
                        ),
                    )
                    .at("VHD footer", off),
                );
                (c, FooterSource::Copy, off)
            }
            (Some((f, src, off)), _) => {
                let field = off + footer::CHECKSUM_FIELD as u64;
                warnings.push(
                    Warning::new(
                        WarningKind::Checksum,
                        format!(
                            "VHD footer at {off:#x}: bad checksum (its checksum field at {field:#x}): stored {:#010x}, computed {:#010x}",
                            f.checksum,
                            f.compute_checksum()
                        ),
                    )
                    .at("VHD footer", off),
                );
                (f, src, off)
            }
            (None, Some(c)) => {
                if !copy_valid {
                    warnings.push(
                        Warning::new(
                            WarningKind::Checksum,
                            format!(
                                "VHD footer copy at 0x0: bad checksum (its checksum field at {:#x}): stored {:#010x}, computed {:#010x}",
                                footer::CHECKSUM_FIELD,
                                c.checksum,
                                c.compute_checksum()
                            ),
                        )
                        .at("VHD footer copy", 0),
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
                            "VHD footer copy at 0x0: bad checksum (its checksum field at {:#x}): stored {:#010x}, computed {:#010x}",
                            footer::CHECKSUM_FIELD,
                            c.checksum,
                            c.compute_checksum()
                        ),
                    )
                    .at("VHD footer copy", 0)
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
            bitmap_cache: BitmapCache::default(),
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
            let field = header_offset + dynamic_header::CHECKSUM_FIELD as u64;
            self.warnings.push(
                Warning::new(
                    WarningKind::Checksum,
                    format!(
                        "VHD dynamic header at {header_offset:#x}: bad checksum (its checksum field at {field:#x}): stored {:#010x}, computed {:#010x}",
                        header.checksum,
                        header.compute_checksum()
                    ),
                )
                .at("VHD dynamic header", header_offset),
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
        // Blocks past the end of the data: one warning per run of
        // consecutive blocks, as `check` reports them.
        let mut past = PastEnd::default();
        for (i, &e) in bat.iter().enumerate().take(used) {
            if e == bat::UNUSED {
                continue;
            }
            let start = u64::from(e) * SECTOR;
            let stop = start + bitmap_size + block_size;
            if stop > footer_offset {
                past.add(i as u64, start);
            }
            next_free = next_free.max(stop);
        }
        self.warnings
            .extend(past.warnings("VHD block", footer_offset));
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
            bitmap_cache: BitmapCache::default(),
            data_end: len.saturating_sub(FOOTER_SIZE as u64),
            salvage: None,
        };
        if d.vhd_type() != VhdType::Fixed {
            d.load_sparse(len, len - FOOTER_SIZE as u64)?;
        }
        Ok(d)
    }
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

impl ChildLayer for VhdDisk {
    fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn parent_spec(&self) -> Result<Option<ParentSpec>> {
        if self.vhd_type() != VhdType::Differencing {
            return Ok(None);
        }
        VhdDisk::parent_spec(self).map(Some)
    }

    fn attach_parent(&mut self, parent: Parent) {
        self.parent = Some(parent);
    }
}
