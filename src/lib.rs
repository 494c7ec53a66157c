//! vhdkit: read, write, create, check and convert virtual hard disk images
//! (raw, VHD, VHDX and the encrypted EVHD container).
//!
//! Every image kind is a [`VirtualDisk`]; [`open`] detects the format from
//! the file's signatures, never from its name.
//!
//! ```no_run
//! let disk = vhdkit::open("disk.vhd", &vhdkit::OpenOptions::default())?;
//! let mut sector = [0u8; 512];
//! disk.read_at(&mut sector, 0)?;
//! # Ok::<(), vhdkit::Error>(())
//! ```

pub mod checksum;
pub mod convert;
pub mod damage;
pub mod detect;
pub mod device;
pub mod disk;
pub mod error;
pub mod evhd;
pub mod filekind;
pub mod guid;
pub mod io;
pub mod keyfile;
pub mod lock;
pub mod parent;
pub mod pending;
pub mod raw;
pub mod report;
pub mod size;
pub mod sparse;
pub mod vhd;
pub mod vhdx;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use disk::{Extent, ExtentKind, VirtualDisk};
pub use error::{Error, ErrorKind, Hint, Result};
pub use report::{CheckReport, DiskType, Format, ImageInfo};

use io::{FileStorage, Storage};
use parent::Chain;

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
    pub keys: Vec<Arc<evhd::keys::PrivateKey>>,
    /// Open the image as this format instead of detecting it (parents are
    /// always detected). `Some(Format::Raw)` is the only way to read a file
    /// that carries a trace of another format as a flat disk; any other
    /// format must have a signature in the file (see [`detect`]).
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
    pub trust: Vec<evhd::keys::PublicKey>,
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
    pub fn trust(mut self, key: evhd::keys::PublicKey) -> Self {
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
    pub fn key(mut self, key: Arc<evhd::keys::PrivateKey>) -> Self {
        self.keys.push(key);
        self
    }
}

/// Detect the container format from signatures: raw only when the file
/// has no trace of any other format (see [`detect::trace`]).
pub fn detect(storage: &dyn Storage) -> Format {
    detect::trace(storage).map_or(Format::Raw, |t| t.format)
}

/// Open the image at `path`, detecting its format.
pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Box<dyn VirtualDisk>> {
    open_in_chain(path.as_ref(), opts, &Chain::default())
}

/// Open `path` as one link of a parent chain.
pub(crate) fn open_in_chain(
    path: &Path,
    opts: &OpenOptions,
    chain: &Chain,
) -> Result<Box<dyn VirtualDisk>> {
    let chain = chain.enter(path).map_err(|e| e.with_path(path))?;
    let storage: Box<dyn Storage> = Box::new(open_file(path, opts.writable, opts.force_share)?);
    refuse_unsignable(storage.as_ref(), opts).map_err(|e| e.with_path(path))?;
    open_storage(storage, Some(path), opts, &chain).map_err(|e| e.with_path(path))
}

/// Open the file of an image, locked unless `force_share` (see [`io::lock`]).
pub fn open_file(path: &Path, writable: bool, force_share: bool) -> Result<FileStorage> {
    match (force_share, writable) {
        (false, _) => FileStorage::open(path, writable),
        (true, false) => FileStorage::open_force_share(path),
        (true, true) => Err(Error::invalid_argument(
            "force-share (-U) opens images read-only and cannot be combined with writing",
        )
        .with_path(path)),
    }
}

/// With `require_signed`, only an EVHD can be accepted: other formats
/// carry no signature, so they are refused before anything is opened.
fn refuse_unsignable(storage: &dyn Storage, opts: &OpenOptions) -> Result<()> {
    if !opts.require_signed {
        return Ok(());
    }
    let format = match detect::resolve(storage, opts.format) {
        Ok(f) => f,
        // Left for the open to report as it does without the requirement.
        Err(_) => return Ok(()),
    };
    if format != Format::Evhd {
        return Err(Error::new(
            ErrorKind::Untrusted,
            format!("a {} image carries no signature", format.as_str()),
        )
        .with_hint(Hint::RequireSignedNeedsEvhd));
    }
    Ok(())
}

/// Open an image held in `storage`; `path` (if any) locates its parent.
pub fn open_storage(
    storage: Box<dyn Storage>,
    path: Option<&Path>,
    opts: &OpenOptions,
    chain: &Chain,
) -> Result<Box<dyn VirtualDisk>> {
    let path_buf = path.map(Path::to_path_buf);
    let (format, decided) = detect::resolve_traced(storage.as_ref(), opts.format)?;
    let disk: Result<Box<dyn VirtualDisk>> = match format {
        Format::Vhd => vhd::VhdDisk::open(storage, path_buf, opts, chain).map(|d| Box::new(d) as _),
        Format::Vhdx => {
            vhdx::VhdxDisk::open(storage, path_buf, opts, chain).map(|d| Box::new(d) as _)
        }
        Format::Evhd => evhd::EvhdDisk::open(storage, path_buf, opts).map(|d| Box::new(d) as _),
        Format::Raw => raw::RawDisk::open(storage, path_buf)
            .map(|d| Box::new(d.probed(opts.format.is_none())) as _),
    };
    disk.map_err(|e| detect::damaged_detected(format, decided, e))
}

/// Check the image at `path` for damage; with `repair`, fix what can be
/// fixed safely. Missing parents are reported, not fatal.
pub fn check(path: &Path, opts: &OpenOptions, repair: bool) -> Result<CheckReport> {
    let mut report = CheckReport::default();
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
        Err(e) if e.context().is_some() => report.add(
            report::Severity::Error,
            report::FindingKind::of_error(&e),
            e.structure().unwrap_or("image"),
            e.offset(),
            finding_text(&e, path),
        ),
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
            if !opts.ignore_parent_id {
                // Opened for inspection only: what the child reads from a
                // parent (or a parent's parent) that is not the recorded
                // one was not checked.
                for w in info.parent_mismatch_warnings() {
                    report.not_checked.push(w.message.clone());
                }
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
        // A parent that is missing or not the recorded one, or keys none of
        // which opens the image, leave the image unchecked (exit 1 unless
        // damage was found), not damaged.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ParentMissing | ErrorKind::ParentMismatch | ErrorKind::KeyMismatch
            ) =>
        {
            // The EVHD check has already said that no key given opens it.
            let said = format == Format::Evhd && e.kind() == ErrorKind::KeyMismatch;
            if !said {
                report.not_checked.push(e.to_string());
            }
        }
        // An image that does not open as its format is reported as damaged
        // even beside the format's own findings, which may not say so.
        Err(e)
            if report.worst() != Some(report::Severity::Error)
                || (e.context().is_some()
                    && !report
                        .findings
                        .iter()
                        .any(|f| f.message == finding_text(&e, path))) =>
        {
            report.add(
                report::Severity::Error,
                report::FindingKind::of_error(&e),
                e.structure().unwrap_or("image"),
                e.offset(),
                finding_text(&e, path),
            );
        }
        Err(_) => {}
    }
    // After a repair the status is that of what remains: the image is
    // checked again and its findings replace those found before the repair
    // (the `repaired` list says what was fixed).
    if repair && !report.repaired.is_empty() {
        let after = check(path, opts, false)?;
        report.findings = after.findings;
        report.checked = after.checked;
        report.not_checked = after.not_checked;
    }
    Ok(report)
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
