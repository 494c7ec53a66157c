//! `ls`, `cat` and `extract`: files inside the file systems of an image,
//! named `IMAGE[:PART]:/PATH`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use vhdkit::fs::{Entry, EntryType, FsKind, Mtime, Volume, Window};
use vhdkit::{Error, VirtualDisk};

use super::args::ParentArgs;
use super::open::warn_signature;
use super::output::stdout_err;
use super::{Outcome, fail1};

/// Stop the command (exit 1, unfinished output files removed) when a
/// file-system reader goes [`vhdkit::fs::STALL_AFTER`] without a read or
/// an output write: it loops over its own cached structures, out of the
/// read budget's sight, and its thread cannot be stopped otherwise.
fn watch_for_stalls(image: &std::path::Path) {
    let image = image.to_path_buf();
    std::thread::spawn(move || {
        let mut watch = vhdkit::fs::StallWatch::new(vhdkit::fs::STALL_AFTER);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if watch.observe(vhdkit::fs::reader_progress(), std::time::Instant::now()) {
                eprintln!(
                    "vhdkit: error: {}: the file-system reader made no progress for {} s (no \
                     read, no output): it is stuck on damaged structures; stopped",
                    image.display(),
                    vhdkit::fs::STALL_AFTER.as_secs()
                );
                vhdkit::unstable::pending::remove_all_and_exit(1);
            }
        }
    });
}

/// `vhdkit ls`.
#[derive(Args)]
pub struct LsArgs {
    /// What to list: IMAGE[:PART]:/PATH (PART: a partition number counted
    /// from 1, or a partition name; optional when the disk holds one file
    /// system).
    pub target: String,
    /// Long listing: type, mode, size, modification time, link targets and
    /// NTFS alternate data streams.
    #[arg(short = 'l')]
    pub long: bool,
    /// List subdirectories recursively (paths relative to PATH).
    #[arg(short = 'R')]
    pub recursive: bool,
    /// Print JSON: {"entries": [{"name", "type", "size", "mtime", ...}]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub parent: ParentArgs,
}

/// `vhdkit cat`.
#[derive(Args)]
pub struct CatArgs {
    /// The file: IMAGE[:PART]:/PATH (on NTFS, /PATH:STREAM for an
    /// alternate data stream).
    pub target: String,
    #[command(flatten)]
    pub parent: ParentArgs,
}

/// `vhdkit extract`.
#[derive(Args)]
pub struct ExtractArgs {
    /// The file or directory: IMAGE[:PART]:/PATH.
    pub target: String,
    /// Where to write it: a directory's entries go into DEST (created, or
    /// an empty directory); a file goes to DEST, or into DEST when it is a
    /// directory. Nothing existing is replaced.
    pub dest: PathBuf,
    #[command(flatten)]
    pub parent: ParentArgs,
}

/// `IMAGE[:PART]:/PATH` taken apart.
struct Target {
    image: PathBuf,
    part: Option<String>,
    path: String,
}

/// Split `spec` at the first `:/` whose left side (or the left side less
/// a `:PART`) names an existing file; `IMAGE` and `IMAGE:PART` alone mean
/// the root.
fn parse_target(spec: &str) -> Result<Target, Error> {
    let image_part = |left: &str| -> Option<(PathBuf, Option<String>)> {
        if Path::new(left).is_file() {
            return Some((left.into(), None));
        }
        let (img, part) = left.rsplit_once(':')?;
        (Path::new(img).is_file() && !part.is_empty()).then(|| (img.into(), Some(part.into())))
    };
    for (i, _) in spec.match_indices(":/") {
        if let Some((image, part)) = image_part(&spec[..i]) {
            return Ok(Target {
                image,
                part,
                path: spec[i + 1..].to_string(),
            });
        }
    }
    if let Some((image, part)) = image_part(spec) {
        return Ok(Target {
            image,
            part,
            path: "/".into(),
        });
    }
    Err(Error::invalid_argument(format!(
        "{spec}: expected IMAGE[:PART]:/PATH naming an existing image file"
    )))
}

/// Whether `k` is a file system `ls`, `cat` and `extract` read.
fn readable(w: &Window) -> Option<FsKind> {
    vhdkit::fs::detect(w)
}

/// Open the image of `t` and the file system that `t.part` selects.
fn open_volume(t: &Target, parent: &ParentArgs) -> Result<Volume, Error> {
    watch_for_stalls(&t.image);
    parent.warn_force_share(&[&t.image]);
    let disk = parent.open(&t.image, &parent.options())?;
    warn_signature(disk.as_ref(), &t.image);
    let disk: Arc<dyn VirtualDisk> = Arc::new(disk);
    let named = |e: Error| e.with_path(&t.image);
    let size = disk.virtual_size();
    let whole = || Window::new(disk.clone(), 0, size).expect("the whole disk");
    let table = vhdkit::partitions::read(disk.as_ref()).map_err(named)?;
    // As `partitions` says them: a GPT read from its backup, ...
    for w in &table.warnings {
        eprintln!("vhdkit: warning: {}: {w}", t.image.display());
    }
    let window = |p: &vhdkit::Partition| {
        Window::new(disk.clone(), p.start, p.size).ok_or_else(|| {
            Error::new(
                vhdkit::ErrorKind::Corrupt,
                format!(
                    "partition {} ({:#x} bytes at {:#x}) lies past the end of the disk ({size:#x} bytes)",
                    p.number, p.size, p.start
                ),
            )
            .with_path(&t.image)
        })
    };
    let (w, what) = match &t.part {
        Some(sel) => {
            let p = table
                .partitions
                .iter()
                .find(|p| sel.parse::<u32>().ok() == Some(p.number))
                .or_else(|| {
                    table
                        .partitions
                        .iter()
                        .find(|p| p.name.as_deref() == Some(sel.as_str()))
                })
                .ok_or_else(|| {
                    let have: Vec<String> = table
                        .partitions
                        .iter()
                        .map(|p| match &p.name {
                            Some(n) if !n.is_empty() => format!("{} ({n})", p.number),
                            _ => p.number.to_string(),
                        })
                        .collect();
                    named(Error::invalid_argument(format!(
                        "no partition {sel:?} (partitions: {})",
                        if have.is_empty() {
                            "none".into()
                        } else {
                            have.join(", ")
                        }
                    )))
                })?;
            (window(p)?, format!("partition {}", p.number))
        }
        None if table.partitions.is_empty() => (whole(), "the disk".to_string()),
        None => {
            let mut found = Vec::new();
            for p in &table.partitions {
                if let Ok(w) = window(p)
                    && let Some(k) = readable(&w)
                {
                    found.push((w, p.number, k));
                }
            }
            match found.len() {
                1 => {
                    let (w, n, _) = found.pop().expect("one");
                    (w, format!("partition {n}"))
                }
                0 => {
                    return Err(named(Error::new(
                        vhdkit::ErrorKind::Unsupported,
                        "no partition holds an ext2/3/4, NTFS or FAT file system",
                    )));
                }
                _ => {
                    let list: Vec<String> = found
                        .iter()
                        .map(|(_, n, k)| format!("{n}: {}", k.as_str()))
                        .collect();
                    return Err(named(Error::invalid_argument(format!(
                        "{} partitions hold file systems ({}): name one as IMAGE:PART:/PATH",
                        found.len(),
                        list.join(", ")
                    ))));
                }
            }
        }
    };
    Volume::open(w, &what).map_err(named)
}

/// An entry as `ls --json` prints it.
#[derive(Serialize)]
struct JsonEntry<'a> {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    size: u64,
    mtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    streams: Vec<JsonStream<'a>>,
    /// The stored bytes of a name that is not UTF-8, in hexadecimal.
    #[serde(skip_serializing_if = "Option::is_none")]
    name_hex: Option<String>,
}

#[derive(Serialize)]
struct JsonStream<'a> {
    name: &'a str,
    size: u64,
}

#[derive(Serialize)]
struct JsonListing<'a> {
    entries: Vec<JsonEntry<'a>>,
}

/// RFC 3339 in UTC, with the fraction only when there is one.
fn show_time(t: Mtime) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(t.secs) else {
        return format!("@{}", t.secs);
    };
    let at = at
        .replace_nanosecond(t.nanos.min(999_999_999))
        .unwrap_or(at);
    let fmt = if t.nanos == 0 {
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z")
    } else {
        time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
        )
    };
    at.format(&fmt).unwrap_or_else(|_| format!("@{}", t.secs))
}

/// `rwxr-xr-x` for permission bits.
fn show_mode(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn type_char(k: EntryType) -> char {
    match k {
        EntryType::Dir => 'd',
        EntryType::File => '-',
        EntryType::Symlink => 'l',
        EntryType::Other => '?',
    }
}

/// `vhdkit ls`.
pub fn ls(a: LsArgs) -> Outcome {
    let t = parse_target(&a.target).map_err(fail1)?;
    let mut vol = open_volume(&t, &a.parent).map_err(fail1)?;
    let named = |e: Error| fail1(e.with_path(&t.image));
    let top = vol.stat(&t.path).map_err(named)?;
    let mut listed: Vec<(String, Entry)> = Vec::new();
    if top.kind != EntryType::Dir {
        listed.push((top.name.clone(), top));
    } else if a.recursive {
        vol.walk(&t.path, &mut |_, rel, e| {
            listed.push((rel.join("/"), e.clone()));
            Ok(())
        })
        .map_err(named)?;
    } else {
        for e in vol.list(&t.path).map_err(named)? {
            listed.push((e.name.clone(), e));
        }
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        let entries = listed
            .iter()
            .map(|(name, e)| JsonEntry {
                name: name.clone(),
                kind: e.kind.as_str(),
                size: e.size,
                mtime: e.mtime.map(show_time),
                mode: e.mode.map(|m| format!("{m:04o}")),
                target: e.target.as_deref(),
                name_hex: e
                    .raw_name
                    .as_ref()
                    .map(|b| b.iter().map(|x| format!("{x:02x}")).collect()),
                streams: e
                    .streams
                    .iter()
                    .map(|s| JsonStream {
                        name: &s.name,
                        size: s.size,
                    })
                    .collect(),
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &JsonListing { entries })
            .map_err(super::output::json_err)?;
        writeln!(out).map_err(stdout_err)?;
    } else {
        for (name, e) in &listed {
            if !a.long {
                writeln!(out, "{name}").map_err(stdout_err)?;
                continue;
            }
            let mode = e.mode.map_or_else(|| " ".repeat(9), show_mode);
            let when = e.mtime.map_or_else(|| "-".into(), show_time);
            let link = e
                .target
                .as_deref()
                .map(|l| format!(" -> {l}"))
                .unwrap_or_default();
            writeln!(
                out,
                "{}{mode} {:>12} {when:<30} {name}{link}",
                type_char(e.kind),
                e.size
            )
            .map_err(stdout_err)?;
            for s in &e.streams {
                writeln!(out, "{:>23} {:<30} {name}:{}", s.size, "", s.name).map_err(stdout_err)?;
            }
        }
    }
    out.flush().map_err(stdout_err)?;
    Ok(0)
}

/// `vhdkit cat`.
pub fn cat(a: CatArgs) -> Outcome {
    let t = parse_target(&a.target).map_err(fail1)?;
    let mut vol = open_volume(&t, &a.parent).map_err(fail1)?;
    // NTFS names cannot hold ':', so there it separates a stream's name.
    let (path, stream) = match t.path.rsplit_once(':') {
        Some((p, s)) if vol.kind() == FsKind::Ntfs && !s.contains('/') => (p, Some(s)),
        _ => (t.path.as_str(), None),
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    vol.read_file(path, stream, &mut out)
        .map_err(|e| fail1(e.with_path(&t.image)))?;
    out.flush().map_err(stdout_err)?;
    Ok(0)
}

/// `vhdkit extract`.
pub fn extract(a: ExtractArgs) -> Outcome {
    let t = parse_target(&a.target).map_err(fail1)?;
    super::open::refuse_same_file(&t.image, &a.dest).map_err(fail1)?;
    let mut vol = open_volume(&t, &a.parent).map_err(fail1)?;
    let r = vhdkit::fs::extract::extract(&mut vol, &t.path, &a.dest)
        .map_err(|e| fail1(e.with_path(&t.image)))?;
    for s in &r.skipped {
        eprintln!(
            "vhdkit: warning: {}: not extracted (a device, FIFO, socket or reparse point)",
            s
        );
    }
    println!(
        "Extracted {} files, {} directories, {} symbolic links ({} bytes) to {}.",
        r.files,
        r.dirs,
        r.symlinks,
        r.bytes,
        a.dest.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_times_print() {
        assert_eq!(show_mode(0o754), "rwxr-xr--");
        assert_eq!(
            show_time(Mtime { secs: 0, nanos: 0 }),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            show_time(Mtime { secs: 1, nanos: 5 }),
            "1970-01-01T00:00:01.000000005Z"
        );
    }
}
