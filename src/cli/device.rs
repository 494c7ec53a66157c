//! `convert --device`: the raw content of SRC written in place onto DST,
//! an existing block device or regular file.

use std::path::Path;

use vhdkit::Error;
use vhdkit::report::Format;

use super::args::{ConvertArgs, FormatArg, RecipientArgs, SectorArgs};
use super::open::{refuse_same_file, warn_signature};
use super::output::{progress_bar, report_salvage};
use super::{Outcome, fail1};

/// `vhdkit convert --device`.
pub fn convert_device(a: &ConvertArgs) -> Outcome {
    let salvage = a.salvage.log();
    refuse_device_options(&a.dst, a.format, &a.sectors, &a.recipients)?;
    let (src, dst, parent) = (a.src.as_path(), a.dst.as_path(), &a.parent);
    refuse_same_file(src, dst).map_err(fail1)?;
    // The target first: a missing, wrong or busy target is refused before
    // the source is read, and its lock keeps other writers away.
    let target = vhdkit::unstable::device::DeviceTarget::open(dst).map_err(fail1)?;
    parent.warn_force_share(&[src]);
    let disk = parent
        .open(src, &parent.options().salvage(salvage.clone()))
        .map_err(fail1)?;
    warn_signature(disk.as_ref(), src);
    let sources = vhdkit::unstable::device::source_chain(src, disk.as_ref(), &parent.options());
    vhdkit::unstable::device::refuse_writing_onto_sources(&target, &sources).map_err(fail1)?;
    let bar = progress_bar(disk.virtual_size(), a.quiet);
    let mut tick = |done: u64| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    };
    // Recorded until the process exits (a failed write is partly written
    // too) or the write is marked complete below.
    vhdkit::unstable::pending::writing_in_place(dst);
    let r = vhdkit::unstable::device::write_in_place(&disk, &target, &mut tick);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    r.map_err(fail1)?;
    let code = report_salvage(salvage.as_deref(), 0);
    // Written and synced: a signal from now on is no interruption.
    vhdkit::unstable::pending::written_in_place(code);
    Ok(code)
}

/// Refuse what `--device` cannot do: stream to stdout, write an image
/// format, or take sector sizes and recipients.
fn refuse_device_options(
    dst: &Path,
    format: Option<FormatArg>,
    sectors: &SectorArgs,
    recipients: &RecipientArgs,
) -> Result<(), (Error, u8)> {
    let refuse = |m: String| Err(fail1(Error::invalid_argument(m)));
    if dst.as_os_str() == "-" {
        return refuse("--device writes onto an existing block device or file; DST `-` (stdout) streams without it".into());
    }
    match format.map(Format::from) {
        Some(Format::Raw) => {}
        Some(f) => {
            return refuse(format!(
                "--device writes the raw content only; -O {} cannot be written in place",
                f.as_str()
            ));
        }
        // A DST named like an image of another format is most likely not
        // meant to receive raw bytes: `-O raw` confirms.
        None => match Format::from_extension(dst) {
            Some(f) if f != Format::Raw => {
                return refuse(format!(
                    "--device writes the raw content only, and {} is named like a {} image; pass -O raw to write raw bytes into it",
                    dst.display(),
                    vhdkit::unstable::detect::format_name(f)
                ));
            }
            _ => {}
        },
    }
    if sectors.logical.is_some() || sectors.physical.is_some() || !recipients.recipient.is_empty() {
        return refuse(
            "--device writes the raw content only; sector sizes and recipients belong to image formats".into(),
        );
    }
    Ok(())
}
