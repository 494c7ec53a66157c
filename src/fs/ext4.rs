//! ext2/3/4 through the `ext4-view` crate.

use std::io::Write;

use ext4_view::{Ext4, Ext4Error, FileType, Metadata};

use super::{Entry, EntryType, FsError, Mtime, Window, copy_to};

/// Byte offset of the superblock in the file system.
const SUPERBLOCK: usize = 1024;
/// `s_feature_incompat`: block numbers are 64 bits (`s_blocks_count_hi` counts).
const INCOMPAT_64BIT: u32 = 0x80;
/// Largest `s_log_block_size`: 64 KiB blocks.
const MAX_LOG_BLOCK_SIZE: u32 = 6;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The bytes the superblock says the file system spans: refused when the
/// partition is shorter (truncated) before the crate sizes anything on it.
fn check_size(w: &Window) -> Result<(), FsError> {
    let mut sb = vec![0u8; 1024];
    w.read_exact_at(&mut sb, SUPERBLOCK as u64)
        .map_err(FsError::from_io)?;
    let log = le32(&sb, 0x18);
    if log > MAX_LOG_BLOCK_SIZE {
        return Err(FsError::Crate(format!(
            "superblock: s_log_block_size {log} is over {MAX_LOG_BLOCK_SIZE} (blocks of at most 64 KiB)"
        )));
    }
    let mut blocks = u64::from(le32(&sb, 0x4));
    if le32(&sb, 0x60) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(le32(&sb, 0x150)) << 32;
    }
    let bytes = u128::from(blocks) << (10 + log);
    if bytes > u128::from(w.len()) {
        return Err(FsError::Crate(format!(
            "superblock: the file system spans {bytes} bytes ({blocks} blocks of {}), but the partition holds {} bytes (truncated?)",
            1u64 << (10 + log),
            w.len()
        )));
    }
    Ok(())
}

pub(super) struct Ext4Fs {
    fs: Ext4,
}

impl Ext4Fs {
    pub(super) fn open(w: Window) -> Result<Ext4Fs, FsError> {
        check_size(&w)?;
        let fs = Ext4::load(Box::new(w)).map_err(err)?;
        Ok(Ext4Fs { fs })
    }

    /// The entry for `path` whose metadata is `m`.
    fn entry(&self, name: String, path: &[u8], m: &Metadata) -> Result<Entry, FsError> {
        let kind = match m.file_type() {
            FileType::Regular => EntryType::File,
            FileType::Directory => EntryType::Dir,
            FileType::Symlink => EntryType::Symlink,
            _ => EntryType::Other,
        };
        let mut e = Entry::new(name, kind);
        e.size = if kind == EntryType::Dir { 0 } else { m.len() };
        let t = m.modified();
        e.mtime = Some(Mtime {
            secs: t.seconds(),
            nanos: t.nanoseconds(),
        });
        e.mode = Some(u32::from(m.mode()) & 0o7777);
        if kind == EntryType::Symlink {
            let target = self.fs.read_link(path).map_err(err)?;
            e.target = Some(target.display().to_string());
        }
        Ok(e)
    }
}

/// What a name that is not UTF-8 shows in place of its bad bytes.
const REPLACEMENT: char = '\u{FFFD}';

impl Ext4Fs {
    /// The crate's path (bytes) for `components`. A component showing
    /// U+FFFD may stand for a stored name that is not UTF-8 (as
    /// [`Entry::name`] shows it): it is looked up in its directory and
    /// its stored bytes taken, unless it is stored as it is written.
    fn path(&self, components: &[String]) -> Result<Vec<u8>, FsError> {
        let mut p = Vec::new();
        for c in components {
            if let Some(raw) = super::raw_component(c) {
                p.push(b'/');
                p.extend_from_slice(&raw);
                continue;
            }
            let exact = {
                let mut q = p.clone();
                q.push(b'/');
                q.extend_from_slice(c.as_bytes());
                q
            };
            if !c.contains(REPLACEMENT) || self.fs.exists(exact.as_slice()).map_err(err)? {
                p = exact;
                continue;
            }
            let dir: &[u8] = if p.is_empty() { b"/" } else { &p };
            let mut found: Option<Vec<u8>> = None;
            for de in self.fs.read_dir(dir).map_err(err)? {
                let de = de.map_err(err)?;
                if de.file_name().display().to_string() != *c {
                    continue;
                }
                if found.is_some() {
                    return Err(FsError::Crate(format!(
                        "two names in the directory read {c:?} once the bytes that are not \
                         UTF-8 are shown as U+FFFD; this tool cannot tell them apart"
                    )));
                }
                found = Some(de.file_name().as_ref().to_vec());
            }
            let name = found.ok_or(FsError::NotFound)?;
            p.push(b'/');
            p.extend_from_slice(&name);
        }
        if p.is_empty() {
            p.push(b'/');
        }
        Ok(p)
    }
}

/// The crate's error as ours.
fn err(e: Ext4Error) -> FsError {
    match e {
        Ext4Error::NotFound => FsError::NotFound,
        Ext4Error::NotADirectory => FsError::NotADir,
        Ext4Error::IsADirectory => FsError::IsADir,
        Ext4Error::IsASpecialFile => FsError::NotAFile,
        Ext4Error::Io(b) => match b.downcast::<std::io::Error>() {
            Ok(io) => FsError::from_io(*io),
            Err(b) => FsError::Crate(b.to_string()),
        },
        e => FsError::Crate(e.to_string()),
    }
}

impl super::FileSystem for Ext4Fs {
    fn stat(&mut self, components: &[String]) -> Result<Entry, FsError> {
        let p = self.path(components)?;
        let m = self.fs.symlink_metadata(p.as_slice()).map_err(err)?;
        let name = components.last().cloned().unwrap_or_else(|| "/".into());
        let mut e = self.entry(name, &p, &m)?;
        let stored = p.rsplit(|&b| b == b'/').next().unwrap_or_default();
        if std::str::from_utf8(stored).is_err() {
            e.raw_name = Some(stored.to_vec());
        }
        Ok(e)
    }

    fn list(&mut self, components: &[String], max: usize) -> Result<Vec<Entry>, FsError> {
        let p = self.path(components)?;
        let mut out = Vec::new();
        for de in self.fs.read_dir(p.as_slice()).map_err(err)? {
            let de = de.map_err(err)?;
            let raw = de.file_name();
            if raw == b"." || raw == b".." {
                continue;
            }
            if out.len() == max {
                return Err(FsError::TooMany("entries in one directory", max));
            }
            let m = de.metadata().map_err(err)?;
            let child = de.path();
            let mut e = self.entry(raw.display().to_string(), child.as_ref(), &m)?;
            if raw.as_str().is_err() {
                e.raw_name = Some(raw.as_ref().to_vec());
            }
            out.push(e);
        }
        Ok(out)
    }

    fn read_file(
        &mut self,
        components: &[String],
        stream: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<u64, FsError> {
        if let Some(s) = stream {
            return Err(FsError::NoStream(s.to_string()));
        }
        let p = self.path(components)?;
        let mut f = self.fs.open(p.as_slice()).map_err(err)?;
        let len = f.metadata().len();
        copy_to(|buf| f.read_bytes(buf).map_err(err), out, len)
    }
}
