//! The `std::io` adapters of a [`Disk`]: [`DiskReader`] (`Read + Seek`) and
//! [`DiskCursor`] (`Read + Write + Seek`), and the mapping of library
//! errors onto I/O errors.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::Disk;
use crate::error::{Error, ErrorKind};

/// A library error as an I/O error of the nearest kind; the original is
/// its inner error (`io::Error::get_ref`), so its kind, path and offset
/// stay reachable.
pub(crate) fn to_io(e: Error) -> io::Error {
    let kind = match e.kind() {
        ErrorKind::Io => std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .map_or(io::ErrorKind::Other, io::Error::kind),
        ErrorKind::ReadOnly => io::ErrorKind::PermissionDenied,
        ErrorKind::InUse => io::ErrorKind::ResourceBusy,
        ErrorKind::KeyRequired | ErrorKind::KeyMismatch | ErrorKind::Untrusted => {
            io::ErrorKind::PermissionDenied
        }
        ErrorKind::ParentMissing => io::ErrorKind::NotFound,
        ErrorKind::NeedsRepair => io::ErrorKind::InvalidData,
        ErrorKind::ParentMismatch | ErrorKind::InvalidKey => io::ErrorKind::InvalidData,
        ErrorKind::InvalidArgument | ErrorKind::OutOfBounds => io::ErrorKind::InvalidInput,
        ErrorKind::Corrupt | ErrorKind::Authentication => io::ErrorKind::InvalidData,
        ErrorKind::Unsupported => io::ErrorKind::Unsupported,
    };
    io::Error::new(kind, e)
}

/// The new position of a stream at `pos` over `size` bytes after `seek`;
/// past the end is allowed (reads there return nothing), before 0 is not.
fn seek_to(pos: u64, size: u64, seek: SeekFrom) -> io::Result<u64> {
    let (base, delta) = match seek {
        SeekFrom::Start(n) => return Ok(n),
        SeekFrom::End(d) => (size, d),
        SeekFrom::Current(d) => (pos, d),
    };
    base.checked_add_signed(delta).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "seek to a position before the start of the disk or past 2^64",
        )
    })
}

/// Read from `disk` at `*pos` into `buf`, up to the disk's end.
fn read_from(disk: &Disk, pos: &mut u64, buf: &mut [u8]) -> io::Result<usize> {
    let left = disk.virtual_size().saturating_sub(*pos);
    let n = (buf.len() as u64).min(left) as usize;
    if n > 0 {
        disk.read_at(&mut buf[..n], *pos).map_err(to_io)?;
        *pos += n as u64;
    }
    Ok(n)
}

/// A `Read + Seek` stream over a [`Disk`], from [`Disk::reader`].
///
/// Reads stop at the end of the virtual disk; seeking past it is allowed.
#[derive(Debug, Clone)]
pub struct DiskReader<'a> {
    pub(super) disk: &'a Disk,
    pub(super) pos: u64,
}

impl Read for DiskReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_from(self.disk, &mut self.pos, buf)
    }
}

impl Seek for DiskReader<'_> {
    fn seek(&mut self, seek: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(self.pos, self.disk.virtual_size(), seek)?;
        Ok(self.pos)
    }
}

/// A `Read + Write + Seek` stream over a [`Disk`], from [`Disk::cursor`].
///
/// Reads and writes stop at the end of the virtual disk (a write there
/// writes nothing, so `write_all` fails with `WriteZero`); seeking past it
/// is allowed.
#[derive(Debug)]
pub struct DiskCursor<'a> {
    pub(super) disk: &'a mut Disk,
    pub(super) pos: u64,
}

impl Read for DiskCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_from(self.disk, &mut self.pos, buf)
    }
}

impl Write for DiskCursor<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.disk.virtual_size().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n > 0 {
            self.disk
                .write_patched(&buf[..n], self.pos)
                .map_err(to_io)?;
            self.pos += n as u64;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.disk.flush().map_err(to_io)
    }
}

impl Seek for DiskCursor<'_> {
    fn seek(&mut self, seek: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(self.pos, self.disk.virtual_size(), seek)?;
        Ok(self.pos)
    }
}
