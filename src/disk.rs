//! The core abstraction: a virtual disk, whatever its container format.

use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};
use crate::report::ImageInfo;

/// Where the bytes of a range of the virtual disk come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentKind {
    /// Stored in this image file.
    Data,
    /// Reads as zeros without being stored.
    Zero,
    /// Not stored here: read from the parent image.
    Parent,
}

/// A run of the virtual disk with one kind of backing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// First byte of the run on the virtual disk.
    pub start: u64,
    /// Length of the run in bytes.
    pub length: u64,
    /// Where the run's bytes come from.
    pub kind: ExtentKind,
    /// For data runs, the byte offset of `start` in the image file.
    pub file_offset: Option<u64>,
}

impl Extent {
    /// One past the last byte of the run.
    pub fn end(&self) -> u64 {
        self.start + self.length
    }
}

/// Collects extents, merging each new one into the previous when they form one
/// maximal run (same kind and, for data, contiguous in the file).
#[derive(Debug, Default)]
pub struct ExtentList(Vec<Extent>);

impl ExtentList {
    /// Append a run that starts where the previous one ended.
    pub fn push(&mut self, start: u64, length: u64, kind: ExtentKind, file_offset: Option<u64>) {
        if length == 0 {
            return;
        }
        if let Some(last) = self.0.last_mut() {
            let contiguous = match (last.file_offset, file_offset) {
                (Some(a), Some(b)) => a + last.length == b,
                (None, None) => true,
                _ => false,
            };
            if last.kind == kind && last.end() == start && contiguous {
                last.length += length;
                return;
            }
        }
        self.0.push(Extent {
            start,
            length,
            kind,
            file_offset,
        });
    }

    /// The collected runs.
    pub fn into_vec(self) -> Vec<Extent> {
        self.0
    }
}

/// A virtual disk: the one interface every image kind implements.
///
/// Reads take `&self` and are positional, so they may run concurrently;
/// writes take `&mut self`.
pub trait VirtualDisk: Send + Sync {
    /// Size of the virtual disk in bytes.
    fn virtual_size(&self) -> u64;

    /// Logical sector size in bytes (512 or 4096).
    fn logical_sector_size(&self) -> u32 {
        512
    }

    /// Physical sector size in bytes (512 or 4096).
    fn physical_sector_size(&self) -> u32 {
        512
    }

    /// Fill `buf` with the virtual disk's bytes starting at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Write `buf` to the virtual disk at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()>;

    /// Make every completed write durable.
    fn flush(&mut self) -> Result<()>;

    /// Flush and leave the file in its at-rest form (VHDX: the log emptied).
    /// Dropping the disk does the same but cannot report errors.
    fn close(&mut self) -> Result<()> {
        self.flush()
    }

    /// The allocation map of `[offset, offset + length)` as maximal runs.
    fn map(&self, offset: u64, length: u64) -> Result<Vec<Extent>>;

    /// Everything known about the image, for `info`.
    fn info(&self) -> ImageInfo;

    /// The open parent of a differencing disk (what its
    /// [`ExtentKind::Parent`] runs read from); `None` for other disks and
    /// for a parent that is missing or not the recorded one.
    fn parent_disk(&self) -> Option<&dyn VirtualDisk> {
        None
    }

    /// The identifier a differencing child records to name this disk as its
    /// parent (VHD: the footer's unique id; VHDX: the DataWriteGuid).
    fn parent_link_id(&self) -> Option<Uuid> {
        None
    }

    /// The disk's speed-only hooks, if it has any (see [`FastPaths`]).
    fn fast_paths(&self) -> Option<&dyn FastPaths> {
        None
    }

    /// [`VirtualDisk::fast_paths`], for writing.
    fn fast_paths_mut(&mut self) -> Option<&mut dyn FastPaths> {
        None
    }

    /// The disk's ability to give back whole blocks, if it has one (see
    /// [`Discard`]).
    fn discarder(&mut self) -> Option<&mut dyn Discard> {
        None
    }
}

/// Optional ability: hooks that only make whole-disk copies faster.
///
/// Nothing here changes what a disk reads or stores: a caller that ignores
/// these hooks gets the same bytes, only later. Reached through
/// [`VirtualDisk::fast_paths`].
pub trait FastPaths: VirtualDisk {
    /// The virtual disk's bytes `offset..offset + len` in place, when the
    /// disk is a plain mapping of them (a raw file opened read-only), so a
    /// copy can hand them on without reading them into a buffer first.
    fn mapped(&self, _offset: u64, _len: usize) -> Option<&[u8]> {
        None
    }

    /// Whether the disk copies what [`VirtualDisk::write_at`] gets into
    /// buffers of its own before storing it (an encrypting disk does), so
    /// that a caller gains nothing by copying the bytes first and should
    /// lend them from wherever they are (see [`FastPaths::mapped`]).
    fn copies_writes(&self) -> bool {
        false
    }

    /// Write `buf` at `offset` like [`VirtualDisk::write_at`], for a caller
    /// that is done with the bytes: the disk may use `buf` as scratch space
    /// and leave unspecified content in it (an encrypting disk seals in
    /// place instead of copying).
    fn write_in_place(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.write_at(buf, offset)
    }
}

/// One block's share of a byte range, from [`block_pieces`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPiece {
    /// Index of the block.
    pub block: u64,
    /// Offset of the piece inside the block.
    pub in_block: u64,
    /// Offset of the piece on the virtual disk.
    pub pos: u64,
    /// Offset of the piece from the start of the range (an index into the
    /// caller's buffer).
    pub done: usize,
    /// Length of the piece in bytes.
    pub len: usize,
}

/// Split `[offset, offset + len)` where it crosses multiples of `block_size`.
pub fn block_pieces(offset: u64, len: u64, block_size: u64) -> impl Iterator<Item = BlockPiece> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        (pos < end).then(|| {
            let in_block = pos % block_size;
            let n = (block_size - in_block).min(end - pos);
            let piece = BlockPiece {
                block: pos / block_size,
                in_block,
                pos,
                done: (pos - offset) as usize,
                len: n as usize,
            };
            pos += n;
            piece
        })
    })
}

/// Runs of equal presence over the byte range `[start, start + len)` of a
/// block whose units (sectors) of `unit` bytes are present when `present(i)`
/// says so for unit `i`: `(start, length, present)` in bytes from the block's
/// start. Used for the sector bitmaps of differencing disks.
pub fn presence_runs(
    start: u64,
    len: u64,
    unit: u64,
    present: impl Fn(u64) -> bool,
) -> Vec<(u64, u64, bool)> {
    let end = start + len;
    let mut runs = Vec::new();
    let mut pos = start;
    while pos < end {
        let s = pos / unit;
        let here = present(s);
        let mut next = s + 1;
        while next * unit < end && present(next) == here {
            next += 1;
        }
        let stop = (next * unit).min(end);
        runs.push((pos, stop - pos, here));
        pos = stop;
    }
    runs
}

/// Optional ability: give back the storage of whole blocks (trim).
/// Reached through [`VirtualDisk::discarder`].
pub trait Discard {
    /// Deallocate every whole block inside `[offset, offset + len)`: those
    /// blocks read as zeros afterwards (never from a parent). Parts of
    /// blocks at the edges of the range are left as they are, and images
    /// that keep their blocks allocated (fixed) change nothing. Returns the
    /// bytes of the whole blocks in the range.
    fn discard(&mut self, offset: u64, len: u64) -> Result<u64>;
}

/// Whether an image may be written: opened read-write, undamaged (no
/// warnings from its open: repair first), and with its parent present.
pub(crate) fn ensure_writable(
    storage: &dyn crate::io::Storage,
    warnings: &[crate::report::Warning],
    parent: Option<&crate::parent::Parent>,
) -> Result<()> {
    if !storage.is_writable() {
        return Err(Error::new(
            ErrorKind::ReadOnly,
            "the image is opened read-only",
        ));
    }
    refuse_damaged(warnings)?;
    if let Some(crate::parent::Parent::Missing { .. }) = parent {
        return Err(Error::new(
            ErrorKind::ParentMissing,
            "cannot write to a differencing image whose parent is missing",
        ));
    }
    if let Some(p @ crate::parent::Parent::Mismatched { .. }) = parent {
        return Err(Error::new(
            ErrorKind::ParentMismatch,
            format!(
                "cannot write to a differencing image whose parent is not the recorded one: {}",
                p.warning().map(|w| w.message).unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

/// The gate of every writer in place (write, compact, resize, set,
/// set-parent, rebase): an image whose open reported `warnings` is
/// damaged, and is repaired before it is written.
pub(crate) fn refuse_damaged(warnings: &[crate::report::Warning]) -> Result<()> {
    if warnings.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::NeedsRepair,
        format!(
            "the image is damaged ({})",
            warnings
                .iter()
                .map(|w| w.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    )
    .with_hint(crate::Hint::Repair))
}

/// [`refuse_damaged`] for the operations that rewrite an image's
/// structures in place (resize, set, set-parent, rebase), given the
/// warnings of a read-only open. What a crash of one of them leaves, and
/// the writable open of running it again completes, is no damage to them:
/// a VHD footer copy that is whole and valid but older than the footer at
/// the end; an EVHD commit held in the journal (installed by the writable
/// open), with the header copy that commit was writing torn. Signature
/// warnings are about trust, not damage.
pub(crate) fn refuse_damaged_rewrite(warnings: &[crate::report::Warning]) -> Result<()> {
    use crate::report::WarningKind as K;
    let pending = warnings.iter().any(|w| w.kind == K::JournalInMemory);
    let damage: Vec<crate::report::Warning> = warnings
        .iter()
        .filter(|w| {
            let recoverable = matches!(
                w.kind,
                K::CopyDiffers | K::JournalInMemory | K::Unsigned | K::UntrustedSigner
            );
            let torn_by_pending =
                pending && w.kind == K::CopyUnusable && w.structure == Some("EVHD header");
            !(recoverable || torn_by_pending)
        })
        .cloned()
        .collect();
    refuse_damaged(&damage)
}

/// Check that `[offset, offset + len)` lies inside a disk of `size` bytes.
pub fn check_range(size: u64, offset: u64, len: usize) -> Result<()> {
    check_extent(size, offset, len as u64)
}

/// Check that `[offset, offset + len)` lies inside a disk of `size` bytes
/// (a length of 0 too: its offset must not lie past the end).
pub fn check_extent(size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(out_of_range(size, offset, len)),
    }
}

/// The error for `[offset, offset + len)` outside a disk of `size` bytes.
///
/// Every offset, length and size in a range error is written the same
/// way: in hexadecimal, as `map` prints offsets and every error names a
/// file offset, the size followed by its value in binary units.
pub fn out_of_range(size: u64, offset: u64, len: u64) -> Error {
    let unit = crate::report::human_size(size);
    let unit = unit.split(" (").next().unwrap_or_default();
    Error::new(
        ErrorKind::OutOfBounds,
        format!(
            "range {offset:#x}+{len:#x} lies outside the virtual disk of {size:#x} bytes ({unit})"
        ),
    )
}

/// Whether every byte of `buf` is zero.
///
/// Works over 256-byte pieces folded into one word each, which the compiler
/// vectorises, and stops at the first piece that is not zero.
pub fn is_zero(buf: &[u8]) -> bool {
    const PIECE: usize = 256;
    let mut pieces = buf.chunks_exact(PIECE);
    for piece in &mut pieces {
        let or = piece.chunks_exact(16).fold(0u128, |acc, w| {
            acc | u128::from_ne_bytes(w.try_into().expect("16-byte chunk"))
        });
        if or != 0 {
            return false;
        }
    }
    pieces.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_block_boundaries() {
        let p: Vec<_> = block_pieces(1000, 3000, 1024)
            .map(|p| (p.block, p.in_block, p.done, p.len))
            .collect();
        assert_eq!(
            p,
            vec![
                (0, 1000, 0, 24),
                (1, 0, 24, 1024),
                (2, 0, 1048, 1024),
                (3, 0, 2072, 928)
            ]
        );
        assert_eq!(block_pieces(5, 0, 512).count(), 0);
    }

    #[test]
    fn presence_runs_merge_equal_units() {
        let bits = [true, true, false, true];
        let r = presence_runs(100, 1948, 512, |i| bits[i as usize]);
        assert_eq!(
            r,
            vec![(100, 924, true), (1024, 512, false), (1536, 512, true)]
        );
    }
}
