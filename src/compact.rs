//! Compacting a dynamic or differencing image in place (Optimize-VHD):
//! blocks that read as zeros stop being stored, the blocks nearest the end
//! of the file move down into the holes, and the file is cut after the
//! last block.
//!
//! Speed: the blocks are tested for zeros on several threads (a block the
//! file system stores no byte of is not read at all), the moves are one
//! batch of copies (on several threads, or shared by the file system
//! where it can) followed by one table update, and no more bytes move than lie past the new end.
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

/// Where the blocks that stay stored go, found by [`plan_moves`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct MovePlan {
    /// `(block, to)`: the block at that index of the list given moves to
    /// file offset `to`; every `to` lies in space that no block or
    /// structure holds before any move, so the copies can be made in any
    /// order, all before one table update.
    pub moves: Vec<(usize, u64)>,
    /// Where the file may end: past every block (at its place after the
    /// moves) and every structure.
    pub end: u64,
}

/// Plan how the stored `blocks` (`(offset, len)` each, in any order) move
/// down into the free space between them and the `reserved` ranges
/// (`[start, end)`, structures that are not blocks): the block nearest the
/// end of the file goes to the lowest free place that holds it (offsets
/// are multiples of `align`) and lies wholly below it, then the next
/// nearest, and so on, until no block has such a place.
///
/// Space a moving block leaves is not used again: it lies above every
/// block still to be placed, so that no copy lands where the table still
/// points before the table changes. One batch of copies then one table
/// update packs the file: no more bytes move than lie past its new end.
pub(crate) fn plan_moves(blocks: &[(u64, u64)], reserved: &[(u64, u64)], align: u64) -> MovePlan {
    let align = align.max(1);
    let mut taken: Vec<(u64, u64)> = reserved
        .iter()
        .copied()
        .chain(blocks.iter().map(|&(o, l)| (o, o.saturating_add(l))))
        .filter(|&(s, e)| s < e)
        .collect();
    taken.sort_unstable();
    // The gaps between taken ranges, lowest first; a gap only ever shrinks
    // from below as blocks are placed in it.
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    let mut covered = 0u64;
    for &(s, e) in &taken {
        if s > covered {
            gaps.push((covered, s));
        }
        covered = covered.max(e);
    }
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_unstable_by_key(|&i| std::cmp::Reverse(blocks[i].0));
    // Per block length, the first gap that may still hold one: the gaps
    // before it are too small for that length, and stay so.
    let mut first_fit: Vec<(u64, usize)> = Vec::new();
    let mut plan = MovePlan::default();
    let mut end = reserved.iter().map(|&(_, e)| e).max().unwrap_or(0);
    for i in order {
        let (src, len) = blocks[i];
        let k = match first_fit.iter().position(|&(l, _)| l == len) {
            Some(k) => k,
            None => {
                first_fit.push((len, 0));
                first_fit.len() - 1
            }
        };
        let fits = |&(s, e): &(u64, u64)| {
            let at = s.div_ceil(align).saturating_mul(align);
            at.checked_add(len).is_some_and(|x| x <= e)
        };
        let mut g = first_fit[k].1;
        while g < gaps.len() && !fits(&gaps[g]) {
            g += 1;
        }
        first_fit[k].1 = g;
        let to = gaps
            .get(g)
            .map(|&(s, _)| s.div_ceil(align) * align)
            .filter(|&at| at + len <= src);
        match to {
            Some(at) => {
                gaps[g].0 = at + len;
                plan.moves.push((i, at));
                end = end.max(at + len);
            }
            None => end = end.max(src.saturating_add(len)),
        }
    }
    plan.end = end;
    plan
}

/// The ranges of the file that dropped blocks leave, merged where they
/// touch (blocks are dropped in the order of their offsets, so adding is
/// cheap).
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

    /// The freed ranges, merged where they touch, in file order.
    pub fn merged(&self) -> Vec<(u64, u64)> {
        self.0.clone()
    }
}

/// Bytes copied at a time when a block moves, and read at a time when a
/// block is tested for zeros: small enough to stay in a core's cache
/// between the read and the compare (or the write).
const COPY_CHUNK: usize = 1 << 20;

/// The first piece of a block read to test it for zeros: most blocks
/// that hold data show it in their first bytes.
const FIRST_PIECE: usize = 64 << 10;

/// Threads a compaction tests blocks and copies them with. More than a
/// small machine's cores: the work is I/O (several requests in flight
/// keep a device busy), and a copy that shares a loaded machine with
/// other work gets its share per thread (`qemu-img convert` runs 8
/// coroutines over a pool of I/O threads).
const MAX_THREADS: usize = 4;

/// Pieces a [`read_ahead`] reads before they are written.
const READ_AHEAD: usize = 4;

/// Threads worth starting: [`MAX_THREADS`], or 1 where this process may
/// use a single core only.
fn threads() -> usize {
    match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        1 => 1,
        _ => MAX_THREADS,
    }
}

/// Carry out the `moves` of a plan, `(from, to, len)` each, inside
/// `storage`: every `to` range is free and disjoint from every `from`
/// range, so the order does not matter. The file system shares the blocks
/// where it can (a reflink: nothing is copied); otherwise the moves are
/// shared out among several threads, each copying whole blocks through a
/// buffer small enough to stay in its core's cache (no thread waits for
/// another). Bytes past the end of the file are copied as zeros. Nothing
/// is flushed.
pub(crate) fn copy_blocks(
    storage: &dyn Storage,
    structure: &'static str,
    moves: &[(u64, u64, u64)],
) -> Result<()> {
    let file_len = storage.len().map_err(io_err(structure, 0))?;
    let mut rest = moves;
    while let Some((&(from, to, len), tail)) = rest.split_first() {
        let shared = from.saturating_add(len) <= file_len
            && storage
                .copy_within(from, to, len)
                .map_err(io_err(structure, to))?;
        if !shared {
            break;
        }
        rest = tail;
    }
    par_map(rest.len(), |i, buf| {
        let (from, to, len) = rest[i];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(COPY_CHUNK as u64) as usize;
            buf.resize(n, 0);
            storage
                .read_at_or_zero(buf, from + done)
                .map_err(io_err(structure, from + done))?;
            storage
                .write_at(buf, to + done)
                .map_err(io_err(structure, to + done))?;
            done += n as u64;
        }
        Ok(())
    })?;
    Ok(())
}

/// Run `read` on each of `pieces` (into a buffer of `len` bytes of it) on
/// a second thread, up to [`READ_AHEAD`] pieces ahead of `write`, which
/// gets each piece with its bytes on this thread, in order: reading
/// overlaps writing, and the writes happen in the same order as without
/// the thread. The first error ends both.
pub(crate) fn read_ahead<P: Sync>(
    pieces: &[P],
    len: impl Fn(&P) -> usize + Sync,
    read: impl Fn(&P, &mut [u8]) -> Result<()> + Sync,
    mut write: impl FnMut(&P, &[u8]) -> Result<()>,
) -> Result<()> {
    if threads() < 2 || pieces.len() < 2 {
        let mut buf = Vec::new();
        for p in pieces {
            buf.resize(len(p), 0);
            read(p, &mut buf)?;
            write(p, &buf)?;
        }
        return Ok(());
    }
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<Result<Vec<u8>>>(READ_AHEAD);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(READ_AHEAD + 1);
    for _ in 0..READ_AHEAD + 1 {
        free_tx
            .send(Vec::new())
            .expect("the channel has room for every buffer");
    }
    let (len, read) = (&len, &read);
    // Every channel end moves into the scope, so that an error returned
    // from it closes them before the reader is waited for: a reader
    // waiting for a buffer or for room to send then stops.
    std::thread::scope(move |scope| {
        scope.spawn(move || {
            for p in pieces {
                let Ok(mut buf) = free_rx.recv() else { return };
                buf.resize(len(p), 0);
                let item = read(p, &mut buf).map(|()| buf);
                let failed = item.is_err();
                if full_tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        for p in pieces {
            let buf = full_rx.recv().map_err(|_| {
                Error::new(ErrorKind::Io, "the thread reading ahead stopped early")
            })??;
            write(p, &buf)?;
            // The reader may have stopped; a lost buffer does not matter then.
            let _ = free_tx.send(buf);
        }
        Ok(())
    })
}

/// `f(i, buffer)` for every `i` in `0..n`, on up to [`MAX_THREADS`]
/// threads, each with a buffer of its own; the results in the order of
/// `i`. After an error no further `i` is started, and an error is
/// returned.
pub(crate) fn par_map<T: Send>(
    n: usize,
    f: impl Fn(usize, &mut Vec<u8>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let workers = threads().min(n);
    if workers < 2 {
        let mut buf = Vec::new();
        return (0..n).map(|i| f(i, &mut buf)).collect();
    }
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let f = &f;
    let parts: Vec<Result<Vec<(usize, T)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (next, failed) = (&next, &failed);
                scope.spawn(move || {
                    let mut buf = Vec::new();
                    let mut out = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        match f(i, &mut buf) {
                            Ok(v) => out.push((i, v)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, "a reading thread failed")))
            })
            .collect()
    });
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for part in parts {
        for (i, v) in part? {
            slots[i] = Some(v);
        }
    }
    slots
        .into_iter()
        .map(|v| v.ok_or_else(|| Error::new(ErrorKind::Io, "a block was not read")))
        .collect()
}

/// For each of `ranges` (`(offset, len)`, in increasing offset order),
/// whether the file stores none of its bytes (it lies wholly in holes,
/// which read as zeros): such a block need not be read to be known to
/// read as zeros. All `false` when the storage cannot tell. The file
/// system is asked one window of [`crate::sparse::WINDOW_BYTES`] at a
/// time, so memory stays bounded whatever the file's fragmentation.
pub(crate) fn in_holes(storage: &dyn Storage, ranges: &[(u64, u64)]) -> Result<Vec<bool>> {
    const WINDOW: u64 = crate::sparse::WINDOW_BYTES;
    let mut window: Option<(u64, Vec<(u64, u64)>)> = None;
    let mut out = Vec::with_capacity(ranges.len());
    for &(offset, len) in ranges {
        let end = offset.saturating_add(len);
        let mut hole = len > 0;
        let mut w = offset / WINDOW * WINDOW;
        while hole && w < end {
            if window.as_ref().is_none_or(|(at, _)| *at != w) {
                match storage
                    .data_runs(w, WINDOW)
                    .map_err(io_err("image file", w))?
                {
                    Some(runs) => window = Some((w, runs)),
                    None => return Ok(vec![false; ranges.len()]),
                }
            }
            let runs = &window.as_ref().expect("a window was just found").1;
            let i = runs.partition_point(|&(s, l)| s + l <= offset);
            hole = runs.get(i).is_none_or(|&(s, _)| s >= end);
            w = w.saturating_add(WINDOW);
        }
        out.push(hole);
    }
    Ok(out)
}

/// Whether the virtual bytes `[offset, offset + len)` of `read` are all
/// zeros, read a piece at a time (stopping at the first piece that is not).
pub(crate) fn reads_zero(
    read: impl Fn(&mut [u8], u64) -> Result<()>,
    offset: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> Result<bool> {
    let mut done = 0u64;
    while done < len {
        let piece = if done == 0 { FIRST_PIECE } else { COPY_CHUNK };
        let n = (len - done).min(piece as u64) as usize;
        buf.resize(n, 0);
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

    /// The plan applied: the final `(offset, len)` of every block.
    fn placed(blocks: &[(u64, u64)], plan: &MovePlan) -> Vec<(u64, u64)> {
        let mut out = blocks.to_vec();
        for &(i, to) in &plan.moves {
            out[i].0 = to;
        }
        out
    }

    #[test]
    fn the_last_blocks_move_into_the_lowest_holes() {
        // Structures at [0, 3) and [10, 12); blocks of 2 at 4, 8, 14, 20.
        let blocks = [(4, 2), (8, 2), (14, 2), (20, 2)];
        let plan = plan_moves(&blocks, &[(0, 3), (10, 12)], 1);
        // 20 -> 6 (3..4 is too small), 14 -> 12 (past the structure), 8
        // and 4 stay (no free place below them is left).
        assert_eq!(plan.moves, vec![(3, 6), (2, 12)]);
        assert_eq!(placed(&blocks, &plan), [(4, 2), (8, 2), (12, 2), (6, 2)]);
        assert_eq!(plan.end, 14);
    }

    #[test]
    fn copies_land_only_where_nothing_was() {
        // Every other block of 4 gone: the last blocks fill the holes, and
        // the file ends after as many blocks as remain.
        let blocks: Vec<(u64, u64)> = (0..32).step_by(2).map(|b| (8 + b * 4, 4)).collect();
        let plan = plan_moves(&blocks, &[(0, 8)], 4);
        assert_eq!(plan.end, 8 + 16 * 4);
        let after = placed(&blocks, &plan);
        for &(i, to) in &plan.moves {
            for &(o, l) in &blocks {
                assert!(to + 4 <= o || o + l <= to, "copy {i} to {to} hits {o}");
            }
            assert!(to < blocks[i].0, "moved up");
        }
        let mut ends: Vec<u64> = after.iter().map(|&(o, _)| o).collect();
        ends.sort_unstable();
        ends.dedup();
        assert_eq!(ends.len(), blocks.len(), "two blocks in one place");
        assert!(after.iter().all(|&(o, l)| o % 4 == 0 && o + l <= plan.end));
    }

    #[test]
    fn blocks_stay_when_no_free_place_lies_below_them() {
        let blocks = [(6, 4), (20, 4)];
        let plan = plan_moves(&blocks, &[(0, 4)], 4);
        // 4..6 is too small; 12 is the first aligned free place, below 20.
        assert_eq!(plan.moves, vec![(1, 12)]);
        assert_eq!(plan.end, 16);
        // A smaller block still fits a gap that a larger one skipped.
        let blocks = [(4, 1), (8, 4), (16, 1)];
        let plan = plan_moves(&blocks, &[(0, 4)], 1);
        assert_eq!(plan.moves, vec![(2, 5)]);
        assert_eq!(plan.end, 12);
        assert_eq!(
            plan_moves(&[], &[(0, 4)], 1),
            MovePlan {
                moves: vec![],
                end: 4
            }
        );
    }

    #[test]
    fn freed_ranges_merge() {
        let mut f = Freed::default();
        f.add(10, 5);
        f.add(0, 4);
        f.add(4, 2);
        assert_eq!(f.merged(), vec![(0, 6), (10, 15)]);
        f.add(20, 5);
        f.add(25, 5);
        assert_eq!(f.merged(), vec![(0, 6), (10, 15), (20, 30)]);
    }

    #[test]
    fn reading_ahead_keeps_the_order_and_the_bytes() {
        let pieces: Vec<u64> = (0..50).collect();
        let mut seen = Vec::new();
        read_ahead(
            &pieces,
            |&p| (p % 7) as usize,
            |&p, buf| {
                buf.fill(p as u8);
                Ok(())
            },
            |&p, buf| {
                assert_eq!(buf.len() as u64, p % 7);
                assert!(buf.iter().all(|&b| b == p as u8));
                seen.push(p);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, pieces);
        let e = read_ahead(
            &pieces,
            |_| 1,
            |&p, _| {
                if p == 20 {
                    Err(Error::new(ErrorKind::Io, "read 20"))
                } else {
                    Ok(())
                }
            },
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("read 20"), "{e}");
        // A write that fails while the reader is ahead and waiting for a
        // buffer ends it (no hang).
        let e = read_ahead(
            &pieces,
            |_| 1,
            |_, _| Ok(()),
            |&p, _| {
                if p == 3 {
                    Err(Error::new(ErrorKind::Io, "write 3"))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("write 3"), "{e}");
    }

    #[test]
    fn par_map_keeps_the_order_and_reports_errors() {
        let v = par_map(100, |i, _| Ok(i * 2)).unwrap();
        assert_eq!(v, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        let e = par_map(100, |i, _| {
            if i == 57 {
                Err(Error::new(ErrorKind::Io, "block 57"))
            } else {
                Ok(i)
            }
        })
        .unwrap_err();
        assert!(e.to_string().contains("block 57"), "{e}");
    }
}
