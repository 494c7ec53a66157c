//! Destinations that are not plain files.
//!
//! Two things live here:
//!
//! - [`refuse_unless_replaceable`]: an output built under a temporary name
//!   and renamed into place (`convert`, `create`, key files) may replace
//!   only a regular file. A symbolic link (even to a regular file), a
//!   directory, a device node, a FIFO or a socket at the destination is
//!   refused and left exactly as it is: renaming a file over `/dev/sdX`
//!   would replace the device node, not write to the disk.
//! - [`DeviceTarget`] and [`write_in_place`] (`convert --device`): the raw
//!   content of a virtual disk written in place onto an existing block
//!   device or regular file, the way an image is put onto a disk. Nothing
//!   is created, truncated or renamed; such a write cannot be undone, so an
//!   interrupted or failed one leaves the target partly written.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Hint, Result};
use crate::io::LockMode;

mod loops;
mod write;

use loops::same_object;
pub use loops::*;
pub use write::*;

/// What kind of file system object a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link (judged without following it).
    Symlink,
    /// A block device node (a disk, a partition, a loop or NBD device).
    BlockDevice,
    /// A character device node (a terminal, `/dev/null`, a tape).
    CharDevice,
    /// A FIFO (named pipe).
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// Anything else the system may have.
    Other,
}

impl NodeKind {
    /// The kind of `ft`.
    pub fn of(ft: &fs::FileType) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_block_device() {
                return NodeKind::BlockDevice;
            }
            if ft.is_char_device() {
                return NodeKind::CharDevice;
            }
            if ft.is_fifo() {
                return NodeKind::Fifo;
            }
            if ft.is_socket() {
                return NodeKind::Socket;
            }
        }
        if ft.is_symlink() {
            NodeKind::Symlink
        } else if ft.is_dir() {
            NodeKind::Directory
        } else if ft.is_file() {
            NodeKind::Regular
        } else {
            NodeKind::Other
        }
    }

    /// The kind with its article, for messages: "a block device".
    pub fn describe(self) -> &'static str {
        match self {
            NodeKind::Regular => "a regular file",
            NodeKind::Directory => "a directory",
            NodeKind::Symlink => "a symbolic link",
            NodeKind::BlockDevice => "a block device",
            NodeKind::CharDevice => "a character device",
            NodeKind::Fifo => "a FIFO (named pipe)",
            NodeKind::Socket => "a socket",
            NodeKind::Other => "a special file",
        }
    }
}

/// What is at `path`, without following a symbolic link there; `None`
/// when nothing is.
pub fn node_kind(path: &Path) -> io::Result<Option<NodeKind>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(NodeKind::of(&m.file_type()))),
        // A missing directory on the way (ENOENT) or a file where a
        // directory should be (ENOTDIR): nothing is there; creating the
        // output then fails with an error that says which.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Refuse an output destination `dest` that holds anything but a regular
/// file (or nothing): an output renamed into place would replace a link,
/// a device node, a FIFO or a socket with a file (and cannot replace a
/// directory). Judged with `lstat`, so a symbolic link is refused even when
/// it points to a regular file, and nothing at `dest` is touched.
///
/// `offers_device` attaches the hint ([`crate::Hint::WriteOntoDevice`] and
/// its kin) that an in-place write ([`DeviceTarget`]) puts an image's
/// content onto a block device or into a linked file, for callers that
/// offer one.
///
/// Callers check before they start and again right before the rename, so
/// only an object swapped in during the last few system calls can escape
/// (no system call renames only over a regular file).
pub fn refuse_unless_replaceable(dest: &Path, offers_device: bool) -> Result<()> {
    let kind = node_kind(dest)
        .map_err(|e| Error::io(e, "cannot examine the destination").with_path(dest))?;
    let Some(kind) = kind else {
        return Ok(());
    };
    if kind == NodeKind::Regular {
        return Ok(());
    }
    let offer = |e: Error, hint: Hint| if offers_device { e.with_hint(hint) } else { e };
    if kind == NodeKind::Symlink {
        let to = fs::read_link(dest)
            .map(|t| format!(" (to {})", t.display()))
            .unwrap_or_default();
        let (into, target) = match fs::metadata(dest) {
            Ok(m) if m.is_file() || NodeKind::of(&m.file_type()) == NodeKind::BlockDevice => {
                ("; give the path it points to", true)
            }
            Ok(_) => ("", false),
            Err(_) => (" (the link points to nothing)", false),
        };
        let e = Error::invalid_argument(format!(
            "is a symbolic link{to}; vhdkit replaces only regular files and will not \
             replace a link with a file{into}"
        ))
        .with_path(dest);
        return Err(if target {
            offer(e, Hint::WriteThroughLink)
        } else {
            e
        });
    }
    let note = if kind == NodeKind::Directory {
        "; give a file name inside it"
    } else {
        ""
    };
    let e = Error::invalid_argument(format!(
        "is {}; vhdkit will not replace it with a file{note}",
        kind.describe()
    ))
    .with_path(dest);
    Err(match kind {
        NodeKind::BlockDevice => offer(e, Hint::WriteOntoDevice),
        NodeKind::Fifo => offer(e, Hint::StreamToStdout),
        _ => e,
    })
}

/// What [`DeviceTarget`] writes onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A block device: zero ranges are zeroed with `BLKZEROOUT` (Linux),
    /// or written.
    BlockDevice,
    /// An existing regular file: zero ranges become holes (punched), or
    /// are written.
    File,
}

/// An existing block device or regular file opened to receive an image's
/// raw content in place (`convert --device`), locked against other
/// writers.
#[derive(Debug)]
pub struct DeviceTarget {
    file: File,
    path: PathBuf,
    kind: TargetKind,
    size: u64,
}

impl DeviceTarget {
    /// Open `path` for writing in place. It must exist (nothing is
    /// created) and be, after following symbolic links, a block device or
    /// a regular file. The open has no `O_CREAT` or `O_TRUNC`; on Linux a
    /// block device is opened with `O_EXCL`, which the kernel refuses
    /// (`EBUSY`) while the device is mounted or otherwise claimed. It is
    /// opened read-write, not write-only, because qemu's lock bytes (see
    /// `crate::lock`) are read locks, which need a readable open. The
    /// open takes vhdkit's exclusive image lock, so two writers (or a
    /// reader of the same file) cannot collide.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let what = if fs::symlink_metadata(path).is_ok() {
                    "is a symbolic link that points to nothing"
                } else {
                    "does not exist"
                };
                return Err(Error::invalid_argument(format!(
                    "{what}; an in-place write goes onto an existing block device or file and \
                     never creates one"
                ))
                .with_path(path)
                .with_hint(Hint::CreateImageFile));
            }
            Err(e) => {
                return Err(Error::io(e, "cannot examine the in-place target").with_path(path));
            }
        };
        let kind = match NodeKind::of(&meta.file_type()) {
            NodeKind::BlockDevice => TargetKind::BlockDevice,
            NodeKind::Regular => TargetKind::File,
            other => {
                return Err(Error::invalid_argument(format!(
                    "is {}; an in-place write goes only onto a block device or an existing regular file",
                    other.describe()
                ))
                .with_path(path));
            }
        };
        let file = open_in_place(path, kind)?;
        // The path may have been swapped between the stat and the open:
        // what was opened must be what was examined.
        let opened = file.metadata().map_err(|e| {
            Error::io(e, "cannot examine the opened in-place target").with_path(path)
        })?;
        if !same_object(&meta, &opened) {
            return Err(Error::invalid_argument(
                "changed while it was being opened (another program replaced it); nothing was written",
            )
            .with_path(path));
        }
        crate::lock::lock(&file, path, LockMode::Exclusive)?;
        let size = match kind {
            TargetKind::File => opened.len(),
            TargetKind::BlockDevice => (&file).seek(SeekFrom::End(0)).map_err(|e| {
                Error::io(e, "cannot find the size of the block device").with_path(path)
            })?,
        };
        Ok(DeviceTarget {
            file,
            path: path.to_path_buf(),
            kind,
            size,
        })
    }

    /// Block device or regular file.
    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// Its size in bytes (of the device, or of the file as it is).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DeviceTarget {
    fn drop(&mut self) {
        crate::lock::unlock(&self.file);
    }
}

/// Open an existing `path` of `kind` for writing in place: read-write, no
/// create, no truncate; `O_EXCL` on a Linux block device; `O_NONBLOCK`
/// while opening so that a FIFO swapped in after the check cannot block
/// the open (cleared again afterwards).
#[cfg(unix)]
#[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
fn open_in_place(path: &Path, kind: TargetKind) -> Result<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    #[cfg(target_os = "linux")]
    if kind == TargetKind::BlockDevice {
        flags |= libc::O_EXCL;
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if kind == TargetKind::BlockDevice && e.raw_os_error() == Some(libc::EBUSY) {
                Error::new(
                    ErrorKind::InUse,
                    "the block device is in use (mounted, or claimed by another program); \
                     vhdkit will not write onto it",
                )
                .with_path(path)
            } else {
                Error::io(e, "cannot open the in-place target for writing").with_path(path)
            }
        })?;
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL take and return plain integers; `fd` is
    // open for as long as `file` lives.
    let cleared = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        fl != -1 && libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) != -1
    };
    if !cleared {
        return Err(Error::io(
            io::Error::last_os_error(),
            "cannot set up the in-place target for writing",
        )
        .with_path(path));
    }
    Ok(file)
}

#[cfg(not(unix))]
fn open_in_place(path: &Path, _kind: TargetKind) -> Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(e, "cannot open the in-place target for writing").with_path(path))
}

/// Whether two metadata describe one file system object.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemStorage;
    use crate::raw::RawDisk;

    fn raw(data: Vec<u8>) -> RawDisk {
        RawDisk::open(Box::new(MemStorage::from_vec(data)), None).unwrap()
    }

    #[test]
    fn file_target_gets_content_and_keeps_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t");
        let mut content = vec![0u8; 3 << 20];
        content[5] = 1;
        content[(2 << 20) + 7] = 9;
        fs::write(&p, vec![0xeeu8; (3 << 20) + 4096]).unwrap();
        let t = DeviceTarget::open(&p).unwrap();
        assert_eq!(t.kind(), TargetKind::File);
        let stats = write_in_place(&raw(content.clone()), &t, &mut |_| {}).unwrap();
        drop(t);
        let got = fs::read(&p).unwrap();
        assert_eq!(&got[..3 << 20], &content[..]);
        assert_eq!(&got[3 << 20..], &[0xeeu8; 4096][..]);
        assert_eq!(stats.written + stats.zeroed + stats.zeros_written, 3 << 20);
    }

    #[test]
    fn smaller_file_and_missing_path_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t");
        fs::write(&p, vec![0xeeu8; 1000]).unwrap();
        let t = DeviceTarget::open(&p).unwrap();
        let e = write_in_place(&raw(vec![1u8; 1024]), &t, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        drop(t);
        assert_eq!(fs::read(&p).unwrap(), vec![0xeeu8; 1000]);
        let e = DeviceTarget::open(&d.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!d.path().join("missing").exists());
    }

    #[test]
    fn loop_backing_matches_by_either_identity() {
        let a = FileId { dev: 8, ino: 12 };
        let b = FileId { dev: 8, ino: 13 };
        let c = FileId { dev: 40, ino: 12 };
        let none = LoopBacking::default();
        assert!(!none.is_backed_by(a));
        let by_path = LoopBacking {
            path: Some(PathBuf::from("/x")),
            by_path: Some(a),
            by_status: None,
        };
        assert!(by_path.is_backed_by(a));
        assert!(!by_path.is_backed_by(b) && !by_path.is_backed_by(c));
        // A deleted or renamed backing file: only the status names it.
        let by_status = LoopBacking {
            path: Some(PathBuf::from("/x (deleted)")),
            by_path: None,
            by_status: Some(c),
        };
        assert!(by_status.is_backed_by(c));
        assert!(!by_status.is_backed_by(a));
    }

    #[cfg(unix)]
    #[test]
    fn target_that_is_a_source_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        fs::write(&t, vec![7u8; 4096]).unwrap();
        let other = d.path().join("o");
        fs::write(&other, b"o").unwrap();
        let link = d.path().join("hard");
        fs::hard_link(&t, &link).unwrap();
        let target = DeviceTarget::open(&t).unwrap();
        refuse_writing_onto_sources(&target, std::slice::from_ref(&other)).unwrap();
        let e = refuse_writing_onto_sources(&target, &[other, link.clone()]).unwrap_err();
        assert!(
            e.to_string().contains("is the source")
                && e.to_string().contains(&*link.to_string_lossy()),
            "{e}"
        );
        // An ordinary file is no loop device.
        let f = File::open(&t).unwrap();
        assert_eq!(loop_backing(&f, &f.metadata().unwrap()), None);
    }

    #[test]
    fn replaceable_only_regular_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"x").unwrap();
        refuse_unless_replaceable(&f, true).unwrap();
        refuse_unless_replaceable(&d.path().join("none"), true).unwrap();
        let e = refuse_unless_replaceable(d.path(), false).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        #[cfg(unix)]
        {
            let l = d.path().join("l");
            std::os::unix::fs::symlink(&f, &l).unwrap();
            let e = refuse_unless_replaceable(&l, true).unwrap_err();
            assert!(e.to_string().contains("is a symbolic link"), "{e}");
        }
    }
}
