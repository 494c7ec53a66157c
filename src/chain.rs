//! The chain composer: opens an image and, for a differencing one, its
//! parents.
//!
//! A format opens its own file only and reports what it records about its
//! parent (`ChildLayer::parent_spec`: locations, expected identity). This
//! module is the one place that opens parents: it tries the recorded
//! locations, opens the first that exists read-only (through the same open
//! path, so a parent may itself be differencing), checks its identity,
//! bounds the depth and refuses loops, and hands the [`Parent`] to the child.

use std::path::{Path, PathBuf};

use crate::disk::VirtualDisk;
use crate::error::{Error, ErrorKind, Hint, Result};
use crate::io::Storage;
use crate::parent::{Candidate, Parent, ParentSpec, mismatch_error, missing_error};
use crate::report::Format;
use crate::vhd::VhdDisk;
use crate::vhdx::VhdxDisk;
use crate::{OpenOptions, detect, evhd, raw};

/// Longest parent chain we follow. Hyper-V checkpoint trees rarely exceed a
/// few dozen levels; a longer chain is almost certainly a loop or an attack.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// Files already open in the chain being built, for depth and loop checks.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    files: Vec<PathBuf>,
}

impl Chain {
    /// The chain with `path` added; fails on a loop or when too deep.
    pub fn enter(&self, path: &Path) -> Result<Chain> {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.files.contains(&canon) {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "parent chain loops back to {} (chain: {})",
                    canon.display(),
                    self.describe()
                ),
            ));
        }
        if self.files.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("parent chain is deeper than {MAX_CHAIN_DEPTH} images"),
            ));
        }
        let mut files = self.files.clone();
        files.push(canon);
        Ok(Chain { files })
    }

    /// Whether `path` is already open in the chain.
    pub fn contains(&self, path: &Path) -> bool {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.files.contains(&canon)
    }

    fn describe(&self) -> String {
        self.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}

/// A format's image as the composer sees it: what it records about its
/// parent, and a place for the parent once open.
pub(crate) trait ChildLayer {
    /// The file the image was opened from (relative parent locations are
    /// resolved from its folder).
    fn path(&self) -> Option<&Path>;
    /// What the image records about its parent; `None` when it has none.
    fn parent_spec(&self) -> Result<Option<ParentSpec>>;
    /// Take the parent the composer opened.
    fn attach_parent(&mut self, parent: Parent);
}

/// What the error of a recorded parent path leading back into the chain
/// says after the path it leads to.
const LOOP_MARK: &str = "which is already in the parent chain";

/// Whether `e` is the error of a recorded parent path that leads back to
/// `path` (canonical), already in the chain being opened.
pub(crate) fn loops_to(e: &Error, path: &Path) -> bool {
    e.kind() == ErrorKind::Corrupt
        && e.message()
            .contains(&format!("leads to {}, {LOOP_MARK}", path.display()))
}

/// `layer` with its parent (and so its whole chain) opened and attached.
///
/// A child and its parent normally have one size. A differencing image
/// that was resized (grown or shrunk like any disk, as Hyper-V's
/// Resize-VHD allows for a differencing VHDX) has another size than its
/// parent: it reads the parent's content up to the smaller of the two
/// sizes, and zeros past the parent's end. That is allowed only when the
/// parent's identity is the recorded one, so the parent is known to be
/// the image the child was made over; a parent taken with
/// `ignore_parent_id` must have the child's size (that option waives the
/// identity, not the geometry, and a wrong smaller parent would silently
/// read as zeros past its end).
fn compose<D: ChildLayer + VirtualDisk>(
    mut layer: D,
    opts: &OpenOptions,
    chain: &Chain,
) -> Result<D> {
    if let Some(spec) = layer.parent_spec()? {
        let parent = open_parent(layer.path(), &spec, opts, chain)?;
        if let Parent::Open {
            disk,
            path,
            expected_id,
            found_id,
            ..
        } = &parent
            && disk.virtual_size() != layer.virtual_size()
            && *found_id != Some(*expected_id)
        {
            let (c, p) = (layer.virtual_size(), disk.virtual_size());
            let err = Error::new(
                ErrorKind::ParentMismatch,
                format!(
                    "the parent {} has a virtual size of {p:#x} bytes ({}), the child's is \
                     {c:#x} bytes ({}); a parent whose id is not the recorded one must be the \
                     child's size (ignoring the parent's id does not waive its size)",
                    path.display(),
                    size_unit(p),
                    size_unit(c),
                ),
            );
            return Err(match layer.path() {
                Some(child) => err.with_path(child),
                None => err,
            });
        }
        layer.attach_parent(parent);
    }
    Ok(layer)
}

impl VhdDisk {
    /// Open a VHD held in `storage` with its parent chain: the format's own
    /// open ([`VhdDisk::open_layer`]), then the parent opened and checked
    /// here. `chain` holds the images already open below it.
    pub fn open(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &OpenOptions,
        chain: &Chain,
    ) -> Result<VhdDisk> {
        compose(VhdDisk::open_layer(storage, path, opts)?, opts, chain)
    }
}

impl VhdxDisk {
    /// Open a VHDX held in `storage` with its parent chain: the format's
    /// own open ([`VhdxDisk::open_layer`]), then the parent opened and
    /// checked here. `chain` holds the images already open below it.
    pub fn open(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &OpenOptions,
        chain: &Chain,
    ) -> Result<VhdxDisk> {
        compose(VhdxDisk::open_layer(storage, path, opts)?, opts, chain)
    }
}

/// Open the image at `path` as one link of `chain` (the images opened so
/// far, child first): refused when it is already in the chain or the
/// chain is too deep.
pub(crate) fn open_path(
    path: &Path,
    opts: &OpenOptions,
    chain: &Chain,
) -> Result<Box<dyn VirtualDisk>> {
    let chain = chain.enter(path).map_err(|e| e.with_path(path))?;
    let storage: Box<dyn Storage> =
        Box::new(crate::open_file(path, opts.writable, opts.force_share)?);
    refuse_unsignable(storage.as_ref(), opts).map_err(|e| e.with_path(path))?;
    open_storage(storage, Some(path), opts, &chain).map_err(|e| e.with_path(path))
}

/// Open the image at `path` read-only, with its own chain, as the parent
/// of a differencing image about to be created: the format's builder takes
/// the parent's identity, size and sector sizes from it (and a VHD keeps it
/// as its parent), so the formats never open images themselves.
pub(crate) fn open_new_parent(path: &Path) -> Result<Box<dyn VirtualDisk>> {
    open_path(path, &OpenOptions::default(), &Chain::default())
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

/// Open the image held in `storage`, detecting its format, with its
/// parent chain; `path` (if any) locates its parent.
pub(crate) fn open_storage(
    storage: Box<dyn Storage>,
    path: Option<&Path>,
    opts: &OpenOptions,
    chain: &Chain,
) -> Result<Box<dyn VirtualDisk>> {
    let path_buf = path.map(Path::to_path_buf);
    let (format, decided) = detect::resolve_traced(storage.as_ref(), opts.format)?;
    let disk: Result<Box<dyn VirtualDisk>> = match format {
        Format::Vhd => VhdDisk::open_layer(storage, path_buf, opts)
            .and_then(|d| compose(d, opts, chain))
            .map(|d| Box::new(d) as _),
        Format::Vhdx => VhdxDisk::open_layer(storage, path_buf, opts)
            .and_then(|d| compose(d, opts, chain))
            .map(|d| Box::new(d) as _),
        Format::Evhd => evhd::open(storage, path_buf, opts),
        Format::Raw => raw::RawDisk::open(storage, path_buf)
            .map(|d| Box::new(d.probed(opts.format.is_none())) as _),
    };
    disk.map_err(|e| detect::damaged_detected(format, decided, e))
}

/// Find and open the parent described by `spec` for the child at `child`:
/// the recorded locations in order (or `opts.parent_path`), the first that
/// opens and has the expected identity winning. With
/// `allow_missing_parent` a parent that is missing or not the recorded one
/// is returned as such, for inspection.
pub(crate) fn open_parent(
    child: Option<&Path>,
    spec: &ParentSpec,
    opts: &crate::OpenOptions,
    chain: &Chain,
) -> Result<Parent> {
    let recorded = spec
        .candidates
        .first()
        .map(|c| c.recorded.clone())
        .unwrap_or_else(|| "(no recorded path)".to_string());
    // A relative record is taken from the child's folder as named, then
    // (for a child reached through a symbolic link) from the folder the
    // child really is in, where it was made.
    let child_dir = child
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut child_dirs = vec![child_dir];
    if let Some(real) = child
        .filter(|c| c.is_symlink())
        .and_then(|c| std::fs::canonicalize(c).ok())
        .and_then(|c| c.parent().map(Path::to_path_buf))
    {
        child_dirs.push(real);
    }
    // Each path with the record that names it (none for an explicit path).
    let paths: Vec<(PathBuf, Option<&Candidate>)> = match &opts.parent_path {
        Some(p) => vec![(p.clone(), None)],
        None => {
            let mut v: Vec<(PathBuf, Option<&Candidate>)> = Vec::new();
            for dir in &child_dirs {
                for c in &spec.candidates {
                    let p = c.resolve(dir);
                    if !v.iter().any(|(q, _)| *q == p) {
                        v.push((p, Some(c)));
                    }
                }
            }
            v
        }
    };
    let parent_opts = crate::OpenOptions {
        writable: false,
        parent_path: None,
        // A forced format is the child's; parents are always detected.
        format: None,
        ..opts.clone()
    };
    // The first candidate that opens and matches wins; otherwise the most
    // telling failure is reported: a mismatch or an open error beats "not found".
    let mut failure: Option<Error> = None;
    let mut mismatched: Option<Parent> = None;
    for (p, candidate) in &paths {
        if std::fs::metadata(p).is_err() {
            continue;
        }
        // Something that cannot be an image (a FIFO, a directory) is named
        // for what it is rather than reported as "not found".
        if let Err(e) = crate::filekind::refuse_path(p) {
            failure.get_or_insert(e);
            continue;
        }
        // A record that leads back into the chain is reported where it is
        // recorded, before the loop is entered.
        if let Some(c) = candidate
            && chain.contains(p)
        {
            failure.get_or_insert(
                Error::corrupt(
                    c.structure,
                    c.offset,
                    format!(
                        "parent path {:?} leads to {}, {LOOP_MARK} ({}); expected a different image",
                        c.recorded,
                        p.display(),
                        chain.describe()
                    ),
                )
                .with_path(child.unwrap_or(p)),
            );
            continue;
        }
        let disk = match open_path(p, &parent_opts, chain) {
            Ok(d) => d,
            Err(e) => {
                failure.get_or_insert(e);
                continue;
            }
        };
        let found = disk.parent_link_id();
        if found != Some(spec.expected_id) && !opts.ignore_parent_id {
            failure = Some(mismatch_error(p, spec.expected_id, found, spec.id_name));
            // For inspection, the first parent found that does not match
            // (unless a later candidate does).
            mismatched.get_or_insert(Parent::Mismatched {
                path: p.clone(),
                expected_id: spec.expected_id,
                found_id: found,
                id_name: spec.id_name,
            });
            continue;
        }
        return Ok(Parent::Open {
            disk,
            path: p.clone(),
            expected_id: spec.expected_id,
            found_id: found,
            id_name: spec.id_name,
        });
    }
    if let (Some(m), true) = (mismatched, opts.allow_missing_parent) {
        return Ok(m);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if opts.allow_missing_parent {
        Ok(Parent::Missing {
            recorded,
            expected_id: spec.expected_id,
        })
    } else {
        let tried: Vec<PathBuf> = paths.into_iter().map(|(p, _)| p).collect();
        Err(missing_error(&recorded, spec.expected_id, &tried))
    }
}

/// `size` in binary units without the byte count `human_size` adds (the
/// message states the count in hexadecimal already): `32 MiB`, as range
/// errors write sizes.
fn size_unit(size: u64) -> String {
    let s = crate::report::human_size(size);
    match s.split_once(" (") {
        Some((unit, _)) => unit.to_string(),
        None => s,
    }
}
