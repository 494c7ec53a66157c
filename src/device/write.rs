//! Writing a virtual disk's content in place onto a `--device` target.

use std::fs::File;
use std::io::{self};

use crate::convert::{COPY_CHUNK, ZERO_PIECE, read_pipelined};
use crate::disk::{ExtentKind, VirtualDisk};
use crate::error::{Error, Result};

use super::{DeviceTarget, TargetKind};

/// How [`write_in_place`] filled the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InPlaceStats {
    /// Bytes of data written.
    pub written: u64,
    /// Bytes made zero by punching holes (a file) or `BLKZEROOUT` (a
    /// block device), without writing them.
    pub zeroed: u64,
    /// Bytes of zeros written because the target could not be made to
    /// read zeros otherwise.
    pub zeros_written: u64,
}

/// Write the whole virtual disk `src` as raw bytes onto `target` at offset
/// 0, then sync. The target must be at least as large as the virtual disk;
/// whatever lies beyond it is left as it is. Every range of the target
/// that the image covers is overwritten: data is written, and ranges that
/// read as zeros are made zero explicitly (a hole punched in a file,
/// `BLKZEROOUT` on a Linux block device, which guarantees zeros), or, where
/// the system cannot do that, zeros are written. Old content is never
/// assumed to be zero. `progress` gets the bytes done so far.
///
/// An error after the size check says that the target is (or, if nothing
/// was written yet, may be) left partly written.
pub fn write_in_place(
    src: &dyn VirtualDisk,
    target: &DeviceTarget,
    progress: &mut dyn FnMut(u64),
) -> Result<InPlaceStats> {
    let size = src.virtual_size();
    if target.size < size {
        let what = match target.kind {
            TargetKind::BlockDevice => "the block device",
            TargetKind::File => "the file",
        };
        let grow = match target.kind {
            TargetKind::BlockDevice => "",
            TargetKind::File => {
                " (an in-place write never grows a file; extend it first, e.g. `truncate -s SIZE`)"
            }
        };
        return Err(Error::invalid_argument(format!(
            "{what} holds {:#x} bytes ({}), less than the image's virtual size of {size:#x} \
             bytes ({}); nothing was written{grow}",
            target.size,
            crate::report::human_size(target.size),
            crate::report::human_size(size)
        ))
        .with_path(&target.path));
    }
    let mut w = InPlaceWriter {
        target,
        stats: InPlaceStats::default(),
        can_zero: true,
        zero_buf: Vec::new(),
    };
    let r = fill(src, &mut w, size, progress).and_then(|_| {
        target.file.sync_all().map_err(|e| {
            Error::io(
                e,
                "the image was written but could not be synced to the device",
            )
            .with_path(&target.path)
        })
    });
    if let Err(e) = r {
        let s = w.stats;
        let state = if s.written + s.zeroed + s.zeros_written > 0 {
            "is left partly written"
        } else {
            "may be left partly written"
        };
        return Err(e.with_note(&format!(
            "; {} {state} (an in-place write cannot be undone)",
            target.path.display()
        )));
    }
    Ok(w.stats)
}

/// Copy `..size` of `src` onto the target one map window at a time: zero
/// the window's zero extents, then write the rest (zeroing its zero pieces).
fn fill(
    src: &dyn VirtualDisk,
    w: &mut InPlaceWriter<'_>,
    size: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut done = 0u64;
    let mut window = 0u64;
    while window < size {
        let end = (size - window).min(crate::convert::MAP_WINDOW) + window;
        let mut data = Vec::new();
        for e in src.map(window, end - window)? {
            if e.kind == ExtentKind::Zero {
                w.zero(e.start, e.length)?;
                done += e.length;
                progress(done);
            } else {
                data.push(Ok((e.start, e.length)));
            }
        }
        read_pipelined(src, data.into_iter(), |pos, buf, zeros| {
            let mut i = 0;
            while i < zeros.len() {
                let zero = zeros[i];
                let mut j = i;
                while j < zeros.len() && zeros[j] == zero {
                    j += 1;
                }
                let a = i * ZERO_PIECE;
                let b = (j * ZERO_PIECE).min(buf.len());
                if zero {
                    w.zero(pos + a as u64, (b - a) as u64)?;
                } else {
                    w.write(&buf[a..b], pos + a as u64)?;
                }
                i = j;
            }
            done += buf.len() as u64;
            progress(done);
            Ok(())
        })?;
        window = end;
    }
    Ok(())
}

/// Writes onto a [`DeviceTarget`], counting what it does.
struct InPlaceWriter<'a> {
    target: &'a DeviceTarget,
    stats: InPlaceStats,
    /// Whether zeroing without writing still seems to be supported.
    can_zero: bool,
    /// Zeros to write where zeroing is not supported (allocated on first use).
    zero_buf: Vec<u8>,
}

impl InPlaceWriter<'_> {
    fn write(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        write_all_at(&self.target.file, buf, offset).map_err(|e| {
            Error::io(
                e,
                format!("cannot write {} bytes at offset {offset:#x}", buf.len()),
            )
            .with_path(&self.target.path)
        })?;
        self.stats.written += buf.len() as u64;
        Ok(())
    }

    /// Make `len` bytes at `offset` read as zeros.
    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.can_zero {
            match zero_range(&self.target.file, self.target.kind, offset, len) {
                Ok(true) => {
                    self.stats.zeroed += len;
                    return Ok(());
                }
                Ok(false) => self.can_zero = false,
                Err(e) => {
                    return Err(Error::io(
                        e,
                        format!("cannot zero {len} bytes at offset {offset:#x}"),
                    )
                    .with_path(&self.target.path));
                }
            }
        }
        if self.zero_buf.is_empty() {
            self.zero_buf = vec![0u8; COPY_CHUNK];
        }
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(COPY_CHUNK as u64) as usize;
            write_all_at(&self.target.file, &self.zero_buf[..n], pos).map_err(|e| {
                Error::io(
                    e,
                    format!("cannot write {n} bytes of zeros at offset {pos:#x}"),
                )
                .with_path(&self.target.path)
            })?;
            pos += n as u64;
        }
        self.stats.zeros_written += len;
        Ok(())
    }
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// The sector unit `BLKZEROOUT` takes offsets and lengths in.
#[cfg(target_os = "linux")]
const BLKZEROOUT_ALIGN: u64 = 512;

/// `BLKZEROOUT` (`<linux/fs.h>`): zero a byte range of a block device
/// (`[u64; 2]` start and length, multiples of 512). The kernel guarantees
/// the range reads as zeros afterwards (it offloads to the device where it
/// can, and writes zeros itself otherwise), and drops the page cache over
/// it. Unlike `BLKDISCARD`, whose ranges need not read as zeros.
#[cfg(target_os = "linux")]
const BLKZEROOUT: libc::Ioctl = libc::_IO(0x12, 127);

/// Make `len` bytes at `offset` of `file` read as zeros without writing
/// them: `Ok(false)` when the system cannot (the caller writes zeros).
/// Linux: a file gets a hole punched (`fallocate(PUNCH_HOLE | KEEP_SIZE)`,
/// size unchanged); a block device's 512-aligned part goes through
/// `BLKZEROOUT`, its unaligned edges are written as zeros.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
fn zero_range(file: &File, kind: TargetKind, offset: u64, len: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let unsupported = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ENOTTY | libc::EINVAL)
        )
    };
    let fd = file.as_raw_fd();
    match kind {
        TargetKind::File => {
            let (Ok(o), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
                return Ok(false);
            };
            // SAFETY: fallocate takes plain integers; `fd` is open.
            let r = unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    o,
                    l,
                )
            };
            if r == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            if unsupported(&e) { Ok(false) } else { Err(e) }
        }
        TargetKind::BlockDevice => {
            let end = offset + len;
            let a = offset.div_ceil(BLKZEROOUT_ALIGN) * BLKZEROOUT_ALIGN;
            let b = end / BLKZEROOUT_ALIGN * BLKZEROOUT_ALIGN;
            if a >= b {
                return Ok(false);
            }
            let range: [u64; 2] = [a, b - a];
            // SAFETY: BLKZEROOUT reads the two u64 of `range`, which lives
            // on this stack frame across the call; `fd` is open.
            let r = unsafe { libc::ioctl(fd, BLKZEROOUT, range.as_ptr()) };
            if r != 0 {
                let e = io::Error::last_os_error();
                return if unsupported(&e) { Ok(false) } else { Err(e) };
            }
            // The unaligned edges, if any (never for sector-aligned images).
            let zeros = vec![0u8; BLKZEROOUT_ALIGN as usize];
            if offset < a {
                write_all_at(file, &zeros[..(a - offset) as usize], offset)?;
            }
            if b < end {
                write_all_at(file, &zeros[..(end - b) as usize], b)?;
            }
            Ok(true)
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn zero_range(_file: &File, _kind: TargetKind, _offset: u64, _len: u64) -> io::Result<bool> {
    Ok(false)
}
