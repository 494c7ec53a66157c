//! Read-only access to the file systems inside a disk: ext2/3/4 (through
//! the `ext4-view` crate), NTFS (`ntfs`) and FAT12/16/32 (`fatfs`).
//!
//! A partition is handed to the crate as a [`Window`]: a bounded
//! `Read + Seek` view of the disk that never reads outside the partition
//! and never writes. The file systems are hostile input: every call into a
//! crate runs under [`std::panic::catch_unwind`] (a crate that panicked is
//! not called again: its state may be half-updated), draws on a read
//! budget (a crate that loops over damaged structures runs out of it), and
//! listings are bounded in entries and depth. Failures become errors that
//! name the partition and the path. A crate that loops without reading
//! (over structures it holds in its own cache) is seen by [`StallWatch`]:
//! the reads and output of crate calls are counted ([`reader_progress`]),
//! and a call that does neither for a while is stuck.

mod ext4;
pub mod extract;
mod fat;
mod ntfs;
mod stall;
mod window;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use crate::error::{Error, ErrorKind, Result};

use stall::{CALLS, WRITING, note_activity};
pub use stall::{STALL_AFTER, StallWatch, reader_progress};
use window::Budget;
pub use window::Window;

/// Entries one directory may list: more is taken for damage (a real
/// directory this large is far beyond what any of these file systems
/// holds in practice) rather than listed until memory runs out.
pub const MAX_DIR_ENTRIES: usize = 1_000_000;

/// Depth of the directories a recursive listing or extract descends:
/// bounds walks through directory loops in damaged file systems (and the
/// stack).
pub const MAX_DEPTH: usize = 128;

/// Entries a recursive listing or extract visits in all: directories that
/// contain themselves (damage) would otherwise multiply the walk.
pub const MAX_WALK_ENTRIES: usize = 5_000_000;

/// Bytes one metadata operation (open, stat, list one directory) may read
/// from the partition: ten times what a directory of [`MAX_DIR_ENTRIES`]
/// needs; a crate that reads in a loop over damaged structures stops here.
pub const META_READ_BUDGET: u64 = 1 << 30;

/// The file system kinds, as found by their signatures
/// ([`crate::partitions::FsInfo`]); these commands read ext2/3/4, NTFS and
/// FAT12/16/32 ([`reader`]).
pub use crate::partitions::FsKind;

/// The crate that reads file systems of `kind` (named in errors about
/// it), or `None` for a kind this module does not read.
pub fn reader(kind: FsKind) -> Option<&'static str> {
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => Some("ext4-view"),
        FsKind::Ntfs => Some("ntfs"),
        FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => Some("fatfs"),
        _ => None,
    }
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (ext2/3/4).
    Symlink,
    /// A device, FIFO, socket, or an NTFS reparse point.
    Other,
}

impl EntryType {
    /// Short lowercase name, used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::File => "file",
            EntryType::Dir => "dir",
            EntryType::Symlink => "symlink",
            EntryType::Other => "other",
        }
    }
}

/// A point in time as seconds and nanoseconds since 1970-01-01 UTC. FAT
/// stores local time without a zone: it is taken as UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mtime {
    /// Whole seconds since the epoch (negative before it).
    pub secs: i64,
    /// Nanoseconds past `secs` (below 1e9).
    pub nanos: u32,
}

/// A named data stream of an NTFS file besides its unnamed one (an
/// alternate data stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// The stream's name.
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
}

/// A directory entry, or what `stat` says of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name in its directory (`/` for the root).
    pub name: String,
    /// What it is.
    pub kind: EntryType,
    /// Length of its data in bytes (of the unnamed stream on NTFS; 0 for a
    /// directory).
    pub size: u64,
    /// Last modification of its data, if the file system records it.
    pub mtime: Option<Mtime>,
    /// Permission bits (`0o7777` of the mode), on ext2/3/4.
    pub mode: Option<u32>,
    /// A symbolic link's target, as stored.
    pub target: Option<String>,
    /// Named data streams (NTFS).
    pub streams: Vec<Stream>,
    /// The name's bytes as stored when they are not UTF-8 (ext2/3/4 names
    /// are any bytes): `name` then shows them with U+FFFD in place of
    /// what is not UTF-8, and still finds the entry in paths given to
    /// this module (unless two names of the directory show alike).
    pub raw_name: Option<Vec<u8>>,
    /// An identity of the directory or file within the file system, where
    /// the crate gives one (MFT record, first cluster): finds loops.
    pub(crate) id: Option<u64>,
}

/// First character of a path component that names an entry by its stored
/// bytes (in hexadecimal after it): no file-system name holds NUL, so it
/// never stands for a name as written.
const RAW_COMPONENT: char = '\0';

/// The stored bytes a component made by [`Entry::component`] names, when
/// `c` is one.
pub(crate) fn raw_component(c: &str) -> Option<Vec<u8>> {
    let hex = c.strip_prefix(RAW_COMPONENT)?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Entry {
    /// The path component that finds this entry in its directory: its
    /// name, or for a name that is not UTF-8 its stored bytes (two such
    /// names may show alike).
    pub(crate) fn component(&self) -> String {
        match &self.raw_name {
            Some(raw) => {
                let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                format!("{RAW_COMPONENT}{hex}")
            }
            None => self.name.clone(),
        }
    }

    pub(crate) fn new(name: String, kind: EntryType) -> Entry {
        Entry {
            name,
            kind,
            size: 0,
            mtime: None,
            mode: None,
            target: None,
            streams: Vec::new(),
            raw_name: None,
            id: None,
        }
    }
}

/// Why an operation on one file system failed, before the partition and
/// path are added.
#[derive(Debug)]
pub(crate) enum FsError {
    /// No entry of that name.
    NotFound,
    /// A path component (or the path of `list`) is not a directory.
    NotADir,
    /// `read_file` of a directory.
    IsADir,
    /// `read_file` of something that has no data to read (a device...).
    NotAFile,
    /// No data stream of that name.
    NoStream(String),
    /// More entries than a bound allows.
    TooMany(&'static str, usize),
    /// Reading the disk failed (the library's own error).
    Disk(Error),
    /// The read budget was spent.
    Budget,
    /// Writing the file's data to the caller's sink failed.
    Output(io::Error),
    /// The crate refused the structures it read.
    Crate(String),
}

impl FsError {
    /// A crate's I/O error: the disk's error or a spent budget when it
    /// is one, otherwise the crate's message.
    fn from_io(e: io::Error) -> FsError {
        if e.get_ref().is_some_and(|i| window::is_budget_spent(i)) {
            return FsError::Budget;
        }
        match window::into_disk_error(e) {
            Ok(d) => FsError::Disk(d),
            Err(e) => FsError::Crate(e.to_string()),
        }
    }
}

/// The small trait each file system implements; paths are lists of
/// components below the root.
pub(crate) trait FileSystem {
    /// What `path` is.
    fn stat(&mut self, path: &[String]) -> Result<Entry, FsError>;
    /// The entries of directory `path`, without `.` and `..`; more than
    /// `max` is [`FsError::TooMany`].
    fn list(&mut self, path: &[String], max: usize) -> Result<Vec<Entry>, FsError>;
    /// Write the data of file `path` (of its named `stream`, on NTFS) to
    /// `out`; returns the bytes written.
    fn read_file(
        &mut self,
        path: &[String],
        stream: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<u64, FsError>;
}

/// The components of `path` below the root: empty and `.` components are
/// dropped, `..` goes up (never above the root).
pub fn split_path(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    out
}

/// `components` as an absolute path, for messages.
fn show(components: &[String]) -> String {
    format!("/{}", components.join("/"))
}

/// The file system this module reads found by its signature at the start
/// of `w` (as `vhdkit partitions` finds it), if any.
pub fn detect(w: &Window) -> Option<FsKind> {
    let found = crate::partitions::probe(w.disk(), w.start(), w.len()).ok()??;
    reader(found.kind).map(|_| found.kind)
}

thread_local! {
    /// Whether this thread is inside a guarded crate call (its panics are
    /// caught and reported as errors, not printed).
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// The message of the last panic caught in a guarded call.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Install (once) a panic hook that keeps quiet about panics inside
/// guarded calls, and hands every other panic to the hook before it.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let msg = match info.location() {
                    Some(l) => format!("{} at {}:{}", payload(info.payload()), l.file(), l.line()),
                    None => payload(info.payload()),
                };
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(msg));
            } else {
                previous(info);
            }
        }));
    });
}

/// The text of a panic's payload.
fn payload(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic".to_string()
    }
}

/// Run `f` (a call into a crate), turning a panic into `Err(message)`.
///
/// The crate's state is not trusted after a panic: callers drop it (see
/// [`Volume`]'s `poisoned`), which is what makes `AssertUnwindSafe` sound
/// here.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    install_panic_hook();
    let was = GUARDED.with(|g| g.replace(true));
    CALLS.fetch_add(1, Ordering::Relaxed);
    note_activity();
    let r = catch_unwind(AssertUnwindSafe(f));
    CALLS.fetch_sub(1, Ordering::Relaxed);
    GUARDED.with(|g| g.set(was));
    r.map_err(|p| {
        LAST_PANIC
            .with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| payload(p.as_ref()))
    })
}

/// What [`Volume::walk`] calls for each entry: the volume, the names of
/// the entry's path relative to the walked directory, and the entry.
pub type Visit<'a> = dyn FnMut(&mut Volume, &[String], &Entry) -> Result<()> + 'a;

/// The path below the walked directory during [`Volume::walk`]: names as
/// shown, and the components that find them ([`Entry::component`]).
#[derive(Default)]
struct Walked {
    names: Vec<String>,
    keys: Vec<String>,
}

/// An opened file system inside a partition (or a whole disk).
pub struct Volume {
    fs: Option<Box<dyn FileSystem>>,
    kind: FsKind,
    what: String,
    budget: Budget,
    window_len: u64,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("kind", &self.kind)
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl Volume {
    /// Open the file system in `window`, found by its signature; `what`
    /// names the partition in errors ("partition 2", "the disk").
    pub fn open(window: Window, what: &str) -> Result<Volume> {
        // A read that fails (a truncated image) is said as such, not taken
        // for a missing file system.
        let found = crate::partitions::probe(window.disk(), window.start(), window.len())
            .map_err(|e| e.with_note(&format!(" (reading {what})")))?;
        let kind = found
            .as_ref()
            .map(|f| f.kind)
            .filter(|&k| reader(k).is_some())
            .ok_or_else(|| {
                let found = match &found {
                    Some(f) => format!(
                        "it holds {}, which these commands do not read",
                        f.kind.as_str()
                    ),
                    None => "no signature at its start".to_string(),
                };
                Error::new(
                    ErrorKind::Unsupported,
                    format!("{what}: no ext2/3/4, NTFS or FAT file system found ({found})"),
                )
            })?;
        Volume::open_as(window, what, kind)
    }

    /// Open `window` as a file system of `kind`.
    pub fn open_as(window: Window, what: &str, kind: FsKind) -> Result<Volume> {
        let budget = window.budget();
        let window_len = window.len();
        let mut v = Volume {
            fs: None,
            kind,
            what: what.to_string(),
            budget,
            window_len,
        };
        v.budget.set(META_READ_BUDGET);
        let opened = guarded(|| -> Result<(Box<dyn FileSystem>, FsKind), FsError> {
            Ok(match kind {
                FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => {
                    (Box::new(ext4::Ext4Fs::open(window)?), kind)
                }
                FsKind::Ntfs => (Box::new(ntfs::NtfsFs::open(window)?), kind),
                FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => {
                    let (fs, kind) = fat::FatFs::open(window)?;
                    (Box::new(fs), kind)
                }
                other => {
                    return Err(FsError::Crate(format!(
                        "{} file systems are not read by this tool (ext2/3/4, NTFS and FAT are)",
                        other.as_str()
                    )));
                }
            })
        });
        match opened {
            Ok(Ok((fs, kind))) => {
                v.fs = Some(fs);
                v.kind = kind;
                Ok(v)
            }
            Ok(Err(e)) => Err(v.error("", e)),
            Err(panic) => Err(v.panicked("", panic)),
        }
    }

    /// The file system's kind.
    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// What `path` is (not following a final symbolic link).
    pub fn stat(&mut self, path: &str) -> Result<Entry> {
        let p = split_path(path);
        self.call(&p, META_READ_BUDGET, |fs| fs.stat(&p))
    }

    /// The entries of directory `path`, sorted by name.
    pub fn list(&mut self, path: &str) -> Result<Vec<Entry>> {
        let p = split_path(path);
        self.list_components(&p)
    }

    /// [`Volume::list`] of the directory at `components` below the root.
    pub fn list_components(&mut self, p: &[String]) -> Result<Vec<Entry>> {
        let mut v = self.call(p, META_READ_BUDGET, |fs| fs.list(p, MAX_DIR_ENTRIES))?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Write the data of file `path` to `out` (a named NTFS data stream
    /// with `stream`); returns the bytes written. The crate may read at
    /// most the partition's length plus [`META_READ_BUDGET`] for it.
    pub fn read_file(
        &mut self,
        path: &str,
        stream: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<u64> {
        self.read_components(&split_path(path), stream, out)
    }

    /// [`Volume::read_file`] of the file at `components` below the root
    /// (names as listed, taken as they are).
    pub fn read_components(
        &mut self,
        components: &[String],
        stream: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<u64> {
        let budget = self.window_len.saturating_add(META_READ_BUDGET);
        self.call(components, budget, |fs| {
            fs.read_file(components, stream, out)
        })
    }

    /// Visit every entry below directory `path`, depth first in name
    /// order, with the names of its path relative to `path`; a directory is
    /// visited before its entries. Bounded by [`MAX_DEPTH`] and
    /// [`MAX_WALK_ENTRIES`]; a directory met twice (a loop) is an error.
    pub fn walk(&mut self, path: &str, visit: &mut Visit<'_>) -> Result<()> {
        let base = split_path(path);
        let mut seen = HashSet::new();
        let mut count = 0usize;
        let mut rel = Walked::default();
        self.walk_dir(&base, &mut rel, &mut seen, &mut count, visit)
    }

    fn walk_dir(
        &mut self,
        base: &[String],
        rel: &mut Walked,
        seen: &mut HashSet<u64>,
        count: &mut usize,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        let full: Vec<String> = base.iter().chain(rel.keys.iter()).cloned().collect();
        let shown = |rel: &Walked| -> String {
            show(
                &base
                    .iter()
                    .chain(rel.names.iter())
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        };
        if rel.names.len() >= MAX_DEPTH {
            return Err(self.error(&shown(rel), FsError::TooMany("directory depth", MAX_DEPTH)));
        }
        for e in self.list_components(&full)? {
            *count += 1;
            if *count > MAX_WALK_ENTRIES {
                return Err(self.error(
                    &shown(rel),
                    FsError::TooMany("entries in a recursive walk", MAX_WALK_ENTRIES),
                ));
            }
            rel.names.push(e.name.clone());
            rel.keys.push(e.component());
            visit(self, &rel.names, &e)?;
            if e.kind == EntryType::Dir {
                if let Some(id) = e.id
                    && !seen.insert(id)
                {
                    return Err(self.error(
                        &shown(rel),
                        FsError::Crate(
                            "this directory was already listed: the directory tree has a loop"
                                .into(),
                        ),
                    ));
                }
                self.walk_dir(base, rel, seen, count, visit)?;
            }
            rel.names.pop();
            rel.keys.pop();
        }
        Ok(())
    }

    /// Run `f` on the file system with `budget` bytes of reads, catching
    /// panics (after one, the file system is closed) and naming the
    /// partition and path in errors.
    fn call<T>(
        &mut self,
        path: &[String],
        budget: u64,
        f: impl FnOnce(&mut dyn FileSystem) -> Result<T, FsError>,
    ) -> Result<T> {
        let shown = show(path);
        let Some(fs) = self.fs.as_mut() else {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{}: the {} file system is no longer read after an earlier failure of its reader",
                    self.what,
                    self.kind.as_str()
                ),
            ));
        };
        self.budget.set(budget);
        let r = guarded(|| f(fs.as_mut()));
        self.budget.set(u64::MAX);
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(&shown, e)),
            Err(panic) => {
                self.fs = None;
                Err(self.panicked(&shown, panic))
            }
        }
    }

    /// The error for a panic of the crate while reading `path`.
    fn panicked(&self, path: &str, panic: String) -> Error {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "{}: {} file system{}: its reader ({}) failed on damaged structures: {panic}",
                self.what,
                self.kind.as_str(),
                at(path),
                reader(self.kind).unwrap_or("no reader")
            ),
        )
    }

    /// `e` as a library error naming the partition and `path`.
    fn error(&self, path: &str, e: FsError) -> Error {
        let fs = self.kind.as_str();
        let what = &self.what;
        let at = at(path);
        match e {
            FsError::NotFound => Error::invalid_argument(format!(
                "{what}: {fs} file system{at}: no such file or directory"
            )),
            FsError::NotADir => {
                Error::invalid_argument(format!("{what}: {fs} file system{at}: not a directory"))
            }
            FsError::IsADir => {
                Error::invalid_argument(format!("{what}: {fs} file system{at}: is a directory"))
            }
            FsError::NotAFile => Error::invalid_argument(format!(
                "{what}: {fs} file system{at}: not a regular file (no data to read)"
            )),
            FsError::NoStream(s) => Error::invalid_argument(format!(
                "{what}: {fs} file system{at}: no data stream named {s:?}"
            )),
            FsError::TooMany(thing, max) => Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{what}: {fs} file system{at}: more {thing} than the bound of {max}; the file system is damaged (or larger than this tool reads)"
                ),
            ),
            FsError::Disk(d) => d.with_note(&format!(" (reading {what}, {fs} file system{at})")),
            FsError::Budget => Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{what}: {fs} file system{at}: its reader read more than this operation's bound without finishing; the file system is damaged (a loop in its structures)"
                ),
            ),
            FsError::Output(o) => {
                Error::io(o, format!("writing the data of {}", path_or_root(path)))
            }
            FsError::Crate(m) => Error::new(
                ErrorKind::Corrupt,
                format!("{what}: {fs} file system{at}: {m}"),
            ),
        }
    }
}

/// ", at PATH" for messages (nothing for the opening of the file system).
fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(", {path}")
    }
}

fn path_or_root(path: &str) -> &str {
    if path.is_empty() { "/" } else { path }
}

/// Bytes a file's data is copied in at a time.
const COPY_BUFFER: usize = 1 << 20;

/// A writer that counts bytes and maps its failures to
/// [`FsError::Output`] (the crates' reads and the sink's writes fail
/// apart).
pub(crate) fn copy_to(
    mut read: impl FnMut(&mut [u8]) -> Result<usize, FsError>,
    out: &mut dyn Write,
    limit: u64,
) -> Result<u64, FsError> {
    // As large as the file (at least a byte, to see data past its end),
    // at most COPY_BUFFER: a small file costs no large zeroed buffer.
    let mut buf = vec![0u8; limit.clamp(1, COPY_BUFFER as u64) as usize];
    let mut total = 0u64;
    loop {
        let n = read(&mut buf)?;
        if n == 0 {
            // A data chain or run list shorter than the recorded length
            // (damage) is never passed off as the whole file.
            if total < limit {
                return Err(FsError::Crate(format!(
                    "the file's data ends after {total} bytes, before its recorded length of \
                     {limit} bytes (its cluster chain or data runs are damaged)"
                )));
            }
            return Ok(total);
        }
        total += n as u64;
        if total > limit {
            return Err(FsError::Crate(format!(
                "the file's data runs past its recorded length of {limit} bytes"
            )));
        }
        WRITING.fetch_add(1, Ordering::Relaxed);
        let w = out.write_all(&buf[..n]);
        WRITING.fetch_sub(1, Ordering::Relaxed);
        note_activity();
        w.map_err(FsError::Output)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_and_never_climb_above_the_root() {
        assert_eq!(split_path("/a//b/./c/"), ["a", "b", "c"]);
        assert_eq!(split_path("/../../x/../y"), ["y"]);
        assert!(split_path("/").is_empty());
    }

    #[test]
    fn guarded_turns_panics_into_errors() {
        let r: std::result::Result<(), String> = guarded(|| panic!("boom {}", 7));
        assert!(r.unwrap_err().contains("boom 7"));
        assert_eq!(guarded(|| 5).unwrap(), 5);
    }
}
