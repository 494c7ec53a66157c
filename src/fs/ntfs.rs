//! NTFS through the `ntfs` crate: named data streams (alternate data
//! streams) are listed with each file and can be read by name.

use std::io::Write;

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{
    Ntfs, NtfsAttributeFlags, NtfsAttributeType, NtfsError, NtfsFile, NtfsReadSeek, NtfsTime,
};

use super::window::Cached;
use super::{Entry, EntryType, FsError, Mtime, Stream, Window, copy_to};

/// File records below this number are the file system's own metafiles
/// ($MFT, $Bitmap, $Extend, ... and those reserved for them): not listed.
const FIRST_USER_RECORD: u64 = 24;

/// NTFS times count 100 ns intervals from 1601-01-01 UTC; this many
/// seconds lie between then and 1970-01-01.
const EPOCH_DIFF_SECS: i64 = 11_644_473_600;

pub(super) struct NtfsFs {
    ntfs: Ntfs,
    reader: Cached,
}

fn err(e: NtfsError) -> FsError {
    match e {
        NtfsError::Io(io) => FsError::from_io(io),
        e => FsError::Crate(e.to_string()),
    }
}

fn mtime(t: NtfsTime) -> Mtime {
    let t = t.nt_timestamp();
    Mtime {
        secs: (t / 10_000_000) as i64 - EPOCH_DIFF_SECS,
        nanos: (t % 10_000_000) as u32 * 100,
    }
}

impl NtfsFs {
    pub(super) fn open(w: Window) -> Result<NtfsFs, FsError> {
        let mut reader = Cached::new(w);
        let mut ntfs = Ntfs::new(&mut reader).map_err(err)?;
        if ntfs.size() > reader.len() {
            return Err(FsError::Crate(format!(
                "boot sector: the volume spans {} bytes, but the partition holds {} bytes (truncated?)",
                ntfs.size(),
                reader.len()
            )));
        }
        ntfs.read_upcase_table(&mut reader).map_err(err)?;
        Ok(NtfsFs { ntfs, reader })
    }
}

/// The file at `components`, walked from the root.
fn walk<'n>(
    ntfs: &'n Ntfs,
    fs: &mut Cached,
    components: &[String],
) -> Result<NtfsFile<'n>, FsError> {
    let mut file = ntfs.root_directory(fs).map_err(err)?;
    for c in components {
        if !file.is_directory() {
            return Err(FsError::NotADir);
        }
        let index = file.directory_index(fs).map_err(err)?;
        let mut finder = index.finder();
        let found = NtfsFileNameIndex::find(&mut finder, ntfs, fs, c)
            .ok_or(FsError::NotFound)?
            .map_err(err)?;
        file = found.to_file(ntfs, fs).map_err(err)?;
    }
    Ok(file)
}

/// What `file` (named `name`) is: its unnamed data's size, its
/// modification time and its named streams.
fn entry(file: &NtfsFile<'_>, fs: &mut Cached, name: String) -> Result<Entry, FsError> {
    let info = file.info().map_err(err)?;
    let kind = if file.is_directory() {
        EntryType::Dir
    } else if info
        .file_attributes()
        .contains(NtfsFileAttributeFlags::REPARSE_POINT)
    {
        EntryType::Other
    } else {
        EntryType::File
    };
    let mut e = super::Entry::new(name, kind);
    e.mtime = Some(mtime(info.modification_time()));
    e.id = Some(file.file_record_number());
    let mut attributes = file.attributes();
    while let Some(item) = attributes.next(fs) {
        let item = item.map_err(err)?;
        let a = item.to_attribute().map_err(err)?;
        if a.ty().map_err(err)? != NtfsAttributeType::Data {
            continue;
        }
        let stream = a.name().map_err(err)?.to_string_lossy();
        if stream.is_empty() {
            if kind != EntryType::Dir {
                e.size = a.value_length();
            }
        } else {
            e.streams.push(Stream {
                name: stream,
                size: a.value_length(),
            });
        }
    }
    e.streams.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(e)
}

impl super::FileSystem for NtfsFs {
    fn stat(&mut self, components: &[String]) -> Result<Entry, FsError> {
        let (ntfs, fs) = (&self.ntfs, &mut self.reader);
        let file = walk(ntfs, fs, components)?;
        let name = components.last().cloned().unwrap_or_else(|| "/".into());
        entry(&file, fs, name)
    }

    fn list(&mut self, components: &[String], max: usize) -> Result<Vec<Entry>, FsError> {
        let (ntfs, fs) = (&self.ntfs, &mut self.reader);
        let dir = walk(ntfs, fs, components)?;
        if !dir.is_directory() {
            return Err(FsError::NotADir);
        }
        let index = dir.directory_index(fs).map_err(err)?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        while let Some(ie) = entries.next(fs) {
            let ie = ie.map_err(err)?;
            let Some(key) = ie.key() else { continue };
            let key = key.map_err(err)?;
            // A file with a long name is indexed under its DOS 8.3 name too.
            if key.namespace() == NtfsFileNamespace::Dos {
                continue;
            }
            let record = ie.file_reference().file_record_number();
            if record < FIRST_USER_RECORD {
                continue;
            }
            if out.len() == max {
                return Err(FsError::TooMany("entries in one directory", max));
            }
            let name = key.name().to_string_lossy();
            let file = ie.to_file(ntfs, fs).map_err(err)?;
            out.push(entry(&file, fs, name)?);
        }
        Ok(out)
    }

    fn read_file(
        &mut self,
        components: &[String],
        stream: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<u64, FsError> {
        let (ntfs, fs) = (&self.ntfs, &mut self.reader);
        let file = walk(ntfs, fs, components)?;
        if file.is_directory() && stream.is_none() {
            return Err(FsError::IsADir);
        }
        let name = stream.unwrap_or("");
        let item = file
            .data(fs, name)
            .ok_or_else(|| match stream {
                Some(s) => FsError::NoStream(s.to_string()),
                None => FsError::NotAFile,
            })?
            .map_err(err)?;
        let attribute = item.to_attribute().map_err(err)?;
        // The crate hands out compressed (LZNT1) and encrypted (EFS)
        // values as stored: never passed off as the file's content.
        let flags = attribute.flags();
        for (flag, what) in [
            (NtfsAttributeFlags::COMPRESSED, "compressed (LZNT1)"),
            (NtfsAttributeFlags::ENCRYPTED, "encrypted (EFS)"),
        ] {
            if flags.contains(flag) {
                return Err(FsError::Crate(format!(
                    "the file's data is {what}, which this tool does not decode; it is not read"
                )));
            }
        }
        let mut value = attribute.value(fs).map_err(err)?;
        let len = value.len();
        copy_to(|buf| value.read(fs, buf).map_err(err), out, len)
    }
}
