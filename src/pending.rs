//! Temporary output files that must not outlive the process.
//!
//! Output files (images, key files) are built under a hidden temporary name
//! beside their destination, `.DST.vhdkit-PID.tmp` (key files add a random
//! suffix: `.DST.vhdkit-PID-XXXXXXXXXXXXXXXX.tmp`), and renamed into place
//! only when complete. This module keeps a process-wide registry of those
//! temporary paths so that:
//!
//! - a signal handler (installed by the `vhdkit` command, see
//!   [`remove_all_and_exit`]) can delete them before the process exits on
//!   SIGINT, SIGTERM or SIGHUP;
//! - a later run can recognise and delete a temporary file left by a process
//!   that was killed outright (SIGKILL, power loss), see [`reclaim_stale`].
//!
//! Every change to the registry, the creation of a registered file and its
//! rename into place happen under one lock, which the signal handler holds
//! from the moment it starts deleting until the process has exited. So a
//! temporary file is either renamed into place (and then no longer
//! registered, never deleted) or deleted (and then never renamed).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The temporary files this process is writing and has not yet renamed
/// into place or deleted.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Marker between the destination's name and the process id in a
/// temporary name: `.NAME` + `TEMP_MARKER` + `PID` + `[-RANDOM]` + `TEMP_SUFFIX`.
pub const TEMP_MARKER: &str = ".vhdkit-";

/// End of every temporary name.
pub const TEMP_SUFFIX: &str = ".tmp";

/// The registry, whatever a panicking holder left in it (a path list has
/// no invariant a panic could break).
fn registry() -> MutexGuard<'static, Vec<PathBuf>> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Register `path` and run `create` (which creates the file) under the
/// registry's lock, so a signal cannot delete the registered name before
/// the file exists and then exit while it is being created. The path stays
/// registered whatever `create` returns; [`discard`] or [`commit`] ends it.
pub fn create<T>(path: &Path, create: impl FnOnce() -> T) -> T {
    let mut reg = registry();
    if !reg.iter().any(|p| p == path) {
        reg.push(path.to_path_buf());
    }
    create()
}

/// Run `rename` (which moves the temporary file `path` into place) under
/// the registry's lock, and deregister `path` if it succeeded.
pub fn commit(path: &Path, rename: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let mut reg = registry();
    let r = rename();
    if r.is_ok() {
        reg.retain(|p| p != path);
    }
    r
}

/// Delete the temporary file `path` (if it exists) and deregister it.
pub fn discard(path: &Path) {
    let mut reg = registry();
    let _ = fs::remove_file(path);
    reg.retain(|p| p != path);
}

/// Deregister `path` without deleting anything (its creation failed: a
/// file already there under that name is not this process's).
pub fn forget(path: &Path) {
    registry().retain(|p| p != path);
}

/// The temporary files currently registered (for tests).
#[cfg(test)]
pub fn registered() -> Vec<PathBuf> {
    registry().clone()
}

/// Delete every registered temporary file and exit with `code`, without
/// releasing the registry's lock: no rename into place can follow the
/// deletion. Meant for a signal-handling thread (not a signal handler
/// proper: it allocates and takes a lock).
pub fn remove_all_and_exit(code: i32) -> ! {
    let reg = registry();
    for p in reg.iter() {
        let _ = fs::remove_file(p);
    }
    match &*IN_PLACE.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(InPlace::Writing(p)) => eprintln!(
            "vhdkit: interrupted while writing onto {}: it may be left partly written (an in-place write cannot be undone)",
            p.display()
        ),
        // Everything was written and synced: the command succeeded, the
        // signal only came before the process could exit.
        Some(InPlace::Done(code)) => std::process::exit(i32::from(*code)),
        Some(InPlace::Changing(p, verb)) => eprintln!(
            "vhdkit: interrupted while {verb} {}: the change is crash safe, so it reads as it did before or as it will after; running the same command again completes it",
            p.display()
        ),
        None => {}
    }
    std::process::exit(code)
}

/// The state of a write in place (`convert --device`).
enum InPlace {
    /// The target is being written (or the write failed): an interrupted
    /// process says it may be left partly written.
    Writing(PathBuf),
    /// The write completed and was synced; the command exits with this
    /// status even when a signal arrives before it could exit.
    Done(u8),
    /// The image is changed in place by a crash-safe command (`verb`, as
    /// in "interrupted while resizing"): an interruption leaves it as
    /// before or after, and a re-run completes it.
    Changing(PathBuf, &'static str),
}

/// The target being written in place, which no clean-up can restore:
/// named by [`remove_all_and_exit`].
static IN_PLACE: Mutex<Option<InPlace>> = Mutex::new(None);

/// Record that `target` is being written in place, so that an interrupted
/// process says it may be left partly written. Stays recorded until
/// [`written_in_place`]: a failed write is left partly written too.
pub fn writing_in_place(target: &Path) {
    *IN_PLACE.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(InPlace::Writing(target.to_path_buf()));
}

/// Record that `target` is being changed in place by a crash-safe command
/// (`verb`: "resizing", "compacting" ...), so that an interrupted process
/// says what state the image is in and how to finish.
pub fn changing_in_place(target: &Path, verb: &'static str) {
    *IN_PLACE.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(InPlace::Changing(target.to_path_buf(), verb));
}

/// Record that the write in place completed and was synced, and that the
/// command's exit status is `code`: a signal from now on exits with it.
pub fn written_in_place(code: u8) {
    *IN_PLACE.lock().unwrap_or_else(|p| p.into_inner()) = Some(InPlace::Done(code));
}

/// The temporary name for a file built by this process for `dest`:
/// `.NAME.vhdkit-PID.tmp` beside it.
pub fn temp_path(dest: &Path) -> PathBuf {
    let name = dest_name(dest, "image");
    dest.with_file_name(format!(
        ".{name}{TEMP_MARKER}{}{TEMP_SUFFIX}",
        std::process::id()
    ))
}

/// The file name of `dest` as text, or `default`.
pub fn dest_name(dest: &Path, default: &str) -> String {
    dest.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| default.into())
}

/// The id of the process that created `file_name`, if it is a temporary
/// name for the destination called `dest_name` (with or without the random
/// suffix key files use).
pub fn temp_owner(file_name: &str, dest_name: &str) -> Option<u32> {
    let rest = file_name
        .strip_prefix('.')?
        .strip_prefix(dest_name)?
        .strip_prefix(TEMP_MARKER)?
        .strip_suffix(TEMP_SUFFIX)?;
    let (pid, random) = match rest.split_once('-') {
        Some((pid, random)) => (pid, Some(random)),
        None => (rest, None),
    };
    if let Some(r) = random
        && (r.is_empty() || !r.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

/// Whether process `pid` certainly no longer exists. Conservative: a
/// process that exists (whatever it runs now) or that cannot be asked
/// about counts as running.
#[cfg(unix)]
#[allow(unsafe_code)] // each unsafe block below carries its SAFETY justification
pub fn process_gone(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks whether the
    // process exists (and whether we may signal it).
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

#[cfg(not(unix))]
pub fn process_gone(_pid: u32) -> bool {
    false
}

/// A temporary file left by a process that no longer runs, deleted by
/// [`reclaim_stale`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// The deleted file.
    pub path: PathBuf,
    /// The process that had created it.
    pub pid: u32,
}

/// Delete the temporary files for `dest` left in its folder by processes
/// that no longer run (killed before they could clean up). Files of this
/// process and of running processes are left alone; a folder that cannot
/// be listed is skipped (the caller's own create then reports it).
pub fn reclaim_stale(dest: &Path) -> Vec<Reclaimed> {
    let name = dest_name(dest, "image");
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let Some(pid) = temp_owner(file_name, &name) else {
            continue;
        };
        // Only regular files: never follow or delete anything else.
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if pid == me || !is_file || !process_gone(pid) {
            continue;
        }
        let path = entry.path();
        // The writer holds a lock on its temporary file for as long as it
        // writes (images: the exclusive lock of every writable open; key
        // files: one taken on creation). A process id that is gone here
        // may be a live writer on another host (NFS, where Linux carries
        // flock to the server) or in another PID namespace: only a file
        // whose lock this process can take is removed, under that lock.
        let Some(_held) = lock_if_unused(&path) else {
            continue;
        };
        if fs::remove_file(&path).is_ok() {
            out.push(Reclaimed { path, pid });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The file at `path` opened and exclusively locked (`flock`), when no one
/// else holds a lock on it; `None` when someone does, or when it cannot be
/// opened or locked at all (left alone: fail closed). A FIFO or other
/// special file put there meanwhile is never waited on.
fn lock_if_unused(path: &Path) -> Option<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let f = o.open(path).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    f.try_lock().ok()?;
    Some(f)
}

/// [`reclaim_stale`], with a note on stderr for each deleted file.
pub fn reclaim_stale_noted(dest: &Path) {
    for r in reclaim_stale(dest) {
        let shown = r
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        eprintln!(
            "vhdkit: note: removed a stale temporary file {shown} left by process {}, \
             which no longer runs",
            r.pid
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_owner_parses_only_our_names() {
        assert_eq!(temp_owner(".a.vhdx.vhdkit-123.tmp", "a.vhdx"), Some(123));
        assert_eq!(
            temp_owner(".k.xml.vhdkit-77-00ff00ff00ff00ff.tmp", "k.xml"),
            Some(77)
        );
        assert_eq!(temp_owner(".a.vhdx.vhdkit-123.tmp", "b.vhdx"), None);
        assert_eq!(temp_owner(".a.vhdx.vhdkit-.tmp", "a.vhdx"), None);
        assert_eq!(temp_owner(".a.vhdx.vhdkit-12x.tmp", "a.vhdx"), None);
        assert_eq!(temp_owner(".a.vhdx.vhdkit-12-zz.tmp", "a.vhdx"), None);
        assert_eq!(temp_owner(".a.vhdx.vhdkit-0.tmp", "a.vhdx"), None);
        assert_eq!(temp_owner("a.vhdx.vhdkit-12.tmp", "a.vhdx"), None);
        assert_eq!(temp_owner(".a.vhdx.vhdkit-12.tmpx", "a.vhdx"), None);
    }

    #[test]
    fn stale_files_of_gone_processes_only() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("x.vhd");
        // A child that has exited and been reaped: its pid is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert!(process_gone(gone));
        assert!(!process_gone(std::process::id()));
        let stale = d.path().join(format!(".x.vhd.vhdkit-{gone}.tmp"));
        let mine = temp_path(&dest);
        let live = d.path().join(".x.vhd.vhdkit-1.tmp"); // init runs
        let other = d.path().join(format!(".y.vhd.vhdkit-{gone}.tmp"));
        for p in [&stale, &mine, &live, &other] {
            fs::write(p, b"x").unwrap();
        }
        let r = reclaim_stale(&dest);
        assert_eq!(
            r,
            vec![Reclaimed {
                path: stale.clone(),
                pid: gone
            }]
        );
        assert!(!stale.exists());
        assert!(mine.exists() && live.exists() && other.exists());

        // A file of a gone pid that someone still holds locked (a writer
        // on another host or in another PID namespace) stays.
        fs::write(&stale, b"x").unwrap();
        let holder = fs::File::open(&stale).unwrap();
        holder.try_lock().unwrap();
        assert_eq!(reclaim_stale(&dest), vec![]);
        assert!(stale.exists());
        holder.unlock().unwrap();
        drop(holder);
        assert_eq!(reclaim_stale(&dest).len(), 1);
        assert!(!stale.exists());
    }

    #[test]
    fn commit_deregisters_discard_removes() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join(".a.tmp");
        let b = d.path().join(".b.tmp");
        create(&a, || fs::write(&a, b"a")).unwrap();
        create(&b, || fs::write(&b, b"b")).unwrap();
        assert!(registered().contains(&a) && registered().contains(&b));
        commit(&a, || fs::rename(&a, d.path().join("a"))).unwrap();
        assert!(!registered().contains(&a));
        discard(&b);
        assert!(!registered().contains(&b));
        assert!(!b.exists());
        assert!(d.path().join("a").exists());
    }
}
