//! FAT12/16/32 through the `fatfs` crate.
//!
//! `fatfs` asks for a writable stream; the window refuses every write, so
//! the flags it would update on unmount are never written. It reads 32
//! bytes at a time (a directory entry): a [`Cached`] window serves those.

use std::io::{Read, Write};

use fatfs::{Dir, FatType, FileSystem, FsOptions};

use super::window::Cached;
use super::{Entry, EntryType, FsError, FsKind, Mtime, Window, copy_to};

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Bytes per sector in the BPB, if it is one FAT allows.
fn sector_size(boot: &[u8]) -> Option<u64> {
    let s = le16(boot, 11);
    (matches!(s, 512 | 1024 | 2048 | 4096)).then_some(u64::from(s))
}

/// The bytes the BPB says the volume spans against the partition's.
fn check_size(w: &Window) -> Result<(), FsError> {
    let mut boot = [0u8; 512];
    w.read_exact_at(&mut boot, 0).map_err(FsError::from_io)?;
    let Some(ss) = sector_size(&boot) else {
        return Err(FsError::Crate(format!(
            "boot sector: {} bytes per sector (512, 1024, 2048 or 4096 expected)",
            le16(&boot, 11)
        )));
    };
    let sectors = match le16(&boot, 19) {
        0 => u64::from(u32::from_le_bytes(
            boot[32..36].try_into().expect("4 bytes"),
        )),
        n => u64::from(n),
    };
    if sectors * ss > w.len() {
        return Err(FsError::Crate(format!(
            "boot sector: the volume spans {} bytes ({sectors} sectors of {ss}), but the partition holds {} bytes (truncated?)",
            sectors * ss,
            w.len()
        )));
    }
    Ok(())
}

pub(super) struct FatFs {
    fs: FileSystem<Cached>,
}

impl FatFs {
    pub(super) fn open(w: Window) -> Result<(FatFs, FsKind), FsError> {
        check_size(&w)?;
        let fs = FileSystem::new(Cached::new(w), FsOptions::new()).map_err(FsError::from_io)?;
        let kind = match fs.fat_type() {
            FatType::Fat12 => FsKind::Fat12,
            FatType::Fat16 => FsKind::Fat16,
            FatType::Fat32 => FsKind::Fat32,
        };
        Ok((FatFs { fs }, kind))
    }

    /// Directory `components`.
    fn dir(&self, components: &[String]) -> Result<Dir<'_, Cached>, FsError> {
        let mut d = self.fs.root_dir();
        for c in components {
            let e = find(&d, c)?;
            if !e.is_dir() {
                return Err(FsError::NotADir);
            }
            d = e.to_dir();
        }
        Ok(d)
    }
}

/// The entry named `name` in `d`: exactly, else ignoring ASCII case (as
/// FAT compares names).
fn find<'a>(d: &Dir<'a, Cached>, name: &str) -> Result<fatfs::DirEntry<'a, Cached>, FsError> {
    let mut loose = None;
    for e in d.iter() {
        let e = e.map_err(FsError::from_io)?;
        let n = e.file_name();
        if n == name {
            return Ok(e);
        }
        if loose.is_none() && n.eq_ignore_ascii_case(name) {
            loose = Some(e);
        }
    }
    loose.ok_or(FsError::NotFound)
}

/// A FAT date and time (local, taken as UTC) as a point in time.
fn mtime(t: fatfs::DateTime) -> Option<Mtime> {
    let month = time::Month::try_from(u8::try_from(t.date.month).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::from(t.date.year),
        month,
        u8::try_from(t.date.day).ok()?,
    )
    .ok()?;
    let tod = time::Time::from_hms_milli(
        u8::try_from(t.time.hour).ok()?,
        u8::try_from(t.time.min).ok()?,
        u8::try_from(t.time.sec).ok()?,
        t.time.millis,
    )
    .ok()?;
    let at = time::PrimitiveDateTime::new(date, tod).assume_utc();
    Some(Mtime {
        secs: at.unix_timestamp(),
        nanos: at.nanosecond(),
    })
}

fn entry(e: &fatfs::DirEntry<'_, Cached>) -> Entry {
    let kind = if e.is_dir() {
        EntryType::Dir
    } else {
        EntryType::File
    };
    let mut out = Entry::new(e.file_name(), kind);
    out.size = if e.is_dir() { 0 } else { e.len() };
    out.mtime = mtime(e.modified());
    out
}

impl super::FileSystem for FatFs {
    fn stat(&mut self, components: &[String]) -> Result<Entry, FsError> {
        let Some((last, parent)) = components.split_last() else {
            return Ok(Entry::new("/".into(), EntryType::Dir));
        };
        let d = self.dir(parent)?;
        Ok(entry(&find(&d, last)?))
    }

    fn list(&mut self, components: &[String], max: usize) -> Result<Vec<Entry>, FsError> {
        let d = self.dir(components)?;
        let mut out = Vec::new();
        for e in d.iter() {
            let e = e.map_err(FsError::from_io)?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() == max {
                return Err(FsError::TooMany("entries in one directory", max));
            }
            out.push(entry(&e));
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
        let Some((last, parent)) = components.split_last() else {
            return Err(FsError::IsADir);
        };
        let d = self.dir(parent)?;
        let e = find(&d, last)?;
        if e.is_dir() {
            return Err(FsError::IsADir);
        }
        let len = e.len();
        let mut f = e.to_file();
        copy_to(|buf| f.read(buf).map_err(FsError::from_io), out, len)
    }
}
