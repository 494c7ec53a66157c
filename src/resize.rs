//! Resize an image in place (`vhdkit resize`, Resize-VHD): the size rules
//! shared by every format, the partition check that guards a shrink, and
//! the GPT backup moved to the new last sectors.
//!
//! The format does the resize itself (the `resize` modules of `vhd` and `vhdx`); this
//! front decides the size and whether a shrink may cut what it cuts:
//!
//! - growing is always allowed; shrinking needs `shrink`;
//! - a shrink never cuts into a partition (MBR or GPT) nor below the
//!   space a GPT needs for its backup after the last partition;
//! - on a disk without a partition table, a shrink is refused when the
//!   range cut off holds stored data that is not all zeros, and the error
//!   names that range;
//! - [`Target::Minimum`] is the end of the last partition (for a GPT, plus
//!   the backup entry array and header).
//!
//! - a differencing image is resized over its recorded parent only (not
//!   one taken despite its identity), and grown only where its parent ends
//!   or reads as zeros, so that the range coming into use reads as zeros:
//!   afterwards it reads its parent up to the smaller of the two
//!   sizes, zeros past the parent's end (as opening the chain does).
//!
//! The order makes every crash leave the old or the new size with the
//! partitions intact, and running the resize again completes it: a grow
//! resizes the format first and then moves the GPT backup out to the new
//! end; a shrink moves the backup in first and then cuts.

use std::path::Path;
use std::sync::Arc;

use crate::chain::Chain;
use crate::disk::{ExtentKind, VirtualDisk};
use crate::error::{Error, ErrorKind, Result};
use crate::io::Storage;
use crate::partition_end::{self, Table};
use crate::report::Format;
use crate::{OpenOptions, detect};

/// Reading the cut-off range to see whether it holds anything but zeros
/// goes in pieces of this size.
const SCAN_CHUNK: u64 = 1 << 20;

/// The size to resize to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// This many bytes.
    Size(u64),
    /// The end of the last partition: the smallest size that keeps every
    /// partition and the partition table whole.
    Minimum,
}

/// What a resize did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    /// The virtual size before.
    pub old_size: u64,
    /// The virtual size after.
    pub new_size: u64,
    /// Whether the GPT's backup header and entry array were moved to the
    /// new last sectors.
    pub gpt_moved: bool,
}

/// Resize the image at `path` (opened writable and locked) to `target`;
/// a smaller size needs `shrink`.
pub fn resize(path: &Path, target: Target, shrink: bool, opts: &OpenOptions) -> Result<Resized> {
    let storage = crate::open_file(path, true, false)?;
    let (format, _) =
        detect::resolve_traced(&storage, opts.format).map_err(|e| e.with_path(path))?;
    resize_storage(Arc::new(storage), Some(path), format, target, shrink, opts)
        .map_err(|e| e.with_path(path))
}

/// The minimum size of a disk: the end of its last partition (for a GPT,
/// with room for the backup after it); `None` without a partition table.
pub fn minimum_size(disk: &dyn VirtualDisk) -> Result<Option<u64>> {
    let read = |b: &mut [u8], o: u64| disk.read_at(b, o);
    Ok(partition_end::read_table(&read, disk.virtual_size())?.map(|t| t.minimum_size()))
}

/// [`resize`] on an image held in `storage`, of `format`; `path` locates
/// a parent. This is the whole operation: a crash at any storage
/// operation leaves an image that a new call completes.
pub fn resize_storage(
    storage: Arc<dyn Storage>,
    path: Option<&Path>,
    format: Format,
    target: Target,
    shrink: bool,
    opts: &OpenOptions,
) -> Result<Resized> {
    match format {
        Format::Vhd => crate::vhd::resize::supported(storage.as_ref())?,
        Format::Vhdx => {}
        Format::Evhd => crate::evhd::resize::key_given(&storage, opts)?,
        Format::Raw => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "resizing a raw image is not supported (use truncate)",
            ));
        }
    }
    // A differencing image is resized over its recorded parent only: a
    // parent taken despite its identity must keep the child's size.
    let mut ro = opts
        .clone()
        .writable(false)
        .print_warnings(false)
        .ignore_parent_id(false);
    ro.allow_missing_parent = false;
    let disk = crate::open_storage(Box::new(storage.clone()), path, &ro, &Chain::default())
        .map_err(|e| {
            if e.kind() == ErrorKind::ParentMismatch {
                Error::new(
                    ErrorKind::ParentMismatch,
                    format!("{e}; a differencing image is resized over its recorded parent only"),
                )
            } else {
                e
            }
        })?;
    crate::disk::refuse_damaged_rewrite(&disk.info().warnings)?;
    let old = disk.virtual_size();
    let sector = u64::from(disk.logical_sector_size());
    let table = {
        let read = |b: &mut [u8], o: u64| disk.read_at(b, o);
        partition_end::read_table(&read, old)?
    };
    let new = match target {
        Target::Size(s) => s,
        Target::Minimum => table.as_ref().map(Table::minimum_size).ok_or_else(|| {
            Error::invalid_argument(
                "the disk has no partition table (MBR or GPT), so it has no minimum size",
            )
        })?,
    };
    let new = new.div_ceil(sector) * sector;
    if let Some(p) = disk.parent_disk() {
        refuse_parent_shown(old, new, p)?;
    }
    if new < old {
        if !shrink {
            return Err(Error::invalid_argument(format!(
                "{new} bytes is smaller than the disk's {old} bytes; nothing was changed"
            ))
            .with_hint(crate::Hint::Shrink));
        }
        check_cut(disk.as_ref(), table.as_ref(), new)?;
    }
    drop(disk);

    let gpt = match &table {
        Some(Table::Gpt(g)) => Some(g),
        _ => None,
    };
    let mut gpt_moved = false;
    if new < old
        && let Some(g) = gpt
        && !partition_end::backup_in_place(g, new)
    {
        move_gpt(&storage, path, opts, g, new)?;
        gpt_moved = true;
    }
    match format {
        Format::Vhd => crate::vhd::resize::resize(storage.as_ref(), new)?,
        Format::Vhdx => {
            let rw = opts.clone().writable(true).print_warnings(false);
            let mut d = crate::vhdx::VhdxDisk::open(
                Box::new(storage.clone()),
                path.map(Path::to_path_buf),
                &rw,
                &Chain::default(),
            )?;
            d.resize(new)?;
            d.close()?;
        }
        Format::Evhd => crate::evhd::resize::resize(&storage, path, opts, new)?,
        Format::Raw => unreachable!("refused above"),
    }
    if new >= old
        && let Some(g) = gpt
        && !partition_end::backup_in_place(g, new)
    {
        move_gpt(&storage, path, opts, g, new)?;
        gpt_moved = true;
    }
    Ok(Resized {
        old_size: old,
        new_size: new,
        gpt_moved,
    })
}

/// Refuse to grow a differencing image from `old` to `new` bytes when its
/// `parent` holds data that is not zeros in the range coming into use:
/// that range must read as zeros, as on any grown disk, and the child
/// stores nothing there to hide the parent's content (it was shrunk below
/// its parent's size before).
fn refuse_parent_shown(old: u64, new: u64, parent: &dyn VirtualDisk) -> Result<()> {
    let end = new.min(parent.virtual_size());
    if end <= old {
        return Ok(());
    }
    match stored_range(parent, old, end)? {
        None => Ok(()),
        Some((first, last)) => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "cannot grow this differencing image from {old} to {new} bytes: its parent holds \
                 data in the range {first:#x}..{last:#x}, which the grown range would show \
                 instead of zeros (the image was shrunk below its parent's size); growing is \
                 supported where the parent ends or reads as zeros"
            ),
        )),
    }
}

fn open_writable(
    storage: &Arc<dyn Storage>,
    path: Option<&Path>,
    opts: &OpenOptions,
) -> Result<Box<dyn VirtualDisk>> {
    let rw = opts.clone().writable(true).print_warnings(false);
    crate::open_storage(Box::new(storage.clone()), path, &rw, &Chain::default())
}

/// Write the GPT backup at the end of a disk of `size` bytes.
fn move_gpt(
    storage: &Arc<dyn Storage>,
    path: Option<&Path>,
    opts: &OpenOptions,
    gpt: &partition_end::Gpt,
    size: u64,
) -> Result<()> {
    let mut disk = open_writable(storage, path, opts)?;
    partition_end::move_backup(gpt, size, disk.as_mut())?;
    disk.close()
}

/// Refuse a shrink to `new` bytes that would cut a partition or stored
/// data that is not past the last partition.
fn check_cut(disk: &dyn VirtualDisk, table: Option<&Table>, new: u64) -> Result<()> {
    if let Some(t) = table {
        let min = t.minimum_size();
        if new < min {
            let what = match t {
                Table::Mbr { .. } => format!("the last MBR partition ends at byte {min}"),
                Table::Gpt(g) => format!(
                    "the last GPT partition ends at byte {} and the backup GPT needs the sectors up to byte {min}",
                    g.partitions_end
                ),
            };
            return Err(Error::invalid_argument(format!(
                "cannot shrink to {new} bytes: {what}, the minimum size"
            ))
            .with_hint(crate::Hint::ToMinimum));
        }
        // Everything cut off lies past the last partition.
        return Ok(());
    }
    if let Some((first, last)) = stored_range(disk, new, disk.virtual_size())? {
        return Err(Error::invalid_argument(format!(
            "cannot shrink to {new} bytes: stored data in the range {first:#x}..{last:#x} would be cut off, and the disk has no partition table to show it unused"
        )));
    }
    Ok(())
}

/// The first and last sectors of `[start, end)` of `disk` that hold
/// stored data (its own or, for a differencing image, its parent's) that
/// is not all zeros: from the first one's start to the last one's end.
fn stored_range(disk: &dyn VirtualDisk, start: u64, end: u64) -> Result<Option<(u64, u64)>> {
    let mut buf = vec![0u8; SCAN_CHUNK as usize];
    let mut found: Option<(u64, u64)> = None;
    for e in disk.map(start, end - start)? {
        if !matches!(e.kind, ExtentKind::Data | ExtentKind::Parent) {
            continue;
        }
        let mut pos = e.start;
        while pos < e.end() {
            let n = (e.end() - pos).min(SCAN_CHUNK) as usize;
            disk.read_at(&mut buf[..n], pos)?;
            for (i, s) in buf[..n].chunks(512).enumerate() {
                if s.iter().any(|&b| b != 0) {
                    let at = pos + i as u64 * 512;
                    let end = at + s.len() as u64;
                    found = Some(found.map_or((at, end), |(f, _)| (f, end)));
                }
            }
            pos += n as u64;
        }
    }
    Ok(found)
}
