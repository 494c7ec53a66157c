//! Compacting a dynamic or differencing image in place (Optimize-VHD):
//! blocks that read as zeros stop being stored, the blocks that remain move
//! down into the holes, and the file is cut after the last one.
//!
//! Every step keeps the image valid after a crash at any point: a block is
//! copied to free space and made durable before its table entry switches
//! to the copy, and the space a block leaves is written to only after the
//! table no longer points at it durably. The content never changes, so a
//! differencing child's parent keeps its children valid. The formats do
//! the work (`vhd`, `vhdx` and `evhd`, each in its `compact`
//! module); this module opens the image and plans where blocks go.

use std::path::Path;

use serde::Serialize;

use crate::OpenOptions;
use crate::chain::Chain;
use crate::error::{Error, ErrorKind, Result};
use crate::evhd::EvhdDisk;
use crate::io::{Storage, io_err};
use crate::report::Format;
use crate::vhd::VhdDisk;
use crate::vhdx::VhdxDisk;

/// How thoroughly to compact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop zero blocks, move the rest down and cut the file.
    #[default]
    Full,
    /// Only drop zero blocks and punch holes where they were; nothing
    /// moves and the file keeps its length.
    Quick,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    /// File size before, in bytes.
    pub size_before: u64,
    /// File size after, in bytes.
    pub size_after: u64,
    /// Blocks that read as zeros and are no longer stored.
    pub blocks_dropped: u64,
    /// Stored blocks moved to a lower place in the file.
    pub blocks_moved: u64,
    /// Bytes given back to the file system by punching holes (quick mode).
    pub bytes_punched: u64,
    /// Whether the file system refused to punch holes (quick mode): the
    /// space of dropped blocks then stays allocated.
    pub punch_refused: bool,
}

/// Compact the image at `path` in place, opened for writing and locked
/// for the whole operation (see the module documentation). `opts` locates
/// a differencing image's parent; it is opened read-only.
pub fn compact(path: &Path, opts: &OpenOptions, mode: Mode) -> Result<CompactReport> {
    let storage = crate::open_file(path, true, false)?;
    compact_storage(Box::new(storage), Some(path), opts, mode).map_err(|e| e.with_path(path))
}

/// [`compact`] of the image held in `storage` (`path`, if any, locates its
/// parent).
pub fn compact_storage(
    storage: Box<dyn Storage>,
    path: Option<&Path>,
    opts: &OpenOptions,
    mode: Mode,
) -> Result<CompactReport> {
    // Zero blocks are judged through the chain: over a parent taken
    // despite its identity, a block dropped for reading as that parent
    // does would read the recorded parent's content instead. Only the
    // recorded parent will do.
    let opts = opts.clone().writable(true).ignore_parent_id(false);
    compact_checked(storage, path, &opts, mode).map_err(|e| {
        if e.kind() == ErrorKind::ParentMismatch {
            Error::new(
                ErrorKind::ParentMismatch,
                format!("{e}; a differencing image is compacted over its recorded parent only"),
            )
        } else {
            e
        }
    })
}

fn compact_checked(
    storage: Box<dyn Storage>,
    path: Option<&Path>,
    opts: &OpenOptions,
    mode: Mode,
) -> Result<CompactReport> {
    let opts = opts.clone();
    let chain = match path {
        Some(p) => Chain::default().enter(p)?,
        None => Chain::default(),
    };
    let format = crate::detect::resolve(storage.as_ref(), opts.format)?;
    let path = path.map(Path::to_path_buf);
    match format {
        Format::Vhd => VhdDisk::open(storage, path, &opts, &chain)?.compact(mode),
        Format::Vhdx => VhdxDisk::open(storage, path, &opts, &chain)?.compact(mode),
        Format::Evhd => EvhdDisk::open(storage, path, &opts)?.compact(mode),
        Format::Raw => Err(Error::new(
            ErrorKind::Unsupported,
            "a raw image has no blocks to compact",
        )),
    }
}

/// The error for an image whose type keeps every block.
pub(crate) fn fixed_refused(format: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "a fixed {format} image stores every block; only dynamic and differencing images can be compacted"
        ),
    )
}

/// Where the blocks that remain go: each, in the order of their file
/// offsets, to the lowest free place that lies wholly below it, outside
/// every structure that is not a block; a block with no such place stays.
#[derive(Debug)]
pub(crate) struct Packer {
    /// Everything below is taken (structures or placed blocks).
    cursor: u64,
    /// Ranges blocks must not be placed in, as `[start, end)`.
    reserved: Vec<(u64, u64)>,
    /// Block offsets are multiples of this.
    align: u64,
}

impl Packer {
    pub fn new(reserved: Vec<(u64, u64)>, align: u64) -> Packer {
        Packer {
            cursor: 0,
            reserved,
            align,
        }
    }

    fn align_up(&self, x: u64) -> u64 {
        x.div_ceil(self.align) * self.align
    }

    /// The place for the block of `len` bytes now at `offset` (blocks are
    /// given in increasing `offset` order): `offset` itself when it stays.
    pub fn place(&mut self, offset: u64, len: u64) -> u64 {
        let mut at = self.align_up(self.cursor);
        while let Some(&(_, e)) = self
            .reserved
            .iter()
            .find(|&&(s, e)| at < e && s < at.saturating_add(len))
        {
            at = self.align_up(e);
        }
        if at.saturating_add(len) <= offset {
            self.cursor = at + len;
            at
        } else {
            self.cursor = self.cursor.max(offset.saturating_add(len));
            offset
        }
    }

    /// Where the file may end: past every placed block and structure.
    pub fn end(&self) -> u64 {
        self.reserved
            .iter()
            .map(|&(_, e)| e)
            .fold(self.cursor, u64::max)
    }
}

/// Ranges of the file whose old content must stay until the next commit
/// makes the table changes that freed them durable: sorted and merged
/// (blocks are freed in the order of their offsets, so adding is cheap and
/// a lookup is a binary search).
#[derive(Debug, Default)]
pub(crate) struct Freed(Vec<(u64, u64)>);

impl Freed {
    pub fn add(&mut self, start: u64, len: u64) {
        let end = start + len;
        match self.0.last_mut() {
            Some(last) if start >= last.0 => {
                if start <= last.1 {
                    last.1 = last.1.max(end);
                } else {
                    self.0.push((start, end));
                }
            }
            None => self.0.push((start, end)),
            Some(_) => {
                self.0.push((start, end));
                self.0.sort_unstable();
                let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
                for &(s, e) in &self.0 {
                    match merged.last_mut() {
                        Some(m) if s <= m.1 => m.1 = m.1.max(e),
                        _ => merged.push((s, e)),
                    }
                }
                self.0 = merged;
            }
        }
    }

    /// Whether writing `[start, start + len)` would overwrite freed space.
    pub fn hits(&self, start: u64, len: u64) -> bool {
        // The first range that ends after `start` is the only candidate.
        let i = self.0.partition_point(|&(_, e)| e <= start);
        self.0.get(i).is_some_and(|&(s, _)| s < start + len)
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The freed ranges, merged where they touch, in file order.
    pub fn merged(&self) -> Vec<(u64, u64)> {
        self.0.clone()
    }
}

/// Bytes copied at a time when a block moves.
const COPY_CHUNK: usize = 4 << 20;

/// Copy `len` bytes of `storage` from `from` to the lower, disjoint
/// `to`; bytes past the end of the file are copied as zeros.
pub(crate) fn copy_down(
    storage: &dyn Storage,
    structure: &'static str,
    from: u64,
    to: u64,
    len: u64,
) -> Result<()> {
    let file_len = storage.len().map_err(io_err(structure, from))?;
    if from.saturating_add(len) <= file_len
        && storage
            .copy_within(from, to, len)
            .map_err(io_err(structure, to))?
    {
        return Ok(());
    }
    let mut buf = vec![0u8; COPY_CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        storage
            .read_at_or_zero(&mut buf[..n], from + done)
            .map_err(io_err(structure, from + done))?;
        storage
            .write_at(&buf[..n], to + done)
            .map_err(io_err(structure, to + done))?;
        done += n as u64;
    }
    Ok(())
}

/// Whether the virtual bytes `[offset, offset + len)` of `read` are all
/// zeros, read a piece at a time (stopping at the first piece that is not).
pub(crate) fn reads_zero(
    read: impl Fn(&mut [u8], u64) -> Result<()>,
    offset: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> Result<bool> {
    buf.resize(COPY_CHUNK.min(len as usize), 0);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        read(&mut buf[..n], offset + done)?;
        if !crate::disk::is_zero(&buf[..n]) {
            return Ok(false);
        }
        done += n as u64;
    }
    Ok(true)
}

/// Punch holes over `ranges` of `storage`: the bytes punched, and whether
/// the file system refused.
pub(crate) fn punch(storage: &dyn Storage, ranges: &[(u64, u64)]) -> Result<(u64, bool)> {
    let mut punched = 0;
    for &(s, e) in ranges {
        if !storage
            .punch_hole(s, e - s)
            .map_err(io_err("image file", s))?
        {
            return Ok((punched, true));
        }
        punched += e - s;
    }
    Ok((punched, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packer_moves_blocks_down_around_structures() {
        // Structures at [0, 3) and [10, 12); blocks of 2 at 4, 8, 14, 20.
        let mut p = Packer::new(vec![(0, 3), (10, 12)], 1);
        assert_eq!(p.place(4, 2), 4, "nothing free below it");
        assert_eq!(p.place(8, 2), 6);
        assert_eq!(p.place(14, 2), 8, "fits before the structure");
        assert_eq!(p.place(20, 2), 12, "skips the structure");
        assert_eq!(p.end(), 14);
    }

    #[test]
    fn packer_leaves_a_block_whose_place_overlaps_it() {
        let mut p = Packer::new(vec![(0, 4)], 4);
        // The place at 4 would overlap the block at 6: it stays.
        assert_eq!(p.place(6, 4), 6);
        assert_eq!(p.place(20, 4), 12, "aligned after the block that stayed");
        assert_eq!(p.end(), 16);
    }

    #[test]
    fn freed_ranges_merge_and_are_hit() {
        let mut f = Freed::default();
        f.add(10, 5);
        f.add(0, 4);
        f.add(4, 2);
        assert!(f.hits(14, 10));
        assert!(f.hits(3, 1));
        assert!(!f.hits(6, 4));
        assert!(!f.hits(15, 4));
        assert_eq!(f.merged(), vec![(0, 6), (10, 15)]);
        f.add(20, 5);
        f.add(25, 5);
        assert_eq!(f.merged(), vec![(0, 6), (10, 15), (20, 30)]);
    }
}
