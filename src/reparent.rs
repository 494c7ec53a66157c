//! Pointing a differencing image at its parent again (`set-parent`, like
//! Hyper-V's `Set-VHD -ParentPath`) and putting it over another base while
//! keeping its content (`rebase`, like `qemu-img rebase` in safe mode).
//!
//! `set-parent` rewrites everything the child records about where its
//! parent is (VHD: the locators and the parent's name; VHDX: the parent
//! locator item), after checking that the image at the new path is the
//! recorded parent: same identity (VHD unique id, VHDX DataWriteGuid). A
//! parent with the recorded identity may have another virtual size than
//! the child (either was resized; the chain reads the parent up to the
//! smaller size and zeros past its end). With `ignore_id` the new
//! parent's identity is taken into the child instead, for a parent that
//! was changed or resized elsewhere (its content is then trusted to be
//! what the child was made over); when it is smaller than the child, the
//! outcome says so (the child reads zeros past its end where it stores
//! nothing). The writes are crash safe: see `vhd/reparent.rs` and
//! `vhdx/reparent.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    KEY_ABSOLUTE_WIN32_PATH, KEY_PARENT_LINKAGE, KEY_RELATIVE_PATH, KEY_VOLUME_PATH, ParentLocator,
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
    /// (parent size, child size) when a parent taken with `ignore_id` is
    /// smaller than the child: where the child stores nothing past the
    /// parent's end it now reads zeros (it read its old parent there, if
    /// that one was larger and held data).
    pub shorter_parent: Option<(u64, u64)>,
    /// Whether anything was written (false: the child already recorded
    /// exactly this).
    pub changed: bool,
}

/// Set the parent of the differencing image at `child` to `parent` (see
/// the module comment). The child is opened for writing (and locked).
pub fn set_parent(
    child: &Path,
    parent: &Path,
    opts: &SetParentOptions,
) -> Result<SetParentOutcome> {
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
    set_parent_sized(storage, child, parent, opts, SizeRule::Warn)
}

/// What `set-parent` says of a parent taken with `ignore_id` that is
/// smaller than the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeRule {
    /// Reported in the outcome ([`SetParentOutcome::shorter_parent`]).
    Warn,
    /// Nothing: `rebase` already copied into the child every byte where
    /// the new parent (zeros past its end) differs from the old chain.
    Any,
}

fn set_parent_sized(
    storage: Box<dyn Storage>,
    child: &Path,
    parent: &Path,
    opts: &SetParentOptions,
    sizes: SizeRule,
) -> Result<SetParentOutcome> {
    let format = detect::resolve(storage.as_ref(), None)?;
    let open_opts = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    match format {
        Format::Vhd => {
            let mut d = VhdDisk::open_layer(storage, Some(child.to_path_buf()), &open_opts)?;
            crate::disk::refuse_damaged_rewrite(&d.info().warnings)?;
            let link = Link::check(&d, child, parent, Format::Vhd, opts, sizes)?;
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
            crate::disk::refuse_damaged_rewrite(&d.info().warnings)?;
            let link = Link::check(&d, child, parent, Format::Vhdx, opts, sizes)?;
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
                    let stale_linkage = linkage && link.replaced.is_some();
                    if !path_key && !stale_linkage {
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
    shorter: Option<(u64, u64)>,
}

impl Link {
    /// Open `parent` read-only and check it against the child `d`: same
    /// format, no loop, and the recorded identity (unless `ignore_id`:
    /// then a smaller parent is reported as `sizes` says).
    fn check<D: ChildLayer + VirtualDisk>(
        d: &D,
        child: &Path,
        parent: &Path,
        format: Format,
        opts: &SetParentOptions,
        sizes: SizeRule,
    ) -> Result<Link> {
        let spec = d.parent_spec()?.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                "not a differencing image: it has no parent to set",
            )
        })?;
        let path = std::fs::canonicalize(parent)
            .map_err(|e| Error::io(e, "cannot open the new parent").with_path(parent))?;
        let p = open_new_parent(&path, child, "parent")?;
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
        let found = p.parent_link_id();
        let mut replaced = None;
        let mut shorter = None;
        let id = match found {
            Some(f) if f == spec.expected_id => f,
            Some(f) if opts.ignore_id => {
                let (c, s) = (d.virtual_size(), p.virtual_size());
                if s < c && sizes == SizeRule::Warn {
                    shorter = Some((s, c));
                }
                replaced = Some(spec.expected_id);
                f
            }
            _ => {
                let e = mismatch_error(&path, spec.expected_id, found, spec.id_name);
                let (c, s) = (d.virtual_size(), p.virtual_size());
                let sizes = if c == s {
                    String::new()
                } else {
                    format!(
                        " (and its virtual size is {}, the child's {})",
                        crate::report::human_size(s),
                        crate::report::human_size(c)
                    )
                };
                return Err(Error::new(
                    ErrorKind::ParentMismatch,
                    format!(
                        "{e}{sizes}; --ignore-id records the new parent's id instead (only when \
                         its content is what the child was made over)"
                    ),
                ));
            }
        };
        Ok(Link {
            path,
            id,
            replaced,
            shorter,
        })
    }

    fn outcome(self, format: Format, changed: bool) -> SetParentOutcome {
        SetParentOutcome {
            format,
            parent: self.path,
            parent_id: self.id,
            replaced_id: self.replaced,
            shorter_parent: self.shorter,
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

/// Piece of the disk compared and copied at a time.
const REBASE_PIECE: u64 = 1 << 20;
/// Unit of comparison: a range that differs is copied in whole units.
const REBASE_UNIT: usize = 4096;

/// What `rebase` did.
#[derive(Debug, Clone)]
pub struct RebaseOutcome {
    /// Bytes copied from the old chain into the child.
    pub copied: u64,
    /// The parent record written at the end.
    pub set_parent: SetParentOutcome,
    /// Differencing images beside a VHDX child that recorded its
    /// DataWriteGuid (rebased with `force`): they no longer open.
    pub orphaned: Vec<PathBuf>,
}

/// How `rebase` treats the child's own children.
#[derive(Debug, Clone, Copy, Default)]
pub struct RebaseOptions {
    /// Rebase a VHDX child even though differencing images beside it
    /// record its DataWriteGuid, which the rebase changes.
    pub force: bool,
}

/// Put the differencing image at `child` over `new_base`, keeping what it
/// reads (`qemu-img rebase` in safe mode): wherever the child reads from
/// its parent and the old chain's content differs from `new_base`'s, the
/// old content is written into the child; then the child records
/// `new_base` as its parent, taking its identity. A crash before the end
/// leaves the child over its old parent reading as before (it only gained
/// data equal to what it read); running again completes it.
pub fn rebase(child: &Path, new_base: &Path) -> Result<RebaseOutcome> {
    rebase_with(child, new_base, &RebaseOptions::default())
}

/// [`rebase`], refusing (unless `opts.force`) a VHDX child that images
/// beside it record as their parent: the rebase gives it a new
/// DataWriteGuid, and they would no longer open. A VHD keeps its unique
/// id, so its children keep their link.
pub fn rebase_with(child: &Path, new_base: &Path, opts: &RebaseOptions) -> Result<RebaseOutcome> {
    let children =
        crate::parent::children_if(child, Format::Vhdx).map_err(|e| e.with_path(child))?;
    if !children.is_empty() && !opts.force {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "differencing images record this VHDX's DataWriteGuid as their parent's, which \
                 the rebase changes, and would no longer open: {}; nothing was changed",
                children
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .with_path(child)
        .with_hint(crate::Hint::Force));
    }
    let storage = crate::open_file(child, true, false)?;
    let mut out = rebase_in(Arc::new(storage), child, new_base)?;
    out.orphaned = children;
    Ok(out)
}

/// [`rebase`] on a child held in `storage`; `child` is where it lives
/// (its parent is found, and the relative locators computed, from its
/// folder).
pub fn rebase_in(
    storage: Arc<dyn Storage>,
    child: &Path,
    new_base: &Path,
) -> Result<RebaseOutcome> {
    let base_canon = std::fs::canonicalize(new_base)
        .map_err(|e| Error::io(e, "cannot open the new base").with_path(new_base))?;
    let base = open_new_parent(&base_canon, child, "base")?;
    let rw = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let mut disk = crate::open_storage(
        Box::new(Arc::clone(&storage)),
        Some(child),
        &rw,
        &Chain::default(),
    )
    .map_err(|e| {
        // Rebase reads the old chain and cannot take a parent that is not
        // the recorded one; set-parent can, when its content still holds.
        let e = e.with_path(child);
        if e.hint() == Some(crate::Hint::IgnoreParentId) {
            e.with_hint(crate::Hint::SetParentIgnoreId)
        } else {
            e
        }
    })?;
    crate::disk::refuse_damaged_rewrite(&disk.info().warnings).map_err(|e| e.with_path(child))?;
    let (cf, bf) = (disk.info().format, base.info().format);
    if cf != bf || !matches!(cf, Format::Vhd | Format::Vhdx) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "a differencing {} can only be rebased onto a {} image; {} is {}",
                cf.as_str(),
                cf.as_str(),
                base_canon.display(),
                bf.as_str()
            ),
        )
        .with_path(child));
    }
    if disk.parent_link_id().is_none() || disk.info().parent.is_none() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "not a differencing image: it has no parent to replace",
        )
        .with_path(child));
    }
    // The base may have another size than the child: the child then
    // reads it up to the smaller size and zeros past its end, and that is
    // what the old chain's content is compared with.
    let size = disk.virtual_size();
    let base_size = base.virtual_size();
    let from_parent: Vec<(u64, u64)> = disk
        .map(0, size)?
        .into_iter()
        .filter(|e| e.kind == crate::disk::ExtentKind::Parent)
        .map(|e| (e.start, e.start + e.length))
        .collect();
    let mut copied = 0u64;
    let mut old = vec![0u8; REBASE_PIECE as usize];
    let mut new = vec![0u8; REBASE_PIECE as usize];
    for &(start, end) in &from_parent {
        let mut pos = start - start % REBASE_UNIT as u64;
        while pos < end {
            let n = (REBASE_PIECE - pos % REBASE_PIECE)
                .min(end.next_multiple_of(REBASE_UNIT as u64).min(size) - pos)
                as usize;
            disk.read_at(&mut old[..n], pos)?;
            let in_base = base_size.saturating_sub(pos).min(n as u64) as usize;
            if in_base > 0 {
                base.read_at(&mut new[..in_base], pos)?;
            }
            new[in_base..n].fill(0);
            let mut i = 0;
            while i < n {
                let u = REBASE_UNIT.min(n - i);
                if old[i..i + u] == new[i..i + u] {
                    i += u;
                    continue;
                }
                // A run of differing units, written at once.
                let s = i;
                while i < n
                    && old[i..i + REBASE_UNIT.min(n - i)] != new[i..i + REBASE_UNIT.min(n - i)]
                {
                    i += REBASE_UNIT.min(n - i);
                }
                disk.write_at(&old[s..i], pos + s as u64)?;
                copied += (i - s) as u64;
            }
            pos += n as u64;
        }
    }
    disk.close()?;
    drop(disk);
    drop(base);
    let set = set_parent_sized(
        Box::new(storage),
        child,
        &base_canon,
        &SetParentOptions { ignore_id: true },
        SizeRule::Any,
    )
    .map_err(|e| e.with_path(child))?;
    Ok(RebaseOutcome {
        copied,
        set_parent: set,
        orphaned: Vec::new(),
    })
}

/// Open `path`, to become the parent (`role`: "parent" or "base") of
/// `child`, with its own chain. A chain that passes through `child` would
/// loop once `child` records it: that is the caller's mistake, not damage
/// in `path`, and is refused as such.
fn open_new_parent(
    path: &Path,
    child: &Path,
    role: &str,
) -> Result<Box<dyn crate::disk::VirtualDisk>> {
    let chain = Chain::default().enter(child)?;
    let opts = OpenOptions::default();
    match crate::chain::open_path(path, &opts, &chain) {
        Err(e) if std::fs::canonicalize(child).is_ok_and(|c| crate::chain::loops_to(&e, &c)) => {
            Err(Error::invalid_argument(format!(
                "{} cannot be the {role} of {}: its own parent chain leads back to {} (a chain \
                 must not loop); nothing was changed",
                path.display(),
                child.display(),
                child.display()
            )))
        }
        r => r,
    }
}
