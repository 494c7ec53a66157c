//! `set` (like Hyper-V's `Set-VHD`): a new disk id, or another physical
//! sector size, in place.
//!
//! The disk id is the VHD footer's unique id, which is also what a VHD's
//! children record: a new one in a parent whose children (found beside it,
//! by locator and id) record the old one is refused unless forced, since
//! they would no longer open. A VHDX's disk id is its virtual disk id (the
//! Page 83 data, what `Set-VHD -ResetDiskIdentifier` changes); its children
//! record the DataWriteGuid, which stays, so they keep their link.
//!
//! The physical sector size is a VHDX metadata item (512 or 4096); a VHD
//! has no field for it, so it is refused there.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::disk::VirtualDisk;
use crate::error::{Error, ErrorKind, Result};
use crate::io::Storage;
use crate::report::Format;
use crate::vhd::VhdDisk;
use crate::vhdx::VhdxDisk;
use crate::{OpenOptions, detect};

/// What to change.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetOptions {
    /// Give the image a new disk id.
    pub reset_id: bool,
    /// Record this physical sector size (VHDX: 512 or 4096).
    pub physical_sector_size: Option<u32>,
    /// Reset the id even though children beside the image record it.
    pub force: bool,
}

/// What `set` did.
#[derive(Debug, Clone, Default)]
pub struct SetOutcome {
    /// The new disk id, when it was reset.
    pub new_id: Option<Uuid>,
    /// Children beside the image that recorded its old id (reset with
    /// `force`): they no longer open.
    pub orphaned: Vec<PathBuf>,
    /// Whether the physical sector size changed.
    pub sector_size_changed: bool,
}

/// Apply `opts` to the image at `path`, opened for writing (and locked).
pub fn set(path: &Path, opts: &SetOptions) -> Result<SetOutcome> {
    let children = if opts.reset_id {
        crate::parent::children_if(path, Format::Vhd)?
    } else {
        Vec::new()
    };
    let storage = crate::open_file(path, true, false)?;
    set_in(Box::new(storage), Some(path), &children, opts).map_err(|e| e.with_path(path))
}

/// [`set`] on an image held in `storage`; `children` are those that record
/// its current VHD id (see [`set`]).
pub fn set_in(
    storage: Box<dyn Storage>,
    path: Option<&Path>,
    children: &[PathBuf],
    opts: &SetOptions,
) -> Result<SetOutcome> {
    if !opts.reset_id && opts.physical_sector_size.is_none() {
        return Err(Error::invalid_argument(
            "nothing to set: give --reset-id or --physical-sector-size",
        ));
    }
    let format = detect::resolve(storage.as_ref(), None)?;
    let open_opts = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let p = path.map(Path::to_path_buf);
    let mut out = SetOutcome::default();
    match format {
        Format::Vhd => {
            if let Some(n) = opts.physical_sector_size {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "a VHD has no physical sector size field (it is always reported as 512); \
                         cannot record {n}: convert to VHDX for a 4096-byte physical sector"
                    ),
                ));
            }
            if !children.is_empty() && !opts.force {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "differencing images record this image's unique id as their parent's \
                         and would no longer open: {}; --force resets it anyway",
                        list(children)
                    ),
                ));
            }
            let mut d = VhdDisk::open_layer(storage, p, &open_opts)?;
            crate::disk::refuse_damaged_rewrite(&d.info().warnings)?;
            out.new_id = Some(d.reset_unique_id()?);
            out.orphaned = children.to_vec();
        }
        Format::Vhdx => {
            let mut d = VhdxDisk::open_layer(storage, p, &open_opts)?;
            crate::disk::refuse_damaged_rewrite(&d.info().warnings)?;
            if let Some(n) = opts.physical_sector_size {
                out.sector_size_changed = d.rewrite_physical_sector_size(n)?;
            }
            if opts.reset_id {
                out.new_id = Some(d.reset_disk_id()?);
            }
        }
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("set applies to VHD and VHDX images, not {}", other.as_str()),
            ));
        }
    }
    Ok(out)
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
