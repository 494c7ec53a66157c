//! [`Disk`]: an opened image, with its path, its optional abilities and
//! `std::io` adapters.
//!
//! [`crate::open`] returns a `Disk`. It is a [`VirtualDisk`] itself, so it
//! goes wherever one is expected, and every error it returns names the
//! image's file (unless the error already names another one, such as a
//! parent's). [`Disk::reader`] and [`Disk::cursor`] make it a `Read + Seek`
//! (and `Write`) stream for crates that read partition tables or file
//! systems.

use std::fmt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::disk::{Discard, Extent, ExtentKind, FastPaths, VirtualDisk, check_extent};
use crate::error::{Error, ErrorKind, Result};
use crate::report::ImageInfo;

mod adapters;

pub(crate) use adapters::to_io;
pub use adapters::{DiskCursor, DiskReader};

/// Bytes of zeros written per step by [`Disk::write_zeroes`].
const ZERO_CHUNK: usize = 1 << 20;

/// An opened image: a virtual disk that knows its file.
///
/// [`Disk::close`] ends it: the file is closed and its lock released, and
/// every later read, write, map, discard or zero-write fails.
pub struct Disk {
    inner: Box<dyn VirtualDisk>,
    path: Option<PathBuf>,
    closed: bool,
}

/// What a closed [`Disk`] keeps of its image: the facts `info` and the
/// sizes report. Its data can no longer be read or written.
struct Closed {
    info: ImageInfo,
    logical_sector_size: u32,
    physical_sector_size: u32,
    parent_link_id: Option<Uuid>,
}

impl Closed {
    fn error() -> Error {
        Error::new(
            ErrorKind::InvalidArgument,
            "the disk was closed; open the image again to read or write it",
        )
    }
}

impl VirtualDisk for Closed {
    fn virtual_size(&self) -> u64 {
        self.info.virtual_size
    }
    fn logical_sector_size(&self) -> u32 {
        self.logical_sector_size
    }
    fn physical_sector_size(&self) -> u32 {
        self.physical_sector_size
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        Err(Closed::error())
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Closed::error())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn map(&self, _offset: u64, _length: u64) -> Result<Vec<Extent>> {
        Err(Closed::error())
    }
    fn info(&self) -> ImageInfo {
        self.info.clone()
    }
    fn parent_link_id(&self) -> Option<Uuid> {
        self.parent_link_id
    }
}

impl Disk {
    /// Wrap `inner`, whose errors are to name `path` (if any).
    pub fn new(inner: Box<dyn VirtualDisk>, path: Option<PathBuf>) -> Self {
        Disk {
            inner,
            path,
            closed: false,
        }
    }

    /// The image's file, if it has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The format's disk, without the path on its errors.
    pub fn into_inner(self) -> Box<dyn VirtualDisk> {
        self.inner
    }

    /// This disk as a trait object (its errors name the file).
    pub fn as_virtual_disk(&self) -> &dyn VirtualDisk {
        self
    }

    /// [`Disk::as_virtual_disk`], for writing.
    pub fn as_virtual_disk_mut(&mut self) -> &mut dyn VirtualDisk {
        self
    }

    /// Name the image's file in `result`'s error.
    fn named<T>(&self, result: Result<T>) -> Result<T> {
        match &self.path {
            Some(p) => result.map_err(|e| e.with_path(p)),
            None => result,
        }
    }

    /// Size of the virtual disk in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }

    /// Logical sector size in bytes (512 or 4096).
    pub fn logical_sector_size(&self) -> u32 {
        self.inner.logical_sector_size()
    }

    /// Physical sector size in bytes (512 or 4096).
    pub fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }

    /// Fill `buf` with the virtual disk's bytes starting at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.named(self.inner.read_at(buf, offset))
    }

    /// Write `buf` to the virtual disk at `offset`.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let r = self.inner.write_at(buf, offset);
        self.named(r)
    }

    /// Make every completed write durable.
    pub fn flush(&mut self) -> Result<()> {
        let r = self.inner.flush();
        self.named(r)
    }

    /// Flush, leave the file in its at-rest form, close it and release its
    /// lock (the image can be opened again at once). Dropping the disk does
    /// the same but cannot report errors.
    ///
    /// After a successful `close` the disk still answers [`Disk::info`] and
    /// its sizes, but every read, write, map, discard and zero-write fails
    /// with [`ErrorKind::InvalidArgument`]; `flush` and `close` do nothing.
    /// When `close` fails the disk stays open (and holds its lock), so it
    /// can be retried or dropped.
    pub fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let r = self.inner.close();
        self.named(r)?;
        let stub = Closed {
            info: self.inner.info(),
            logical_sector_size: self.inner.logical_sector_size(),
            physical_sector_size: self.inner.physical_sector_size(),
            parent_link_id: self.inner.parent_link_id(),
        };
        // Dropping the format's disk closes its files and releases the locks.
        drop(std::mem::replace(&mut self.inner, Box::new(stub)));
        self.closed = true;
        Ok(())
    }

    /// Whether [`Disk::close`] has ended this disk.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the disk's data cannot be read for want of a key: true for
    /// an encrypted (EVHD) image opened without a key (a key that is none
    /// of its recipients' fails the open instead). Such a disk answers [`Disk::info`] (and `check`), but
    /// its reads and its allocation map fail with
    /// [`ErrorKind::KeyRequired`].
    pub fn needs_key(&self) -> bool {
        matches!(self.inner.read_at(&mut [], 0), Err(e) if e.kind() == ErrorKind::KeyRequired)
    }

    /// The allocation map of `[offset, offset + length)` as maximal runs.
    /// A range past the end of the disk is an [`ErrorKind::OutOfBounds`]
    /// error, as for [`Disk::read_at`].
    pub fn map(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let r = check_extent(self.inner.virtual_size(), offset, length)
            .and_then(|()| self.inner.map(offset, length));
        self.named(r)
    }

    /// The allocation map of `[offset, offset + length)` with the runs that
    /// come from the parent resolved through the chain: what each run reads
    /// as (data or zeros) and never [`ExtentKind::Parent`], unless the
    /// parent is not open (missing, or not the recorded one). Runs carry
    /// no file offset (they may lie in different files).
    pub fn resolved_map(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let r = check_extent(self.inner.virtual_size(), offset, length)
            .and_then(|()| resolve_map(self.inner.as_ref(), offset, length));
        self.named(r)
    }

    /// The allocation map of the whole disk: which runs are stored in the
    /// file, read as zeros, or come from the parent.
    pub fn allocation(&self) -> Result<Vec<Extent>> {
        self.map(0, self.virtual_size())
    }

    /// Everything known about the image.
    pub fn info(&self) -> ImageInfo {
        self.inner.info()
    }

    /// The identifier a differencing child records to name this disk as
    /// its parent.
    pub fn parent_link_id(&self) -> Option<Uuid> {
        self.inner.parent_link_id()
    }

    /// Give back the storage of the whole blocks inside
    /// `[offset, offset + len)` (trim); they read as zeros afterwards. See
    /// [`Discard::discard`]. Returns the bytes of those blocks.
    ///
    /// Formats that cannot give blocks back (raw, VHD, EVHD) refuse with
    /// [`ErrorKind::Unsupported`].
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<u64> {
        let r = match self.inner.discarder() {
            _ if self.closed => Err(Closed::error()),
            Some(d) => d.discard(offset, len),
            None => Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{} images cannot give back blocks (discard)",
                    self.inner.info().format.as_str()
                ),
            )),
        };
        self.named(r)
    }

    /// Make `[offset, offset + len)` read as zeros, on every format: whole
    /// blocks are given back where the format can (see [`Disk::discard`]),
    /// and zeros are written wherever the disk does not read as zeros yet,
    /// so ranges that already do cost nothing and stay unallocated.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        let r = self.write_zeroes_(offset, len);
        self.named(r)
    }

    fn write_zeroes_(&mut self, offset: u64, len: u64) -> Result<()> {
        if self.closed {
            return Err(Closed::error());
        }
        check_extent(self.inner.virtual_size(), offset, len)?;
        // Refused as any write is on a disk that cannot be written, even
        // where nothing would change.
        self.inner.write_at(&[], offset)?;
        if let Some(d) = self.inner.discarder() {
            d.discard(offset, len)?;
        }
        let zeros = vec![0u8; (len as usize).min(ZERO_CHUNK)];
        for e in self.inner.map(offset, len)? {
            if e.kind == ExtentKind::Zero {
                continue;
            }
            let mut pos = e.start;
            while pos < e.end() {
                let n = (e.end() - pos).min(ZERO_CHUNK as u64) as usize;
                self.write_patched(&zeros[..n], pos)?;
                pos += n as u64;
            }
        }
        Ok(())
    }

    /// A `Read + Seek` stream over the virtual disk, starting at byte 0.
    /// Several readers may share one disk.
    pub fn reader(&self) -> DiskReader<'_> {
        DiskReader { disk: self, pos: 0 }
    }

    /// A `Read + Write + Seek` stream over the virtual disk, starting at
    /// byte 0. Writes need not be sector-aligned (partial sectors are read,
    /// patched and written back); on a disk opened read-only they fail with
    /// [`std::io::ErrorKind::PermissionDenied`].
    pub fn cursor(&mut self) -> DiskCursor<'_> {
        DiskCursor { disk: self, pos: 0 }
    }

    /// Write `buf` at `offset`, reading and patching the sectors it covers
    /// only in part (formats may refuse writes that are not whole sectors).
    fn write_patched(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let ss = u64::from(self.logical_sector_size());
        let size = self.virtual_size();
        check_extent(size, offset, buf.len() as u64)?;
        let end = offset + buf.len() as u64;
        let body_start = offset.next_multiple_of(ss).min(end);
        let body_end = (end / ss * ss).max(body_start);
        if body_start > offset {
            self.patch_sector(
                offset / ss * ss,
                &buf[..(body_start - offset) as usize],
                offset,
            )?;
        }
        if body_end > body_start {
            let b = &buf[(body_start - offset) as usize..(body_end - offset) as usize];
            self.write_at(b, body_start)?;
        }
        if end > body_end {
            self.patch_sector(body_end, &buf[(body_end - offset) as usize..], body_end)?;
        }
        Ok(())
    }

    /// Write `part` at `offset` inside the sector that starts at `sector`.
    fn patch_sector(&mut self, sector: u64, part: &[u8], offset: u64) -> Result<()> {
        let ss = u64::from(self.logical_sector_size());
        let len = ss.min(self.virtual_size() - sector) as usize;
        let mut whole = vec![0u8; len];
        self.read_at(&mut whole, sector)?;
        let at = (offset - sector) as usize;
        whole[at..at + part.len()].copy_from_slice(part);
        self.write_at(&whole, sector)
    }
}

impl fmt::Debug for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Disk")
            .field("path", &self.path)
            .field("virtual_size", &self.virtual_size())
            .finish_non_exhaustive()
    }
}

/// The map of `d` with its parent runs replaced by the parent's map (past
/// the parent's end: zeros), down the chain.
fn resolve_map(d: &dyn VirtualDisk, offset: u64, length: u64) -> Result<Vec<Extent>> {
    let mut out = crate::disk::ExtentList::default();
    for e in d.map(offset, length)? {
        match (e.kind, d.parent_disk()) {
            (ExtentKind::Parent, Some(p)) => {
                let inside = p.virtual_size().clamp(e.start, e.end());
                if inside > e.start {
                    for pe in resolve_map(p, e.start, inside - e.start)? {
                        out.push(pe.start, pe.length, pe.kind, None);
                    }
                }
                out.push(inside, e.end() - inside, ExtentKind::Zero, None);
            }
            _ => out.push(e.start, e.length, e.kind, None),
        }
    }
    Ok(out.into_vec())
}

impl VirtualDisk for Disk {
    fn virtual_size(&self) -> u64 {
        Disk::virtual_size(self)
    }
    fn logical_sector_size(&self) -> u32 {
        Disk::logical_sector_size(self)
    }
    fn physical_sector_size(&self) -> u32 {
        Disk::physical_sector_size(self)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Disk::read_at(self, buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        Disk::write_at(self, buf, offset)
    }
    fn flush(&mut self) -> Result<()> {
        Disk::flush(self)
    }
    fn close(&mut self) -> Result<()> {
        Disk::close(self)
    }
    fn map(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        Disk::map(self, offset, length)
    }
    fn parent_disk(&self) -> Option<&dyn VirtualDisk> {
        self.inner.parent_disk()
    }
    fn info(&self) -> ImageInfo {
        Disk::info(self)
    }
    fn parent_link_id(&self) -> Option<Uuid> {
        Disk::parent_link_id(self)
    }
    fn fast_paths(&self) -> Option<&dyn FastPaths> {
        self.inner.fast_paths().map(|_| self as _)
    }
    fn fast_paths_mut(&mut self) -> Option<&mut dyn FastPaths> {
        match self.inner.fast_paths_mut() {
            Some(_) => Some(self),
            None => None,
        }
    }
    fn discarder(&mut self) -> Option<&mut dyn Discard> {
        match self.inner.discarder() {
            Some(_) => Some(self),
            None => None,
        }
    }
}

/// The inner disk's hooks (a `Disk` offers them only when it has them).
impl FastPaths for Disk {
    fn mapped(&self, offset: u64, len: usize) -> Option<&[u8]> {
        self.inner.fast_paths()?.mapped(offset, len)
    }
    fn copies_writes(&self) -> bool {
        self.inner.fast_paths().is_some_and(|f| f.copies_writes())
    }
    fn write_in_place(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let r = match self.inner.fast_paths_mut() {
            Some(f) => f.write_in_place(buf, offset),
            None => self.inner.write_at(buf, offset),
        };
        self.named(r)
    }
}

impl Discard for Disk {
    fn discard(&mut self, offset: u64, len: u64) -> Result<u64> {
        Disk::discard(self, offset, len)
    }
}

impl AsRef<dyn VirtualDisk> for Disk {
    fn as_ref(&self) -> &(dyn VirtualDisk + 'static) {
        self
    }
}

impl AsMut<dyn VirtualDisk> for Disk {
    fn as_mut(&mut self) -> &mut (dyn VirtualDisk + 'static) {
        self
    }
}

impl From<Disk> for Box<dyn VirtualDisk> {
    /// The disk as a trait object whose errors still name its file.
    fn from(disk: Disk) -> Self {
        Box::new(disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{self, Read, Seek, SeekFrom, Write};
    use std::sync::{Arc, Mutex};

    /// A flat disk in memory that refuses writes of partial sectors, as a
    /// differencing VHDX does.
    struct Strict {
        data: Arc<Mutex<Vec<u8>>>,
        writable: bool,
    }

    impl VirtualDisk for Strict {
        fn virtual_size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            crate::disk::check_range(self.virtual_size(), offset, buf.len())?;
            let d = self.data.lock().unwrap();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
            crate::disk::check_range(self.virtual_size(), offset, buf.len())?;
            if !self.writable {
                return Err(Error::new(ErrorKind::ReadOnly, "read-only"));
            }
            if !offset.is_multiple_of(512) || !buf.len().is_multiple_of(512) {
                return Err(Error::invalid_argument("partial sector"));
            }
            let mut d = self.data.lock().unwrap();
            d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
        fn map(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
            let d = self.data.lock().unwrap();
            let mut list = crate::disk::ExtentList::default();
            for p in crate::disk::block_pieces(offset, length, 512) {
                let zero = crate::disk::is_zero(&d[p.pos as usize..p.pos as usize + p.len]);
                let kind = if zero {
                    ExtentKind::Zero
                } else {
                    ExtentKind::Data
                };
                list.push(p.pos, p.len as u64, kind, None);
            }
            Ok(list.into_vec())
        }
        fn info(&self) -> ImageInfo {
            crate::raw::RawDisk::open(Box::new(crate::io::MemStorage::new()), None)
                .map(|d| d.info())
                .expect("an empty raw disk opens")
        }
    }

    fn disk(bytes: Vec<u8>, writable: bool) -> (Disk, Arc<Mutex<Vec<u8>>>) {
        let data = Arc::new(Mutex::new(bytes));
        let inner = Strict {
            data: data.clone(),
            writable,
        };
        (Disk::new(Box::new(inner), Some("img".into())), data)
    }

    #[test]
    fn cursor_writes_partial_sectors_by_patching() {
        let (mut d, data) = disk(vec![7u8; 4096], true);
        let mut model = vec![7u8; 4096];
        let mut c = d.cursor();
        for (at, len) in [
            (3u64, 5usize),
            (500, 30),
            (1000, 2000),
            (1024, 512),
            (4000, 96),
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i as u8) ^ (at as u8) | 1).collect();
            c.seek(SeekFrom::Start(at)).unwrap();
            c.write_all(&bytes).unwrap();
            model[at as usize..at as usize + len].copy_from_slice(&bytes);
            assert!(*data.lock().unwrap() == model, "after {len} bytes at {at}");
        }
        assert_eq!(c.write(&[1]).unwrap(), 0, "nothing is written past the end");
        let mut back = Vec::new();
        c.seek(SeekFrom::Start(0)).unwrap();
        c.read_to_end(&mut back).unwrap();
        assert!(back == model);
    }

    #[test]
    fn reader_reads_to_the_end_and_seeks() {
        let bytes: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let (d, _) = disk(bytes.clone(), false);
        let mut r = d.reader();
        assert_eq!(r.seek(SeekFrom::End(-10)).unwrap(), 2990);
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, bytes[2990..]);
        assert_eq!(r.seek(SeekFrom::Current(-3000)).unwrap(), 0);
        let mut head = [0u8; 7];
        r.read_exact(&mut head).unwrap();
        assert_eq!(head, bytes[..7]);
        assert!(r.seek(SeekFrom::Current(-8)).is_err());
        r.seek(SeekFrom::Start(5000)).unwrap();
        assert_eq!(r.read(&mut head).unwrap(), 0);
    }

    #[test]
    fn errors_name_the_file_and_map_to_io_kinds() {
        let (mut d, _) = disk(vec![0u8; 1024], false);
        let e = d.write_at(&[0u8; 512], 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ReadOnly);
        assert_eq!(e.path(), Some(Path::new("img")));
        let e = d.cursor().write(&[1u8; 3]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<Error>()).unwrap();
        assert_eq!(inner.path(), Some(Path::new("img")));
        // Nothing to change still needs a writable disk.
        let e = d.write_zeroes(0, 512).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ReadOnly);
        let e = d.discard(0, 512).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        for (kind, io_kind) in [
            (ErrorKind::KeyRequired, io::ErrorKind::PermissionDenied),
            (ErrorKind::KeyMismatch, io::ErrorKind::PermissionDenied),
            (ErrorKind::ParentMissing, io::ErrorKind::NotFound),
            (ErrorKind::ParentMismatch, io::ErrorKind::InvalidData),
            (ErrorKind::OutOfBounds, io::ErrorKind::InvalidInput),
        ] {
            assert_eq!(to_io(Error::new(kind, "x")).kind(), io_kind, "{kind:?}");
        }
    }

    #[test]
    fn write_zeroes_writes_only_where_needed() {
        let mut bytes = vec![0u8; 4096];
        bytes[600..700].fill(9);
        bytes[3000] = 1;
        let (mut d, data) = disk(bytes, true);
        d.write_zeroes(512, 3072).unwrap();
        let after = data.lock().unwrap().clone();
        assert!(after[..3584].iter().all(|&b| b == 0));
        assert!(d.write_zeroes(4000, 200).is_err(), "past the end");
    }
}
