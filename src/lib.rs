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
pub mod disk;
pub mod error;
pub mod evhd;
pub mod guid;
pub mod io;
pub mod parent;
pub mod raw;
pub mod report;
pub mod size;
pub mod vhd;
pub mod vhdx;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use disk::{Extent, ExtentKind, VirtualDisk};
pub use error::{Error, ErrorKind, Result};
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
    /// Keys trusted to have signed an EVHD image, besides the public
    /// halves of `keys`.
    pub trust: Vec<evhd::keys::PublicKey>,
    /// Refuse an EVHD image that is not signed by a trusted key
    /// (`ErrorKind::Untrusted`); otherwise such an image opens with a warning.
    pub require_signed: bool,
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

    /// Also try `key` on encrypted images.
    pub fn key(mut self, key: Arc<evhd::keys::PrivateKey>) -> Self {
        self.keys.push(key);
        self
    }
}

/// Detect the container format from signatures.
pub fn detect(storage: &dyn Storage) -> Format {
    if vhdx::probe(storage) {
        Format::Vhdx
    } else if evhd::probe(storage) {
        Format::Evhd
    } else if vhd::probe(storage) {
        Format::Vhd
    } else {
        Format::Raw
    }
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
    let storage: Box<dyn Storage> = Box::new(FileStorage::open(path, opts.writable)?);
    refuse_unsignable(storage.as_ref(), opts).map_err(|e| e.with_path(path))?;
    open_storage(storage, Some(path), opts, &chain).map_err(|e| e.with_path(path))
}

/// With `require_signed`, only an EVHD can be accepted: other formats
/// carry no signature, so they are refused before anything is opened.
fn refuse_unsignable(storage: &dyn Storage, opts: &OpenOptions) -> Result<()> {
    if !opts.require_signed {
        return Ok(());
    }
    let format = detect(storage);
    if format != Format::Evhd {
        return Err(Error::new(
            ErrorKind::Untrusted,
            format!(
                "a {} image carries no signature; --require-signed accepts only signed EVHD images",
                format.as_str()
            ),
        ));
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
    Ok(match detect(storage.as_ref()) {
        Format::Vhd => Box::new(vhd::VhdDisk::open(storage, path_buf, opts, chain)?),
        Format::Vhdx => Box::new(vhdx::VhdxDisk::open(storage, path_buf, opts, chain)?),
        Format::Evhd => Box::new(evhd::EvhdDisk::open(storage, path_buf, opts)?),
        _ => Box::new(raw::RawDisk::open(storage, path_buf)?),
    })
}

/// Check the image at `path` for damage; with `repair`, fix what can be
/// fixed safely. Missing parents are reported, not fatal.
pub fn check(path: &Path, opts: &OpenOptions, repair: bool) -> Result<CheckReport> {
    let storage = FileStorage::open(path, repair)?;
    let mut report = CheckReport::default();
    match detect(&storage) {
        Format::Vhd => vhd::check::check(&storage, &mut report, repair),
        Format::Vhdx => vhdx::check::check(&storage, &mut report, repair),
        Format::Evhd => {
            evhd::check::check_with(Box::new(FileStorage::open(path, false)?), opts, &mut report)
        }
        _ => Ok(()),
    }
    .map_err(|e| e.with_path(path))?;
    drop(storage);
    // Opening follows the parent chain: report what stands in the way.
    let inspect = opts.clone().writable(false).allow_missing_parent(true);
    match open(path, &inspect) {
        Ok(disk) => {
            if let Some(p) = disk.info().parent.filter(|p| !p.found) {
                report.add(
                    report::Severity::Info,
                    "parent",
                    None,
                    format!(
                        "parent {} (id {}) not found",
                        p.path.unwrap_or_default(),
                        p.id.unwrap_or_default()
                    ),
                );
            }
        }
        Err(e) if report.worst() != Some(report::Severity::Error) => {
            report.add(
                report::Severity::Error,
                e.structure().unwrap_or("image"),
                e.offset(),
                e.to_string(),
            );
        }
        Err(_) => {}
    }
    Ok(report)
}
