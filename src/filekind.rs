//! Files that cannot be images: pipes, sockets, character devices and
//! directories are refused when an image is opened, naming what they are.
//!
//! An image is read at any offset and its size is known up front, which
//! takes a regular file or a block device. A FIFO would block the open
//! until a writer came, and a pipe, a terminal or `/dev/zero` reads as an
//! empty (or endless) file that has nothing to do with a disk. So the path
//! is examined with `stat` before it is opened, and the opened file again
//! with `fstat` (the path may have changed in between; the open itself does
//! not block: see [`open_flags`]).

use std::fs::{File, FileType, Metadata};
use std::io;
use std::path::Path;

use crate::error::{Error, Result};

/// What an image needs to be, said after every refusal.
const NEEDS: &str = "vhdkit needs a seekable file or block device";

/// The name of standard input on the command line, which no command reads
/// an image from.
pub const STDIN_NAME: &str = "-";

/// What a file of type `ft` is, for a message, when it cannot be an image;
/// `None` for regular files and block devices.
pub fn unusable_kind(ft: &FileType) -> Option<&'static str> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return Some("a FIFO or pipe");
        }
        if ft.is_socket() {
            return Some("a socket");
        }
        if ft.is_char_device() {
            return Some("a character device");
        }
    }
    ft.is_dir().then_some("a directory")
}

/// The error for `path`, which is `kind`.
fn refusal(path: &Path, kind: &str) -> Error {
    Error::invalid_argument(format!("is {kind}, not an image; {NEEDS}")).with_path(path)
}

/// Refuse `path` before opening it when it names something that cannot be
/// an image (see the module documentation), or `-`, standard input on a
/// command line, when no file of that name exists. Paths that cannot be
/// examined are left for the open to report.
pub fn refuse_path(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) => match unusable_kind(&meta.file_type()) {
            Some(kind) => Err(refusal(path, kind)),
            None => Ok(()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound && path.as_os_str() == STDIN_NAME => {
            Err(Error::invalid_argument(format!(
                "`-` (standard input) cannot be an image: no command reads one from a pipe; \
                 {NEEDS} (write ./- for a file named -)"
            )))
        }
        Err(_) => Ok(()),
    }
}

/// Refuse `file`, just opened from `path`, when it turned out to be
/// something that cannot be an image; its metadata otherwise.
pub fn refuse_opened(file: &File, path: &Path) -> Result<Metadata> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io(e, "cannot stat file").with_path(path))?;
    match unusable_kind(&meta.file_type()) {
        Some(kind) => Err(refusal(path, kind)),
        None => Ok(meta),
    }
}

/// Extra flags for opening an image: `O_NONBLOCK`, so that opening a FIFO
/// that appeared after [`refuse_path`] looked does not wait for a writer,
/// and `O_NOCTTY`, so that a terminal never becomes the controlling one.
/// [`clear_nonblock`] takes `O_NONBLOCK` off again once the file is known
/// to be a regular file or block device.
pub fn open_flags() -> i32 {
    #[cfg(unix)]
    {
        libc::O_NONBLOCK | libc::O_NOCTTY
    }
    #[cfg(not(unix))]
    {
        0
    }
}

/// Take off the `O_NONBLOCK` of [`open_flags`].
#[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
pub fn clear_nonblock(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this `File` owns, changing only its
        // status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// Whether `meta` is that of a block device, whose size `stat` does not
/// give (see [`file_len`]).
pub fn is_block_device(meta: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        meta.file_type().is_block_device()
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// The size of an open file: from `fstat` for a regular file, by seeking
/// to the end for a block device (whose `st_size` is 0).
pub fn file_len(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if is_block_device(&meta) {
        use std::io::Seek;
        // Moves the file's position, which nothing in vhdkit uses (all
        // reads and writes are positional).
        let mut f = file;
        return f.seek(io::SeekFrom::End(0));
    }
    Ok(meta.len())
}
