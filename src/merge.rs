//! Merging a differencing image into its parent, or through several levels
//! into an older ancestor, in place (Hyper-V's Merge-VHD, `qemu-img
//! commit`).
//!
//! Every range a merged level stores (its block table and sector bitmaps
//! say it holds data, or that it reads as zeros) is written into the
//! ancestor with the content the child reads there, the newest level
//! winning. The ancestor is written through its format's own writer (VHDX
//! metadata through the log, VHD block tables and footers as every VHD
//! write does, locks held), so a crash leaves it as consistent as any
//! interrupted write does.
//!
//! # Interruption
//!
//! The child reads the same at every point of the merge: where a merged
//! level holds data the ancestor's old content is hidden from the child,
//! and what the merge writes there is what the child reads anyway;
//! everywhere else the ancestor is not written. An interrupted merge is
//! finished by running it again. The merged images are removed (the child
//! first, which ends the merge) only after the ancestor is closed and
//! durable.
//!
//! # The ancestor's identity
//!
//! A VHDX child records its parent's DataWriteGuid, which a write session
//! normally replaces before the first change. That would break the merged
//! chain at the first write, so an interrupted merge could not be finished
//! and the child would no longer open. The merge therefore writes the
//! ancestor with its DataWriteGuid kept
//! ([`crate::vhdx::VhdxDisk::keep_data_write_id`]): the merge changes
//! nothing the merged child reads. What does change is what other children
//! of the ancestor (or of an intermediate level) read: the merge refuses
//! when such children lie beside those images ([`MergePlan::siblings`]),
//! unless forced. When forced, or when the merged images are kept while
//! intermediate levels were merged (those read differently now), a VHDX
//! ancestor gets a new DataWriteGuid at the end, after the merged images
//! are removed, so that every image that recorded the old one refuses to
//! open rather than read inconsistent data. A VHD's unique id never
//! changes on writes (in any tool); such children of a VHD ancestor keep
//! opening.
//!
//! A kept child whose only merged level is itself still reads its content
//! after the merge (the ancestor holds it now), until the ancestor is
//! written again; Hyper-V documents every merged image as no longer valid.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::chain::Chain;
use crate::disk::{Extent, ExtentKind, VirtualDisk};
use crate::error::{Error, ErrorKind, Result};
use crate::io::Storage;
use crate::report::{DiskType, Format};
use crate::vhd::VhdDisk;
use crate::vhdx::VhdxDisk;
use crate::{Disk, OpenOptions, detect, parent};

/// Largest piece of data read from a merged level and written into the
/// ancestor at once: large enough that the per-call costs vanish, small
/// enough to stay a modest buffer.
pub const COPY_PIECE: usize = 4 << 20;

/// How to merge.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// Merge into this ancestor instead of the child's parent; every level
    /// between them is merged too.
    pub into: Option<PathBuf>,
    /// Keep the merged images instead of removing them.
    pub keep: bool,
    /// Merge although other children depend on the ancestor or on an
    /// intermediate level (they are then no longer valid).
    pub force: bool,
    /// How to open the child: its parent's location (`parent_path`) and
    /// locks are honoured; the parents' identities are always checked,
    /// and the merge opens what it writes itself.
    pub open: OpenOptions,
}

impl MergeOptions {
    /// Merge into the parent, remove the child, refuse when other children
    /// depend on the parent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merge into `ancestor` (see [`MergeOptions::into`]).
    pub fn into_ancestor(mut self, ancestor: Option<PathBuf>) -> Self {
        self.into = ancestor;
        self
    }

    /// Keep the merged images (see [`MergeOptions::keep`]).
    pub fn keep(mut self, yes: bool) -> Self {
        self.keep = yes;
        self
    }

    /// Merge despite other children (see [`MergeOptions::force`]).
    pub fn force(mut self, yes: bool) -> Self {
        self.force = yes;
        self
    }

    /// Open the child with `open` (see [`MergeOptions::open`]).
    pub fn open(mut self, open: OpenOptions) -> Self {
        self.open = open;
        self
    }
}

/// One image of the chain a merge works on.
#[derive(Debug, Clone)]
pub struct Level {
    /// Where the image is.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The identity its children record (see [`VirtualDisk::parent_link_id`]).
    pub link_id: Option<Uuid>,
}

/// What a merge will do, found by [`plan`] without changing anything.
#[derive(Debug, Clone)]
pub struct MergePlan {
    /// The images whose data is merged, the child first, then each parent
    /// up to (not including) the ancestor.
    pub merged: Vec<Level>,
    /// The image the data is written into.
    pub ancestor: Level,
    /// Other differencing images beside the ancestor or an intermediate
    /// level that record it as their parent: their content would change
    /// under them.
    pub siblings: Vec<PathBuf>,
    /// Differencing images beside the child that record it as their
    /// parent: removing the child after the merge would leave them without
    /// one, so the merge refuses them unless the child is kept or the
    /// merge is forced.
    pub orphans: Vec<PathBuf>,
    /// Whether a folder held too many image files to look at them all for
    /// such children (see [`parent::MAX_CHILD_SCAN`]).
    pub scan_truncated: bool,
    /// The virtual size shared by the chain.
    pub virtual_size: u64,
}

/// What a merge did.
#[derive(Debug, Clone)]
pub struct MergeReport {
    /// What was planned.
    pub plan: MergePlan,
    /// Bytes of the virtual disk written into the ancestor (zeros included).
    pub bytes: u64,
    /// The merged images removed, the child first.
    pub removed: Vec<PathBuf>,
    /// Whether the (VHDX) ancestor was given a new DataWriteGuid at the end.
    pub renewed_id: bool,
}

/// Find the chain of `child` up to the ancestor the merge writes into,
/// check that it opens (identities, sizes, no damage), and look for other
/// children of the images whose content changes. Nothing is written.
pub fn plan(child: &Path, opts: &MergeOptions) -> Result<MergePlan> {
    let mut open_opts = opts.open.clone().writable(false).ignore_parent_id(false);
    open_opts.allow_missing_parent = false;
    let mut levels: Vec<Level> = Vec::new();
    let mut size = None;
    let mut sizes: Vec<u64> = Vec::new();
    let mut cur = child.to_path_buf();
    loop {
        let disk = crate::open(&cur, &open_opts).map_err(|e| {
            // Reading a mismatched parent anyway is no way to merge: the
            // merged data would land on content it was not made over.
            if e.kind() == ErrorKind::ParentMismatch {
                Error::new(
                    ErrorKind::ParentMismatch,
                    format!("{e}; a chain whose parent is not the recorded one cannot be merged"),
                )
            } else {
                e
            }
        })?;
        let info = disk.info();
        if levels.is_empty() {
            refuse_child(&cur, info.format, info.disk_type)?;
        }
        if let Some(w) = info.warnings.first() {
            return Err(Error::new(
                ErrorKind::NeedsRepair,
                format!(
                    "{} cannot be merged while it reports a problem: {}",
                    cur.display(),
                    w.message
                ),
            )
            .with_path(&cur)
            .with_hint(crate::Hint::Repair));
        }
        size.get_or_insert(disk.virtual_size());
        sizes.push(disk.virtual_size());
        levels.push(Level {
            path: cur.clone(),
            format: info.format,
            link_id: disk.parent_link_id(),
        });
        if info.disk_type != DiskType::Differencing {
            break;
        }
        let Some(next) = info.parent.and_then(|p| p.path.filter(|_| p.found)) else {
            // The open above would have failed first.
            return Err(Error::new(ErrorKind::ParentMissing, "parent not found").with_path(&cur));
        };
        cur = PathBuf::from(next);
        // An explicit parent location is the child's only.
        open_opts.parent_path = None;
        open_opts.format = None;
    }
    let target = match &opts.into {
        None => 1,
        Some(into) => find_level(&levels, into)?,
    };
    // A resized differencing image reads its parent up to the smaller
    // size: merged into an image of another size, its content would not
    // fit (or would leave the ancestor's tail behind it).
    if let Some(j) = (1..=target).find(|&j| sizes[j] != sizes[0]) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "cannot merge it ({} bytes) into {}: {} has a virtual size of {} bytes (an \
                 image of the chain was resized); a merge needs the merged images and the \
                 ancestor to have one size",
                sizes[0],
                levels[target].path.display(),
                levels[j].path.display(),
                sizes[j]
            ),
        )
        .with_path(child));
    }
    let ancestor = levels[target].clone();
    if !matches!(ancestor.format, Format::Vhd | Format::Vhdx) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "cannot merge into {}: only VHD and VHDX images can be written as parents (it is {})",
                ancestor.path.display(),
                ancestor.format.as_str()
            ),
        ));
    }
    let mut siblings = Vec::new();
    let mut scan_truncated = false;
    for j in 1..=target {
        let Some(id) = levels[j].link_id else {
            continue;
        };
        let below = canonical(&levels[j - 1].path);
        let scan = parent::children_beside(&levels[j].path, id);
        scan_truncated |= scan.truncated;
        siblings.extend(scan.children.into_iter().filter(|p| canonical(p) != below));
    }
    let orphans = match levels[0].link_id {
        Some(id) => {
            let scan = parent::children_beside(&levels[0].path, id);
            scan_truncated |= scan.truncated;
            scan.children
        }
        None => Vec::new(),
    };
    levels.truncate(target);
    Ok(MergePlan {
        merged: levels,
        ancestor,
        siblings,
        orphans,
        scan_truncated,
        virtual_size: size.unwrap_or(0),
    })
}

/// Merge `child` into its parent, or into `opts.into`: [`plan`], refuse
/// it if [`refusal`] says so, then [`execute`].
pub fn merge(
    child: &Path,
    opts: &MergeOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<MergeReport> {
    let plan = plan(child, opts)?;
    if let Some(e) = refusal(&plan, opts) {
        return Err(e);
    }
    execute(plan, opts, progress)
}

/// Carry out `plan` (from [`plan`], checked by the caller with
/// [`refusal`]): [`copy`] into the ancestor's file, then remove the merged
/// images (unless kept) and renew the ancestor's identity where other
/// images would otherwise read it inconsistently (see the module's
/// documentation).
pub fn execute(
    plan: MergePlan,
    opts: &MergeOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<MergeReport> {
    let path = &plan.ancestor.path;
    // What is removed is the image itself, not a link to it, and it must
    // be removable before anything is written.
    let doomed: Vec<PathBuf> = if opts.keep {
        Vec::new()
    } else {
        let real = plan
            .merged
            .iter()
            .map(|l| {
                std::fs::canonicalize(&l.path)
                    .map_err(|e| crate::io::io_err("merged image", 0)(e).with_path(&l.path))
            })
            .collect::<Result<Vec<_>>>()?;
        check_removable(&real, &dir_writable)?;
        real
    };
    let storage = crate::open_file(path, true, false)?;
    let bytes = copy(&plan, Box::new(storage), opts, progress).map_err(|e| e.with_path(path))?;
    let mut removed = Vec::new();
    for real in doomed {
        std::fs::remove_file(&real).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("the merge is complete, but the merged image could not be removed: {e}"),
            )
            .with_path(&real)
        })?;
        removed.push(real);
    }
    let renew = plan.ancestor.format == Format::Vhdx
        && (!plan.siblings.is_empty() || (opts.keep && plan.merged.len() > 1));
    if renew {
        let storage = crate::open_file(path, true, false)?;
        let mut disk = VhdxDisk::open(
            Box::new(storage),
            Some(path.clone()),
            &ancestor_options(opts),
            &Chain::default().enter(path)?,
        )
        .map_err(|e| e.with_path(path))?;
        disk.renew_data_write_id()
            .and_then(|_| disk.close())
            .map_err(|e| e.with_path(path))?;
    }
    Ok(MergeReport {
        plan,
        bytes,
        removed,
        renewed_id: renew,
    })
}

/// Why `plan` must not be carried out with `opts`, if it must not: other
/// children would read changed data ([`MergePlan::siblings`]), or the
/// child's own children would lose their parent ([`MergePlan::orphans`],
/// unless the child is kept); either unless forced.
pub fn refusal(plan: &MergePlan, opts: &MergeOptions) -> Option<Error> {
    if opts.force {
        return None;
    }
    let names = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let child = plan.merged[0].path.display();
    let text = if !plan.siblings.is_empty() {
        format!(
            "merging {child} into {} would change the content of other differencing images \
             that depend on it: {} (they would no longer be valid)",
            plan.ancestor.path.display(),
            names(&plan.siblings)
        )
    } else if !plan.orphans.is_empty() && !opts.keep {
        format!(
            "{child} is the parent of {}, which would be left without a parent when the merged \
             image is removed (it can be kept)",
            names(&plan.orphans)
        )
    } else {
        return None;
    };
    Some(Error::new(
        ErrorKind::InvalidArgument,
        format!("{text}; nothing was changed"),
    ))
}

/// Write the data of `plan`'s merged levels into the ancestor held in
/// `ancestor` (its file, opened writable; its own parents are found from
/// `plan.ancestor.path`), newest level winning, and close it. `progress`
/// gets the bytes written so far. Returns the bytes written. The merged
/// images are only read.
pub fn copy(
    plan: &MergePlan,
    ancestor: Box<dyn Storage>,
    opts: &MergeOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let layers = plan
        .merged
        .iter()
        .map(open_level)
        .collect::<Result<Vec<_>>>()?;
    let mut target = open_ancestor(plan, ancestor, opts)?;
    let size = plan.virtual_size;
    let mut maps = Vec::with_capacity(layers.len());
    for (layer, level) in layers.iter().zip(&plan.merged) {
        let extents = layer.map(0, size).map_err(|e| e.with_path(&level.path))?;
        maps.push(extents);
    }
    // The pieces to write, in order: zero runs whole, data a piece of at
    // most COPY_PIECE bytes at a time, read on a second thread ahead of
    // the writes (which happen in the same order as without it).
    let mut pieces: Vec<(Segment, u64, u64)> = Vec::new();
    for seg in newest_wins(&maps) {
        if seg.kind == ExtentKind::Zero {
            pieces.push((seg, seg.start, seg.end - seg.start));
            continue;
        }
        let mut pos = seg.start;
        while pos < seg.end {
            let n = (seg.end - pos).min(COPY_PIECE as u64);
            pieces.push((seg, pos, n));
            pos += n;
        }
    }
    let mut done = 0u64;
    crate::compact::read_ahead(
        &pieces,
        |&(seg, _, n)| {
            if seg.kind == ExtentKind::Zero {
                0
            } else {
                n as usize
            }
        },
        |&(seg, pos, _), buf| {
            if buf.is_empty() {
                return Ok(());
            }
            layers[seg.layer]
                .read_at(buf, pos)
                .map_err(|e| e.with_path(&plan.merged[seg.layer].path))
        },
        |&(seg, pos, n), buf| {
            if seg.kind == ExtentKind::Zero {
                target.write_zeroes(pos, n)?;
            } else {
                target.write_at(buf, pos)?;
            }
            done += n;
            progress(done);
            Ok(())
        },
    )?;
    target.close()?;
    Ok(done)
}

/// A run of the virtual disk and the newest merged level that stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: u64,
    end: u64,
    /// Index into the merged levels (0: the child).
    layer: usize,
    /// Data, or zeros.
    kind: ExtentKind,
}

/// Over the allocation maps of the merged levels (the child's first), the
/// runs some level stores (data or zeros), each with the newest such level.
fn newest_wins(maps: &[Vec<Extent>]) -> Vec<Segment> {
    let stored = |e: &&Extent| e.kind != ExtentKind::Parent;
    let mut edges: Vec<u64> = maps
        .iter()
        .flat_map(|m| m.iter().filter(stored).flat_map(|e| [e.start, e.end()]))
        .collect();
    edges.sort_unstable();
    edges.dedup();
    let lists: Vec<Vec<&Extent>> = maps
        .iter()
        .map(|m| m.iter().filter(stored).collect())
        .collect();
    let mut cursors = vec![0usize; maps.len()];
    let mut out: Vec<Segment> = Vec::new();
    for w in edges.windows(2) {
        let (a, b) = (w[0], w[1]);
        let mut found = None;
        for (i, list) in lists.iter().enumerate() {
            let c = &mut cursors[i];
            while *c < list.len() && list[*c].end() <= a {
                *c += 1;
            }
            if found.is_none()
                && let Some(e) = list.get(*c).filter(|e| e.start <= a)
            {
                found = Some((i, e.kind));
            }
        }
        let Some((layer, kind)) = found else { continue };
        match out.last_mut() {
            Some(l) if l.end == a && l.layer == layer && l.kind == kind => l.end = b,
            _ => out.push(Segment {
                start: a,
                end: b,
                layer,
                kind,
            }),
        }
    }
    out
}

/// A merged level opened alone and read-only: its parent is not opened
/// (only what it stores itself is read), so that the ancestor can be
/// opened for writing beside it.
fn open_level(level: &Level) -> Result<Box<dyn VirtualDisk>> {
    let path = &level.path;
    let storage: Box<dyn Storage> = Box::new(crate::open_file(path, false, false)?);
    let opts = OpenOptions::new();
    let format = detect::resolve(storage.as_ref(), None).map_err(|e| e.with_path(path))?;
    let disk: Box<dyn VirtualDisk> = match format {
        Format::Vhd => Box::new(VhdDisk::open_layer(storage, Some(path.clone()), &opts)?),
        Format::Vhdx => Box::new(VhdxDisk::open_layer(storage, Some(path.clone()), &opts)?),
        other => return Err(not_mergeable(path, other)),
    };
    Ok(disk)
}

fn ancestor_options(opts: &MergeOptions) -> OpenOptions {
    let mut o = OpenOptions::new().writable(true);
    o.print_warnings = opts.open.print_warnings;
    o
}

/// The ancestor opened for writing from `storage`, with its own parents,
/// checked to be the image the plan found (same identity and size), and
/// (VHDX) set to keep its DataWriteGuid.
fn open_ancestor(plan: &MergePlan, storage: Box<dyn Storage>, opts: &MergeOptions) -> Result<Disk> {
    let path = &plan.ancestor.path;
    let aopts = ancestor_options(opts);
    let chain = Chain::default().enter(path)?;
    let format = detect::resolve(storage.as_ref(), None)?;
    let disk: Box<dyn VirtualDisk> = match format {
        Format::Vhd => Box::new(VhdDisk::open(storage, Some(path.clone()), &aopts, &chain)?),
        Format::Vhdx => {
            let mut d = VhdxDisk::open(storage, Some(path.clone()), &aopts, &chain)?;
            d.keep_data_write_id();
            Box::new(d)
        }
        other => return Err(not_mergeable(path, other)),
    };
    if disk.parent_link_id() != plan.ancestor.link_id || disk.virtual_size() != plan.virtual_size {
        return Err(Error::new(
            ErrorKind::ParentMismatch,
            format!(
                "{} changed since the merge was planned (its id or size is not the one the merged \
                 child's chain recorded); nothing was written",
                path.display()
            ),
        ));
    }
    Ok(Disk::new(disk, Some(path.clone())))
}

/// Refuse a child that has no parent to merge into.
fn refuse_child(path: &Path, format: Format, kind: DiskType) -> Result<()> {
    if format == Format::Evhd {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "an EVHD image has no differencing form, so it has no parent to merge into",
        )
        .with_path(path));
    }
    if kind != DiskType::Differencing {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "the image is a {} {} image, not a differencing one: it has no parent to merge into",
                kind.as_str(),
                format.as_str()
            ),
        )
        .with_path(path));
    }
    Ok(())
}

fn not_mergeable(path: &Path, format: Format) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "a {} image cannot take part in a merge (only VHD and VHDX chains)",
            format.as_str()
        ),
    )
    .with_path(path)
}

/// The index of `into` in `levels` (past the child), or the error naming
/// the chain.
fn find_level(levels: &[Level], into: &Path) -> Result<usize> {
    let want = canonical(into);
    if want == canonical(&levels[0].path) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "cannot merge an image into itself",
        )
        .with_path(into));
    }
    levels
        .iter()
        .position(|l| canonical(&l.path) == want)
        .ok_or_else(|| {
            let chain: Vec<String> = levels
                .iter()
                .map(|l| l.path.display().to_string())
                .collect();
            Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "{} is not an ancestor of {}; its chain is {}",
                    into.display(),
                    levels[0].path.display(),
                    chain.join(" -> ")
                ),
            )
        })
}

/// Refuse, before anything is written, to merge images that could not
/// be removed afterwards: `writable` says whether a folder lets entries
/// be removed from it. `real` are the merged images' real paths.
fn check_removable(real: &[PathBuf], writable: &dyn Fn(&Path) -> bool) -> Result<()> {
    for p in real {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !writable(dir) {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "{} could not be removed after the merge: its folder {} is not writable; \
                     nothing was changed",
                    p.display(),
                    dir.display()
                ),
            )
            .with_path(p)
            .with_hint(crate::Hint::KeepMerged));
        }
    }
    Ok(())
}

/// Whether this process may create and remove entries in the folder
/// `dir` (write and search permission).
#[allow(unsafe_code)] // the unsafe block below carries its SAFETY justification
fn dir_writable(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: `c` is a NUL-terminated string that outlives the call.
        unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(dir).is_ok_and(|m| !m.permissions().readonly())
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(start: u64, length: u64, kind: ExtentKind) -> Extent {
        Extent {
            start,
            length,
            kind,
            file_offset: None,
        }
    }

    #[test]
    fn the_newest_level_wins_and_parent_runs_are_left_out() {
        use ExtentKind::*;
        let child = vec![ext(0, 10, Parent), ext(10, 10, Data), ext(20, 80, Parent)];
        let mid = vec![ext(0, 15, Data), ext(15, 35, Parent), ext(50, 10, Zero)];
        let got: Vec<_> = newest_wins(&[child, mid])
            .into_iter()
            .map(|s| (s.start, s.end, s.layer, s.kind))
            .collect();
        assert_eq!(
            got,
            vec![(0, 10, 1, Data), (10, 20, 0, Data), (50, 60, 1, Zero)]
        );
    }

    /// Tests run as root, which may write into any folder, so the folder's
    /// writability is given here rather than made with permissions.
    #[test]
    fn images_in_a_folder_that_is_not_writable_are_refused_before_writing() {
        let real = vec![PathBuf::from("/a/c1.vhdx"), PathBuf::from("/b/c2.vhdx")];
        assert!(check_removable(&real, &|_| true).is_ok());
        let e = check_removable(&real, &|d| d != Path::new("/b")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("/b/c2.vhdx") && text.contains("its folder /b is not writable"),
            "{text}"
        );
        assert_eq!(e.hint(), Some(crate::Hint::KeepMerged));
    }

    #[test]
    fn a_writable_folder_is_seen_as_writable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(dir_writable(dir.path()));
        assert!(!dir_writable(&dir.path().join("absent")));
    }
}
