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
        self.take(buf.len() as u64)?;
        self.disk
            .read_at(buf, self.start + offset)
            .map_err(io::Error::other)
    }

    /// Charge `n` bytes to the budget.
    fn take(&self, n: u64) -> io::Result<()> {
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
