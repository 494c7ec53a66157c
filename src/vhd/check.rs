//! Consistency check and repair of a VHD, working on the file itself so that
//! it also reports images too damaged to open.

use super::bat;
use super::dynamic_header::{DynamicHeader, HEADER_SIZE};
use super::footer::{FOOTER_COOKIE, FOOTER_SIZE, Footer, VhdType};
use super::geometry::SECTOR;
use super::{LEGACY_FOOTER_SIZE, read_footer_at};
use crate::damage::{MissingBlock, MissingRuns};
use crate::error::Result;
use crate::fixed::FixedStruct;
use crate::io::{Storage, io_err, read_struct};
use crate::report::{CheckReport, FindingKind, Severity};

/// A byte range of the file and what occupies it.
#[derive(Debug, Clone)]
struct Region {
    start: u64,
    end: u64,
    what: String,
}

/// Findings of one kind listed before the rest are only counted.
pub const MAX_LISTED: usize = 1000;

/// The kinds of block table findings, each listed up to [`MAX_LISTED`].
#[derive(Clone, Copy)]
enum Kind {
    BeyondSize,
    PastEnd,
    OnMeta,
    Shared,
    Leak,
    /// Unreferenced space that is a hole in the file: it takes no room
    /// (what a quick compact leaves).
    Punched,
    /// Unreferenced space before the first block: a block table that a
    /// grow moved to the end (or an interrupted grow's leftovers). Stored,
    /// but no leaked block: said, with what gives it back.
    BeforeBlocks,
}

impl Kind {
    /// Severity, structure, and what the unlisted ones are.
    fn describe(self) -> (Severity, &'static str, &'static str) {
        const TABLE: &str = "VHD block allocation table";
        match self {
            Kind::BeyondSize => (Severity::Info, TABLE, "entries beyond the virtual size"),
            Kind::PastEnd => (Severity::Error, TABLE, "blocks past the end of the data"),
            Kind::OnMeta => (Severity::Error, TABLE, "blocks overlapping metadata"),
            Kind::Shared => (Severity::Error, TABLE, "overlapping pairs of blocks"),
            Kind::Leak => (Severity::Leak, "VHD file", "unreferenced ranges"),
            Kind::Punched => (
                Severity::Info,
                "VHD file",
                "unreferenced ranges that are holes in the file",
            ),
            Kind::BeforeBlocks => (
                Severity::Info,
                "VHD file",
                "unreferenced ranges before the first block",
            ),
        }
    }

    /// The kind of finding, listed or counted.
    fn finding_kind(self) -> FindingKind {
        match self {
            Kind::BeyondSize => FindingKind::BeyondSize,
            Kind::PastEnd => FindingKind::OutOfBounds,
            Kind::OnMeta | Kind::Shared => FindingKind::Overlap,
            Kind::Leak | Kind::Punched | Kind::BeforeBlocks => FindingKind::Leak,
        }
    }
}

/// Counts of the findings of each [`Kind`].
#[derive(Default)]
struct Listed([usize; 7]);

impl Listed {
    /// Add a finding of `kind` (its message made only when it is listed).
    fn add(
        &mut self,
        report: &mut CheckReport,
        kind: Kind,
        offset: Option<u64>,
        message: impl FnOnce() -> String,
    ) {
        let n = &mut self.0[kind as usize];
        *n += 1;
        if *n <= MAX_LISTED {
            let (severity, structure, _) = kind.describe();
            report.add(severity, kind.finding_kind(), structure, offset, message());
        }
    }

    /// One finding per kind for what was counted but not listed.
    fn summarize(&self, report: &mut CheckReport) {
        for kind in [
            Kind::BeyondSize,
            Kind::PastEnd,
            Kind::OnMeta,
            Kind::Shared,
            Kind::Leak,
            Kind::Punched,
            Kind::BeforeBlocks,
        ] {
            let n = self.0[kind as usize];
            if n > MAX_LISTED {
                let (severity, structure, what) = kind.describe();
                report.add(
                    severity,
                    kind.finding_kind(),
                    structure,
                    None,
                    format!("{n} {what} in all; only the first {MAX_LISTED} are listed"),
                );
            }
        }
    }
}

/// Two ascending sequences of ranges merged into one ascending sequence.
fn merge_sorted(
    a: impl Iterator<Item = (u64, u64)>,
    b: impl Iterator<Item = (u64, u64)>,
) -> impl Iterator<Item = (u64, u64)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x <= y => a.next(),
        (Some(_), Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

/// What the checker learnt about the footers, for repair.
struct Footers {
    end: Option<Footer>,
    end_offset: u64,
    copy: Option<Footer>,
}

fn read_footers(storage: &dyn Storage, len: u64) -> Result<Footers> {
    let mut end = None;
    let mut end_offset = len.saturating_sub(FOOTER_SIZE as u64);
    for size in [FOOTER_SIZE, LEGACY_FOOTER_SIZE as usize] {
        if len < size as u64 {
            continue;
        }
        let off = len - size as u64;
        let f = read_footer_at(storage, off, size)?;
        if f.cookie == FOOTER_COOKIE {
            end = Some(f);
            end_offset = off;
            break;
        }
    }
    let copy = if len >= 2 * FOOTER_SIZE as u64 {
        let f = read_footer_at(storage, 0, FOOTER_SIZE)?;
        (f.cookie == FOOTER_COOKIE).then_some(f)
    } else {
        None
    };
    Ok(Footers {
        end,
        end_offset,
        copy,
    })
}

/// The fields in which the footer copy `c` differs from the end footer `e`.
fn footer_differences(e: &Footer, c: &Footer) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut d = |differs: bool, name: &'static str| {
        if differs {
            v.push(name);
        }
    };
    d(e.features != c.features, "features");
    d(
        e.file_format_version != c.file_format_version,
        "format version",
    );
    d(e.data_offset != c.data_offset, "data offset");
    d(e.timestamp != c.timestamp, "time stamp");
    d(
        e.creator_application != c.creator_application
            || e.creator_version != c.creator_version
            || e.creator_host_os != c.creator_host_os,
        "creator",
    );
    d(
        e.original_size != c.original_size || e.current_size != c.current_size,
        "size",
    );
    d(
        (e.cylinders, e.heads, e.sectors_per_track) != (c.cylinders, c.heads, c.sectors_per_track),
        "geometry",
    );
    d(e.disk_type != c.disk_type, "disk type");
    d(e.unique_id != c.unique_id, "unique id");
    d(e.saved_state != c.saved_state, "saved state");
    d(e.reserved != c.reserved, "reserved bytes");
    v
}

/// When the valid copy `c` differs from the valid end footer `e` only as
/// an update interrupted between writing the end footer and its copy
/// leaves it, the fields that differ (e.g. "size, geometry"); `None` when
/// it differs in anything such an update never changes. The updates are
/// resize (size and geometry), a new unique id, and set-parent (the data
/// offset, moved to a new dynamic header: the copy's must then point at a
/// whole header with the same block size and table).
fn interrupted_update(storage: &dyn Storage, e: &Footer, c: &Footer) -> Result<Option<String>> {
    let diffs = footer_differences(e, c);
    let benign = ["data offset", "size", "geometry", "unique id"];
    if diffs.is_empty() || diffs.iter().any(|d| !benign.contains(d)) {
        return Ok(None);
    }
    if e.data_offset != c.data_offset {
        let len = storage.len().map_err(io_err("VHD file", 0))?;
        let header = |off: u64| -> Result<Option<DynamicHeader>> {
            if off
                .checked_add(HEADER_SIZE as u64)
                .is_none_or(|end| end > len)
            {
                return Ok(None);
            }
            let mut hb = [0u8; HEADER_SIZE];
            read_struct(storage, "VHD dynamic header", &mut hb, off)?;
            Ok(DynamicHeader::parse(&hb, off)
                .ok()
                .filter(DynamicHeader::checksum_ok))
        };
        let (Some(now), Some(before)) = (header(e.data_offset)?, header(c.data_offset)?) else {
            return Ok(None);
        };
        if (now.block_size, now.table_offset, now.max_table_entries)
            != (
                before.block_size,
                before.table_offset,
                before.max_table_entries,
            )
        {
            return Ok(None);
        }
    }
    Ok(Some(diffs.join(", ")))
}

/// Check the VHD in `storage`, adding findings to `report`. With `repair`,
/// fix what can be fixed without guessing: checksums, a damaged or missing
/// footer copy, a missing end footer.
pub fn check(storage: &dyn Storage, report: &mut CheckReport, repair: bool) -> Result<()> {
    let len = storage.len().map_err(io_err("VHD file", 0))?;
    let fs = read_footers(storage, len)?;
    let sparse_kind =
        |f: &Footer| matches!(f.vhd_type(), Some(VhdType::Dynamic | VhdType::Differencing));

    // Pick the footer to trust: a valid end footer, else a valid copy, else
    // whichever exists.
    let end_valid = fs.end.as_ref().is_some_and(Footer::checksum_ok);
    let copy_valid = fs.copy.as_ref().is_some_and(Footer::checksum_ok);
    let footer = match (&fs.end, &fs.copy) {
        (Some(e), _) if end_valid => e.clone(),
        (_, Some(c)) if copy_valid && sparse_kind(c) => c.clone(),
        (Some(e), _) => e.clone(),
        (None, Some(c)) => c.clone(),
        (None, None) => {
            report.add(
                Severity::Error,
                FindingKind::Missing,
                "VHD footer",
                Some(fs.end_offset),
                "no \"conectix\" cookie at the end of the file or at offset 0",
            );
            return Ok(());
        }
    };
    match &fs.end {
        None => report.add(
            Severity::Error,
            FindingKind::Missing,
            "VHD footer",
            Some(fs.end_offset),
            "the footer at the end of the file is missing (truncated or overwritten)",
        ),
        Some(e) if !e.checksum_ok() => report.add(
            Severity::Error,
            FindingKind::Checksum,
            "VHD footer",
            Some(fs.end_offset),
            format!(
                "bad checksum (its checksum field at {:#x}): stored {:#010x}, computed {:#010x}",
                fs.end_offset + crate::vhd::footer::CHECKSUM_FIELD as u64,
                e.checksum,
                e.compute_checksum()
            ),
        ),
        _ => {}
    }
    if fs.end.is_some() && len - fs.end_offset == LEGACY_FOOTER_SIZE {
        report.add(
            Severity::Info,
            FindingKind::Legacy,
            "VHD footer",
            Some(fs.end_offset),
            "legacy 511-byte footer (written before Virtual PC 2004)",
        );
    }
    let footer_at = if fs.end.is_some() { fs.end_offset } else { 0 };
    let kind = match footer.validate(footer_at) {
        Ok(k) => k,
        Err(e) => {
            report.add(
                Severity::Error,
                FindingKind::of_error(&e),
                "VHD footer",
                e.offset(),
                e.message().to_string(),
            );
            return Ok(());
        }
    };

    let data_end = if fs.end.is_some() { fs.end_offset } else { len };
    if kind == VhdType::Fixed {
        if data_end < footer.current_size {
            report.add(
                Severity::Error,
                FindingKind::OutOfBounds,
                "VHD data",
                Some(data_end),
                format!(
                    "file is truncated: {data_end} data bytes, but the disk is {} bytes",
                    footer.current_size
                ),
            );
        } else if data_end > footer.current_size {
            report.add(
                Severity::Leak,
                FindingKind::Leak,
                "VHD data",
                Some(footer.current_size),
                format!(
                    "{} bytes between the end of the data and the footer are unused",
                    data_end - footer.current_size
                ),
            );
        }
        if repair
            && !end_valid
            && let Some(e) = &fs.end
        {
            let mut good = e.clone();
            good.checksum = good.compute_checksum();
            storage
                .write_at(&good.to_bytes(), fs.end_offset)
                .map_err(io_err("VHD footer", fs.end_offset))?;
            storage.flush().map_err(io_err("VHD file", 0))?;
            report.repaired.push(format!(
                "rewrote the footer at {:#x} (its checksum field at {:#x})",
                fs.end_offset,
                fs.end_offset + crate::vhd::footer::CHECKSUM_FIELD as u64
            ));
        }
        return Ok(());
    }

    // Dynamic and differencing disks: the copy at offset 0.
    match &fs.copy {
        None => report.add(
            Severity::Error,
            FindingKind::Missing,
            "VHD footer copy",
            Some(0),
            "the footer copy at offset 0 is missing",
        ),
        Some(c) if !c.checksum_ok() => report.add(
            Severity::Error,
            FindingKind::Checksum,
            "VHD footer copy",
            Some(0),
            format!(
                "bad checksum (its checksum field at {:#x}): stored {:#010x}, computed {:#010x}",
                crate::vhd::footer::CHECKSUM_FIELD,
                c.checksum,
                c.compute_checksum()
            ),
        ),
        Some(c) if fs.end.as_ref().is_some_and(|e| e.checksum_ok() && e != c) => {
            let e = fs.end.as_ref().expect("checked above");
            match interrupted_update(storage, e, c)? {
                Some(fields) => report.add(
                    Severity::Info,
                    FindingKind::CopyDiffers,
                    "VHD footer copy",
                    Some(0),
                    format!(
                        "the copy at offset 0 is an older footer of this disk (its {fields} \
                         differ): an update was interrupted between the footer at the end, \
                         which is in use, and its copy; a repair, or running the update \
                         again, rewrites the copy"
                    ),
                ),
                None => report.add(
                    Severity::Error,
                    FindingKind::CopyDiffers,
                    "VHD footer copy",
                    Some(0),
                    format!(
                        "the copy at offset 0 differs from the footer at the end in {}, which \
                         no interrupted update changes",
                        footer_differences(e, c).join(", ")
                    ),
                ),
            }
        }
        _ => {}
    }

    let hoff = footer.data_offset;
    if hoff.checked_add(HEADER_SIZE as u64).is_none_or(|e| e > len) {
        report.add(
            Severity::Error,
            FindingKind::OutOfBounds,
            "VHD footer",
            Some(footer_at + 16),
            format!("dynamic header offset {hoff:#x} lies outside the {len:#x}-byte file"),
        );
        return Ok(());
    }
    let mut hb = [0u8; HEADER_SIZE];
    read_struct(storage, "VHD dynamic header", &mut hb, hoff)?;
    let header = DynamicHeader::parse(&hb, hoff)?;
    // The checksum first: a field that fails validation under a bad
    // checksum points at damage in the file rather than a writer's bug.
    if !header.checksum_ok() {
        report.add(
            Severity::Error,
            FindingKind::Checksum,
            "VHD dynamic header",
            Some(hoff),
            format!(
                "bad checksum (its checksum field at {:#x}): stored {:#010x}, computed {:#010x}",
                hoff + crate::vhd::dynamic_header::CHECKSUM_FIELD as u64,
                header.checksum,
                header.compute_checksum()
            ),
        );
    }

    if let Err(e) = header.validate(hoff, footer.current_size, len) {
        report.add(
            Severity::Error,
            FindingKind::of_error(&e),
            "VHD dynamic header",
            e.offset(),
            e.message().to_string(),
        );
        return Ok(());
    }
    // Everything that occupies the file besides blocks.
    let mut meta = vec![
        Region {
            start: 0,
            end: FOOTER_SIZE as u64,
            what: "footer copy".into(),
        },
        Region {
            start: hoff,
            end: hoff + HEADER_SIZE as u64,
            what: "dynamic header".into(),
        },
        Region {
            start: header.table_offset,
            end: header.table_offset + bat::table_bytes(header.max_table_entries),
            what: "block allocation table".into(),
        },
    ];
    for (i, e) in header.parent_locators.iter().enumerate() {
        if !e.is_used() || e.platform_data_length == 0 {
            continue;
        }
        let off = e.platform_data_offset;
        let loc_off = hoff + super::dynamic_header::LOCATORS_FIELD + i as u64 * 24;
        match off.checked_add(u64::from(e.platform_data_length)) {
            Some(end) if end <= data_end => meta.push(Region {
                start: off,
                end: end.div_ceil(SECTOR) * SECTOR,
                what: format!("parent locator {i} data"),
            }),
            _ => report.add(
                Severity::Error,
                FindingKind::OutOfBounds,
                "VHD parent locator",
                Some(loc_off),
                format!(
                    "locator {i} data at {off:#x}+{:#x} lies outside the file",
                    e.platform_data_length
                ),
            ),
        }
    }

    let block_size = u64::from(header.block_size);
    let bitmap_size = (block_size / SECTOR).div_ceil(8).div_ceil(SECTOR) * SECTOR;
    let span = bitmap_size + block_size;
    let used = footer.current_size.div_ceil(block_size) as usize;
    let table = bat::load(storage, header.table_offset, header.max_table_entries)?;
    // A hostile table can hold millions of entries that are all wrong
    // (a zeroed table "allocates" every block at sector 0): each kind of
    // fault lists its first MAX_LISTED entries and counts the rest, and
    // the blocks are kept as (sector, index) pairs of 8 bytes, so memory
    // follows the table's size in the file, never millions of findings.
    let mut listed = Listed::default();
    let count = table
        .iter()
        .take(used)
        .filter(|&&e| e != bat::UNUSED)
        .count();
    let mut blocks: Vec<(u32, u32)> = Vec::with_capacity(count);
    let mut missing = MissingRuns::new("VHD block", len);
    for (i, &e) in table.iter().enumerate() {
        if e == bat::UNUSED {
            continue;
        }
        let entry_off = bat::entry_offset(header.table_offset, i);
        if i >= used {
            listed.add(report, Kind::BeyondSize, Some(entry_off), || {
                format!(
                    "entry {i} lies beyond the virtual size but points to {:#x}",
                    u64::from(e) * SECTOR
                )
            });
            continue;
        }
        let start = u64::from(e) * SECTOR;
        let end = start + span;
        if end > len {
            // Stored data the file does not hold: reading it fails. The
            // block's data follows its bitmap.
            let data = start + bitmap_size;
            let v0 = i as u64 * block_size;
            let vstart = v0 + len.saturating_sub(data).min(block_size);
            let vend = (v0 + block_size).min(footer.current_size);
            if vstart < vend {
                missing.push(MissingBlock {
                    block: i as u64,
                    file_offset: start,
                    file_len: span,
                    vstart,
                    vend,
                    entry_offset: entry_off,
                });
            }
        } else if end > data_end {
            listed.add(report, Kind::PastEnd, Some(entry_off), || {
                format!(
                    "block {i} at {start:#x}..{end:#x} extends past the end of the data at {data_end:#x}"
                )
            });
        }
        for m in &meta {
            if start < m.end && m.start < end {
                listed.add(report, Kind::OnMeta, Some(entry_off), || {
                    format!(
                        "block {i} at {start:#x} overlaps the {} at {:#x}..{:#x}",
                        m.what, m.start, m.end
                    )
                });
            }
        }
        // The table holds at most u32::MAX entries.
        blocks.push((e, i as u32));
    }
    drop(table);
    let blocks_missing = !missing.is_empty();
    missing.report(report);
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        let ((a, ia), (b, ib)) = (w[0], w[1]);
        let (a, b) = (u64::from(a) * SECTOR, u64::from(b) * SECTOR);
        if b < a + span {
            listed.add(
                report,
                Kind::Shared,
                Some(bat::entry_offset(header.table_offset, ib as usize)),
                || {
                    format!(
                        "blocks {ia} and {ib} overlap: {a:#x}..{:#x} and {b:#x}..{:#x}",
                        a + span,
                        b + span
                    )
                },
            );
        }
    }

    // Leaked space: gaps big enough to have held a block (a block
    // allocated but never linked, a block table abandoned by an
    // interrupted grow), from the start of the file on. Smaller gaps are
    // alignment padding: Windows puts each block's data on a 4 KiB
    // boundary. The covered ranges are the sorted metadata merged with the
    // sorted blocks.
    let mut regions: Vec<(u64, u64)> = meta.iter().map(|m| (m.start, m.end)).collect();
    regions.push((data_end, data_end));
    regions.sort_unstable();
    let block_ranges = blocks.iter().map(|&(s, _)| {
        let s = u64::from(s) * SECTOR;
        (s, s + span)
    });
    let covered = merge_sorted(regions.into_iter(), block_ranges);
    let first_block = blocks.first().map(|&(s, _)| u64::from(s) * SECTOR);
    let mut pos = 0;
    for (s, e) in covered {
        // A block past the end of the file (damage reported above) leaves
        // no leak beyond the file's end.
        let s = s.min(len);
        if s > pos && s - pos >= span.max(4096) {
            if is_hole(storage, pos, s) {
                listed.add(report, Kind::Punched, Some(pos), || {
                    format!(
                        "{} bytes at {pos:#x}..{s:#x} are referenced by no structure and are a \
                         hole in the file, taking no space (a full compact cuts them out)",
                        s - pos
                    )
                });
            } else if first_block.is_none_or(|f| s <= f) {
                listed.add(report, Kind::BeforeBlocks, Some(pos), || {
                    format!(
                        "{} bytes at {pos:#x}..{s:#x}, before the first block, are referenced by \
                         no structure (a block table a grow moved, or what an interrupted grow \
                         left); a full compact gives them back",
                        s - pos
                    )
                });
            } else {
                listed.add(report, Kind::Leak, Some(pos), || {
                    format!(
                        "{} bytes at {pos:#x}..{s:#x} are referenced by no structure",
                        s - pos
                    )
                });
            }
        }
        pos = pos.max(e);
    }
    listed.summarize(report);

    if repair {
        // With blocks past the end of the file, a footer written after
        // them would make their lost data read as zeros: left as it is.
        let end_of_data = if blocks_missing { None } else { Some(pos) };
        repair_footers(storage, &fs, &footer, &header, hoff, end_of_data, report)?;
    }
    Ok(())
}

/// The file-system block a punch frees whole: the partial blocks at the
/// two ends of a punched range keep their bytes.
const PUNCH_BLOCK: u64 = 4096;

/// Whether `start..end` of the file is a hole but for the partial
/// file-system blocks at its two ends (the storage says it stores nothing
/// else there); `false` when the storage cannot tell.
fn is_hole(storage: &dyn Storage, start: u64, end: u64) -> bool {
    let head_end = start.div_ceil(PUNCH_BLOCK) * PUNCH_BLOCK;
    let tail_start = (end / PUNCH_BLOCK * PUNCH_BLOCK).max(head_end);
    match storage.data_runs(start, end - start) {
        Ok(Some(runs)) => runs.iter().all(|&(s, n)| {
            let (s, e) = (s.max(start), s.saturating_add(n).min(end));
            s >= e || e <= head_end || s >= tail_start
        }),
        _ => false,
    }
}

/// Rewrite what the checks showed to be damaged and can be rebuilt from a
/// trusted copy: checksums, the footer copy, the end footer.
fn repair_footers(
    storage: &dyn Storage,
    fs: &Footers,
    footer: &Footer,
    header: &DynamicHeader,
    hoff: u64,
    end_of_data: Option<u64>,
    report: &mut CheckReport,
) -> Result<()> {
    let mut good = footer.clone();
    good.checksum = good.compute_checksum();
    let fb = good.to_bytes();
    let at = match (fs.end.is_some(), end_of_data) {
        (true, _) => Some(fs.end_offset.div_ceil(SECTOR) * SECTOR),
        (false, Some(e)) => Some(e.div_ceil(SECTOR) * SECTOR),
        (false, None) => None,
    };
    if fs.end.as_ref() != Some(&good)
        && let Some(at) = at
    {
        storage
            .write_at(&fb, at)
            .map_err(io_err("VHD footer", at))?;
        storage
            .set_len(at + FOOTER_SIZE as u64)
            .map_err(io_err("VHD file", at))?;
        report
            .repaired
            .push(format!("rewrote the footer at {at:#x}"));
    }
    if fs.copy.as_ref() != Some(&good) {
        storage
            .write_at(&fb, 0)
            .map_err(io_err("VHD footer copy", 0))?;
        report
            .repaired
            .push("rewrote the footer copy at 0x0".into());
    }
    if !header.checksum_ok() {
        let mut h = header.clone();
        h.checksum = h.compute_checksum();
        storage
            .write_at(&h.to_bytes(), hoff)
            .map_err(io_err("VHD dynamic header", hoff))?;
        report.repaired.push(format!(
            "rewrote the dynamic header at {hoff:#x} (its checksum field at {:#x})",
            hoff + crate::vhd::dynamic_header::CHECKSUM_FIELD as u64
        ));
    }
    storage.flush().map_err(io_err("VHD file", 0))?;
    Ok(())
}
