//! [`Window`]: a bounded, read-only `Read + Seek` view of part of a disk,
//! the form in which a partition is handed to the file-system crates.

use std::cell::Cell;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::rc::Rc;
use std::sync::Arc;

use crate::disk::VirtualDisk;
use crate::error::Error;

/// What a [`Window`] may still read before the operation in progress is
/// stopped; shared between the window and the file system that resets it
/// before each operation (see `fs::Volume`).
pub(crate) type Budget = Rc<Cell<u64>>;

/// Every read is charged at least this many bytes (a sector), so that a
/// crate looping over tiny reads (FAT's 32-byte directory entries) spends
/// its budget in about as many reads as one looping over sectors.
const MIN_CHARGE: u64 = 512;

/// Bytes a [`Cached`] reader reads from the disk at once.
const CHUNK: usize = 64 << 10;

/// The error a window's read returns when its budget is spent: damaged
/// structures that make a crate read in a loop end here.
#[derive(Debug)]
pub(crate) struct BudgetSpent;

impl std::fmt::Display for BudgetSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the file system made this operation read more than its bound (a loop in damaged structures?)")
    }
}

impl std::error::Error for BudgetSpent {}

/// `[start, start + len)` of a virtual disk as a `Read + Seek` stream.
///
/// Reads stop at the window's end (a read there returns 0 bytes), never
/// reach outside it, and count against a shared budget. Writes always fail:
/// nothing is ever written to the image through a window.
#[derive(Clone)]
pub struct Window {
    disk: Arc<dyn VirtualDisk>,
    start: u64,
    len: u64,
    pos: u64,
    budget: Budget,
}

impl Window {
    /// The window `[start, start + len)` of `disk`; `None` if it does not
    /// lie inside the disk.
    pub fn new(disk: Arc<dyn VirtualDisk>, start: u64, len: u64) -> Option<Window> {
        let end = start.checked_add(len)?;
        (end <= disk.virtual_size()).then(|| Window {
            disk,
            start,
            len,
            pos: 0,
            budget: Rc::new(Cell::new(u64::MAX)),
        })
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The disk the window is part of.
    pub(crate) fn disk(&self) -> &dyn VirtualDisk {
        self.disk.as_ref()
    }

    /// Where the window starts on its disk.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// The budget this window's reads draw on.
    pub(crate) fn budget(&self) -> Budget {
        self.budget.clone()
    }

    /// Fill `buf` from `offset` in the window: fails past its end.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} bytes at {offset:#x} lie past the end of the partition ({:#x} bytes)",
                    buf.len(),
                    self.len
                ),
            ));
        }
        self.charge(buf.len() as u64)?;
        self.read_uncharged(buf, offset)
    }

    /// [`Window::read_exact_at`] without charging the budget (for
    /// [`Cached`], which charges each of its own reads), checked by the
    /// caller to lie inside the window.
    fn read_uncharged(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk
            .read_at(buf, self.start + offset)
            .map_err(io::Error::other)
    }

    /// Charge `n` bytes (at least [`MIN_CHARGE`]) to the budget.
    fn charge(&self, n: u64) -> io::Result<()> {
        super::note_activity();
        let n = n.max(MIN_CHARGE);
        let left = self.budget.get();
        if n > left {
            self.budget.set(0);
            return Err(io::Error::other(BudgetSpent));
        }
        self.budget.set(left - n);
        Ok(())
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n > 0 {
            self.read_exact_at(&mut buf[..n], self.pos)?;
            self.pos += n as u64;
        }
        Ok(n)
    }
}

impl Seek for Window {
    fn seek(&mut self, seek: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match seek {
            SeekFrom::Start(n) => {
                self.pos = n;
                return Ok(n);
            }
            SeekFrom::End(d) => (self.len, d),
            SeekFrom::Current(d) => (self.pos, d),
        };
        self.pos = base.checked_add_signed(delta).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )
        })?;
        Ok(self.pos)
    }
}

/// Writes fail: the FAT crate asks for a writable stream, and may try to
/// update its dirty flag; the image is never written.
impl Write for Window {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "file systems are read-only here",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A [`Window`] that keeps the last 64 KiB chunk it read: the `ntfs` and
/// `fatfs` crates read a few bytes at a time and seek between them, and
/// each such read would otherwise go through the image's format. Every
/// read is charged to the budget, whether the chunk serves it or not (a
/// crate looping over cached bytes must still run out).
pub(crate) struct Cached {
    inner: Window,
    pos: u64,
    chunk_at: u64,
    chunk: Vec<u8>,
}

impl Cached {
    pub(crate) fn new(inner: Window) -> Cached {
        Cached {
            inner,
            pos: 0,
            chunk_at: 0,
            chunk: Vec::new(),
        }
    }

    /// Length of the window.
    pub(crate) fn len(&self) -> u64 {
        self.inner.len
    }
}

impl Read for Cached {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = self.inner.len;
        let n = (buf.len() as u64).min(len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.charge(n as u64)?;
        let buf = &mut buf[..n];
        if n >= CHUNK {
            self.inner.read_uncharged(buf, self.pos)?;
            self.pos += n as u64;
            return Ok(n);
        }
        let inside =
            self.pos >= self.chunk_at && self.pos < self.chunk_at + self.chunk.len() as u64;
        if !inside {
            let at = self.pos - self.pos % CHUNK as u64;
            let size = (len - at).min(CHUNK as u64) as usize;
            self.chunk.resize(size, 0);
            self.chunk_at = at;
            if let Err(e) = self.inner.read_uncharged(&mut self.chunk, at) {
                self.chunk.clear();
                return Err(e);
            }
        }
        let off = (self.pos - self.chunk_at) as usize;
        let n = n.min(self.chunk.len() - off);
        buf[..n].copy_from_slice(&self.chunk[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cached {
    fn seek(&mut self, seek: SeekFrom) -> io::Result<u64> {
        self.inner.pos = self.pos;
        self.pos = self.inner.seek(seek)?;
        Ok(self.pos)
    }
}

/// Writes fail, as a [`Window`]'s do.
impl Write for Cached {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The library error inside `e` (a disk's read error), if there is one;
/// otherwise `e` itself.
pub(crate) fn into_disk_error(e: io::Error) -> Result<Error, io::Error> {
    let wraps = e
        .get_ref()
        .is_some_and(|i| i.is::<Error>() || i.is::<io::Error>());
    if !wraps {
        return Err(e);
    }
    let kind = e.kind();
    let inner = e.into_inner().expect("checked above");
    match inner.downcast::<Error>() {
        Ok(d) => Ok(*d),
        Err(other) => match other.downcast::<io::Error>() {
            Ok(io) => into_disk_error(*io),
            Err(o) => Err(io::Error::new(kind, o)),
        },
    }
}

/// Whether `e` is (or wraps) a spent budget.
pub(crate) fn is_budget_spent(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<BudgetSpent>() {
        return true;
    }
    e.downcast_ref::<io::Error>()
        .and_then(|io| io.get_ref())
        .is_some_and(|i| is_budget_spent(i))
}

impl ext4_view::Ext4Read for Window {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.read_exact_at(dst, start_byte)
            .map_err(|e| Box::new(e) as _)
    }
}
