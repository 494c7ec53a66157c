//! Pointing a differencing image at its parent again (`set-parent`, like
//! Hyper-V's `Set-VHD -ParentPath`) and putting it over another base while
//! keeping its content (`rebase`, like `qemu-img rebase` in safe mode).
//!
//! `set-parent` rewrites everything the child records about where its
//! parent is (VHD: the locators and the parent's name; VHDX: the parent
//! locator item), after checking that the image at the new path is the
//! recorded parent: same identity (VHD unique id, VHDX DataWriteGuid) and
//! same virtual size. With `ignore_id` the new parent's identity is taken
//! into the child instead, for a parent that was changed elsewhere (its
//! content is then trusted to be what the child was made over). The
//! writes are crash safe: see `vhd/reparent.rs` and `vhdx/reparent.rs`.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::chain::{Chain, ChildLayer};
use crate::disk::VirtualDisk;
use crate::error::{Error, ErrorKind, Result};
use crate::io::Storage;
use crate::parent::mismatch_error;
use crate::report::Format;
use crate::vhd::VhdDisk;
use crate::vhdx::VhdxDisk;
use crate::vhdx::parent_locator::{
    KEY_ABSOLUTE_WIN32_PATH, KEY_PARENT_LINKAGE, KEY_RELATIVE_PATH, KEY_VOLUME_PATH,
    ParentLocator,
};
use crate::{OpenOptions, detect};

/// How `set-parent` treats the new parent.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetParentOptions {
    /// Take the new parent's identity into the child instead of requiring
    /// it to be the recorded one.
    pub ignore_id: bool,
}

/// What `set-parent` did.
#[derive(Debug, Clone)]
pub struct SetParentOutcome {
    /// The child's format.
    pub format: Format,
    /// The parent as now recorded (absolute).
    pub parent: PathBuf,
    /// The parent identity the child records now.
    pub parent_id: Uuid,
    /// The identity the child recorded before, when `ignore_id` replaced it.
    pub replaced_id: Option<Uuid>,
    /// Whether anything was written (false: the child already recorded
    /// exactly this).
    pub changed: bool,
}

/// Set the parent of the differencing image at `child` to `parent` (see
/// the module comment). The child is opened for writing (and locked).
pub fn set_parent(child: &Path, parent: &Path, opts: &SetParentOptions) -> Result<SetParentOutcome> {
    let storage = crate::open_file(child, true, false)?;
    set_parent_in(Box::new(storage), child, parent, opts).map_err(|e| e.with_path(child))
}

/// [`set_parent`] on a child held in `storage`; `child` is where it lives
/// (the relative locators are computed from its folder).
pub fn set_parent_in(
    storage: Box<dyn Storage>,
    child: &Path,
    parent: &Path,
    opts: &SetParentOptions,
) -> Result<SetParentOutcome> {
    let format = detect::resolve(storage.as_ref(), None)?;
    let open_opts = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    match format {
        Format::Vhd => {
            let mut d = VhdDisk::open_layer(storage, Some(child.to_path_buf()), &open_opts)?;
            let link = Link::check(&d, child, parent, Format::Vhd, opts)?;
            let (code_abs, abs_data) = crate::vhd::create::absolute_locator(&link.path);
            let mut locators = Vec::new();
            if let Some(rel) = relative_from(child, &link.path) {
                locators.push((
                    crate::vhd::parent_locator::PLATFORM_W2RU,
                    crate::vhd::parent_locator::to_utf16le(&rel),
                ));
            }
            locators.push((code_abs, abs_data));
            let rec = crate::vhd::reparent::NewParentRecord {
                locators,
                name: file_name(&link.path),
                unique_id: link.id,
                timestamp: crate::vhd::create::file_timestamp(&link.path),
            };
            let changed = d.rewrite_parent(&rec)?;
            Ok(link.outcome(format, changed))
        }
        Format::Vhdx => {
            let mut d = VhdxDisk::open_layer(storage, Some(child.to_path_buf()), &open_opts)?;
            let link = Link::check(&d, child, parent, Format::Vhdx, opts)?;
            let fresh = crate::vhdx::create::parent_locator(link.id, &link.path, Some(child))?;
            let mut loc = ParentLocator::parse(&fresh, 0)?;
            // Keys vhdkit does not write are kept, unless they name the old
            // place (paths) or, with a new identity, the old linkage.
            if let Some(old) = d.structure().metadata.parent_locator.as_ref() {
                for (k, v) in &old.entries {
                    let path_key = [
                        KEY_PARENT_LINKAGE,
                        KEY_RELATIVE_PATH,
                        KEY_VOLUME_PATH,
                        KEY_ABSOLUTE_WIN32_PATH,
                    ]
                    .contains(&k.as_str());
                    let linkage = k.starts_with(KEY_PARENT_LINKAGE);
                    if !path_key && !(linkage && link.replaced.is_some()) {
                        loc.entries.push((k.clone(), v.clone()));
                    }
                }
            }
            let changed = d.rewrite_parent_locator(&loc.to_bytes()?)?;
            Ok(link.outcome(format, changed))
        }
        other => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} images have no parent; set-parent applies to differencing VHD and VHDX",
                other.as_str()
            ),
        )),
    }
}

/// The new parent as checked against what the child records.
struct Link {
    path: PathBuf,
    id: Uuid,
    replaced: Option<Uuid>,
}

impl Link {
    /// Open `parent` read-only and check it against the child `d`: same
    /// format, same virtual size, no loop, and the recorded identity
    /// (unless `ignore_id`).
    fn check<D: ChildLayer + VirtualDisk>(
        d: &D,
        child: &Path,
        parent: &Path,
        format: Format,
        opts: &SetParentOptions,
    ) -> Result<Link> {
        let spec = d.parent_spec()?.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "{} is not a differencing image: it has no parent to set",
                    child.display()
                ),
            )
        })?;
        let path = std::fs::canonicalize(parent)
            .map_err(|e| crate::io::io_err("parent image", 0)(e).with_path(parent))?;
        let chain = Chain::default().enter(child)?;
        let popts = OpenOptions::default();
        let p = crate::chain::open_path(&path, &popts, &chain)?;
        let pformat = p.info().format;
        if pformat != format {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the parent of a differencing {} must be a {} image; {} is {}",
                    format.as_str(),
                    format.as_str(),
                    path.display(),
                    pformat.as_str()
                ),
            ));
        }
        let (c, s) = (d.virtual_size(), p.virtual_size());
        if c != s {
            return Err(Error::new(
                ErrorKind::ParentMismatch,
                format!(
                    "{} has a virtual size of {}, the child {} has {}; a differencing image and \
                     its parent must be the same size",
                    path.display(),
                    crate::report::human_size(s),
                    child.display(),
                    crate::report::human_size(c),
                ),
            ));
        }
        let found = p.parent_link_id();
        let mut replaced = None;
        let id = match found {
            Some(f) if f == spec.expected_id => f,
            Some(f) if opts.ignore_id => {
                replaced = Some(spec.expected_id);
                f
            }
            _ => {
                let e = mismatch_error(&path, spec.expected_id, found, spec.id_name);
                return Err(Error::new(
                    ErrorKind::ParentMismatch,
                    format!(
                        "{e}; --ignore-id records the new parent's id instead (only when its \
                         content is what the child was made over)"
                    ),
                ));
            }
        };
        Ok(Link { path, id, replaced })
    }

    fn outcome(self, format: Format, changed: bool) -> SetParentOutcome {
        SetParentOutcome {
            format,
            parent: self.path,
            parent_id: self.id,
            replaced_id: self.replaced,
            changed,
        }
    }
}

/// `target` relative to `child`'s folder, in Windows form.
fn relative_from(child: &Path, target: &Path) -> Option<String> {
    let dir = child
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .and_then(|d| std::fs::canonicalize(d).ok())?;
    crate::vhd::create::relative_path(&dir, target)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
