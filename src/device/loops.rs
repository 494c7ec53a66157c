//! Whether a `--device` target is (through loop devices, to any depth) one
//! of the files it would be written from.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::disk::VirtualDisk;
use crate::error::{Error, Result};

use super::DeviceTarget;

#[cfg(unix)]
pub(crate) fn same_object(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino() && a.file_type() == b.file_type()
}

#[cfg(not(unix))]
pub(crate) fn same_object(a: &fs::Metadata, b: &fs::Metadata) -> bool {
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
        Error::io(e, "cannot examine the opened in-place target").with_path(&target.path)
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
