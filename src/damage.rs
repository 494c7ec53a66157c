//! Stored blocks that the file does not hold: reading them fails closed,
//! or, under [`crate::OpenOptions::salvage`], reads them as zeros and
//! records the virtual ranges so replaced; and the `check` findings that
//! describe such blocks.
//!
//! A truncated file (a copy cut short, a full disk) loses the blocks at its
//! end while the block table still says they are stored. Zeros in their
//! place would be silent data loss, so every read of a stored block goes
//! through `read_stored`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::io::{Storage, io_err};
use crate::report::{CheckReport, FindingKind, Severity, Warning, WarningKind};

/// Damage findings (runs of blocks) listed before the rest are only counted:
/// a hostile block table cannot make millions of findings.
pub const MAX_LISTED_RUNS: usize = 1000;

/// A virtual range that a salvaging read replaced with zeros because the
/// block holding it lies (partly) past the end of its image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// The image file whose block is missing (a parent, for a chain).
    pub image: Option<PathBuf>,
    /// The structure, e.g. "VHDX payload block".
    pub structure: &'static str,
    /// The first block of the run.
    pub first_block: u64,
    /// The last block of the run.
    pub last_block: u64,
    /// File offset of the first missing byte.
    pub file_offset: u64,
    /// Size of the file when it was read.
    pub file_size: u64,
    /// First virtual byte replaced with zeros.
    pub start: u64,
    /// Number of virtual bytes replaced with zeros.
    pub length: u64,
}

impl Salvaged {
    /// One past the last virtual byte replaced.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.length)
    }
}

impl std::fmt::Display for Salvaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:#x}..{:#x} ({} bytes) of {}: {}",
            self.start,
            self.end(),
            self.length,
            self.image
                .as_deref()
                .map_or_else(|| "the image".into(), |p| p.display().to_string()),
            self.structure
        )?;
        if self.first_block == self.last_block {
            write!(f, " {}", self.first_block)?;
        } else {
            write!(f, "s {} to {}", self.first_block, self.last_block)?;
        }
        write!(
            f,
            " past the end of the {:#x}-byte file at offset {:#x}",
            self.file_size, self.file_offset
        )
    }
}

/// Where salvaging reads record what they replaced with zeros; shared by
/// every image of a chain opened with the same options, read after the
/// reads ([`SalvageLog::runs`]).
#[derive(Debug, Default)]
pub struct SalvageLog {
    ranges: Mutex<Vec<Salvaged>>,
}

impl SalvageLog {
    /// A new, empty log to put in [`crate::OpenOptions::salvage`].
    pub fn new() -> Arc<SalvageLog> {
        Arc::new(SalvageLog::default())
    }

    fn record(&self, r: Salvaged) {
        let mut v = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        // Sequential reads extend the last run; keep it short in memory.
        if let Some(last) = v.last_mut()
            && let Some(m) = merge(last, &r)
        {
            *last = m;
            return;
        }
        v.push(r);
    }

    /// Whether nothing was replaced.
    pub fn is_empty(&self) -> bool {
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Every range replaced with zeros, in virtual order per image, with
    /// overlapping and adjacent ranges of one structure merged into runs
    /// (a range read twice is listed once).
    pub fn runs(&self) -> Vec<Salvaged> {
        let mut v = self
            .ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.sort_by(|a, b| (&a.image, a.structure, a.start).cmp(&(&b.image, b.structure, b.start)));
        let mut out: Vec<Salvaged> = Vec::with_capacity(v.len());
        for r in v {
            if let Some(last) = out.last_mut()
                && let Some(m) = merge(last, &r)
            {
                *last = m;
                continue;
            }
            out.push(r);
        }
        out
    }
}

/// `a` and `b` as one run, if they are of one structure of one image and
/// overlap or touch.
fn merge(a: &Salvaged, b: &Salvaged) -> Option<Salvaged> {
    if a.image != b.image
        || a.structure != b.structure
        || a.file_size != b.file_size
        || b.start > a.end()
        || a.start > b.end()
    {
        return None;
    }
    let (first, second) = if a.start <= b.start { (a, b) } else { (b, a) };
    let start = first.start;
    let end = first.end().max(second.end());
    Some(Salvaged {
        image: a.image.clone(),
        structure: a.structure,
        first_block: a.first_block.min(b.first_block),
        last_block: a.last_block.max(b.last_block),
        file_offset: first.file_offset,
        file_size: a.file_size,
        start,
        length: end - start,
    })
}

/// A stored block being read: what to name in an error or a salvage record.
pub(crate) struct Stored<'a> {
    /// The structure, e.g. "VHD block".
    pub structure: &'static str,
    /// The block's number (payload block, VHD block, bitmap chunk).
    pub block: u64,
    /// The block's offset in the file.
    pub block_offset: u64,
    /// The block's length in the file.
    pub block_len: u64,
    /// The image file.
    pub path: Option<&'a Path>,
    /// Where to record zeros read in place of missing bytes; without it a
    /// missing byte is an error.
    pub salvage: Option<&'a SalvageLog>,
    /// A length the file is known to reach although it may not have been
    /// extended yet (blocks a write session reserved): bytes below it read
    /// as zeros without being damage.
    pub reserved_len: u64,
}

impl Stored<'_> {
    /// The bytes `[file_start, file_end)` of this block (virtual bytes
    /// `[vstart, vstart + vlen)`) are missing from a file of `file_len`
    /// bytes: an error, or with salvage a record (the caller fills zeros).
    pub fn missing(&self, file_start: u64, file_len: u64, vstart: u64, vlen: u64) -> Result<()> {
        match self.salvage {
            Some(log) => {
                log.record(Salvaged {
                    image: self.path.map(Path::to_path_buf),
                    structure: self.structure,
                    first_block: self.block,
                    last_block: self.block,
                    file_offset: file_start,
                    file_size: file_len,
                    start: vstart,
                    length: vlen,
                });
                Ok(())
            }
            None => {
                let block_end = self.block_offset.saturating_add(self.block_len);
                // Where the block's missing bytes start: the end of the file
                // (or the block's start, for a block wholly past it), not
                // where the read that found them began.
                let missing_from = file_len.clamp(self.block_offset, block_end);
                let mut e = Error::corrupt(
                    self.structure,
                    self.block_offset,
                    format!(
                        "block {} (file bytes {:#x}..{block_end:#x}) runs past the end of the \
                         file, which ends at {file_len:#x}, so its bytes from {missing_from:#x} \
                         on are missing: virtual bytes {vstart:#x}..{:#x} being read are \
                         missing",
                        self.block,
                        self.block_offset,
                        vstart.saturating_add(vlen)
                    ),
                )
                .with_hint(crate::Hint::Salvage);
                if let Some(p) = self.path {
                    e = e.with_path(p);
                }
                Err(e)
            }
        }
    }

    /// Read `buf` from file offset `offset` inside this block; `vpos` is
    /// the virtual offset of `buf[0]`. Bytes past the end of the file are
    /// an error naming the block, or under salvage zeros that are recorded.
    pub fn read(
        &self,
        storage: &dyn Storage,
        buf: &mut [u8],
        offset: u64,
        vpos: u64,
    ) -> Result<()> {
        match storage.read_at(buf, offset) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(io_err(self.structure, offset)(e)),
        }
        let file_len = storage.len().map_err(io_err(self.structure, offset))?;
        let avail = file_len.saturating_sub(offset).min(buf.len() as u64) as usize;
        if avail > 0 {
            storage
                .read_at(&mut buf[..avail], offset)
                .map_err(io_err(self.structure, offset))?;
        }
        buf[avail..].fill(0);
        let reserved = self
            .reserved_len
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        if reserved >= buf.len() {
            return Ok(());
        }
        let from = avail.max(reserved);
        self.missing(
            offset.saturating_add(from as u64),
            file_len,
            vpos + from as u64,
            (buf.len() - from) as u64,
        )
    }
}

/// One stored block that the file does not fully hold, for `check`.
#[derive(Debug, Clone)]
pub(crate) struct MissingBlock {
    /// The block's number.
    pub block: u64,
    /// The block's offset and length in the file.
    pub file_offset: u64,
    /// The block's length in the file.
    pub file_len: u64,
    /// The virtual bytes lost, `[start, end)`.
    pub vstart: u64,
    /// One past the last virtual byte lost.
    pub vend: u64,
    /// File offset of the table entry that points at the block.
    pub entry_offset: u64,
}

/// `check` findings for blocks past the end of the file: one per run of
/// consecutive blocks whose lost virtual ranges touch (a truncation loses
/// the last blocks of the file, often many), up to [`MAX_LISTED_RUNS`].
pub(crate) struct MissingRuns {
    structure: &'static str,
    file_size: u64,
    runs: Vec<(MissingBlock, MissingBlock)>,
    dropped: usize,
}

impl MissingRuns {
    /// Collect blocks of `structure` missing from a file of `file_size` bytes.
    pub fn new(structure: &'static str, file_size: u64) -> Self {
        MissingRuns {
            structure,
            file_size,
            runs: Vec::new(),
            dropped: 0,
        }
    }

    /// Whether no block was added.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Add a block (in increasing block order for runs to form).
    pub fn push(&mut self, b: MissingBlock) {
        if let Some((_, last)) = self.runs.last_mut()
            && last.block + 1 == b.block
            && last.vend == b.vstart
        {
            *last = b;
            return;
        }
        if self.runs.len() >= MAX_LISTED_RUNS {
            self.dropped += 1;
            return;
        }
        self.runs.push((b.clone(), b));
    }

    /// Add the findings to `report`.
    pub fn report(self, report: &mut CheckReport) {
        let size = self.file_size;
        for (first, last) in &self.runs {
            let text = if first.block == last.block {
                let end = first.file_offset.saturating_add(first.file_len);
                let how = if first.file_offset >= size {
                    "lies wholly past".to_string()
                } else {
                    format!("is cut short at {size:#x} by")
                };
                format!(
                    "block {} ({:#x}..{end:#x} in the file, {:#x} bytes, table entry at {:#x}) \
                     {how} the end of the {size:#x}-byte file: virtual bytes {:#x}..{:#x} \
                     ({} bytes) cannot be read",
                    first.block,
                    first.file_offset,
                    first.file_len,
                    first.entry_offset,
                    first.vstart,
                    first.vend,
                    first.vend - first.vstart
                )
            } else {
                format!(
                    "blocks {} to {} ({} blocks, the first at {:#x} in the file, {:#x} bytes each, \
                     its table entry at {:#x}) lie past the end of the {size:#x}-byte file: \
                     virtual bytes {:#x}..{:#x} ({} bytes) cannot be read",
                    first.block,
                    last.block,
                    last.block - first.block + 1,
                    first.file_offset,
                    first.file_len,
                    first.entry_offset,
                    first.vstart,
                    last.vend,
                    last.vend - first.vstart
                )
            };
            report.add(
                Severity::Error,
                FindingKind::OutOfBounds,
                self.structure,
                Some(first.file_offset),
                text,
            );
        }
        if self.dropped > 0 {
            report.add(
                Severity::Error,
                FindingKind::OutOfBounds,
                self.structure,
                None,
                format!(
                    "{} more runs of blocks past the end of the file; only the first {MAX_LISTED_RUNS} are listed",
                    self.dropped
                ),
            );
        }
    }
}

/// Blocks that reach past the end of an image's data, found while opening
/// it: one [`Warning`] per run of consecutive blocks (a large truncated
/// disk would otherwise give one per block), as `check` lists them.
#[derive(Debug, Default)]
pub(crate) struct PastEnd {
    /// (first block, its file offset, last block) of each run.
    runs: Vec<(u64, u64, u64)>,
}

impl PastEnd {
    /// Add block `block` stored at `file_offset` (in increasing block order).
    pub fn add(&mut self, block: u64, file_offset: u64) {
        if let Some(last) = self.runs.last_mut()
            && last.2 + 1 == block
        {
            last.2 = block;
            return;
        }
        self.runs.push((block, file_offset, block));
    }

    /// The warnings, about blocks of `structure`, the data ending at `end`.
    pub fn warnings(self, structure: &'static str, end: u64) -> Vec<Warning> {
        self.runs
            .into_iter()
            .map(|(first, at, last)| {
                let what = if first == last {
                    format!("block {first} at {at:#x} extends")
                } else {
                    format!(
                        "blocks {first} to {last} ({} blocks, the first at {at:#x}) extend",
                        last - first + 1
                    )
                };
                Warning::new(
                    WarningKind::BlockPastEof,
                    format!(
                        "{what} past the end of the data at {end:#x}; what lies past the end of the file cannot be read"
                    ),
                )
                .at(structure, at)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(block: u64, start: u64, length: u64) -> Salvaged {
        Salvaged {
            image: Some(PathBuf::from("d.vhdx")),
            structure: "VHDX payload block",
            first_block: block,
            last_block: block,
            file_offset: 0x500000 + start,
            file_size: 0x500000,
            start,
            length,
        }
    }

    #[test]
    fn salvage_log_merges_repeated_and_adjacent_ranges_into_runs() {
        let log = SalvageLog::new();
        // Out of order, read twice, and adjacent across blocks 1 and 2.
        log.record(range(2, 0x200000, 0x100000));
        log.record(range(1, 0x180000, 0x80000));
        log.record(range(1, 0x180000, 0x40000));
        log.record(range(5, 0x500000, 0x1000));
        let runs = log.runs();
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!((runs[0].start, runs[0].end()), (0x180000, 0x300000));
        assert_eq!((runs[0].first_block, runs[0].last_block), (1, 2));
        assert_eq!(runs[0].file_offset, 0x680000);
        assert_eq!(
            runs[0].to_string(),
            "0x180000..0x300000 (1572864 bytes) of d.vhdx: VHDX payload blocks 1 to 2 \
             past the end of the 0x500000-byte file at offset 0x680000"
        );
        assert_eq!((runs[1].start, runs[1].length), (0x500000, 0x1000));
        assert!(runs[1].to_string().contains("VHDX payload block 5 past"));
    }

    #[test]
    fn missing_runs_join_consecutive_blocks_only() {
        let b = |block: u64, vstart: u64, vend: u64| MissingBlock {
            block,
            file_offset: block << 20,
            file_len: 1 << 20,
            vstart,
            vend,
            entry_offset: 0x300000 + 8 * block,
        };
        let mut runs = MissingRuns::new("VHD block", 0x280000);
        runs.push(b(2, 0x280000, 0x300000));
        runs.push(b(3, 0x300000, 0x400000));
        runs.push(b(7, 0x700000, 0x800000));
        let mut report = CheckReport::default();
        runs.report(&mut report);
        assert_eq!(report.findings.len(), 2, "{:?}", report.findings);
        let at: Vec<_> = report.findings.iter().map(|f| (f.kind, f.offset)).collect();
        assert_eq!(
            at,
            [
                (crate::report::FindingKind::OutOfBounds, Some(2 << 20)),
                (crate::report::FindingKind::OutOfBounds, Some(7 << 20)),
            ]
        );
        assert!(report.findings[0].message.contains("blocks 2 to 3"));
        assert!(report.findings[0].message.contains("0x280000..0x400000"));
        assert!(report.findings[1].message.contains("block 7 "));
        assert!(report.findings[1].message.contains("lies wholly past"));
    }
}
