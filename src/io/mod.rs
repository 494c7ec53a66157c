//! Storage backends: positional I/O on a file or on memory.
//!
//! Every format reads and writes its container through [`Storage`], never
//! through a shared seek cursor, so reads can run from several threads.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::RwLock;

use crate::error::{Error, ErrorKind, Result};
pub use crate::lock::{LockMode, force_share_would_help, lock, lock_for_replace};

mod sys;

pub use sys::rename_into_place;
use sys::{copy_within, map_read_only, pread_exact, punch_hole, pwrite_all};

/// Positional byte storage holding an image file.
pub trait Storage: Send + Sync {
    /// Fill `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`, extending the storage if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncate or extend (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Make everything written so far durable.
    fn flush(&self) -> io::Result<()>;
    /// Whether writes are allowed.
    fn is_writable(&self) -> bool;

    /// The bytes `offset..offset + len` in place, when the storage holds
    /// them in memory (a mapped read-only file): callers that can work
    /// from a borrowed slice skip a copy.
    fn mapped(&self, _offset: u64, _len: usize) -> Option<&[u8]> {
        None
    }

    /// The runs of `offset..offset + len` that the file system stores, in
    /// order, as `(start, length)`: the rest of the range is holes, which
    /// read as zeros. `None` when the storage cannot tell (then all of it
    /// is to be read).
    fn data_runs(&self, _offset: u64, _len: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
        Ok(None)
    }

    /// Bytes the storage occupies on its file system, when known (for a
    /// sparse file, less than its length).
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }

    /// Give back the file system space of `[offset, offset + len)`, which
    /// then reads as zeros; the length stays. `Ok(false)` when the storage
    /// or its file system cannot (the bytes are then left as they are).
    fn punch_hole(&self, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }

    /// Copy `len` bytes from `from` to the disjoint range at `to` inside
    /// the storage without passing them through the caller, by sharing
    /// the file system's blocks (a reflink): `Ok(false)` when the storage
    /// cannot, and nothing was copied. Durable like a write.
    fn copy_within(&self, _from: u64, _to: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }

    /// Whether the storage is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Read up to `buf.len()` bytes, filling whatever lies past the end with zeros.
    fn read_at_or_zero(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = self.len()?;
        let avail = len.saturating_sub(offset).min(buf.len() as u64) as usize;
        if avail > 0 {
            self.read_at(&mut buf[..avail], offset)?;
        }
        buf[avail..].fill(0);
        Ok(())
    }
}

/// Shared storage: an `Arc` of a storage is a storage, so a test (or a
/// caller) can keep a handle on what a disk writes.
impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn is_writable(&self) -> bool {
        (**self).is_writable()
    }
    fn mapped(&self, offset: u64, len: usize) -> Option<&[u8]> {
        (**self).mapped(offset, len)
    }
    fn data_runs(&self, offset: u64, len: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
        (**self).data_runs(offset, len)
    }
    fn allocated_bytes(&self) -> Option<u64> {
        (**self).allocated_bytes()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        (**self).punch_hole(offset, len)
    }
    fn copy_within(&self, from: u64, to: u64, len: u64) -> io::Result<bool> {
        (**self).copy_within(from, to, len)
    }
}

/// An image file accessed with `pread`/`pwrite`.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    /// A read-only mapping of the whole file, for files opened read-only:
    /// copying from the page cache through a mapping is several times
    /// faster than `pread` for large sequential reads.
    map: Option<memmap2::Mmap>,
    writable: bool,
    /// Whether `flush` syncs to stable storage (off for scratch files).
    sync: bool,
    /// The file's holes, found a window at a time as reads advance and
    /// kept, for locked read-only opens (the lock keeps vhdkit's writers
    /// away, and a file being read is not expected to change); other
    /// opens, whose file may change, look afresh each time (see
    /// [`Storage::data_runs`]).
    holes: Option<crate::sparse::HoleWindow>,
}

impl FileStorage {
    /// Open an existing file, read-only or read-write, and lock it: a
    /// writable open takes an exclusive lock, a read-only open a shared one
    /// (see `lock`). The lock lasts as long as this storage.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let storage = Self::open_file(path, writable, !writable)?;
        let mode = if writable {
            LockMode::Exclusive
        } else {
            LockMode::Shared
        };
        lock(&storage.file, path, mode)?;
        Ok(storage)
    }

    /// Open an existing file read-only without taking or honouring a lock
    /// (`-U/--force-share`): what is read may be inconsistent if another
    /// program is writing the file.
    ///
    /// Such a file is never memory-mapped, only read with `pread`: these
    /// opens exist to read files that other programs are changing, and a
    /// program that shrinks the file would otherwise kill the reader with
    /// `SIGBUS` when it touches a mapped page past the new end. With
    /// `pread` that is an ordinary end-of-file error.
    pub fn open_force_share(path: &Path) -> Result<Self> {
        Self::open_file(path, false, false)
    }

    /// Whether reads go through a memory map (locked read-only opens).
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    /// Open `path`; `map` (for locked read-only opens) maps it and keeps
    /// its holes once found. Pipes, sockets, character devices and
    /// directories are refused without blocking (see [`crate::filekind`]).
    fn open_file(path: &Path, writable: bool, map: bool) -> Result<Self> {
        crate::filekind::refuse_path(path)?;
        #[cfg(unix)]
        let flags = crate::filekind::open_flags();
        let mut options = OpenOptions::new();
        options.read(true).write(writable);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, flags);
        let file = options
            .open(path)
            .map_err(|e| Error::io(e, "cannot open file").with_path(path))?;
        crate::filekind::refuse_opened(&file, path)?;
        crate::filekind::clear_nonblock(&file)
            .map_err(|e| Error::io(e, "cannot open file").with_path(path))?;
        let keep = map && !writable;
        Ok(FileStorage {
            map: if keep { map_read_only(&file) } else { None },
            holes: keep.then(crate::sparse::HoleWindow::default),
            file,
            writable,
            sync: true,
        })
    }

    /// Create a new file, failing if it exists.
    pub fn create_new(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(e, "cannot create file").with_path(path))?;
        lock(&file, path, LockMode::Exclusive)?;
        Ok(FileStorage {
            file,
            map: None,
            writable: true,
            sync: true,
            holes: None,
        })
    }

    /// Make `flush` a no-op: for files whose durability the caller handles
    /// (a conversion output is complete once written; like qemu-img, we
    /// leave write-back to the system unless asked to sync).
    pub fn without_sync(mut self) -> Self {
        self.sync = false;
        self
    }
}

impl Drop for FileStorage {
    /// Release the lock explicitly before the file is closed: a child
    /// process that another thread is starting holds a copy of every open
    /// file until it executes its program, and with it the lock, so closing
    /// alone could leave the image locked for a moment after it is closed.
    fn drop(&mut self) {
        crate::lock::unlock(&self.file);
    }
}

impl FileStorage {
    /// The length of the mapped file (the length of a locked read-only
    /// open, which does not change while it is open), or 0.
    fn map_len(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.len() as u64)
    }

    /// Read `buf` at `offset`, plainly (from the mapping or with `pread`).
    fn read_plain(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.read_mapped(buf, offset) {
            return Ok(());
        }
        pread_exact(&self.file, buf, offset)
    }

    /// Read `buf` at `offset`, whose stored runs are `runs`: zeros for the
    /// parts in holes, the rest read with `pread`, never through the
    /// mapping (touching a hole's page through a mapping allocates it on
    /// tmpfs, changing the source a read-only command reads).
    fn read_around_holes(
        &self,
        runs: &[(u64, u64)],
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<()> {
        let mut done = 0usize;
        for &(start, len) in runs {
            // Both lie within `buf`, whose length is a usize.
            let (at, n) = ((start - offset) as usize, len as usize);
            buf[done..at].fill(0);
            pread_exact(&self.file, &mut buf[at..at + n], start)?;
            done = at + n;
        }
        buf[done..].fill(0);
        Ok(())
    }

    /// Copy from the mapping when it covers the range.
    fn read_mapped(&self, buf: &mut [u8], offset: u64) -> bool {
        match self.mapped(offset, buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

impl Storage for FileStorage {
    fn mapped(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        self.map.as_ref()?.get(start..start.checked_add(len)?)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        let map_len = self.map_len();
        // A locked read-only open reads only the stored runs of the range
        // (the holes' zeros are filled in), whatever its size: a format
        // probe of a sparse file reads none of its holes either.
        if let Some(w) = &self.holes
            && !buf.is_empty()
            && offset.checked_add(len).is_some_and(|e| e <= map_len)
            && let Ok(Some(runs)) = w.data_in(&self.file, map_len, offset, len)
            && runs.as_slice() != [(offset, len)]
        {
            return self.read_around_holes(&runs, buf, offset);
        }
        self.read_plain(buf, offset)
    }
    fn data_runs(&self, offset: u64, len: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
        let file_len = self.len()?;
        let end = offset.saturating_add(len).min(file_len);
        if let Some(w) = &self.holes {
            return w.data_in(&self.file, file_len, offset, end.saturating_sub(offset));
        }
        Ok(crate::sparse::DataMap::scan(&self.file, offset, end)?
            .map(|m| m.data_in(offset, end.saturating_sub(offset))))
    }
    fn allocated_bytes(&self) -> Option<u64> {
        crate::sparse::allocated_bytes(&self.file.metadata().ok()?)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        pwrite_all(&self.file, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        crate::filekind::file_len(&self.file)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        if self.writable && self.sync {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }
    fn is_writable(&self) -> bool {
        self.writable
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        punch_hole(&self.file, offset, len)
    }
    fn copy_within(&self, from: u64, to: u64, len: u64) -> io::Result<bool> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        copy_within(&self.file, from, to, len)
    }
}

/// An image held in memory, for tests and for building images before writing them out.
#[derive(Debug, Default)]
pub struct MemStorage {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemStorage {
    /// Empty, writable storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Storage holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemStorage {
            data: RwLock::new(data),
            read_only: false,
        }
    }

    /// Storage holding `data` that refuses writes.
    pub fn read_only(data: Vec<u8>) -> Self {
        MemStorage {
            data: RwLock::new(data),
            read_only: true,
        }
    }

    /// A copy of the current contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= data.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&data[start..end]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::InvalidInput)?;
        if end > data.len() {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        self.data
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len, 0);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn is_writable(&self) -> bool {
        !self.read_only
    }
}

/// Read exactly `buf.len()` bytes of `structure` at `offset`, turning a short
/// file into a `Corrupt` error that names the structure.
pub(crate) fn read_struct(
    storage: &dyn Storage,
    structure: &'static str,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    storage.read_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::corrupt(
                structure,
                offset,
                format!("file ends before the {} bytes of this structure", buf.len()),
            )
        } else {
            Error::io(e, format!("reading {structure}")).at(structure, offset)
        }
    })
}

/// Map an I/O error on the container to a library error naming the structure.
pub(crate) fn io_err(structure: &'static str, offset: u64) -> impl FnOnce(io::Error) -> Error {
    move |e| {
        let kind = e.kind();
        let mut err = Error::io(e, format!("accessing {structure}")).at(structure, offset);
        if kind == io::ErrorKind::PermissionDenied {
            err = Error::new(ErrorKind::ReadOnly, "the image is opened read-only")
                .at(structure, offset);
        }
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_into_place_never_replaces_without_replace() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join(".dst.tmp");
        let dst = d.path().join("dst");
        std::fs::write(&tmp, b"new").unwrap();
        rename_into_place(&tmp, &dst, false).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"new");
        assert!(!tmp.exists());

        // An existing destination: an error, both files as they were.
        std::fs::write(&tmp, b"newer").unwrap();
        let e = rename_into_place(&tmp, &dst, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&dst).unwrap(), b"new");
        assert_eq!(std::fs::read(&tmp).unwrap(), b"newer");

        // A dangling symbolic link counts as existing.
        #[cfg(unix)]
        {
            let link = d.path().join("link");
            std::os::unix::fs::symlink(d.path().join("nowhere"), &link).unwrap();
            let e = rename_into_place(&tmp, &link, false).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
            assert!(!d.path().join("nowhere").exists());
        }

        // With replace: replaced.
        rename_into_place(&tmp, &dst, true).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"newer");
        assert!(!tmp.exists());
    }

    #[test]
    fn force_share_reads_without_a_map_and_sees_truncation_as_eof() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        let locked = FileStorage::open(&p, false).unwrap();
        assert!(locked.is_mapped());
        drop(locked);
        let s = FileStorage::open_force_share(&p).unwrap();
        assert!(!s.is_mapped(), "a -U open must not map the file");
        assert!(s.mapped(0, 4096).is_none());
        let mut buf = [0u8; 4096];
        s.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, [7u8; 4096]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let e = s.read_at(&mut buf, 8192).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
