//! Copying a file or a directory tree out of a [`Volume`] onto the host.
//!
//! Every file is written under a temporary name beside its destination and
//! renamed into place without replacing anything; modification times are
//! kept, and on ext2/3/4 permission bits (without set-id and sticky bits)
//! and symbolic links too. Names from the file system are hostile input:
//! one that is empty, `.`, `..` or contains `/` or NUL is refused, and only
//! directories this extract created itself are written into, so nothing
//! lands outside the destination.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Entry, EntryType, Mtime, Volume, split_path};
use crate::error::{Error, ErrorKind, Result};
use crate::pending;

/// Permission bits kept from the file system: set-user-ID, set-group-ID
/// and sticky bits from an image are not given to extracted files.
const MODE_BITS: u32 = 0o777;

/// What an extract wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExtractReport {
    /// Regular files written.
    pub files: u64,
    /// Directories created (the destination included, when created).
    pub dirs: u64,
    /// Symbolic links created.
    pub symlinks: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Entries not extracted (devices, FIFOs, sockets, reparse points),
    /// as paths relative to the extracted directory.
    pub skipped: Vec<String>,
}

/// Extract `path` of `vol` to `dest`.
///
/// A file (or symbolic link) goes to `dest`, or into `dest` under its own
/// name when `dest` is an existing directory; an existing file is never
/// replaced. A directory's entries go into `dest`, which is created, or
/// must be an empty directory.
pub fn extract(vol: &mut Volume, path: &str, dest: &Path) -> Result<ExtractReport> {
    let top = vol.stat(path)?;
    let components = split_path(path);
    let mut report = ExtractReport::default();
    match top.kind {
        EntryType::Dir => {
            let created = match fs::symlink_metadata(dest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(dest).map_err(|e| out_err(e, "creating", dest))?;
                    true
                }
                Err(e) => return Err(out_err(e, "reading", dest)),
                Ok(m) if m.is_dir() => {
                    let mut it = fs::read_dir(dest).map_err(|e| out_err(e, "reading", dest))?;
                    if it.next().is_some() {
                        return Err(Error::invalid_argument(format!(
                            "{}: the destination directory is not empty",
                            dest.display()
                        )));
                    }
                    false
                }
                Ok(_) => {
                    return Err(Error::invalid_argument(format!(
                        "{}: exists and is not a directory",
                        dest.display()
                    )));
                }
            };
            report.dirs += u64::from(created);
            let mut dirs: Vec<(PathBuf, Entry)> = vec![(dest.to_path_buf(), top.clone())];
            // The host folder of each directory level being walked (the
            // walk visits a directory before its entries), so that names
            // keep their stored bytes (see `host_name`).
            let mut folders: Vec<PathBuf> = vec![dest.to_path_buf()];
            // The components that find each level (a name that is not
            // UTF-8 by its stored bytes: see `Entry::component`).
            let mut keys: Vec<String> = Vec::new();
            vol.walk(path, &mut |vol, rel, e| {
                folders.truncate(rel.len());
                keys.truncate(rel.len() - 1);
                keys.push(e.component());
                let folder = folders.last().expect("the destination is the first folder");
                let target = folder.join(host_name(e)?);
                match e.kind {
                    EntryType::Dir => {
                        fs::create_dir(&target).map_err(|x| out_err(x, "creating", &target))?;
                        report.dirs += 1;
                        dirs.push((target.clone(), e.clone()));
                        folders.push(target);
                    }
                    EntryType::File => {
                        let full: Vec<String> =
                            components.iter().chain(keys.iter()).cloned().collect();
                        report.bytes += write_file(vol, &full, e, &target)?;
                        report.files += 1;
                    }
                    EntryType::Symlink => {
                        write_symlink(e, &target)?;
                        report.symlinks += 1;
                    }
                    EntryType::Other => report.skipped.push(rel.join("/")),
                }
                Ok(())
            })?;
            // Children first: setting a directory's time before writing
            // into it would be undone, and a mode without write
            // permission would stop the writing.
            for (dir, e) in dirs.iter().rev() {
                set_dir_attributes(dir, e)?;
            }
        }
        EntryType::File | EntryType::Symlink => {
            let target = match fs::metadata(dest) {
                Ok(m) if m.is_dir() => {
                    if components.is_empty() {
                        return Err(Error::invalid_argument("the root is a directory"));
                    }
                    dest.join(host_name(&top)?)
                }
                _ => dest.to_path_buf(),
            };
            if top.kind == EntryType::File {
                report.bytes += write_file(vol, &components, &top, &target)?;
                report.files += 1;
            } else {
                write_symlink(&top, &target)?;
                report.symlinks += 1;
            }
        }
        EntryType::Other => {
            return Err(Error::invalid_argument(format!(
                "{path}: not a file, directory or symbolic link (a device, FIFO, socket or reparse point): nothing to extract"
            )));
        }
    }
    Ok(report)
}

/// A name from the file system that is safe as one component of a host
/// path below the destination.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "refusing the entry name {name:?}: as a path it would not stay inside the destination"
            ),
        ));
    }
    Ok(())
}

/// The name `e` gets on this system, checked: its stored bytes where
/// they are not UTF-8 (on Unix, where a name is any bytes), else its name.
fn host_name(e: &Entry) -> Result<std::ffi::OsString> {
    check_name(&e.name)?;
    #[cfg(unix)]
    if let Some(raw) = &e.raw_name {
        use std::os::unix::ffi::OsStrExt;
        let bad = raw.is_empty() || raw == b"." || raw == b".." || raw.contains(&b'/');
        if bad || raw.contains(&0) {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "refusing the entry name {:?}: as a path it would not stay inside the destination",
                    e.name
                ),
            ));
        }
        return Ok(std::ffi::OsStr::from_bytes(raw).to_os_string());
    }
    Ok(e.name.clone().into())
}

fn out_err(e: io::Error, doing: &str, path: &Path) -> Error {
    Error::io(e, format!("{doing} {}", path.display()))
}

fn system_time(t: Mtime) -> Option<SystemTime> {
    let nanos = Duration::from_nanos(u64::from(t.nanos));
    if t.secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(t.secs as u64) + nanos)
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(Duration::from_secs(t.secs.unsigned_abs()))?
            .checked_add(nanos)
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match mode {
        Some(m) => fs::set_permissions(path, fs::Permissions::from_mode(m & MODE_BITS)),
        None => Ok(()),
    }
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: Option<u32>) -> io::Result<()> {
    Ok(())
}

/// Write the data of the file at `components` to `target` through a
/// temporary name; returns its length.
fn write_file(vol: &mut Volume, components: &[String], e: &Entry, target: &Path) -> Result<u64> {
    let tmp = pending::temp_path(target);
    let file = pending::create(&tmp, || {
        OpenOptions::new().write(true).create_new(true).open(&tmp)
    });
    let file = match file {
        Ok(f) => f,
        Err(x) => {
            pending::forget(&tmp);
            return Err(out_err(x, "creating", &tmp));
        }
    };
    let r = (|| -> Result<u64> {
        // Small reads of the crate are gathered before the zero test.
        let cap = e.size.clamp(SPARSE_PIECE as u64, 1 << 20) as usize;
        let mut out = BufWriter::with_capacity(cap, Sparse { file, pos: 0 });
        let n = vol.read_components(components, None, &mut out)?;
        let file = out
            .into_inner()
            .map_err(|x| out_err(x.into_error(), "writing", &tmp))?
            .finish()
            .map_err(|x| out_err(x, "writing", &tmp))?;
        if let Some(t) = e.mtime.and_then(system_time) {
            file.set_modified(t)
                .map_err(|x| out_err(x, "setting the time of", &tmp))?;
        }
        drop(file);
        set_mode(&tmp, e.mode).map_err(|x| out_err(x, "setting the mode of", &tmp))?;
        pending::commit(&tmp, || crate::io::rename_into_place(&tmp, target, false))
            .map_err(|x| out_err(x, "renaming into place", target))?;
        Ok(n)
    })();
    if r.is_err() {
        pending::discard(&tmp);
    }
    r
}

/// Pieces of an extracted file that are all zeros are not written: they
/// stay holes (a sparse file is not made dense on the way out).
const SPARSE_PIECE: usize = 64 << 10;

/// A file written with the zero pieces of its data left as holes.
struct Sparse {
    file: File,
    pos: u64,
}

impl Write for Sparse {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Runs of pieces holding data are written at once.
        let mut run: Option<usize> = None;
        let mut at = 0;
        for piece in buf.chunks(SPARSE_PIECE) {
            let zero = piece.iter().all(|&b| b == 0);
            match (zero, run) {
                (false, None) => run = Some(at),
                (true, Some(start)) => {
                    self.write_run(&buf[start..at])?;
                    run = None;
                }
                _ => {}
            }
            at += piece.len();
            if zero {
                self.pos += piece.len() as u64;
            }
        }
        if let Some(start) = run {
            self.write_run(&buf[start..])?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Sparse {
    /// Write `data` at the current position.
    fn write_run(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        self.file.write_all(data)?;
        self.pos += data.len() as u64;
        Ok(())
    }

    /// Give the file its whole length (a hole at its end too).
    fn finish(self) -> io::Result<File> {
        self.file.set_len(self.pos)?;
        Ok(self.file)
    }
}

/// Create symbolic link `target` as `e` says (through a temporary name).
#[cfg(unix)]
fn write_symlink(e: &Entry, target: &Path) -> Result<()> {
    let link = e.target.as_deref().unwrap_or_default();
    let tmp = pending::temp_path(target);
    let made = pending::create(&tmp, || std::os::unix::fs::symlink(link, &tmp));
    if let Err(x) = made {
        pending::forget(&tmp);
        return Err(out_err(x, "creating", &tmp));
    }
    // The link's own time (the rename keeps it), never its target's.
    if let Some(t) = e.mtime.and_then(system_time) {
        let t = filetime::FileTime::from_system_time(t);
        if let Err(x) = filetime::set_symlink_file_times(&tmp, t, t) {
            pending::discard(&tmp);
            return Err(out_err(x, "setting the time of", &tmp));
        }
    }
    pending::commit(&tmp, || crate::io::rename_into_place(&tmp, target, false)).map_err(|x| {
        pending::discard(&tmp);
        out_err(x, "renaming into place", target)
    })
}

#[cfg(not(unix))]
fn write_symlink(_e: &Entry, target: &Path) -> Result<()> {
    Err(Error::new(
        ErrorKind::Unsupported,
        format!(
            "{}: symbolic links are not extracted on this system",
            target.display()
        ),
    ))
}

/// Give directory `dir` the time and mode of `e`.
fn set_dir_attributes(dir: &Path, e: &Entry) -> Result<()> {
    if let Some(t) = e.mtime.and_then(system_time) {
        File::open(dir)
            .and_then(|f| f.set_modified(t))
            .map_err(|x| out_err(x, "setting the time of", dir))?;
    }
    set_mode(dir, e.mode).map_err(|x| out_err(x, "setting the mode of", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in ["", ".", "..", "a/b", "/", "x\0y"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("...").unwrap();
        let named = |name: &str, raw: Option<&[u8]>| {
            let mut e = Entry::new(name.to_string(), EntryType::File);
            e.raw_name = raw.map(<[u8]>::to_vec);
            host_name(&e)
        };
        assert!(named("..", None).is_err());
        assert_eq!(named("b c", None).unwrap(), "b c");
        assert!(named("a\u{FFFD}", Some(b"a/\xff")).is_err());
        assert!(named("\u{FFFD}", Some(b"\xff\0")).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let n = named("a\u{FFFD}", Some(b"a\xff")).unwrap();
            assert_eq!(n.as_bytes(), b"a\xff");
        }
    }

    #[test]
    fn zero_pieces_stay_holes_and_the_content_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut want = vec![0u8; 5 * SPARSE_PIECE + 100];
        want[SPARSE_PIECE + 7] = 1;
        want[2 * SPARSE_PIECE..3 * SPARSE_PIECE].fill(2);
        let mut w = Sparse {
            file: File::create(&path).unwrap(),
            pos: 0,
        };
        // In uneven writes, ending in zeros (a hole at the end).
        for part in want.chunks(SPARSE_PIECE * 3 / 2) {
            w.write_all(part).unwrap();
        }
        drop(w.finish().unwrap());
        assert_eq!(fs::read(&path).unwrap(), want);
    }

    #[test]
    fn times_before_the_epoch_convert() {
        let t = system_time(Mtime {
            secs: -10,
            nanos: 5,
        })
        .unwrap();
        assert_eq!(
            SystemTime::UNIX_EPOCH.duration_since(t).unwrap(),
            Duration::from_secs(10) - Duration::from_nanos(5)
        );
    }
}
