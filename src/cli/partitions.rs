//! `partitions`: the partition table of an image and the file systems in
//! its partitions, printed by the library's writer.

use std::path::Path;

use vhdkit::partitions;

use super::args::ParentArgs;
use super::open::warn_signature;
use super::output::emit;
use super::{Outcome, fail1};

/// `vhdkit partitions`: warnings (a GPT read from its backup, a partition
/// past the disk's end) go to stderr; a table that cannot be read at all
/// is an error (exit 1).
pub fn partitions(json: bool, image: &Path, parent: &ParentArgs) -> Outcome {
    parent.warn_force_share(&[image]);
    let disk = parent.open(image, &parent.options()).map_err(fail1)?;
    warn_signature(disk.as_ref(), image);
    let table = partitions::read(disk.as_ref()).map_err(|e| fail1(e.with_path(image)))?;
    for w in &table.warnings {
        eprintln!("vhdkit: warning: {}: {w}", image.display());
    }
    emit(json, &table, partitions::write_text)?;
    Ok(0)
}

/// The lines `info` adds for the partitions: nothing for a disk without a
/// table or file system, nor when the content cannot be read (an EVHD
/// without its key, a missing parent); a damaged table says so.
pub fn info_lines(disk: &dyn vhdkit::VirtualDisk) -> Vec<(String, String)> {
    let table = match partitions::read(disk) {
        Ok(t) => t,
        Err(e) if e.kind() == vhdkit::ErrorKind::Corrupt => {
            return vec![("partitions".into(), format!("unreadable: {e}"))];
        }
        Err(_) => return Vec::new(),
    };
    let mut rows = Vec::new();
    if let Some(fs) = &table.filesystem {
        rows.push(("file system".into(), fs.summary()));
    }
    if table.scheme != partitions::Scheme::None {
        rows.push((
            "partitions".into(),
            format!("{}, {}", table.scheme.as_str(), table.partitions.len()),
        ));
    }
    for p in &table.partitions {
        rows.push((format!("partition {}", p.number), p.summary()));
    }
    for w in table.warnings {
        rows.push(("partition WARNING".into(), w));
    }
    rows
}
