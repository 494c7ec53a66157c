//! Storage backends: positional I/O on a file or on memory.
//!
//! Every format reads and writes its container through [`Storage`], never
//! through a shared seek cursor, so reads can run from several threads.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::RwLock;

use crate::error::{Error, ErrorKind, Result};

/// Positional byte storage holding an image file.
pub trait Storage: Send + Sync {
    /// Fill `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`, extending the storage if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncate or extend (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Make everything written so far durable.
    fn flush(&self) -> io::Result<()>;
    /// Whether writes are allowed.
    fn is_writable(&self) -> bool;

    /// The bytes `offset..offset + len` in place, when the storage holds
    /// them in memory (a mapped read-only file): callers that can work
    /// from a borrowed slice skip a copy.
    fn mapped(&self, _offset: u64, _len: usize) -> Option<&[u8]> {
        None
    }

    /// Whether the storage is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Read up to `buf.len()` bytes, filling whatever lies past the end with zeros.
    fn read_at_or_zero(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = self.len()?;
        let avail = len.saturating_sub(offset).min(buf.len() as u64) as usize;
        if avail > 0 {
            self.read_at(&mut buf[..avail], offset)?;
        }
        buf[avail..].fill(0);
        Ok(())
    }
}

/// Shared storage: an `Arc` of a storage is a storage, so a test (or a
/// caller) can keep a handle on what a disk writes.
impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn is_writable(&self) -> bool {
        (**self).is_writable()
    }
    fn mapped(&self, offset: u64, len: usize) -> Option<&[u8]> {
        (**self).mapped(offset, len)
    }
}

/// An image file accessed with `pread`/`pwrite`.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    /// A read-only mapping of the whole file, for files opened read-only:
    /// copying from the page cache through a mapping is several times
    /// faster than `pread` for large sequential reads.
    map: Option<memmap2::Mmap>,
    writable: bool,
    /// Whether `flush` syncs to stable storage (off for scratch files).
    sync: bool,
}

impl FileStorage {
    /// Open an existing file, read-only or read-write, and lock it: a
    /// writable open takes an exclusive lock, a read-only open a shared one
    /// (see [`lock`]). The lock lasts as long as this storage.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let storage = Self::open_file(path, writable, !writable)?;
        let mode = if writable {
            LockMode::Exclusive
        } else {
            LockMode::Shared
        };
        lock(&storage.file, path, mode)?;
        Ok(storage)
    }

    /// Open an existing file read-only without taking or honouring a lock
    /// (`-U/--force-share`): what is read may be inconsistent if another
    /// program is writing the file.
    ///
    /// Such a file is never memory-mapped, only read with `pread`: these
    /// opens exist to read files that other programs are changing, and a
    /// program that shrinks the file would otherwise kill the reader with
    /// `SIGBUS` when it touches a mapped page past the new end. With
    /// `pread` that is an ordinary end-of-file error.
    pub fn open_force_share(path: &Path) -> Result<Self> {
        Self::open_file(path, false, false)
    }

    /// Whether reads go through a memory map (locked read-only opens).
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    fn open_file(path: &Path, writable: bool, map: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::io(e, "cannot open file").with_path(path))?;
        if file
            .metadata()
            .map_err(|e| Error::io(e, "cannot stat file").with_path(path))?
            .is_dir()
        {
            return Err(Error::invalid_argument("is a directory").with_path(path));
        }
        let map = if map && !writable {
            map_read_only(&file)
        } else {
            None
        };
        Ok(FileStorage {
            file,
            map,
            writable,
            sync: true,
        })
    }

    /// Create a new file, failing if it exists.
    pub fn create_new(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(e, "cannot create file").with_path(path))?;
        lock(&file, path, LockMode::Exclusive)?;
        Ok(FileStorage {
            file,
            map: None,
            writable: true,
            sync: true,
        })
    }

    /// Make `flush` a no-op: for files whose durability the caller handles
    /// (a conversion output is complete once written; like qemu-img, we
    /// leave write-back to the system unless asked to sync).
    pub fn without_sync(mut self) -> Self {
        self.sync = false;
        self
    }
}

impl Drop for FileStorage {
    /// Release the lock explicitly before the file is closed: a child
    /// process that another thread is starting holds a copy of every open
    /// file until it executes its program, and with it the lock, so closing
    /// alone could leave the image locked for a moment after it is closed.
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        qemu_locks::release(&self.file);
        let _ = self.file.unlock();
    }
}

/// The lock an open of an image file takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Readers: any number at once, but no writer beside them.
    Shared,
    /// A writer: no other reader or writer.
    Exclusive,
}

/// The message of the I/O error for a file that cannot be locked at all.
pub const LOCK_FAILED: &str = "cannot lock the image file (the file system may not support locks)";

/// Whether `e` is an error that opening without a lock (`-U/--force-share`)
/// avoids: the image is in use, or its file system cannot lock. Commands
/// that offer `-U` add that hint; the library's messages do not, as not
/// every caller can open without a lock (a parent opened to create a
/// child, say).
pub fn force_share_would_help(e: &Error) -> bool {
    e.kind() == ErrorKind::InUse || (e.kind() == ErrorKind::Io && e.message() == LOCK_FAILED)
}

/// Lock an open image file without waiting, like qemu: `flock` on Unix
/// (advisory, held by the open file description, so released when the file
/// is closed or the process dies, and conflicting even between two opens
/// in one process), `LockFileEx` on Windows. A conflict is an
/// [`ErrorKind::InUse`] error naming the holder where the system tells it;
/// a file system that cannot lock at all is an I/O error (fail closed:
/// `-U/--force-share` still reads such a file).
///
/// On Linux the open also takes qemu's locks (the private `qemu_locks` module): `fcntl`
/// OFD locks on the bytes qemu, qemu-img and qemu-nbd lock and test, so
/// that qemu and vhdkit see each other's use of an image (they do not see
/// each other's `flock`). A conflict there is the same `InUse` error.
pub fn lock(file: &File, path: &Path, mode: LockMode) -> Result<()> {
    let r = match mode {
        LockMode::Shared => file.try_lock_shared(),
        LockMode::Exclusive => file.try_lock(),
    };
    match r {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(in_use_error(file, mode).with_path(path));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::io(e, LOCK_FAILED).with_path(path));
        }
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = qemu_locks::acquire(file, mode) {
        // Give back the flock too: the open fails as a whole.
        let _ = file.unlock();
        return Err(qemu_lock_error(file, mode, e).with_path(path));
    }
    Ok(())
}

/// The error for a failure to take qemu's locks: `InUse` for a conflict
/// with another open of the file, an I/O error otherwise.
#[cfg(target_os = "linux")]
fn qemu_lock_error(file: &File, mode: LockMode, e: qemu_locks::LockError) -> Error {
    match e {
        qemu_locks::LockError::Conflict(byte) => qemu_in_use_error(file, mode, byte),
        qemu_locks::LockError::Io(e) => Error::io(
            e,
            "cannot take qemu's lock bytes on the image file (fcntl OFD locks)",
        ),
    }
}

/// Refuse to replace the existing file at `path` while another program has
/// it open (locked): take the exclusive lock an image writer would take and
/// hand it back, to be held until the file is replaced. `None` when there
/// is no regular file there or it cannot be opened to test (best effort:
/// locks are advisory).
pub fn lock_for_replace(path: &Path) -> Result<Option<File>> {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let Ok(file) = File::open(path) else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => {
            #[cfg(target_os = "linux")]
            match qemu_locks::acquire(&file, LockMode::Exclusive) {
                Ok(()) => {}
                Err(qemu_locks::LockError::Conflict(byte)) => {
                    let _ = file.unlock();
                    return Err(Error::new(
                        ErrorKind::InUse,
                        format!(
                            "{}; it cannot be replaced while in use",
                            qemu_in_use_error(&file, LockMode::Exclusive, byte).message()
                        ),
                    )
                    .with_path(path));
                }
                // Best effort, as for a file system without flock.
                Err(qemu_locks::LockError::Io(_)) => {
                    qemu_locks::release(&file);
                    let _ = file.unlock();
                    return Ok(None);
                }
            }
            Ok(Some(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::new(
            ErrorKind::InUse,
            format!(
                "{}; it cannot be replaced while in use",
                in_use_error(&file, LockMode::Exclusive).message()
            ),
        )
        .with_path(path)),
        Err(std::fs::TryLockError::Error(_)) => Ok(None),
    }
}

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
fn rename_noreplace(tmp: &Path, dest: &Path) -> io::Result<()> {
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

/// The error for a lock that another open of the file holds.
fn in_use_error(file: &File, wanted: LockMode) -> Error {
    let holders = lock_holders(file);
    let who_has = describe_holders(&holders);
    let writing = holders.iter().any(|h| h.write);
    let message = match wanted {
        LockMode::Exclusive if !holders.is_empty() && !writing => format!(
            "the image is in use: {who_has} it open for reading, so it cannot be opened for writing"
        ),
        LockMode::Exclusive => format!(
            "the image is in use: {who_has} it open for writing, so it cannot be opened for writing too"
        ),
        LockMode::Shared => format!(
            "the image is in use: {who_has} it open for writing, so it cannot be read consistently"
        ),
    };
    Error::new(ErrorKind::InUse, message)
}

/// The error for a conflict on qemu's lock byte `byte` (another open of
/// the file, by qemu or by a vhdkit that got its flock first). The holders
/// are found where Linux tells (see [`qemu_locks::holders`]); otherwise what
/// the byte means says whether the other program writes.
#[cfg(target_os = "linux")]
fn qemu_in_use_error(file: &File, wanted: LockMode, byte: u64) -> Error {
    let holders = qemu_locks::holders(file, wanted);
    let writing = if holders.is_empty() {
        qemu_locks::byte_means_writer(byte)
    } else {
        holders.iter().any(|h| h.write)
    };
    let who_has = if holders.is_empty() {
        "another program (such as qemu) has".to_string()
    } else {
        describe_holders(&holders)
    };
    let what = qemu_locks::byte_meaning(byte);
    let message = match wanted {
        LockMode::Exclusive if !writing => format!(
            "the image is in use: {who_has} it open for reading (qemu lock byte {byte}: {what}), so it cannot be opened for writing"
        ),
        LockMode::Exclusive => format!(
            "the image is in use: {who_has} it open for writing (qemu lock byte {byte}: {what}), so it cannot be opened for writing too"
        ),
        LockMode::Shared => format!(
            "the image is in use: {who_has} it open for writing (qemu lock byte {byte}: {what}), so it cannot be read consistently"
        ),
    };
    Error::new(ErrorKind::InUse, message)
}

/// A holder of a lock on a file, as the system reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LockHolder {
    pid: u32,
    /// Holds an exclusive (write) lock.
    write: bool,
}

/// Who holds the locks, with the verb: "process 1234 (vhdkit) has",
/// "processes 1234 (vhdkit), 1240 (qemu-img) have", or "another process
/// has" when the system does not tell.
fn describe_holders(holders: &[LockHolder]) -> String {
    if holders.is_empty() {
        return "another process has".to_string();
    }
    let me = std::process::id();
    let names: Vec<String> = holders
        .iter()
        .map(|h| {
            if h.pid == me {
                format!("{} (this process, through another open of the file)", h.pid)
            } else {
                match process_name(h.pid) {
                    Some(n) => format!("{} ({n})", h.pid),
                    None => h.pid.to_string(),
                }
            }
        })
        .collect();
    if names.len() == 1 {
        format!("process {} has", names[0])
    } else {
        format!("processes {} have", names.join(", "))
    }
}

/// Upper bound on what is read of `/proc/locks` (a busy system lists many locks).
#[cfg(target_os = "linux")]
const PROC_LOCKS_MAX: u64 = 4 << 20;

/// How `/proc/locks` (and `/proc/PID/fdinfo`) name `file`:
/// `major:minor:inode`, or `None` when it cannot be stat'ed.
#[cfg(target_os = "linux")]
fn proc_lock_id(file: &File) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    // glibc's dev_t layout; /proc/locks prints the kernel's major:minor in hex.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    Some(format!("{major:02x}:{minor:02x}:{}", meta.ino()))
}

/// The processes holding `flock` locks on `file`, from `/proc/locks` (best
/// effort: empty when it cannot be read or does not name the file, e.g. on
/// file systems whose reported device differs from the lock's).
#[cfg(target_os = "linux")]
fn lock_holders(file: &File) -> Vec<LockHolder> {
    use std::io::Read;
    let Some(id) = proc_lock_id(file) else {
        return Vec::new();
    };
    let mut text = String::new();
    let read =
        File::open("/proc/locks").and_then(|f| f.take(PROC_LOCKS_MAX).read_to_string(&mut text));
    if read.is_err() {
        return Vec::new();
    }
    let mut holders: Vec<LockHolder> = Vec::new();
    for line in text.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters have
        // "->" after the number and are not holders.
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" || f[5] != id {
            continue;
        }
        let Some(pid) = f[4].parse::<u32>().ok().filter(|&p| p > 0) else {
            continue;
        };
        let h = LockHolder {
            pid,
            write: f[3] == "WRITE",
        };
        if !holders.contains(&h) {
            holders.push(h);
        }
    }
    holders
}

#[cfg(not(target_os = "linux"))]
fn lock_holders(_file: &File) -> Vec<LockHolder> {
    Vec::new()
}

/// qemu's image locks (Linux), so that qemu and vhdkit see each other's use
/// of an image.
///
/// qemu (its `file` protocol driver) describes what an opener of an image
/// does, and what it lets others do, as permissions (its `BLK_PERM_*` bits),
/// and records them as `fcntl` OFD locks on single bytes of the image file:
/// byte [`PERM_BASE`]` + i` while it holds permission `i`, byte
/// [`SHARED_BASE`]` + i` while it does not let others have it. These are
/// shared (read) locks, so taking them never conflicts; an opener then tests
/// (`F_OFD_GETLK` for a write lock) whether another open of the file locks
/// the "unshared" byte of a permission it wants, or the byte of a permission
/// it does not share, and gives up if so. OFD locks, like `flock`, belong to
/// the open file description: released when it is closed (or the process
/// dies), and conflicting between two opens in one process, but never with
/// the open that holds them, so vhdkit's own flock and OFD locks on one open
/// file never lock it out. Locks change nothing in the file.
#[cfg(target_os = "linux")]
mod qemu_locks {
    use std::fs::File;
    use std::io::{self, Read};
    use std::os::fd::AsRawFd;

    use super::{LockHolder, LockMode};

    /// Byte `PERM_BASE + i` is locked by an opener holding permission `i`
    /// (qemu's `RAW_LOCK_PERM_BASE`; libvirt uses byte 0).
    pub(super) const PERM_BASE: u64 = 100;
    /// Byte `SHARED_BASE + i` is locked by an opener that does not let
    /// others have permission `i` (qemu's `RAW_LOCK_SHARED_BASE`).
    pub(super) const SHARED_BASE: u64 = 200;
    /// Permission: a complete, self-consistent view of the content.
    const CONSISTENT_READ: u64 = 0;
    /// Permission: change the content.
    const WRITE: u64 = 1;
    /// Permission: write without changing the visible content (qemu jobs).
    const WRITE_UNCHANGED: u64 = 2;
    /// Permission: change the size.
    const RESIZE: u64 = 3;
    /// Number of permissions with lock bytes: bits `0..PERM_COUNT` (qemu
    /// 6.1 and older also locked bit 4, a permission it no longer has).
    const PERM_COUNT: u64 = 4;
    /// qemu's names of the permissions, by bit.
    const PERM_NAMES: [&str; PERM_COUNT as usize] =
        ["consistent read", "write", "write unchanged", "resize"];
    /// Upper bound on the `/proc/PID/fdinfo` files read to find holders.
    const FDINFO_MAX_FILES: usize = 1 << 16;
    /// Upper bound on what is read of one fdinfo file.
    const FDINFO_MAX_BYTES: u64 = 1 << 16;

    /// Why qemu's locks could not be taken.
    pub(super) enum LockError {
        /// Another open of the file holds this lock byte, which conflicts.
        Conflict(u64),
        /// The system refused the lock calls.
        Io(io::Error),
    }

    const fn bit(p: u64) -> u8 {
        1 << p
    }

    /// The permissions an open holds and those it does not share. As
    /// `qemu-img`/`qemu-io` do for an image opened through a format driver:
    /// a writer holds consistent read, write and resize; a reader consistent
    /// read; neither shares write or resize. Both share consistent read and
    /// write-unchanged, as qemu does: a plain reader stays away from a writer
    /// because the reader refuses to share writing, while a `-U` (force
    /// share) reader, which shares everything, can still inspect the image.
    fn perms(mode: LockMode) -> (u8, u8) {
        let unshared = bit(WRITE) | bit(RESIZE);
        match mode {
            LockMode::Exclusive => (bit(CONSISTENT_READ) | bit(WRITE) | bit(RESIZE), unshared),
            LockMode::Shared => (bit(CONSISTENT_READ), unshared),
        }
    }

    /// The bytes whose lock by another open conflicts with `mode`: the
    /// "unshared" byte of each permission held, the byte of each one not
    /// shared.
    fn conflicting_bytes(mode: LockMode) -> Vec<u64> {
        let (held, unshared) = perms(mode);
        let mut bytes = Vec::new();
        for i in 0..PERM_COUNT {
            if held & bit(i) != 0 {
                bytes.push(SHARED_BASE + i);
            }
        }
        for i in 0..PERM_COUNT {
            if unshared & bit(i) != 0 {
                bytes.push(PERM_BASE + i);
            }
        }
        bytes
    }

    /// Lock qemu's bytes for `mode` on `file`, then test that no other open
    /// conflicts (lock first, test second, as qemu does: of two openers
    /// racing, at least one sees the other). On failure nothing stays locked.
    ///
    /// A file system without `fcntl` locks (the first lock call says it is
    /// not supported) is left with the flock alone: qemu cannot lock such a
    /// file either, so there is no qemu lock to honour there.
    pub(super) fn acquire(file: &File, mode: LockMode) -> Result<(), LockError> {
        let r = lock_and_test(file, mode);
        if r.is_err() {
            release(file);
        }
        match r {
            Err(LockError::Io(e)) if unsupported(&e) => Ok(()),
            r => r,
        }
    }

    /// Whether `e` says the file system (or kernel) has no OFD locks.
    fn unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
        )
    }

    fn lock_and_test(file: &File, mode: LockMode) -> Result<(), LockError> {
        let (held, unshared) = perms(mode);
        for i in 0..PERM_COUNT {
            for (set, base) in [(held, PERM_BASE), (unshared, SHARED_BASE)] {
                if set & bit(i) == 0 {
                    continue;
                }
                let byte = base + i;
                match ofd_lock(
                    file,
                    libc::F_OFD_SETLK,
                    libc::F_RDLCK as libc::c_short,
                    byte,
                    1,
                ) {
                    Ok(_) => {}
                    // Someone holds a write lock on the byte (qemu never does).
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                        return Err(LockError::Conflict(byte));
                    }
                    Err(e) => return Err(LockError::Io(e)),
                }
            }
        }
        for byte in conflicting_bytes(mode) {
            let found = ofd_lock(
                file,
                libc::F_OFD_GETLK,
                libc::F_WRLCK as libc::c_short,
                byte,
                1,
            )
            .map_err(LockError::Io)?;
            if found != libc::F_UNLCK as libc::c_short {
                return Err(LockError::Conflict(byte));
            }
        }
        Ok(())
    }

    /// Drop whatever qemu lock bytes this open of `file` holds.
    pub(super) fn release(file: &File) {
        let _ = ofd_lock(
            file,
            libc::F_OFD_SETLK,
            libc::F_UNLCK as libc::c_short,
            PERM_BASE,
            SHARED_BASE + PERM_COUNT - PERM_BASE,
        );
    }

    /// One OFD lock command (`F_OFD_SETLK` or `F_OFD_GETLK`) of lock type
    /// `kind` on `len` bytes from `start`. Returns the lock type the kernel
    /// leaves in the request: for `F_OFD_GETLK`, `F_UNLCK` when no other open
    /// holds a conflicting lock.
    fn ofd_lock(
        file: &File,
        cmd: libc::c_int,
        kind: libc::c_short,
        start: u64,
        len: u64,
    ) -> io::Result<libc::c_short> {
        let start = libc::off_t::try_from(start).map_err(|_| io::ErrorKind::InvalidInput)?;
        let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let fd = file.as_raw_fd();
        // SAFETY: `flock` is a plain C struct for which all-zero bytes are a
        // valid value (and OFD commands require `l_pid` to be 0). `fd` is open
        // for as long as `file` is borrowed. F_OFD_SETLK and F_OFD_GETLK read,
        // and for F_OFD_GETLK write, only the `flock` passed by pointer, which
        // lives on this stack frame across the call.
        let (r, found) = unsafe {
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = kind;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = start;
            fl.l_len = len;
            let r = libc::fcntl(fd, cmd, &mut fl as *mut libc::flock);
            (r, fl.l_type)
        };
        if r == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(found)
        }
    }

    /// What holding lock byte `byte` says about its holder.
    pub(super) fn byte_meaning(byte: u64) -> String {
        let name = |i: u64| PERM_NAMES.get(i as usize).copied();
        match (byte.checked_sub(PERM_BASE), byte.checked_sub(SHARED_BASE)) {
            (_, Some(i)) if i < PERM_COUNT => {
                format!(
                    "it does not share the \"{}\" permission",
                    name(i).unwrap_or("?")
                )
            }
            (Some(i), _) if i < PERM_COUNT => {
                format!("it holds the \"{}\" permission", name(i).unwrap_or("?"))
            }
            _ => "it holds an exclusive lock on it".to_string(),
        }
    }

    /// Whether a holder of lock byte `byte` writes (or keeps readers out,
    /// as only a writer does).
    pub(super) fn byte_means_writer(byte: u64) -> bool {
        byte == PERM_BASE + WRITE
            || byte == PERM_BASE + RESIZE
            || byte == PERM_BASE + WRITE_UNCHANGED
            || byte == SHARED_BASE + CONSISTENT_READ
    }

    /// The processes whose opens of `file` hold qemu lock bytes, with
    /// whether they write (hold the write or resize byte). OFD locks have no
    /// owning process (`/proc/locks` and `F_OFD_GETLK` say -1), so this
    /// reads the `lock:` lines of `/proc/PID/fdinfo/FD`, which list the
    /// locks of each open file: best effort, only processes this user may
    /// inspect, at most [`FDINFO_MAX_FILES`] files.
    pub(super) fn holders(file: &File, mode: LockMode) -> Vec<LockHolder> {
        let Some(id) = super::proc_lock_id(file) else {
            return Vec::new();
        };
        let conflicting = conflicting_bytes(mode);
        let mut holders: Vec<LockHolder> = Vec::new();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return holders;
        };
        let mut budget = FDINFO_MAX_FILES;
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
                continue;
            };
            for fd in fds.flatten() {
                if budget == 0 {
                    return holders;
                }
                budget -= 1;
                let mut text = String::new();
                let read = File::open(fd.path())
                    .and_then(|f| f.take(FDINFO_MAX_BYTES).read_to_string(&mut text));
                if read.is_err() || !text.contains("OFDLCK") {
                    continue;
                }
                let ranges = ofd_ranges(&text, &id);
                let holds = |b: u64| ranges.iter().any(|&(s, e)| s <= b && b <= e);
                if !conflicting.iter().any(|&b| holds(b)) {
                    continue;
                }
                let h = LockHolder {
                    pid,
                    write: holds(PERM_BASE + WRITE) || holds(PERM_BASE + RESIZE),
                };
                if let Some(old) = holders.iter_mut().find(|o| o.pid == pid) {
                    old.write |= h.write;
                } else {
                    holders.push(h);
                }
            }
        }
        holders
    }

    /// The byte ranges (first, last) of the OFD locks on file `id` that an
    /// fdinfo text lists, e.g. from
    /// `lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:1234 100 101`.
    fn ofd_ranges(text: &str, id: &str) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("lock:") else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() < 8 || f[1] != "OFDLCK" || f[5] != id {
                continue;
            }
            let Ok(start) = f[6].parse::<u64>() else {
                continue;
            };
            let end = if f[7] == "EOF" {
                u64::MAX
            } else {
                match f[7].parse::<u64>() {
                    Ok(e) => e,
                    Err(_) => continue,
                }
            };
            ranges.push((start, end));
        }
        ranges
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn fdinfo_lock_lines_parse() {
            let text = "pos:\t0\nflags:\t02100002\nlock:\t1: OFDLCK ADVISORY  READ -1 fe:00:77 100 101\n\
                        lock:\t2: OFDLCK ADVISORY  READ -1 fe:00:78 103 103\n\
                        lock:\t3: FLOCK  ADVISORY  WRITE 12 fe:00:77 0 EOF\n\
                        lock:\t4: OFDLCK ADVISORY  READ -1 fe:00:77 201 EOF\n";
            assert_eq!(
                ofd_ranges(text, "fe:00:77"),
                vec![(100, 101), (201, u64::MAX)]
            );
        }

        #[test]
        fn writer_and_reader_bytes_match_qemu() {
            // qemu-img/qemu-io on a VHDX: writer 100,101,103 + 201,203;
            // reader 100 + 201,203 (as /proc/locks shows for them).
            assert_eq!(perms(LockMode::Exclusive), (0b1011, 0b1010));
            assert_eq!(perms(LockMode::Shared), (0b0001, 0b1010));
            assert_eq!(conflicting_bytes(LockMode::Shared), vec![200, 101, 103]);
            assert_eq!(
                conflicting_bytes(LockMode::Exclusive),
                vec![200, 201, 203, 101, 103]
            );
        }
    }
}

/// The command name of process `pid`, where the system tells it.
fn process_name(pid: u32) -> Option<String> {
    if cfg!(target_os = "linux") {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let name = name.trim();
        (!name.is_empty()).then(|| name.to_string())
    } else {
        None
    }
}

/// Map a file opened read-only, or `None` when it cannot be mapped (empty
/// files, devices, pipes): reads then use `pread`.
fn map_read_only(file: &File) -> Option<memmap2::Mmap> {
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

impl FileStorage {
    /// Copy from the mapping when it covers the range.
    fn read_mapped(&self, buf: &mut [u8], offset: u64) -> bool {
        match self.mapped(offset, buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

#[cfg(unix)]
fn pread_exact(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn pwrite_all(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn pread_exact(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
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
fn pwrite_all(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

impl Storage for FileStorage {
    fn mapped(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        self.map.as_ref()?.get(start..start.checked_add(len)?)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.read_mapped(buf, offset) {
            return Ok(());
        }
        pread_exact(&self.file, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        pwrite_all(&self.file, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        if self.writable && self.sync {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }
    fn is_writable(&self) -> bool {
        self.writable
    }
}

/// An image held in memory, for tests and for building images before writing them out.
#[derive(Debug, Default)]
pub struct MemStorage {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemStorage {
    /// Empty, writable storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Storage holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemStorage {
            data: RwLock::new(data),
            read_only: false,
        }
    }

    /// Storage holding `data` that refuses writes.
    pub fn read_only(data: Vec<u8>) -> Self {
        MemStorage {
            data: RwLock::new(data),
            read_only: true,
        }
    }

    /// A copy of the current contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= data.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&data[start..end]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::InvalidInput)?;
        if end > data.len() {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        self.data
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len, 0);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn is_writable(&self) -> bool {
        !self.read_only
    }
}

/// Read exactly `buf.len()` bytes of `structure` at `offset`, turning a short
/// file into a `Corrupt` error that names the structure.
pub(crate) fn read_struct(
    storage: &dyn Storage,
    structure: &'static str,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    storage.read_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::corrupt(
                structure,
                offset,
                format!("file ends before the {} bytes of this structure", buf.len()),
            )
        } else {
            Error::io(e, format!("reading {structure}")).at(structure, offset)
        }
    })
}

/// Map an I/O error on the container to a library error naming the structure.
pub(crate) fn io_err(structure: &'static str, offset: u64) -> impl FnOnce(io::Error) -> Error {
    move |e| {
        let kind = e.kind();
        let mut err = Error::io(e, format!("accessing {structure}")).at(structure, offset);
        if kind == io::ErrorKind::PermissionDenied {
            err = Error::new(ErrorKind::ReadOnly, "the image is opened read-only")
                .at(structure, offset);
        }
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_into_place_never_replaces_without_replace() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join(".dst.tmp");
        let dst = d.path().join("dst");
        std::fs::write(&tmp, b"new").unwrap();
        rename_into_place(&tmp, &dst, false).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"new");
        assert!(!tmp.exists());

        // An existing destination: an error, both files as they were.
        std::fs::write(&tmp, b"newer").unwrap();
        let e = rename_into_place(&tmp, &dst, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&dst).unwrap(), b"new");
        assert_eq!(std::fs::read(&tmp).unwrap(), b"newer");

        // A dangling symbolic link counts as existing.
        #[cfg(unix)]
        {
            let link = d.path().join("link");
            std::os::unix::fs::symlink(d.path().join("nowhere"), &link).unwrap();
            let e = rename_into_place(&tmp, &link, false).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
            assert!(!d.path().join("nowhere").exists());
        }

        // With replace: replaced.
        rename_into_place(&tmp, &dst, true).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"newer");
        assert!(!tmp.exists());
    }

    #[test]
    fn force_share_reads_without_a_map_and_sees_truncation_as_eof() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        let locked = FileStorage::open(&p, false).unwrap();
        assert!(locked.is_mapped());
        drop(locked);
        let s = FileStorage::open_force_share(&p).unwrap();
        assert!(!s.is_mapped(), "a -U open must not map the file");
        assert!(s.mapped(0, 4096).is_none());
        let mut buf = [0u8; 4096];
        s.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, [7u8; 4096]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let e = s.read_at(&mut buf, 8192).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
