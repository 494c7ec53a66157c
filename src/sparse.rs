//! Holes of sparse files: which ranges of a file the file system stores
//! (`lseek` with `SEEK_DATA` and `SEEK_HOLE`), so that a raw image's holes
//! are reported as zeros and never read.

use std::fs::File;
use std::io;

/// Most runs a [`DataMap`] keeps (16 bytes each, so 1 MiB): a file with
/// more extents than this has its shortest holes counted as data (read and
/// found to be zeros) rather than a map that grows with the file's
/// fragmentation.
pub const MAX_RUNS: usize = 1 << 16;

/// The smallest hole a map keeps once [`MAX_RUNS`] forced it to drop
/// holes: a page, since no file system stores holes smaller than that.
const FIRST_MIN_HOLE: u64 = 4096;

/// The runs of a byte range of a file that its file system stores: the
/// bytes between them are holes, which read as zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMap {
    /// `(start, end)` of each stored run, in order, not touching each other.
    runs: Vec<(u64, u64)>,
    /// Holes shorter than this are counted as data (0: every hole is kept).
    min_hole: u64,
    /// Most runs kept (see [`MAX_RUNS`]).
    max_runs: usize,
    /// The end of the range the map describes.
    end: u64,
}

impl DataMap {
    fn new(max_runs: usize, end: u64) -> Self {
        DataMap {
            runs: Vec::new(),
            min_hole: 0,
            max_runs: max_runs.max(2),
            end,
        }
    }

    /// Find the stored runs of `start..end` of `file`, or `None` when the
    /// system cannot tell (no `SEEK_DATA` for this file or file system):
    /// then everything is to be read. Moves the file's seek position, which
    /// nothing in vhdkit uses (all reads and writes are positional).
    pub fn scan(file: &File, start: u64, end: u64) -> io::Result<Option<DataMap>> {
        Self::scan_with(file, start, end, MAX_RUNS)
    }

    /// [`DataMap::scan`] keeping at most `max_runs` runs.
    pub fn scan_with(
        file: &File,
        start: u64,
        end: u64,
        max_runs: usize,
    ) -> io::Result<Option<DataMap>> {
        let mut map = DataMap::new(max_runs, end);
        let mut pos = start;
        while pos < end {
            let data = match seek_data(file, pos) {
                Ok(Some(d)) => d,
                // No data from `pos` on: the rest is one hole.
                Ok(None) => break,
                Err(e) if pos == start && unsupported(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            if data >= end {
                break;
            }
            // A file that shrank since `data` was found ends the data there;
            // a system that cannot find the hole makes the rest data.
            let hole = match seek_hole(file, data) {
                Ok(h) => h.unwrap_or(data),
                Err(e) if unsupported(&e) => end,
                Err(e) => return Err(e),
            }
            .clamp(data, end);
            if hole == data {
                break;
            }
            map.push(data, hole);
            pos = hole;
        }
        Ok(Some(map))
    }

    /// A map of `..end` from runs `(start, end)` already known, in order.
    pub fn from_runs(
        runs: impl IntoIterator<Item = (u64, u64)>,
        end: u64,
        max_runs: usize,
    ) -> Self {
        let mut map = DataMap::new(max_runs, end);
        for (s, e) in runs {
            map.push(s, e.min(end));
        }
        map
    }

    /// Whether the map describes all of `offset..offset + len`.
    pub fn covers(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|e| e <= self.end)
    }

    /// Add the run `start..end`, which lies after every run so far.
    fn push(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some(last) = self.runs.last_mut()
            && start.saturating_sub(last.1) < self.min_hole.max(1)
        {
            last.1 = last.1.max(end);
            return;
        }
        self.runs.push((start, end));
        while self.runs.len() > self.max_runs {
            self.coarsen();
        }
    }

    /// Double the smallest hole kept and merge the runs around every
    /// shorter one, until at most half of [`DataMap::max_runs`] remain.
    fn coarsen(&mut self) {
        while self.runs.len() > self.max_runs / 2 {
            self.min_hole = if self.min_hole == 0 {
                FIRST_MIN_HOLE
            } else {
                self.min_hole.saturating_mul(2)
            };
            let min_hole = self.min_hole;
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.runs.len());
            for &(s, e) in &self.runs {
                match merged.last_mut() {
                    Some(last) if s - last.1 < min_hole => last.1 = e,
                    _ => merged.push((s, e)),
                }
            }
            self.runs = merged;
        }
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

/// Whether `offset..offset + len` of `file`, which must lie within the
/// file, is all in one hole (one `SEEK_DATA`); `false` when it holds data
/// or the system cannot tell.
pub fn in_hole(file: &File, offset: u64, len: u64) -> bool {
    match seek_data(file, offset) {
        Ok(None) => true,
        Ok(Some(data)) => data >= offset.saturating_add(len),
        Err(_) => false,
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
    fn too_many_runs_merge_the_shortest_holes() {
        // 1000 runs of 4 KiB: holes of 4 KiB among the first 500, of 1 MiB after.
        let mut runs = Vec::new();
        let mut pos = 0u64;
        for i in 0..1000 {
            runs.push((pos, pos + 4096));
            pos += 4096 + if i < 500 { 4096 } else { 1 << 20 };
        }
        let map = DataMap::from_runs(runs.iter().copied(), pos, 600);
        assert!(map.run_count() <= 600);
        // The small holes were merged away; the large ones stay holes.
        assert_eq!(map.data_in(0, 500 * 8192).len(), 1);
        let big = runs[700];
        assert_eq!(map.data_in(big.0 - 4096, 8192 + 4096), vec![(big.0, 4096)]);
        // Every stored byte is still inside a run.
        for &(s, e) in &runs {
            let got: u64 = map.data_in(s, e - s).iter().map(|r| r.1).sum();
            assert_eq!(got, e - s);
        }
        // Bounded whatever the input.
        let many = (0..100_000u64).map(|i| (i * 8192, i * 8192 + 4096));
        let map = DataMap::from_runs(many, u64::MAX, 64);
        assert!(map.run_count() <= 64);
        assert!(map.data_bytes() >= 100_000 * 4096);
    }
}
