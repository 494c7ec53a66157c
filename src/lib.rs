//! vhdkit: read, write, create, check and convert virtual hard disk images
//! (raw, VHD, VHDX and the encrypted EVHD container).
//!
//! [`open`] detects an image's format from the file's signatures, never
//! from its name, and returns a [`Disk`]: a [`VirtualDisk`] that names its
//! file in every error, offers the optional abilities of its format
//! ([`Disk::discard`], [`Disk::write_zeroes`], [`Disk::allocation`]), and
//! turns into a `std::io` stream ([`Disk::reader`], [`Disk::cursor`]) for
//! crates that read partition tables or file systems.
//!
//! # Opening
//!
//! ```
//! use vhdkit::{Format, OpenOptions};
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("disk.vhdx");
//! # vhdkit::create_vhdx(&path, vhdkit::VhdxBuilder::new(64 << 20))?;
//! let disk = vhdkit::open(&path, &OpenOptions::new())?;
//! assert_eq!(disk.info().format, Format::Vhdx);
//! let mut sector = [0u8; 512];
//! disk.read_at(&mut sector, 0)?;
//! assert_eq!(disk.virtual_size(), 64 << 20);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! An encrypted (EVHD) image opens read-only without a key, so that its
//! public fields can be inspected ([`Disk::info`], `check`); its data cannot
//! be read then: [`Disk::needs_key`] is true, and every read and the
//! allocation map fail with [`ErrorKind::KeyRequired`] (through
//! [`Disk::reader`], [`std::io::ErrorKind::PermissionDenied`]). Give the key
//! with [`OpenOptions::key`] to read it.
//!
//! [`Disk::close`] reports the errors of closing, closes the file and
//! releases its lock; after it the disk refuses reads and writes.
//!
//! # Reading through the adapter
//!
//! [`Disk::reader`] is `Read + Seek`, so a partition crate (here `gptman`)
//! reads the disk's partition table as it would from a file:
//!
//! ```
//! use vhdkit::OpenOptions;
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("disk.vhdx");
//! # vhdkit::create_vhdx(&path, vhdkit::VhdxBuilder::new(64 << 20))?;
//! # {
//! #     let mut disk = vhdkit::open(&path, &OpenOptions::new().writable(true))?;
//! #     let mut cursor = disk.cursor();
//! #     let mut gpt = gptman::GPT::new_from(&mut cursor, 512, [1; 16])?;
//! #     gpt[1] = gptman::GPTPartitionEntry {
//! #         partition_type_guid: [2; 16],
//! #         unique_partition_guid: [3; 16],
//! #         starting_lba: 2048,
//! #         ending_lba: 4095,
//! #         attribute_bits: 0,
//! #         partition_name: "data".into(),
//! #     };
//! #     gpt.write_into(&mut cursor)?;
//! # }
//! let disk = vhdkit::open(&path, &OpenOptions::new())?;
//! let gpt = gptman::GPT::find_from(&mut disk.reader())?;
//! let (number, first) = gpt.iter().find(|(_, p)| p.is_used()).unwrap();
//! assert_eq!((number, first.starting_lba), (1, 2048));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Writing
//!
//! Positional writes, or [`Disk::cursor`] (`Read + Write + Seek`) for code
//! that writes through `std::io`, which may write any bytes, not only
//! whole sectors:
//!
//! ```
//! use std::io::{Seek, SeekFrom, Write};
//! use vhdkit::OpenOptions;
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("disk.vhdx");
//! # vhdkit::create_vhdx(&path, vhdkit::VhdxBuilder::new(64 << 20))?;
//! let mut disk = vhdkit::open(&path, &OpenOptions::new().writable(true))?;
//! disk.write_at(&[0xab; 4096], 1 << 20)?;
//! let mut cursor = disk.cursor();
//! cursor.seek(SeekFrom::Start(3))?;
//! cursor.write_all(b"hello")?;
//! disk.write_zeroes(1 << 20, 4096)?;
//! disk.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Converting
//!
//! A new file is written under a temporary name and renamed into place
//! only when complete ([`convert::create_file`]):
//!
//! ```
//! use vhdkit::convert::{self, ImageSpec, OutputOptions};
//! use vhdkit::{Format, OpenOptions};
//! # let dir = tempfile::tempdir()?;
//! # let vhdx = dir.path().join("disk.vhdx");
//! # let vhd = dir.path().join("disk.vhd");
//! # vhdkit::create_vhdx(&vhdx, vhdkit::VhdxBuilder::new(64 << 20))?;
//! let src = vhdkit::open(&vhdx, &OpenOptions::new())?;
//! let spec = ImageSpec::new(Format::Vhd);
//! let size = src.virtual_size();
//! convert::create_file(&vhd, &spec, size, OutputOptions::default(), |out| {
//!     convert::copy_into(&src, out, &mut |_bytes_done| {})
//! })?;
//! assert_eq!(convert::first_difference(&src, &vhdkit::open(&vhd, &OpenOptions::new())?)?, None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Checking
//!
//! ```
//! use vhdkit::OpenOptions;
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("disk.vhdx");
//! # vhdkit::create_vhdx(&path, vhdkit::VhdxBuilder::new(64 << 20))?;
//! let report = vhdkit::check(&path, &OpenOptions::new(), false)?;
//! assert!(report.findings.is_empty());
//! assert_eq!(report.exit_code(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod chain_check;
pub mod compact;
pub mod convert;
pub mod damage;
pub mod fs;
pub mod keyfile;
pub mod merge;
pub mod nbd;
pub mod partitions;
pub mod reparent;
pub mod report;
pub mod resize;
pub mod set_identity;
pub mod size;
pub mod unstable;

mod chain;
mod checksum;
mod detect;
mod device;
mod disk;
mod error;
mod evhd;
mod filekind;
mod fixed;
mod guid;
mod handle;
mod io;
mod layer;
mod lock;
mod parent;
mod partition_end;
mod pending;
mod raw;
mod sparse;
mod vhd;
mod vhdx;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use damage::SalvageLog;
pub use disk::{Discard, Extent, ExtentKind, FastPaths, VirtualDisk};
pub use error::{Error, ErrorKind, Hint, Result};
pub use evhd::cipher::CipherId;
pub use evhd::keys::{DEFAULT_BITS, Fingerprint, KeyFile, PrivateKey, PublicKey};
pub use evhd::signature::Status as SignatureStatus;
pub use evhd::{EvhdBuilder, EvhdDisk, EvhdImage, EvhdOptions};
pub use handle::{Disk, DiskCursor, DiskReader};
pub use io::{FileStorage, MemStorage, Storage};
pub use partitions::{FsInfo, FsKind, Partition, PartitionTable, Scheme};
pub use report::{CheckReport, DiskType, Finding, Format, ImageInfo, ParentInfo, Severity};
pub use size::parse_size;
pub use vhd::VhdBuilder;
pub use vhdx::VhdxBuilder;

use chain::Chain;

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Open for writing (parents are always opened read-only).
    pub writable: bool,
    /// Open a differencing image even when its parent cannot be found;
    /// reading a range that needs the parent then fails with `ParentMissing`.
    pub allow_missing_parent: bool,
    /// Accept a parent whose identity does not match the child's record.
    pub ignore_parent_id: bool,
    /// Use this file as the parent instead of the recorded locations.
    pub parent_path: Option<PathBuf>,
    /// Private keys to try on encrypted (EVHD) images.
    pub keys: Vec<Arc<PrivateKey>>,
    /// Open the image as this format instead of detecting it (parents are
    /// always detected). `Some(Format::Raw)` is the only way to read a file
    /// that carries a trace of another format as a flat disk; any other
    /// format must have a signature in the file (see [`unstable::detect`]).
    pub format: Option<Format>,
    /// Open read-only without taking or honouring the image lock (qemu's
    /// `-U/--force-share`), to inspect an image another program has open;
    /// what is read may then be inconsistent. Refused with `writable`.
    pub force_share: bool,
    /// Also write warnings that must not go unnoticed (an EVHD that fell
    /// back to its older header copy) to stderr; they are always in
    /// `info().warnings`. The command-line tool sets it.
    pub print_warnings: bool,
    /// Keys trusted to have signed an EVHD image, besides the public
    /// halves of `keys`.
    pub trust: Vec<PublicKey>,
    /// Refuse an EVHD image that is not signed by a trusted key
    /// (`ErrorKind::Untrusted`); otherwise such an image opens with a warning.
    pub require_signed: bool,
    /// The caller vouches for an EVHD image's current content: a writable
    /// open proceeds although the image is not signed by a trusted key, or
    /// fell back to its older header copy without the journal confirming
    /// it. Without it such writable opens are refused, because the next
    /// commit signs the image with the caller's key and so would vouch for
    /// content (or a rolled-back state) nobody trusted wrote.
    pub vouch: bool,
    /// Read stored blocks that lie (partly) past the end of their file as
    /// zeros and record each such virtual range in this log, instead of
    /// failing the read (VHD and VHDX, parents included). Without it such
    /// a read is a [`ErrorKind::Corrupt`] error naming the block.
    pub salvage: Option<Arc<damage::SalvageLog>>,
}

impl OpenOptions {
    /// Read-only, parent required and verified.
    pub fn new() -> Self {
        Self::default()
    }

    /// Open for writing.
    pub fn writable(mut self, yes: bool) -> Self {
        self.writable = yes;
        self
    }

    /// Allow a missing parent (for inspection).
    pub fn allow_missing_parent(mut self, yes: bool) -> Self {
        self.allow_missing_parent = yes;
        self
    }

    /// Skip the parent identity check.
    pub fn ignore_parent_id(mut self, yes: bool) -> Self {
        self.ignore_parent_id = yes;
        self
    }

    /// Use `path` as the parent.
    pub fn parent_path(mut self, path: Option<PathBuf>) -> Self {
        self.parent_path = path;
        self
    }

    /// Open as `format` instead of detecting it.
    pub fn format(mut self, format: Option<Format>) -> Self {
        self.format = format;
        self
    }

    /// Open without taking or honouring locks (read-only only).
    pub fn force_share(mut self, yes: bool) -> Self {
        self.force_share = yes;
        self
    }

    /// Also trust EVHD images signed by `key` (see [`OpenOptions::trust`]).
    pub fn trust(mut self, key: PublicKey) -> Self {
        self.trust.push(key);
        self
    }

    /// Refuse EVHD images not signed by a trusted key, and every other
    /// format (see [`OpenOptions::require_signed`]).
    pub fn require_signed(mut self, yes: bool) -> Self {
        self.require_signed = yes;
        self
    }

    /// Salvage reads into `log` (see [`OpenOptions::salvage`]).
    pub fn salvage(mut self, log: Option<Arc<damage::SalvageLog>>) -> Self {
        self.salvage = log;
        self
    }

    /// Vouch for an EVHD image's current content (see [`OpenOptions::vouch`]).
    pub fn vouch(mut self, yes: bool) -> Self {
        self.vouch = yes;
        self
    }

    /// Write warnings that must not go unnoticed to stderr as well.
    pub fn print_warnings(mut self, yes: bool) -> Self {
        self.print_warnings = yes;
        self
    }

    /// Also try `key` on encrypted images.
    pub fn key(mut self, key: Arc<PrivateKey>) -> Self {
        self.keys.push(key);
        self
    }
}

/// Detect the container format from signatures: raw only when the file
/// has no trace of any other format (see [`detect::trace`]).
#[cfg(test)]
pub(crate) fn detect(storage: &dyn Storage) -> Format {
    detect::trace(storage).map_or(Format::Raw, |t| t.format)
}

/// Open the image at `path`, detecting its format, with its parent chain
/// (see [`unstable::chain`]). Every error of the returned [`Disk`] names `path` (or
/// the parent it concerns).
///
/// An encrypted (EVHD) image opened without a key (see
/// [`OpenOptions::key`]) opens read-only all the same, for [`Disk::info`]
/// and `check`: [`Disk::needs_key`] then says so, and every read fails with
/// [`ErrorKind::KeyRequired`]. Asked for `writable`, it is that error here.
pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Disk> {
    let path = path.as_ref();
    let inner = chain::open_path(path, opts, &Chain::default())?;
    Ok(Disk::new(inner, Some(path.to_path_buf())))
}

/// Create a VHD image at `path` as `builder` describes (fixed, dynamic or
/// differencing) and return it open for writing.
pub fn create_vhd(path: impl AsRef<Path>, builder: VhdBuilder) -> Result<Disk> {
    let path = path.as_ref();
    let disk = vhd::create(path, builder)?;
    Ok(Disk::new(Box::new(disk), Some(path.to_path_buf())))
}

/// Create a VHDX image at `path` as `builder` describes (fixed, dynamic or
/// differencing) and return it open for writing.
pub fn create_vhdx(path: impl AsRef<Path>, builder: VhdxBuilder) -> Result<Disk> {
    let path = path.as_ref();
    let disk = vhdx::create(path, builder)?;
    Ok(Disk::new(Box::new(disk), Some(path.to_path_buf())))
}

/// Open the file of an image, locked unless `force_share` (see [`io::lock`]).
pub(crate) fn open_file(path: &Path, writable: bool, force_share: bool) -> Result<FileStorage> {
    match (force_share, writable) {
        (false, _) => FileStorage::open(path, writable),
        (true, false) => FileStorage::open_force_share(path),
        (true, true) => Err(Error::invalid_argument(
            "a force-share open is read-only and cannot be combined with writing",
        )
        .with_path(path)),
    }
}

/// Open an image held in `storage`; `path` (if any) locates its parent.
/// `chain` holds the images already open below it (empty for a child).
pub(crate) fn open_storage(
    storage: Box<dyn Storage>,
    path: Option<&Path>,
    opts: &OpenOptions,
    chain: &Chain,
) -> Result<Box<dyn VirtualDisk>> {
    chain::open_storage(storage, path, opts, chain)
}

/// Check the image at `path` for damage; with `repair`, fix what can be
/// fixed safely. Missing parents are reported, not fatal.
///
/// A differencing image is checked with its parents: each parent that is
/// found is checked too (never repaired), and its findings, what it could
/// not check and what it checked are added, each prefixed `in parent
/// PATH:`. Damage anywhere in the chain makes the report corrupt. A parent
/// that is not the recorded one (id mismatch) stays listed under
/// `not_checked` even with `ignore_parent_id`, which only lets its content
/// be checked as well.
pub fn check(path: &Path, opts: &OpenOptions, repair: bool) -> Result<CheckReport> {
    check_in_chain(path, opts, repair, 0)
}

/// [`check`] of an image `depth` parents up from the one asked about.
fn check_in_chain(
    path: &Path,
    opts: &OpenOptions,
    repair: bool,
    depth: usize,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut parent_path: Option<PathBuf> = None;
    // One open of the file at a time: a second one would conflict with this
    // one's lock (locks belong to each open, even in one process), so the
    // storage is closed at the end of this block, before `open` below.
    let (format, decided, checked) = {
        let storage = open_file(path, repair, opts.force_share)?;
        let (format, decided) =
            detect::resolve_traced(&storage, opts.format).map_err(|e| e.with_path(path))?;
        let checked = match format {
            Format::Vhd => vhd::check::check(&storage, &mut report, repair),
            Format::Vhdx => vhdx::check::check(&storage, &mut report, repair),
            Format::Evhd => {
                let storage = if storage.is_writable() {
                    drop(storage);
                    open_file(path, false, opts.force_share)?
                } else {
                    storage
                };
                evhd::check::check_with(Box::new(storage), opts, &mut report)
            }
            Format::Raw => Ok(()),
        };
        (format, decided, checked)
    };
    // Damage that stops the format's own check is a finding of a damaged
    // image (exit 2), not a failure to check.
    match checked.map_err(|e| detect::damaged_detected(format, decided, e.with_path(path))) {
        Err(e) if e.context().is_some() => report.add_error(&e, finding_text(&e, path)),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    // Opening follows the parent chain: report what stands in the way.
    let inspect = opts
        .clone()
        .writable(false)
        .allow_missing_parent(true)
        .print_warnings(false);
    match open(path, &inspect) {
        Ok(disk) => {
            let info = disk.info();
            // A parent (or a parent's parent) that is not the recorded one:
            // whether the child's data fits it cannot be checked, even
            // when --ignore-parent-id lets it be read. A parent checked for
            // its child (depth > 0) leaves them out: the child's open
            // listed those of the whole chain already.
            if depth == 0 {
                for w in info.parent_mismatch_warnings() {
                    report.add_not_checked(w.message.clone(), w.hint);
                    report.parent_mismatch = true;
                }
            }
            if let Some(p) = info.parent.as_ref().filter(|p| p.found) {
                parent_path = p.path.as_ref().map(PathBuf::from);
            }
            if let Some(p) = info.parent.filter(|p| !p.found) {
                let text = format!(
                    "parent {} (id {}) not found",
                    p.path.unwrap_or_default(),
                    p.id.unwrap_or_default()
                );
                report.add(
                    report::Severity::Info,
                    report::FindingKind::ParentMissing,
                    "parent",
                    None,
                    text.clone(),
                );
                // The data the child leaves to its parent was not checked.
                report
                    .not_checked
                    .push(format!("what the child reads from its parent: {text}"));
            }
        }
        // A parent that is missing, not the recorded one, in use by another
        // program or unreadable, or keys none of which opens the image,
        // leave the image unchecked (exit 1 unless damage was found), not
        // damaged.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ParentMissing
                    | ErrorKind::ParentMismatch
                    | ErrorKind::KeyMismatch
                    | ErrorKind::InUse
                    | ErrorKind::Io
            ) =>
        {
            // The EVHD check has already said that no key given opens it.
            let said = format == Format::Evhd && e.kind() == ErrorKind::KeyMismatch;
            if !said {
                report.add_not_checked(e.to_string(), e.hint());
            }
        }
        // An image that does not open as its format is reported as damaged
        // even beside the format's own findings, which may not say so. The
        // same fault (same structure and offset) found by the format's
        // check is said once, in the open's words (which name the format
        // found damaged).
        Err(e)
            if report.worst() != Some(report::Severity::Error)
                || (e.context().is_some()
                    && !report
                        .findings
                        .iter()
                        .any(|f| f.message == finding_text(&e, path))) =>
        {
            let text = finding_text(&e, path);
            let same = report.findings.iter().position(|f| {
                f.severity == report::Severity::Error
                    && Some(f.structure.as_str()) == e.structure()
                    && f.offset == e.offset()
                    && text.contains(&f.message)
            });
            match same {
                Some(i) => {
                    report.findings[i].message = text;
                    report.findings[i].hint = e.hint();
                }
                None => report.add_error(&e, text),
            }
        }
        Err(_) => {}
    }
    // After a repair the status is that of what remains: the image is
    // checked again and its findings replace those found before the repair
    // (the `repaired` list says what was fixed). That check covers the
    // parents.
    if repair && !report.repaired.is_empty() {
        let after = check_in_chain(path, opts, false, depth)?;
        report.findings = after.findings;
        report.checked = after.checked;
        report.not_checked = after.not_checked;
        report.not_checked_hints = after.not_checked_hints;
        report.parent_mismatch = after.parent_mismatch;
        return Ok(report);
    }
    if let Some(pp) = parent_path {
        add_parent_check(&mut report, &pp, opts, depth);
    }
    Ok(report)
}

/// Check the parent at `parent` (read-only, its own parents resolved from
/// what it records) and add what that found to the child's `report`, each
/// line prefixed `in parent PATH:`. A parent that cannot be checked at all
/// is listed under `not_checked` with the reason.
fn add_parent_check(report: &mut CheckReport, parent: &Path, opts: &OpenOptions, depth: usize) {
    let prefix = format!("in parent {}: ", parent.display());
    if depth + 1 >= parent::MAX_CHAIN_DEPTH {
        report.not_checked.push(format!(
            "{prefix}the chain is deeper than {} images",
            parent::MAX_CHAIN_DEPTH
        ));
        return;
    }
    let mut popts = opts.clone();
    popts.parent_path = None;
    match check_in_chain(parent, &popts, false, depth + 1) {
        Ok(r) => {
            // The prefix goes before the structure, so that a finding
            // reads `in parent P: STRUCTURE at OFFSET: ...` and the offset
            // is not taken for the child's.
            for mut f in r.findings {
                f.structure = format!("{prefix}{}", f.structure);
                report.findings.push(f);
            }
            for c in r.checked {
                report.checked.push(format!("{prefix}{c}"));
            }
            // Mismatches further up were listed from the child's own open
            // (the parent's check leaves them out).
            let hints = r.not_checked_hints;
            for (i, n) in r.not_checked.into_iter().enumerate() {
                let hint = hints.get(i).copied().flatten();
                report.add_not_checked(format!("{prefix}{n}"), hint);
            }
        }
        Err(e) => report
            .not_checked
            .push(format!("{prefix}could not be checked: {e}")),
    }
}

/// The message of a finding made from an open error of the image at `path`:
/// a damaged image of the file itself is said without repeating its path and
/// the structure (the finding shows those); anything else in full.
fn finding_text(e: &Error, path: &Path) -> String {
    match e.context() {
        Some(c) if e.path().is_none_or(|p| p == path) => format!("{c}: {}", e.message()),
        _ => e.to_string(),
    }
}
