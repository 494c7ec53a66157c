//! Holes of sparse files: which ranges of a file the file system stores
//! (`lseek` with `SEEK_DATA` and `SEEK_HOLE`), so that a raw image's holes
//! are reported as zeros and never read.

use std::fs::File;
use std::io;

/// Most runs a [`HoleWindow`] keeps beyond what it was asked for (16 bytes
/// each, so 1 MiB): the window it scans ahead stops there, so its memory
/// stays bounded whatever the file's fragmentation, and the next request
/// past it scans the next window. No run is ever dropped or merged: a hole
/// is never read as data.
pub const MAX_RUNS: usize = 1 << 16;

/// How far ahead of a request a [`HoleWindow`] scans, so that a copy
/// advancing through the file asks the file system once per window.
pub const WINDOW_BYTES: u64 = 1 << 30;

/// The runs of a byte range of a file that its file system stores: the
/// bytes between them are holes, which read as zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMap {
    /// `(start, end)` of each stored run, in order, not touching each other.
    runs: Vec<(u64, u64)>,
    /// The start of the range the map describes.
    start: u64,
    /// The end of the range the map describes.
    end: u64,
}

impl DataMap {
    /// Find the stored runs of `start..end` of `file`, or `None` when the
    /// system cannot tell (no `SEEK_DATA` for this file or file system):
    /// then everything is to be read. Every run is kept: the map grows
    /// with the range asked for, so callers ask for windows (see
    /// `HoleWindow`). Moves the file's seek position, which nothing in
    /// vhdkit uses (all reads and writes are positional).
    pub fn scan(file: &File, start: u64, end: u64) -> io::Result<Option<DataMap>> {
        Self::scan_ahead(file, start, end, end, usize::MAX)
    }

    /// Scan `start..need` fully, then on up to `ahead` while the map holds
    /// fewer than `max_runs` runs; the map ends where the scan stopped, or
    /// past `ahead` at the end of what the last call found (the hole or
    /// data after the window).
    fn scan_ahead(
        file: &File,
        start: u64,
        need: u64,
        ahead: u64,
        max_runs: usize,
    ) -> io::Result<Option<DataMap>> {
        let ahead = ahead.max(need);
        let mut map = DataMap {
            runs: Vec::new(),
            start,
            end: ahead,
        };
        let mut pos = start;
        while pos < ahead {
            if pos >= need && map.runs.len() >= max_runs {
                map.end = pos;
                break;
            }
            let data = match seek_data(file, pos) {
                Ok(Some(d)) => d,
                // No data from `pos` on: the rest is one hole.
                Ok(None) => break,
                Err(e) if pos == start && unsupported(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            if data >= ahead {
                // `pos..data` is a hole: known without another call.
                map.end = data;
                break;
            }
            // A file that shrank since `data` was found ends the data there;
            // a system that cannot find the hole makes the rest data.
            let hole = match seek_hole(file, data) {
                Ok(h) => h.unwrap_or(data).max(data),
                Err(e) if unsupported(&e) => ahead,
                Err(e) => return Err(e),
            };
            if hole == data {
                break;
            }
            map.push(data, hole);
            if hole > ahead {
                // The system found the run's end past the window: the map
                // covers it too (some file systems, tmpfs among them, walk
                // every page up to the hole, so that walk is not repeated
                // for the next request).
                map.end = hole;
                break;
            }
            pos = hole;
        }
        Ok(Some(map))
    }

    /// A map of `..end` from runs `(start, end)` already known, in order.
    pub fn from_runs(runs: impl IntoIterator<Item = (u64, u64)>, end: u64) -> Self {
        let mut map = DataMap {
            runs: Vec::new(),
            start: 0,
            end,
        };
        for (s, e) in runs {
            map.push(s, e.min(end));
        }
        map
    }

    /// Whether the map describes all of `offset..offset + len`.
    pub fn covers(&self, offset: u64, len: u64) -> bool {
        offset >= self.start && offset.checked_add(len).is_some_and(|e| e <= self.end)
    }

    /// Add the run `start..end`, which lies after every run so far.
    fn push(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some(last) = self.runs.last_mut()
            && start <= last.1
        {
            last.1 = last.1.max(end);
            return;
        }
        self.runs.push((start, end));
    }

    /// The stored runs that meet `offset..offset + len`, cut to it, as
    /// `(start, length)`.
    pub fn data_in(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let end = offset.saturating_add(len);
        let first = self.runs.partition_point(|&(_, e)| e <= offset);
        self.runs[first..]
            .iter()
            .take_while(|&&(s, _)| s < end)
            .map(|&(s, e)| {
                let (s, e) = (s.max(offset), e.min(end));
                (s, e - s)
            })
            .collect()
    }

    /// Bytes in stored runs.
    pub fn data_bytes(&self) -> u64 {
        self.runs.iter().map(|&(s, e)| e - s).sum()
    }

    /// How many runs the map holds.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }
}

/// Most windows a [`HoleWindow`] keeps: a disk read at random offsets
/// finds each window of its file scanned once, not once per read.
pub const MAX_WINDOWS: usize = 8;

/// The data map of a file that does not change while it is read (a locked
/// read-only open), found one window at a time: the file is cut into
/// windows of [`WINDOW_BYTES`] at multiples of it, and a request that no
/// window kept covers scans the window it starts in (through the request's
/// end, and on to the window's end unless [`MAX_RUNS`] runs are found
/// first). The last [`MAX_WINDOWS`] windows are kept, so random reads all
/// over a large image scan each window once (some file systems, tmpfs
/// among them, walk every page up to the next hole on each scan). Memory
/// stays bounded by that many windows, and every hole stays a hole,
/// however fragmented the file.
#[derive(Debug, Default)]
pub struct HoleWindow {
    kept: std::sync::Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    /// The system cannot tell holes for this file.
    unsupported: bool,
    /// The windows kept, the most recently scanned last.
    windows: std::collections::VecDeque<DataMap>,
}

impl HoleWindow {
    /// The stored runs of `offset..offset + len` of `file` (whose length is
    /// `file_len`), cut to it, as `(start, length)`; `None` when the system
    /// cannot tell (then all of it is to be read).
    pub fn data_in(
        &self,
        file: &File,
        file_len: u64,
        offset: u64,
        len: u64,
    ) -> io::Result<Option<Vec<(u64, u64)>>> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.unsupported {
            return Ok(None);
        }
        if let Some(map) = kept.windows.iter().find(|m| m.covers(offset, len)) {
            return Ok(Some(map.data_in(offset, len)));
        }
        let start = offset - offset % WINDOW_BYTES;
        let need = offset.saturating_add(len).min(file_len);
        let ahead = start.saturating_add(WINDOW_BYTES).min(file_len);
        let Some(map) = DataMap::scan_ahead(file, start, need, ahead, MAX_RUNS)? else {
            kept.unsupported = true;
            return Ok(None);
        };
        let runs = map.data_in(offset, len);
        kept.windows.push_back(map);
        if kept.windows.len() > MAX_WINDOWS {
            kept.windows.pop_front();
        }
        Ok(Some(runs))
    }

    /// Whether the window kept already says that all of `offset..offset +
    /// len` is one hole (`Some(true)`), holds data (`Some(false)`), or does
    /// not cover it (`None`).
    #[cfg(test)]
    pub fn known_hole(&self, offset: u64, len: u64) -> Option<bool> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.windows
            .iter()
            .find(|m| m.covers(offset, len))
            .map(|m| m.data_in(offset, len).is_empty())
    }
}

/// Whether `e` says the system does not support finding holes here.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS)
    )
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
#[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: lseek on a descriptor this `File` owns; it only moves the
    // descriptor's position.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    // ENXIO: no data (SEEK_DATA) or no hole (SEEK_HOLE) at or after offset,
    // which lies at or past the end of the file.
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_DATA)
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn seek_hole(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_HOLE)
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn seek_data(_: &File, _: u64) -> io::Result<Option<u64>> {
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn seek_hole(_: &File, _: u64) -> io::Result<Option<u64>> {
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// Bytes a file occupies on its file system (`st_blocks` × 512), for a
/// regular file; `None` for anything else or where the system does not say.
pub fn allocated_bytes(meta: &std::fs::Metadata) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.is_file().then(|| meta.blocks().saturating_mul(512))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// An empty read-write file in a new temporary directory (kept alive
    /// by the returned guard).
    fn scratch_file() -> (tempfile::TempDir, File) {
        let d = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("f"))
            .unwrap();
        (d, f)
    }

    #[test]
    fn finds_the_runs_of_a_sparse_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 8192], 1 << 20).unwrap();
        f.write_all_at(&[2u8; 4096], (64 << 20) - 4096).unwrap();
        let Some(map) = DataMap::scan(&f, 0, 64 << 20).unwrap() else {
            eprintln!("SKIP: this file system does not report holes");
            return;
        };
        // File systems may round runs out to their allocation unit.
        let runs = map.data_in(0, 64 << 20);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert!(runs[0].0 <= 1 << 20 && runs[0].0 + runs[0].1 >= (1 << 20) + 8192);
        assert!(runs[0].1 <= 1 << 20, "{runs:?}");
        assert_eq!(runs[1].0 + runs[1].1, 64 << 20);
        assert!(map.data_bytes() < 4 << 20);
        // Cut to a window.
        assert_eq!(map.data_in(2 << 20, 1 << 20), vec![]);
        assert_eq!(
            map.data_in((1 << 20) + 4096, 4096),
            vec![((1 << 20) + 4096, 4096)]
        );
        // A window past the data: nothing.
        let tail = DataMap::scan(&f, 2 << 20, 3 << 20).unwrap().unwrap();
        assert_eq!(tail.run_count(), 0);
    }

    #[test]
    fn a_window_keeps_every_hole_and_stays_bounded() {
        // More runs than one window keeps: every hole stays a hole, and
        // the window kept never holds more than a request plus MAX_RUNS.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let n = (MAX_RUNS as u64) * 2 + 10;
        let step = 64u64 << 10;
        f.set_len(n * step).unwrap();
        for i in 0..n {
            f.write_all_at(&[1], i * step).unwrap();
        }
        let w = HoleWindow::default();
        let len = f.metadata().unwrap().len();
        // A file system that does not report holes has nothing to test.
        let Some(first) = w.data_in(&f, len, 0, 1).unwrap() else {
            return;
        };
        assert_eq!(first.len(), 1);
        {
            let kept = w.kept.lock().unwrap();
            let map = kept.windows.back().unwrap();
            assert!(map.run_count() <= MAX_RUNS + 1, "{}", map.run_count());
        }
        // Far past the first window: found by a new scan, still exact.
        let at = (n - 3) * step;
        let runs = w.data_in(&f, len, at - step / 2, step).unwrap().unwrap();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert!(runs[0].0 <= at && runs[0].0 + runs[0].1 > at);
        assert!(runs[0].1 <= step / 2, "{runs:?}");
        assert_eq!(w.known_hole(at - step / 2, 4096), Some(true));
        assert_eq!(w.known_hole(at, 1), Some(false));
        // A whole-file scan keeps every run.
        let all = DataMap::scan(&f, 0, len).unwrap().unwrap();
        assert_eq!(all.run_count() as u64, n);
    }

    #[test]
    fn a_run_found_past_the_window_is_kept_whole() {
        // A dense file: the first scan's SEEK_HOLE finds the end of the
        // file, so the map covers it all and a far read needs no new scan.
        let (_d, f) = scratch_file();
        let len = 16u64 << 20;
        f.write_all_at(&vec![1u8; len as usize], 0).unwrap();
        let w = HoleWindow::default();
        if w.data_in(&f, len, 0, 512).unwrap().is_none() {
            return; // no hole reporting here
        }
        assert_eq!(w.known_hole(len - 4096, 4096), Some(false));
    }

    #[test]
    fn random_reads_scan_each_window_once() {
        // Holes every 4 MiB over three windows: after one read in each
        // window, reads anywhere are answered from the windows kept.
        let (_d, f) = scratch_file();
        let len = 3 * WINDOW_BYTES;
        f.set_len(len).unwrap();
        for i in 0..len / (4 << 20) {
            f.write_all_at(&[7u8; 4096], i * (4 << 20)).unwrap();
        }
        let w = HoleWindow::default();
        if w.data_in(&f, len, 5, 1).unwrap().is_none() {
            return; // no hole reporting here
        }
        w.data_in(&f, len, 2 * WINDOW_BYTES + 12345, 1).unwrap();
        w.data_in(&f, len, WINDOW_BYTES + 999, 1).unwrap();
        assert_eq!(w.kept.lock().unwrap().windows.len(), 3);
        for at in [
            0,
            WINDOW_BYTES - (4 << 20),
            len - (4 << 20),
            WINDOW_BYTES + (4 << 20),
        ] {
            assert_eq!(w.known_hole(at, 4096), Some(false), "{at:#x}");
            assert_eq!(w.known_hole(at + 8192, 4096), Some(true), "{at:#x}");
        }
        assert_eq!(w.kept.lock().unwrap().windows.len(), 3, "no new scan");
    }

    #[test]
    fn from_runs_merges_only_touching_runs() {
        let map = DataMap::from_runs([(0, 10), (10, 20), (21, 30)], 100);
        assert_eq!(map.run_count(), 2);
        assert_eq!(map.data_in(0, 100), vec![(0, 20), (21, 9)]);
    }
}
