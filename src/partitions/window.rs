//! A bounded `Read + Seek` window over a range of a virtual disk, for the
//! crates that read file systems inside a partition.

use std::io::{self, Read, Seek, SeekFrom};

use crate::disk::VirtualDisk;

/// `size` bytes of a disk from `start`, as a `Read + Seek` stream whose
/// position 0 is `start`. Reads stop at the window's end (and at the
/// disk's); seeking past the end is allowed and reads nothing there.
#[derive(Clone)]
pub struct Window<'a> {
    disk: &'a dyn VirtualDisk,
    start: u64,
    size: u64,
    pos: u64,
}

impl std::fmt::Debug for Window<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("start", &self.start)
            .field("size", &self.size)
            .field("pos", &self.pos)
            .finish()
    }
}

impl<'a> Window<'a> {
    /// The window of `size` bytes at `start`, cut at the disk's end.
    pub fn new(disk: &'a dyn VirtualDisk, start: u64, size: u64) -> Self {
        let start = start.min(disk.virtual_size());
        let size = size.min(disk.virtual_size() - start);
        Window {
            disk,
            start,
            size,
            pos: 0,
        }
    }

    /// The window over a partition.
    pub fn partition(disk: &'a dyn VirtualDisk, p: &super::Partition) -> Self {
        Window::new(disk, p.start, p.size)
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Read exactly `buf.len()` bytes at `offset` inside the window.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} bytes at {offset:#x} are past the end of the {}-byte partition",
                    buf.len(),
                    self.size
                ),
            ));
        }
        self.disk
            .read_at(buf, self.start + offset)
            .map_err(crate::handle::to_io)
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n > 0 {
            self.read_exact_at(&mut buf[..n], self.pos)?;
            self.pos += n as u64;
        }
        Ok(n)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, seek: SeekFrom) -> io::Result<u64> {
        let target = match seek {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the window's start",
            )
        })?;
        Ok(self.pos)
    }
}
