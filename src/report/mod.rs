//! What `info`, `check` and `map` report, and how they print for people.
//!
//! The printing lives here, in the library, writing to any `io::Write`, so
//! the CLI stays thin and the output can be tested.

use std::io::{self, Write};

use serde::Serialize;

use crate::disk::{Extent, ExtentKind};

mod details;
mod warning;

pub use details::*;
pub use warning::{Warning, WarningKind};

/// The container format of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A flat image: the file is the disk.
    Raw,
    /// Virtual Hard Disk (footer-based, 2006 specification).
    Vhd,
    /// Virtual Hard Disk v2 ([MS-VHDX]).
    Vhdx,
    /// The vhdkit encrypted container.
    Evhd,
}

impl Format {
    /// Lowercase name as used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Evhd => "evhd",
        }
    }
}

/// How the disk stores its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    /// Every byte is stored, in order.
    Fixed,
    /// Blocks are allocated on first write.
    Dynamic,
    /// Blocks not written here come from a parent image.
    Differencing,
}

impl DiskType {
    /// Lowercase name as used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// A differencing image's parent as recorded and as resolved.
#[derive(Debug, Clone, Serialize)]
pub struct ParentInfo {
    /// The path the parent was found at, or the best recorded path when not found.
    pub path: Option<String>,
    /// The identifier the child expects of its parent.
    pub id: Option<String>,
    /// Whether the parent was found and opened.
    pub found: bool,
    /// The identifier the parent found has (`None` when not found).
    pub found_id: Option<String>,
    /// Whether `found_id` is `id` (`None` when not found). `false` means
    /// the parent was written or replaced after the child was made.
    pub id_matches: Option<bool>,
    /// What the identifier is called in the parent's format: "data write
    /// id" (VHDX) or "unique id" (VHD).
    pub id_name: Option<String>,
    /// Whether reading data from the parent is refused (a mismatched
    /// parent opened for inspection, without --ignore-parent-id).
    pub read_refused: bool,
}

/// Everything `info` reports about an image.
///
/// Serializes as `info --json` prints it: the common fields, then the
/// format's details under its name (`vhd`, `vhdx` or `evhd`; none for raw).
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Container format.
    pub format: Format,
    /// Disk type.
    pub disk_type: DiskType,
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Size of the image file in bytes.
    pub file_size: u64,
    /// Logical sector size in bytes.
    pub logical_sector_size: u32,
    /// Physical sector size in bytes.
    pub physical_sector_size: u32,
    /// Allocation unit of sparse formats; `None` for fixed and raw.
    pub block_size: Option<u64>,
    /// The disk's unique identifier (VHD: the footer's unique id; VHDX: the
    /// VirtualDiskId of the Page 83 metadata item, which stays for the
    /// disk's life).
    pub disk_id: Option<String>,
    /// VHDX: the DataWriteGuid, which changes whenever the data is first
    /// written after an open; a differencing child records it as its parent
    /// id. Absent for other formats.
    pub data_write_id: Option<String>,
    /// The program that created the image, as recorded in it.
    pub creator: Option<String>,
    /// Bytes of the virtual disk that are stored in this file.
    pub allocated_bytes: u64,
    /// The smallest size the disk can be shrunk to: the end of its last
    /// partition (see [`crate::resize::minimum_size`]); `None` when not
    /// looked for or the disk has no partition table. Shown only when set.
    pub minimum_size: Option<u64>,
    /// The parent of a differencing image.
    pub parent: Option<ParentInfo>,
    /// Problems found while opening (damage that did not prevent reading,
    /// an untrusted signature, a parent that is not the recorded one).
    pub warnings: Vec<Warning>,
    /// The format's own structures.
    pub details: FormatDetails,
}

impl Serialize for ImageInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ImageInfo", 15)?;
        st.serialize_field("format", &self.format)?;
        st.serialize_field("type", &self.disk_type)?;
        st.serialize_field("virtual_size", &self.virtual_size)?;
        st.serialize_field("file_size", &self.file_size)?;
        st.serialize_field("logical_sector_size", &self.logical_sector_size)?;
        st.serialize_field("physical_sector_size", &self.physical_sector_size)?;
        st.serialize_field("block_size", &self.block_size)?;
        st.serialize_field("disk_id", &self.disk_id)?;
        match &self.data_write_id {
            Some(id) => st.serialize_field("data_write_id", id)?,
            None => st.skip_field("data_write_id")?,
        }
        st.serialize_field("creator", &self.creator)?;
        st.serialize_field("allocated_bytes", &self.allocated_bytes)?;
        match &self.minimum_size {
            Some(m) => st.serialize_field("minimum_size", m)?,
            None => st.skip_field("minimum_size")?,
        }
        st.serialize_field("parent", &self.parent)?;
        st.serialize_field("warnings", &self.warnings)?;
        match &self.details {
            FormatDetails::Raw => {}
            FormatDetails::Vhd(d) => st.serialize_field("vhd", d)?,
            FormatDetails::Vhdx(d) => st.serialize_field("vhdx", d)?,
            FormatDetails::Evhd(d) => st.serialize_field("evhd", d)?,
        }
        st.end()
    }
}

impl ImageInfo {
    /// The warnings that say a parent up the chain is not the recorded one.
    pub fn parent_mismatch_warnings(&self) -> impl Iterator<Item = &Warning> {
        self.warnings.iter().filter(|w| w.kind.is_parent_mismatch())
    }
}

/// Print `info` as an aligned, readable summary.
pub fn write_info_text(info: &ImageInfo, out: &mut dyn Write) -> io::Result<()> {
    let mut rows: Vec<(String, String)> = vec![
        ("format".into(), info.format.as_str().into()),
        ("type".into(), info.disk_type.as_str().into()),
        ("virtual size".into(), human_size(info.virtual_size)),
        ("file size".into(), human_size(info.file_size)),
        (
            "sector size".into(),
            format!(
                "{} logical, {} physical",
                info.logical_sector_size, info.physical_sector_size
            ),
        ),
    ];
    if let Some(bs) = info.block_size {
        rows.push(("block size".into(), human_size(bs)));
    }
    rows.push(("allocated".into(), human_size(info.allocated_bytes)));
    if let Some(m) = info.minimum_size {
        rows.push(("minimum size".into(), human_size(m)));
    }
    if let Some(id) = &info.disk_id {
        // VHDX has two identities; say which one this is.
        let label = match info.format {
            Format::Vhdx => "virtual disk id",
            Format::Vhd => "disk id (unique id)",
            _ => "disk id",
        };
        rows.push((label.into(), id.clone()));
    }
    if let Some(id) = &info.data_write_id {
        rows.push(("data write id".into(), id.clone()));
    }
    if let Some(c) = &info.creator {
        rows.push(("creator".into(), c.clone()));
    }
    if let Some(p) = &info.parent {
        let state = match (p.found, p.id_matches, p.read_refused) {
            (false, _, _) => "NOT FOUND",
            (true, Some(false), true) => {
                "found, but NOT the recorded parent: the ids differ and reads are refused (see WARNING)"
            }
            (true, Some(false), false) => {
                "found, but NOT the recorded parent: the ids differ, read anyway as asked (see WARNING)"
            }
            (true, _, _) => "found, ids match",
        };
        rows.push((
            "parent".into(),
            format!("{} ({state})", p.path.as_deref().unwrap_or("?")),
        ));
        let name = p.id_name.as_deref().unwrap_or("id");
        rows.push((
            format!("parent id (expected {name} of parent)"),
            p.id.as_deref().unwrap_or("?").to_string(),
        ));
        if let Some(f) = &p.found_id {
            rows.push((format!("parent's {name} (found)"), f.clone()));
        }
    }
    for w in &info.warnings {
        rows.push(("WARNING".into(), w.message.clone()));
    }
    if let Some(name) = info.details.json_key() {
        // The rows follow the JSON form: one per leaf, keys in JSON order.
        let v = match &info.details {
            FormatDetails::Raw => serde_json::Value::Null,
            FormatDetails::Vhd(d) => serde_json::to_value(d)?,
            FormatDetails::Vhdx(d) => serde_json::to_value(d)?,
            FormatDetails::Evhd(d) => serde_json::to_value(d)?,
        };
        flatten(name, &v, &mut rows);
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "{k:<width$}  {v}")?;
    }
    Ok(())
}

/// Turn nested JSON into `a.b.c  value` rows.
fn flatten(prefix: &str, v: &serde_json::Value, rows: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, rows);
            }
        }
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                rows.push((prefix.to_string(), "(none)".into()));
            }
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, rows);
            }
        }
        serde_json::Value::String(s) => rows.push((prefix.to_string(), s.clone())),
        serde_json::Value::Null => rows.push((prefix.to_string(), "-".into())),
        other => rows.push((prefix.to_string(), other.to_string())),
    }
}

/// `1048576` -> `1 MiB (1048576 bytes)`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {} ({n} bytes)", UNITS[u])
    } else {
        format!("{v:.2} {} ({n} bytes)", UNITS[u])
    }
}

/// How serious a `check` finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing, harmless to the data (e.g. a missing parent).
    Info,
    /// Space in the file that nothing references.
    Leak,
    /// Damage: data may be wrong or unreachable.
    Error,
}

/// What a `check` finding is about, stable for callers to match on (new
/// kinds may be added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FindingKind {
    /// A structure is damaged in a way the format's parser rejects (the
    /// error that stopped it, e.g. a bad signature or an impossible field).
    Damaged,
    /// A MAC, authentication tag or signature does not verify.
    Authentication,
    /// The image uses something this library does not implement.
    Unsupported,
    /// A stored checksum is not the computed one.
    Checksum,
    /// A structure, or a copy of one, is missing or unusable.
    Missing,
    /// Two copies that must agree differ.
    CopyDiffers,
    /// A table entry holds a state or value the format does not define.
    InvalidEntry,
    /// A structure or block lies outside the file or the data.
    OutOfBounds,
    /// Structures or blocks overlap.
    Overlap,
    /// Table entries that lie beyond the virtual size.
    BeyondSize,
    /// Space in the file that nothing references.
    Leak,
    /// A log or journal holds changes not (yet) applied to the file.
    PendingLog,
    /// A variant of the format written by old software.
    Legacy,
    /// The signature of an EVHD: who signed, or that it is unsigned or
    /// not trusted.
    Signature,
    /// An EVHD fell back to its older header copy and nothing confirms
    /// it: the newest commit may have been lost (rolled back).
    RolledBack,
    /// An EVHD holds an unfinished commit addressed to other keys (an
    /// interrupted recipient change); it was not applied.
    CommitNotApplied,
    /// The parent of a differencing image was not found.
    ParentMissing,
}

impl FindingKind {
    /// The kind of finding an error that stopped a check is.
    pub fn of_error(e: &crate::Error) -> FindingKind {
        use crate::ErrorKind;
        match e.kind() {
            ErrorKind::Authentication => FindingKind::Authentication,
            ErrorKind::Unsupported => FindingKind::Unsupported,
            ErrorKind::Untrusted => FindingKind::Signature,
            ErrorKind::ParentMissing => FindingKind::ParentMissing,
            _ => FindingKind::Damaged,
        }
    }
}

/// One problem `check` found. Serializes as `{severity, structure, offset,
/// message}`, the form `check --json` has always had.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// What it is about.
    #[serde(skip)]
    pub kind: FindingKind,
    /// The on-disk structure concerned.
    pub structure: String,
    /// Byte offset in the file.
    pub offset: Option<u64>,
    /// What is wrong, with expected and found values.
    pub message: String,
    /// What can be done about it, for a front end to say in its own terms
    /// (the message names no option of a particular front end).
    #[serde(skip)]
    pub hint: Option<crate::Hint>,
}

/// The result of `check`. Serializes as `{status, findings, repaired,
/// checked, not_checked}`, `status` being `clean`, `corrupt`, `leaks` or
/// `incomplete` (no damage found, but part of the image could not be
/// checked: see `not_checked`).
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Everything found, in file order where possible.
    pub findings: Vec<Finding>,
    /// What `--repair` changed.
    pub repaired: Vec<String>,
    /// What was verified, when a checker lists it (an EVHD without a key).
    pub checked: Vec<String>,
    /// What could not be verified and why (an EVHD without a key: the
    /// encrypted part). Not empty makes the exit status 1 unless damage
    /// was found.
    pub not_checked: Vec<String>,
    /// What can be done about each `not_checked` line, by index (shorter
    /// than `not_checked` when the last lines have none), for a front end
    /// to say in its own terms. Not serialized; see
    /// [`CheckReport::not_checked_hint`].
    pub not_checked_hints: Vec<Option<crate::Hint>>,
    /// A parent up the chain is not the one the image records: what the
    /// image reads from it was not checked (the mismatch is one of the
    /// `not_checked` lines). Not serialized: the line says it.
    pub parent_mismatch: bool,
}

impl Serialize for CheckReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("CheckReport", 5)?;
        st.serialize_field("status", self.status())?;
        st.serialize_field("findings", &self.findings)?;
        st.serialize_field("repaired", &self.repaired)?;
        st.serialize_field("checked", &self.checked)?;
        st.serialize_field("not_checked", &self.not_checked)?;
        st.end()
    }
}

impl CheckReport {
    /// `clean`, `corrupt`, `leaks` or `incomplete`.
    pub fn status(&self) -> &'static str {
        match self.exit_code() {
            1 => "incomplete",
            2 => "corrupt",
            3 => "leaks",
            _ => "clean",
        }
    }

    /// Record a finding.
    pub fn add(
        &mut self,
        severity: Severity,
        kind: FindingKind,
        structure: &str,
        offset: Option<u64>,
        message: impl Into<String>,
    ) {
        self.findings.push(Finding {
            severity,
            kind,
            structure: structure.to_string(),
            offset,
            message: message.into(),
            hint: None,
        });
    }

    /// Record something that could not be checked, and what can be done
    /// about it.
    pub fn add_not_checked(&mut self, text: impl Into<String>, hint: Option<crate::Hint>) {
        if hint.is_some() {
            self.not_checked_hints.resize(self.not_checked.len(), None);
            self.not_checked_hints.push(hint);
        }
        self.not_checked.push(text.into());
    }

    /// What can be done about `not_checked[i]`, if anything is said.
    pub fn not_checked_hint(&self, i: usize) -> Option<crate::Hint> {
        self.not_checked_hints.get(i).copied().flatten()
    }

    /// Record the finding an error that stopped a check (or an open) is,
    /// with the error's hint: its kind [`FindingKind::of_error`], its
    /// structure (or "image") and offset, and `message`.
    pub fn add_error(&mut self, e: &crate::Error, message: impl Into<String>) {
        self.add(
            Severity::Error,
            FindingKind::of_error(e),
            e.structure().unwrap_or("image"),
            e.offset(),
            message,
        );
        if let Some(f) = self.findings.last_mut() {
            f.hint = e.hint();
        }
    }

    /// The worst severity found, if any.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// CLI exit status: 0 clean, 2 corruption, 3 only leaked space, 1 no
    /// damage found but part of the image could not be checked.
    pub fn exit_code(&self) -> i32 {
        match self.worst() {
            Some(Severity::Error) => 2,
            _ if !self.not_checked.is_empty() => 1,
            Some(Severity::Leak) => 3,
            _ => 0,
        }
    }
}

/// Print a check report for people.
pub fn write_check_text(report: &CheckReport, out: &mut dyn Write) -> io::Result<()> {
    for f in &report.findings {
        let sev = match f.severity {
            Severity::Info => "info",
            Severity::Leak => "leak",
            Severity::Error => "error",
        };
        match f.offset {
            Some(o) => writeln!(out, "{sev}: {} at {o:#x}: {}", f.structure, f.message)?,
            None => writeln!(out, "{sev}: {}: {}", f.structure, f.message)?,
        }
    }
    for r in &report.repaired {
        writeln!(out, "repaired: {r}")?;
    }
    for c in &report.checked {
        writeln!(out, "checked: {c}")?;
    }
    for c in &report.not_checked {
        writeln!(out, "not checked: {c}")?;
    }
    let errors = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let leaks = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Leak)
        .count();
    let partly = if report.not_checked.is_empty() {
        ""
    } else {
        " Part of the image could not be checked (see \"not checked\")."
    };
    if errors == 0 && leaks == 0 && partly.is_empty() {
        writeln!(out, "No errors found.")
    } else if errors == 0 && leaks == 0 {
        writeln!(out, "No errors found in what was checked.{partly}")
    } else {
        writeln!(out, "{errors} error(s), {leaks} leak(s) found.{partly}")
    }
}

/// Print a map for people: one run per line.
pub fn write_map_text(extents: &[Extent], out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "{:>18}  {:>18}  {:<6}  {:>18}",
        "start", "length", "kind", "file offset"
    )?;
    for e in extents {
        let kind = match e.kind {
            ExtentKind::Data => "data",
            ExtentKind::Zero => "zero",
            ExtentKind::Parent => "parent",
        };
        let fo = e
            .file_offset
            .map(|o| format!("{o:#x}"))
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:>#18x}  {:>#18x}  {kind:<6}  {fo:>18}",
            e.start, e.length
        )?;
    }
    Ok(())
}
