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

use crate::convert::{COPY_CHUNK, ZERO_PIECE, read_pipelined};
use crate::disk::{ExtentKind, VirtualDisk};
use crate::error::{Error, ErrorKind, Result};
use crate::io::LockMode;

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
/// `offers_device` adds the hint that `convert --device` writes an image's
/// content onto a block device or into a linked file (for `convert`; other
/// commands have no such option).
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
    let hint = match kind {
        NodeKind::Symlink => {
            let to = fs::read_link(dest)
                .map(|t| format!(" (to {})", t.display()))
                .unwrap_or_default();
            let into = match fs::metadata(dest) {
                Ok(m) if m.is_file() || NodeKind::of(&m.file_type()) == NodeKind::BlockDevice => {
                    if offers_device {
                        "; give the path it points to, or use --device to write the image's \
                         content into what it points to"
                    } else {
                        "; give the path it points to"
                    }
                }
                Ok(_) => "",
                Err(_) => " (the link points to nothing)",
            };
            return Err(Error::invalid_argument(format!(
                "is a symbolic link{to}; vhdkit replaces only regular files and will not \
                 replace a link with a file{into}"
            ))
            .with_path(dest));
        }
        NodeKind::BlockDevice if offers_device => {
            "; use --device to write the image's content onto it"
        }
        NodeKind::Fifo if offers_device => {
            "; DST `-` streams the raw content to standard output, which can be redirected into it"
        }
        NodeKind::Directory => "; give a file name inside it",
        _ => "",
    };
    Err(Error::invalid_argument(format!(
        "is {}; vhdkit will not replace it with a file{hint}",
        kind.describe()
    ))
    .with_path(dest))
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
    /// [`crate::unstable::lock`]) are read locks, which need a readable open. The
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
                    "{what}; --device writes onto an existing block device or file and never \
                     creates one (leave out --device to create an image file)"
                ))
                .with_path(path));
            }
            Err(e) => {
                return Err(Error::io(e, "cannot examine the --device target").with_path(path));
            }
        };
        let kind = match NodeKind::of(&meta.file_type()) {
            NodeKind::BlockDevice => TargetKind::BlockDevice,
            NodeKind::Regular => TargetKind::File,
            other => {
                return Err(Error::invalid_argument(format!(
                    "is {}; --device writes only onto a block device or an existing regular file",
                    other.describe()
                ))
                .with_path(path));
            }
        };
        let file = open_in_place(path, kind)?;
        // The path may have been swapped between the stat and the open:
        // what was opened must be what was examined.
        let opened = file.metadata().map_err(|e| {
            Error::io(e, "cannot examine the opened --device target").with_path(path)
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
                Error::io(e, "cannot open the --device target for writing").with_path(path)
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
            "cannot set up the --device target for writing",
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
        .map_err(|e| Error::io(e, "cannot open the --device target for writing").with_path(path))
}

/// Whether two metadata describe one file system object.
#[cfg(unix)]
fn same_object(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino() && a.file_type() == b.file_type()
}

#[cfg(not(unix))]
fn same_object(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.file_type() == b.file_type()
}

/// The identity of a file system object: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// The device holding it (`st_dev`).
    pub dev: u64,
    /// Its inode number (`st_ino`).
    pub ino: u64,
}

impl FileId {
    /// The identity in `m`.
    #[cfg(unix)]
    pub fn of(m: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// The file a loop device reads and writes, as the system reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoopBacking {
    /// The path in `/sys/dev/block/MAJ:MIN/loop/backing_file`.
    pub path: Option<PathBuf>,
    /// The identity of the file at that path, when it still exists.
    pub by_path: Option<FileId>,
    /// The device and inode `LOOP_GET_STATUS64` reports (they stay right
    /// when the path was renamed or deleted).
    pub by_status: Option<FileId>,
}

impl LoopBacking {
    /// Whether the file identified by `id` backs the loop device: either
    /// way of asking names it. (On btrfs the status's device number is the
    /// file system's, not the subvolume's that `stat` gives, so the path's
    /// identity is asked too.)
    pub fn is_backed_by(&self, id: FileId) -> bool {
        self.by_path == Some(id) || self.by_status == Some(id)
    }
}

/// `LOOP_GET_STATUS64` (`<linux/loop.h>`): a loop device's `loop_info64`.
#[cfg(target_os = "linux")]
const LOOP_GET_STATUS64: libc::Ioctl = 0x4C05;

/// `struct loop_info64` of `<linux/loop.h>`, of which only the backing
/// file's device and inode are used.
#[cfg(target_os = "linux")]
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// What backs the block device `file` (metadata `meta`), if it is a loop
/// device; `None` for anything else.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
pub fn loop_backing(file: &File, meta: &fs::Metadata) -> Option<LoopBacking> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if !meta.file_type().is_block_device() {
        return None;
    }
    let rdev = meta.rdev();
    let sys = format!(
        "/sys/dev/block/{}:{}/loop/backing_file",
        libc::major(rdev),
        libc::minor(rdev)
    );
    let mut b = LoopBacking::default();
    if let Ok(text) = fs::read_to_string(&sys) {
        let path = PathBuf::from(text.trim_end_matches('\n'));
        b.by_path = fs::metadata(&path).ok().map(|m| FileId::of(&m));
        b.path = Some(path);
    }
    // SAFETY: all-zero bytes are a valid `LoopInfo64` (integers and
    // byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 writes one `loop_info64` to the pointer,
    // which points to a live value of that layout; `file` is open. Any
    // other block device refuses the request (ENOTTY or EINVAL).
    let r = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_GET_STATUS64, &mut info) };
    if r == 0 {
        b.by_status = Some(FileId {
            dev: info.lo_device,
            ino: info.lo_inode,
        });
    }
    (b.path.is_some() || b.by_status.is_some()).then_some(b)
}

#[cfg(not(target_os = "linux"))]
pub fn loop_backing(_file: &File, _meta: &fs::Metadata) -> Option<LoopBacking> {
    None
}

/// Refuse to write onto `target` when that would overwrite one of
/// `sources` (the image being converted and its parents) while it is
/// read: the target is one of them (another name of the same file, or a
/// node of the same block device), a loop device backed by one of them,
/// or one of them is a loop device backed by the target. Nothing is
/// written when this fails.
#[cfg(unix)]
pub fn refuse_writing_onto_sources(target: &DeviceTarget, sources: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let tmeta = target.file.metadata().map_err(|e| {
        Error::io(e, "cannot examine the opened --device target").with_path(&target.path)
    })?;
    let tid = FileId::of(&tmeta);
    let tloop = loop_backing(&target.file, &tmeta);
    let refuse = |why: String| {
        Err(Error::invalid_argument(format!(
            "{why}: writing onto it would destroy the source while it is read; nothing was written"
        ))
        .with_path(&target.path))
    };
    let tchain = loop_chain(&target.file, &tmeta);
    for src in sources {
        let Ok(smeta) = fs::metadata(src) else {
            continue;
        };
        let sid = FileId::of(&smeta);
        let same_device = smeta.file_type().is_block_device()
            && tmeta.file_type().is_block_device()
            && smeta.rdev() == tmeta.rdev();
        if sid == tid || same_device {
            return refuse(format!("is the source {} itself", src.display()));
        }
        if let Some(b) = &tloop
            && b.is_backed_by(sid)
        {
            return refuse(format!(
                "is a loop device backed by the source {}",
                src.display()
            ));
        }
        let schain = match File::open(src) {
            Ok(f) if smeta.file_type().is_block_device() => loop_chain(&f, &smeta),
            _ => LoopChain::of(&smeta),
        };
        if smeta.file_type().is_block_device()
            && let Ok(f) = File::open(src)
            && let Some(b) = loop_backing(&f, &smeta)
            && b.is_backed_by(tid)
        {
            return refuse(format!(
                "backs the loop device {}, which is the source",
                src.display()
            ));
        }
        // Loops over loops: the target and the source reach one file
        // further down their chains of backing files.
        if let Some(name) = tchain.meets(&schain) {
            return refuse(format!(
                "reaches the same file {} as the source {} (following each loop \
                 device's backing file down the chain)",
                name.display(),
                src.display()
            ));
        }
    }
    Ok(())
}

/// Most loop devices followed down a chain of backing files (a loop's
/// backing file may be another loop device): more than any real stack,
/// and a bound on a cycle.
#[cfg(unix)]
const LOOP_CHAIN_MAX: usize = 16;

/// Every file system object a block device or file reaches down its chain
/// of loop backing files: itself, then each backing file in turn.
#[cfg(unix)]
#[derive(Debug, Default)]
struct LoopChain {
    /// Each object's identity and the path it was reached by (`None` for
    /// the one the chain starts at, named by the caller).
    ids: Vec<(FileId, Option<PathBuf>)>,
    /// The device numbers of the block devices on the way.
    rdevs: Vec<(u64, Option<PathBuf>)>,
}

#[cfg(unix)]
impl LoopChain {
    /// The chain of an object that is no loop device: itself alone.
    fn of(meta: &fs::Metadata) -> Self {
        let mut c = LoopChain::default();
        c.add(meta, None);
        c
    }

    fn add(&mut self, meta: &fs::Metadata, path: Option<PathBuf>) {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        self.ids.push((FileId::of(meta), path.clone()));
        if meta.file_type().is_block_device() {
            self.rdevs.push((meta.rdev(), path));
        }
    }

    /// The name of an object both chains reach, if any (the caller
    /// words the plain cases, a chain's start meeting the other, first).
    fn meets(&self, other: &LoopChain) -> Option<PathBuf> {
        let name = |a: &Option<PathBuf>, b: &Option<PathBuf>| {
            a.clone().or_else(|| b.clone()).unwrap_or_default()
        };
        for (id, p) in &self.ids {
            if let Some((_, q)) = other.ids.iter().find(|(o, _)| o == id) {
                return Some(name(p, q));
            }
        }
        for (r, p) in &self.rdevs {
            if let Some((_, q)) = other.rdevs.iter().find(|(o, _)| o == r) {
                return Some(name(p, q));
            }
        }
        None
    }
}

/// The chain of `file` (metadata `meta`): itself and, while it is a loop
/// device, its backing file, that file's backing file, and so on.
#[cfg(unix)]
fn loop_chain(file: &File, meta: &fs::Metadata) -> LoopChain {
    use std::os::unix::fs::FileTypeExt;
    let mut chain = LoopChain::of(meta);
    let mut next = loop_backing(file, meta);
    for _ in 0..LOOP_CHAIN_MAX {
        let Some(b) = next.take() else { break };
        if let Some(id) = b.by_status {
            chain.ids.push((id, b.path.clone()));
        }
        let Some(path) = b.path else { break };
        let Ok(m) = fs::metadata(&path) else { break };
        chain.add(&m, Some(path.clone()));
        if m.file_type().is_block_device()
            && let Ok(f) = File::open(&path)
        {
            next = loop_backing(&f, &m);
        }
    }
    chain
}

#[cfg(not(unix))]
pub fn refuse_writing_onto_sources(_target: &DeviceTarget, _sources: &[PathBuf]) -> Result<()> {
    Ok(())
}

/// The files `disk` (opened from `src` with `opts`) reads: `src` and each
/// parent found up its chain, nearest first. Parents further than the
/// nearest are looked up by opening each parent read-only; one that does
/// not open ends the list.
pub fn source_chain(src: &Path, disk: &dyn VirtualDisk, opts: &crate::OpenOptions) -> Vec<PathBuf> {
    let found = |info: crate::ImageInfo| {
        info.parent
            .filter(|p| p.found)
            .and_then(|p| p.path)
            .map(PathBuf::from)
    };
    let inspect = opts
        .clone()
        .writable(false)
        .allow_missing_parent(true)
        .print_warnings(false)
        .parent_path(None);
    let mut out = vec![src.to_path_buf()];
    let mut next = found(disk.info());
    while let Some(p) = next.take() {
        if out.len() > crate::parent::MAX_CHAIN_DEPTH || out.contains(&p) {
            break;
        }
        next = crate::open(&p, &inspect).ok().and_then(|d| found(d.info()));
        out.push(p);
    }
    out
}

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
                " (--device never grows a file; extend it first, e.g. `truncate -s SIZE`)"
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
