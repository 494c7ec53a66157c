//! Consistency check and repair of a VHDX, working on the file itself so
//! that it also reports images too damaged to open. `--repair` replays a
//! pending log onto the file, rewrites a damaged header or region table
//! from the good copy, and nothing else.

use std::io;

use super::header;
use super::log::{self, Overlay};
use super::region_table::{HEADER_AREA, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, ROLE};
use super::{Structure, bat, pending_log, read_file_identifier, replay_and_clear};
use crate::damage::{MissingBlock, MissingRuns};
use crate::error::{Error, Result};
use crate::io::{Storage, io_err, read_struct};
use crate::report::{CheckReport, FindingKind, Severity};

/// A borrowed storage seen through an in-memory replay of the log.
struct View<'a> {
    inner: &'a dyn Storage,
    overlay: Option<&'a Overlay>,
}

impl Storage for View<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self.overlay {
            Some(o) => o.read(self.inner, buf, offset),
            None => self.inner.read_at(buf, offset),
        }
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "check reads only",
        ))
    }
    fn len(&self) -> io::Result<u64> {
        match self.overlay {
            Some(o) => Ok(o.len()),
            None => self.inner.len(),
        }
    }
    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "check reads only",
        ))
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn is_writable(&self) -> bool {
        false
    }
}

fn add_error(report: &mut CheckReport, e: &Error) {
    report.add(
        Severity::Error,
        FindingKind::of_error(e),
        e.structure().unwrap_or("VHDX file"),
        e.offset(),
        e.message().to_string(),
    );
}

/// Check the VHDX in `storage`, adding findings to `report`; with `repair`
/// (and a writable storage) fix what can be fixed without guessing.
pub fn check(storage: &dyn Storage, report: &mut CheckReport, repair: bool) -> Result<()> {
    let len = storage.len().map_err(io_err("VHDX file", 0))?;
    if len < HEADER_AREA {
        report.add(
            Severity::Error,
            FindingKind::OutOfBounds,
            "VHDX file",
            Some(0),
            format!("file of {len} bytes is smaller than the 1 MiB header area"),
        );
        return Ok(());
    }
    if let Err(e) = read_file_identifier(storage) {
        add_error(report, &e);
        return Ok(());
    }
    let mut slots = header::read_slots(storage)?;
    for (i, s) in slots.iter().enumerate() {
        if let Some(p) = &s.problem {
            report.add(
                Severity::Error,
                FindingKind::Missing,
                "VHDX header",
                Some(s.offset),
                format!("header {} is invalid: {p}", i + 1),
            );
        }
    }
    let mut current = match header::current(&slots) {
        Ok(c) => c,
        Err(e) => {
            add_error(report, &e);
            return Ok(());
        }
    };
    if let Err(e) = slots[current].header.validate(slots[current].offset, len) {
        add_error(report, &e);
        return Ok(());
    }

    // The log: defects, pending entries, replay.
    let mut headers_rewritten = false;
    let mut overlay = None;
    let h = slots[current].header.clone();
    if !h.log_guid().is_nil() && h.log_length > 0 {
        for (off, why) in
            log::entry_problems(storage, h.log_offset, u64::from(h.log_length), h.log_guid())?
        {
            report.add(
                Severity::Info,
                FindingKind::PendingLog,
                "VHDX log entry",
                Some(off),
                format!("not a valid entry, so not replayed: {why}"),
            );
        }
    }
    match pending_log(storage, &h, len) {
        Err(e) => add_error(report, &e),
        Ok(None) => {}
        Ok(Some(seq)) if seq.is_empty() => report.add(
            Severity::Info,
            FindingKind::PendingLog,
            "VHDX log",
            Some(h.log_offset),
            "the header names a log GUID but the log holds no active sequence; nothing to replay",
        ),
        Ok(Some(seq)) => {
            let first = seq.entries.first().map(|e| e.position).unwrap_or(0);
            if repair {
                (slots, current) = replay_and_clear(storage, &slots, current, &seq)?;
                headers_rewritten = true;
                report.repaired.push(format!(
                    "replayed {} log entries into the file and cleared the log GUID",
                    seq.entries.len()
                ));
            } else {
                report.add(
                    Severity::Info,
                    FindingKind::PendingLog,
                    "VHDX log",
                    Some(h.log_offset + first),
                    format!(
                        "the log is pending: {} entries (sequence {}..{}) not yet applied to the file; \
                         vhdkit replays them in memory when reading",
                        seq.entries.len(),
                        seq.entries.first().map(|e| e.header.sequence_number).unwrap_or(0),
                        seq.entries.last().map(|e| e.header.sequence_number).unwrap_or(0)
                    ),
                );
                if let Some(f) = report.findings.last_mut() {
                    f.hint = Some(crate::Hint::Repair);
                }
                overlay = Some(Overlay::build(&seq, len));
            }
        }
    }
    if repair && !headers_rewritten && slots.iter().any(|s| !s.is_valid()) {
        let h = slots[current].header.clone();
        slots = header::update(storage, &slots, current, &h)?;
        current = header::current(&slots)?;
        report
            .repaired
            .push("rewrote both headers from the valid one".to_string());
    }

    let view = View {
        inner: storage,
        overlay: overlay.as_ref(),
    };
    let creator = String::new();
    let s = match Structure::load(&view, creator, slots, current, len) {
        Ok(s) => s,
        Err(e) => {
            add_error(report, &e);
            return Ok(());
        }
    };
    for (i, p) in s.region_table_problems.iter().enumerate() {
        if let Some(p) = p {
            report.add(
                Severity::Error,
                FindingKind::Missing,
                "VHDX region table",
                Some(REGION_TABLE_OFFSETS[i]),
                format!(
                    "the {} region table is unusable: {p}; the {} is read",
                    ROLE[i],
                    ROLE[1 - i]
                ),
            );
            if repair && overlay.is_none() {
                let mut b = vec![0u8; REGION_TABLE_SIZE];
                let from = REGION_TABLE_OFFSETS[s.region_table_used];
                read_struct(storage, "VHDX region table", &mut b, from)?;
                let to = REGION_TABLE_OFFSETS[i];
                storage
                    .write_at(&b, to)
                    .and_then(|_| storage.flush())
                    .map_err(io_err("VHDX region table", to))?;
                report.repaired.push(format!(
                    "rewrote the {} region table from the {}",
                    ROLE[i],
                    ROLE[1 - i]
                ));
            }
        }
    }
    check_metadata_items(&s, report);
    check_bat(&s, report);
    Ok(())
}

fn check_metadata_items(s: &Structure, report: &mut CheckReport) {
    let m = &s.metadata;
    let items: Vec<_> = m.entries.iter().filter(|e| e.length > 0).collect();
    for (i, a) in items.iter().enumerate() {
        for b in &items[..i] {
            let (a0, a1) = (a.offset, a.offset + a.length);
            let (b0, b1) = (b.offset, b.offset + b.length);
            if a0 < b1 && b0 < a1 {
                report.add(
                    Severity::Error,
                    FindingKind::Overlap,
                    "VHDX metadata table",
                    Some(m.region_offset + u64::from(a0)),
                    format!(
                        "item {} at {a0:#x}+{:#x} overlaps item {} at {b0:#x}+{:#x}",
                        a.item_id(),
                        a.length,
                        b.item_id(),
                        b.length
                    ),
                );
            }
        }
    }
}

fn check_bat(s: &Structure, report: &mut CheckReport) {
    let l = &s.layout;
    let diff = s.metadata.has_parent;
    let mut blocks: Vec<(u64, u64, u64)> = Vec::new();
    let mut missing_payload = MissingRuns::new("VHDX payload block", s.file_len);
    let mut missing_bitmaps = MissingRuns::new("VHDX sector bitmap block", s.file_len);
    for i in 0..l.total_entries {
        let e = s.bat[i as usize];
        let st = bat::state(e);
        let at = s.entry_offset(i);
        let is_bitmap = l.is_bitmap_index(i);
        let (valid, stored, size) = if is_bitmap {
            (
                bat::bitmap_state_name(st).is_some(),
                st == bat::BITMAP_PRESENT,
                bat::BITMAP_BLOCK_SIZE,
            )
        } else {
            (
                bat::payload_state_name(st, diff).is_some(),
                matches!(
                    st,
                    bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT
                ),
                l.block_size,
            )
        };
        let what = if is_bitmap {
            format!("sector bitmap entry {i}")
        } else {
            format!("payload entry {i}")
        };
        if !valid {
            report.add(
                Severity::Error,
                FindingKind::InvalidEntry,
                "VHDX BAT entry",
                Some(at),
                format!("{what} has invalid state {st}"),
            );
            continue;
        }
        if !stored {
            continue;
        }
        let off = bat::file_offset(e);
        let end = off.saturating_add(size);
        if end > s.file_len {
            // Stored data the file does not hold: an error, never zeros.
            let lost = s.file_len.saturating_sub(off).min(size);
            if is_bitmap {
                let chunk = i / (l.chunk_ratio + 1);
                let ranges = lost_bitmap_ranges(s, chunk, lost);
                if ranges.is_empty() {
                    report.add(
                        Severity::Error,
                        FindingKind::OutOfBounds,
                        "VHDX sector bitmap block",
                        Some(off),
                        format!(
                            "block {chunk} ({off:#x}..{end:#x} in the file, table entry at \
                             {at:#x}) lies past the end of the {:#x}-byte file; no payload \
                             block of its chunk is partially present, so no virtual bytes \
                             depend on it",
                            s.file_len
                        ),
                    );
                }
                for (vstart, vend) in ranges {
                    missing_bitmaps.push(MissingBlock {
                        block: chunk,
                        file_offset: off,
                        file_len: size,
                        vstart,
                        vend,
                        entry_offset: at,
                    });
                }
            } else {
                let block = i - i / (l.chunk_ratio + 1);
                let v0 = block * l.block_size;
                let vstart = v0.saturating_add(lost);
                let vend = v0.saturating_add(l.block_size).min(s.metadata.virtual_size);
                if vstart < vend {
                    missing_payload.push(MissingBlock {
                        block,
                        file_offset: off,
                        file_len: size,
                        vstart,
                        vend,
                        entry_offset: at,
                    });
                }
            }
            if off >= s.file_len {
                continue;
            }
        }
        if let Some(p) = s.block_problem(i, size) {
            report.add(
                Severity::Error,
                FindingKind::InvalidEntry,
                "VHDX BAT entry",
                Some(at),
                format!("{what}: {p}"),
            );
            continue;
        }
        if !is_bitmap && st == bat::PAYLOAD_PARTIALLY_PRESENT {
            let b = l.bitmap_index(i / (l.chunk_ratio + 1));
            if bat::state(s.bat[b as usize]) != bat::BITMAP_PRESENT {
                report.add(
                    Severity::Error,
                    FindingKind::InvalidEntry,
                    "VHDX BAT entry",
                    Some(at),
                    format!("{what} is partially present but its sector bitmap (entry {b}) is not present"),
                );
            }
        }
        blocks.push((off, off + size, i));
    }
    missing_payload.report(report);
    missing_bitmaps.report(report);
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.0 < a.1 {
            report.add(
                Severity::Error,
                FindingKind::Overlap,
                "VHDX BAT entry",
                Some(s.entry_offset(b.2)),
                format!(
                    "block of entry {} at {:#x} overlaps the block of entry {} at {:#x}..{:#x}",
                    b.2, b.0, a.2, a.0, a.1
                ),
            );
        }
    }
}

/// The virtual ranges whose sector presence is lost when only the first
/// `present` bytes of chunk `chunk`'s sector bitmap block are in the file:
/// the parts of the chunk's partially present payload blocks described by
/// the missing bytes (byte k of the bitmap describes sectors 8k..8k+8 of
/// the chunk). Fully present, zero and unmapped blocks do not read the
/// bitmap, so they lose nothing. Adjacent ranges are joined.
fn lost_bitmap_ranges(s: &Structure, chunk: u64, present: u64) -> Vec<(u64, u64)> {
    let l = &s.layout;
    let chunk_bytes = l.chunk_ratio * l.block_size;
    let v0 = chunk.saturating_mul(chunk_bytes);
    let from = v0.saturating_add(present.saturating_mul(8 * l.sector_size));
    let mut out: Vec<(u64, u64)> = Vec::new();
    for k in 0..l.chunk_ratio {
        let block = chunk * l.chunk_ratio + k;
        let Some(&e) = s.bat.get(l.payload_index(block) as usize) else {
            break;
        };
        if bat::state(e) != bat::PAYLOAD_PARTIALLY_PRESENT {
            continue;
        }
        let a = (block * l.block_size).max(from);
        let b = ((block + 1) * l.block_size).min(s.metadata.virtual_size);
        if a >= b {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}
