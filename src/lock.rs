//! Image file locks: `flock` among vhdkit processes, and on Linux qemu's
//! `fcntl` OFD lock bytes as well, so that qemu and vhdkit see each other's
//! use of an image. An open that cannot have its lock fails with an
//! [`ErrorKind::InUse`] error naming the holder where the system tells.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, ErrorKind, Hint, Result};

/// Release every lock an open of `file` holds (qemu's bytes, then the
/// `flock`).
pub(crate) fn unlock(file: &File) {
    #[cfg(target_os = "linux")]
    qemu_locks::release(file);
    let _ = file.unlock();
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
    e.kind() == ErrorKind::InUse || e.hint() == Some(Hint::ForceShare)
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
            return Err(Error::io(e, LOCK_FAILED)
                .with_hint(Hint::ForceShare)
                .with_path(path));
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
    #[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
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
