//! `compare`, `read` and `write`: the content of virtual disks.

use std::io::{Read, Write};
use std::path::Path;

use vhdkit::convert;
use vhdkit::report::Format;
use vhdkit::{Error, VirtualDisk};

use super::args::{ParentArgs, SalvageArg, WriteArgs, parse_byte, parse_size};
use super::open::{force_share_hint, warn_signature};
use super::output::{report_salvage, stdout_err};
use super::{Outcome, fail1};

/// `vhdkit compare`: exit 0 same, 1 different, 2 error (3 salvaged).
pub fn compare(a: &Path, b: &Path, parent: &ParentArgs, salvage: &SalvageArg) -> Outcome {
    parent.warn_force_share(&[a, b]);
    let salvage = salvage.log();
    let opts = parent.options().salvage(salvage.clone());
    parent.refuse_key_for(&[a, b], &opts).map_err(|e| (e, 2))?;
    let da = vhdkit::open(a, &opts).map_err(|e| (force_share_hint(e, false), 2))?;
    let db = vhdkit::open(b, &opts).map_err(|e| (force_share_hint(e, false), 2))?;
    warn_signature(da.as_ref(), a);
    warn_signature(db.as_ref(), b);
    let diff = convert::first_difference(&da, &db);
    match diff.map_err(|e| (e, 2))? {
        None => {
            println!("Images are identical.");
            Ok(report_salvage(salvage.as_deref(), 0))
        }
        Some(off) => {
            if da.virtual_size() != db.virtual_size()
                && off == da.virtual_size().min(db.virtual_size())
            {
                println!(
                    "Images differ: sizes {} and {}; content differs from offset {off:#x} ({off})",
                    da.virtual_size(),
                    db.virtual_size()
                );
            } else {
                println!("Images differ at offset {off:#x} ({off}).");
            }
            Ok(report_salvage(salvage.as_deref(), 1))
        }
    }
}

/// `vhdkit read`: a range of the virtual disk to stdout.
pub fn read(
    image: &Path,
    offset: &str,
    length: &str,
    parent: &ParentArgs,
    salvage: &SalvageArg,
) -> Outcome {
    parent.warn_force_share(&[image]);
    let salvage = salvage.log();
    let disk = parent
        .open(image, &parent.options().salvage(salvage.clone()))
        .map_err(fail1)?;
    warn_signature(disk.as_ref(), image);
    let offset = parse_size(offset).map_err(fail1)?;
    let length = parse_size(length).map_err(fail1)?;
    vhdkit::unstable::disk::check_extent(disk.virtual_size(), offset, length)
        .map_err(|e| fail1(e.with_path(image)))?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; convert::COPY_CHUNK];
    let mut pos = offset;
    while pos < offset + length {
        let n = (offset + length - pos).min(buf.len() as u64) as usize;
        disk.read_at(&mut buf[..n], pos)
            .map_err(|e| fail1(e.with_path(image)))?;
        out.write_all(&buf[..n]).map_err(stdout_err)?;
        pos += n as u64;
    }
    out.flush().map_err(stdout_err)?;
    Ok(report_salvage(salvage.as_deref(), 0))
}

/// `vhdkit write`: bytes from a file or a repeated byte into the disk.
pub fn write(a: WriteArgs) -> Outcome {
    let (image, parent) = (&a.image, &a.parent);
    parent.refuse_force_share(image, "write")?;
    let offset = parse_size(&a.offset).map_err(fail1)?;
    let no_source = || {
        fail1(Error::invalid_argument(
            "give --input FILE or --pattern BYTE --length N",
        ))
    };
    if a.input.is_none() == a.pattern.is_none() {
        return Err(no_source());
    }
    // Open (and lock) the image before reading the input, so an image
    // in use is refused before the input (a pipe) is consumed.
    let mut disk = parent
        .open(image, &parent.options().writable(true))
        .map_err(fail1)?;
    warn_signature(disk.as_ref(), image);
    let data = match (&a.input, &a.pattern) {
        (Some(f), None) => {
            let mut v = Vec::new();
            std::fs::File::open(f)
                .and_then(|mut h| h.read_to_end(&mut v))
                .map_err(|e| fail1(Error::io(e, "cannot read the input file").with_path(f)))?;
            if let Some(l) = &a.length {
                let l = parse_size(l).map_err(fail1)? as usize;
                v.truncate(l);
            }
            v
        }
        (None, Some(p)) => {
            let byte = parse_byte(p).map_err(fail1)?;
            let l = parse_size(a.length.as_deref().unwrap_or("0")).map_err(fail1)?;
            let l = usize::try_from(l)
                .map_err(|_| fail1(Error::invalid_argument("length too large")))?;
            vec![byte; l]
        }
        _ => return Err(no_source()),
    };
    // A zero-length write changes nothing, so it breaks no child.
    // (nor does one the disk refuses, such as one past its end).
    if !a.no_children_check
        && !data.is_empty()
        && vhdkit::unstable::disk::check_range(disk.virtual_size(), offset, data.len()).is_ok()
    {
        warn_children(disk.as_ref(), image);
    }
    disk.write_at(&data, offset)
        .and_then(|_| disk.flush())
        .map_err(|e| fail1(e.with_path(image)))?;
    Ok(0)
}

/// Warn, before a write into `image`, about the differencing images beside
/// it that record it as their parent: a VHDX parent's data write id changes
/// with the write, so they no longer open; a VHD parent keeps its unique
/// id, so they still open but read the changed data.
fn warn_children(disk: &dyn VirtualDisk, image: &Path) {
    let Some(id) = disk.parent_link_id() else {
        return;
    };
    let scan = vhdkit::unstable::parent::children_beside(image, id);
    if scan.truncated {
        eprintln!(
            "vhdkit: note: {}: only the first {} image files of its folder were checked for children of this image",
            image.display(),
            vhdkit::unstable::parent::MAX_CHILD_SCAN
        );
    }
    if scan.children.is_empty() {
        return;
    }
    let names: Vec<String> = scan
        .children
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let effect = if disk.info().format == Format::Vhdx {
        "this write gives it a new data write id, so they will no longer open (vhdkit and Hyper-V refuse a parent whose data write id is not the one recorded; --ignore-parent-id reads them anyway, with data that may be inconsistent)"
    } else {
        "a VHD keeps its unique id, so they will still open, but what they read from it changes under them and their content may become inconsistent"
    };
    eprintln!(
        "vhdkit: warning: {} is the recorded parent of {} beside it: {effect}; --no-children-check skips this check",
        image.display(),
        names.join(", ")
    );
}
