//! The system calls under [`FileStorage`](super::FileStorage): positional
//! reads and writes, memory maps, in-file copies, hole punching, and the
//! final rename of an output file.

use std::fs::File;
use std::io;
use std::path::Path;

/// Move the finished file `tmp` to `dest` (both in one directory).
///
/// With `replace` an existing `dest` is replaced atomically (`rename`; a
/// symbolic link at `dest` is replaced itself, never followed). Without it
/// an existing `dest`, even one that appeared after the caller checked, is
/// never replaced: the result is an [`io::ErrorKind::AlreadyExists`] error
/// and `tmp` stays where it is (the caller removes it). On Linux this is
/// `renameat2(RENAME_NOREPLACE)`; where that is not available (another
/// system, or a file system without it) a hard link, which also fails on
/// an existing name, followed by removing `tmp`; where hard links are not
/// supported either (FAT), a last existence check before `rename` (which
/// leaves a short race, the best such a file system allows).
pub fn rename_into_place(tmp: &Path, dest: &Path, replace: bool) -> io::Result<()> {
    if replace {
        return std::fs::rename(tmp, dest);
    }
    #[cfg(target_os = "linux")]
    match rename_noreplace(tmp, dest) {
        Ok(()) => return Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
            ) => {}
        Err(e) => return Err(e),
    }
    match std::fs::hard_link(tmp, dest) {
        Ok(()) => return std::fs::remove_file(tmp),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
        Err(_) => {}
    }
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    std::fs::rename(tmp, dest)
}

/// `renameat2(tmp, dest, RENAME_NOREPLACE)`: fails with `EEXIST` if `dest`
/// exists, atomically.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
pub(super) fn rename_noreplace(tmp: &Path, dest: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
    };
    let (from, to) = (c(tmp)?, c(dest)?);
    // SAFETY: both pointers are NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Map a file opened read-only, or `None` when it cannot be mapped (empty
/// files, devices, pipes): reads then use `pread`.
#[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
pub(super) fn map_read_only(file: &File) -> Option<memmap2::Mmap> {
    let len = file.metadata().ok()?.len();
    if len == 0 || usize::try_from(len).is_err() {
        return None;
    }
    // SAFETY: the mapping is read-only and only read through bounds-checked
    // slices. The one hazard is another process truncating the file while it
    // is mapped, which faults the reading process (SIGBUS). Only locked
    // opens map: the shared lock keeps every vhdkit writer (and any program
    // honouring flock) away, and vhdkit itself never modifies a file it
    // opened read-only; `-U` opens, which read files others are changing,
    // use pread instead. A program that ignores the lock and shrinks the
    // file can still fault a locked reader (README, "Images in use").
    unsafe { memmap2::Mmap::map(file) }.ok()
}

#[cfg(unix)]
pub(super) fn pread_exact(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
pub(super) fn pwrite_all(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
pub(super) fn pread_exact(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(windows)]
pub(super) fn pwrite_all(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Share the blocks of `from..from + len` of `file` at `to` (a reflink,
/// `FICLONERANGE`), where the file system can: nothing is copied.
/// `Ok(false)` when it cannot (most file systems; unaligned offsets):
/// nothing changed, and the caller copies the bytes itself. The kernel's
/// `copy_file_range` is not used for this: where it cannot share blocks
/// it copies through a pipe (tmpfs, ext4), which costs several times a
/// read and a write of the same bytes.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
pub(super) fn copy_within(file: &File, from: u64, to: u64, len: u64) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    if len == 0 {
        return Ok(true);
    }
    let range = libc::file_clone_range {
        src_fd: i64::from(file.as_raw_fd()),
        src_offset: from,
        src_length: len,
        dest_offset: to,
    };
    loop {
        // SAFETY: `range` is a valid `file_clone_range` that outlives the
        // call, which only reads it; the descriptor is open for as long as
        // `file` is borrowed.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::FICLONERANGE, &range) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return match e.raw_os_error() {
            Some(
                libc::EOPNOTSUPP
                | libc::ENOTTY
                | libc::ENOSYS
                | libc::EXDEV
                | libc::EINVAL
                | libc::EBADF
                | libc::EPERM
                | libc::ETXTBSY,
            ) => Ok(false),
            _ => Err(e),
        };
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn copy_within(_file: &File, _from: u64, _to: u64, _len: u64) -> io::Result<bool> {
    Ok(false)
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`; `Ok(false)` when the file system
/// refuses the operation.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
pub(super) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(false);
    };
    if n == 0 {
        return Ok(true);
    }
    // SAFETY: the descriptor is open for as long as `file` is borrowed;
    // fallocate reads no memory of ours.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            n,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::ENODEV) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn punch_hole(_file: &File, _offset: u64, _len: u64) -> io::Result<bool> {
    Ok(false)
}
