//! `convert`: one image into another as the library plans it, or raw
//! bytes to stdout (`--device` is in [`super::device`]).

use vhdkit::convert::{self, plan};
use vhdkit::report::Format;
use vhdkit::{Error, ErrorKind, OpenOptions};

use super::args::{ConvertArgs, format_flag_hint, parse_opt_size};
use super::open::{force_share_hint, refuse_same_file, warn_signature};
use super::output::{progress_bar, report_salvage};
use super::{Outcome, device, fail1};

/// `vhdkit convert`.
pub fn convert(a: ConvertArgs) -> Outcome {
    if a.device {
        return device::convert_device(&a);
    }
    let (src, dst, parent) = (&a.src, &a.dst, &a.parent);
    if dst.as_os_str() != "-" {
        // Before any work: DST must be nothing or a regular file.
        vhdkit::unstable::device::refuse_unless_replaceable(dst, true).map_err(fail1)?;
    }
    parent.warn_force_share(&[src]);
    let salvage = a.salvage.log();
    let disk = parent
        .open(src, &parent.options().salvage(salvage.clone()))
        .map_err(fail1)?;
    warn_signature(disk.as_ref(), src);
    let src_info = disk.info();
    let size = disk.virtual_size();
    let bar = progress_bar(size, a.quiet);
    let mut tick = |done: u64| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    };
    let source = &disk;
    if dst.as_os_str() == "-" {
        if a.cloud {
            return Err(fail1(Error::invalid_argument(
                "--cloud makes a fixed VHD file and cannot stream to stdout (which gets raw bytes); give a DST ending in .vhd",
            )));
        }
        if a.base.is_some() {
            return Err(fail1(Error::invalid_argument(
                "-B makes a differencing image and cannot stream to stdout",
            )));
        }
        let mut out = std::io::stdout().lock();
        convert::stream_raw(source, &mut out, &mut tick).map_err(fail1)?;
    } else {
        refuse_same_file(src, dst).map_err(fail1)?;
        if a.cloud {
            // As for any convert, -O wins over DST's extension; without it
            // an extension that names another format is refused.
            if a.format.is_none()
                && let Some(f) = Format::from_extension(dst).filter(|&f| f != Format::Vhd)
            {
                return Err(fail1(Error::invalid_argument(format!(
                    "--cloud makes a fixed VHD, but the extension of {} names {}; give a DST ending in .vhd",
                    dst.display(),
                    f.as_str()
                ))));
            }
            let (spec, cloud_size) =
                plan::cloud_spec(a.format.map(Format::from), size).map_err(fail1)?;
            let out = convert::OutputOptions {
                overwrite: a.force,
                sync: a.sync,
            };
            convert::create_file(dst, &spec, cloud_size, out, |out| {
                convert::copy_into(source, out, &mut tick)
            })
            .map_err(fail1)?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            return Ok(report_salvage(salvage.as_deref(), 0));
        }
        let format = plan::conversion_format(a.format.map(Format::from), dst, &src_info)
            .map_err(|e| fail1(format_flag_hint(e, "-O/--output-format")))?;
        let request = plan::ConvertRequest {
            disk_type: a.disk_type.map(Into::into),
            block_size: parse_opt_size(a.block_size.as_deref()).map_err(fail1)?,
            logical_sector_size: a.sectors.logical,
            physical_sector_size: a.sectors.physical,
            base: a.base.clone(),
        };
        let mut spec = plan::conversion_spec(format, &src_info, &request);
        if format == Format::Evhd {
            let options = plan::evhd_output(
                &src_info,
                a.recipients.list(),
                a.cipher.into(),
                a.recipients.signer(),
            )
            .map_err(|e| fail1(signing_hint(e).with_path(src)))?;
            spec.evhd = Some(options);
        }
        let out = convert::OutputOptions {
            overwrite: a.force,
            sync: a.sync,
        };
        match &a.base {
            Some(b) => {
                refuse_same_file(b, dst).map_err(fail1)?;
                parent.warn_force_share(&[b]);
                let base_disk = vhdkit::open(
                    b,
                    &OpenOptions::new()
                        .force_share(parent.force_share)
                        .salvage(salvage.clone()),
                )
                .map_err(|e| fail1(force_share_hint(e, false)))?;
                convert::create_file(dst, &spec, size, out, |out| {
                    convert::copy_delta(source, &base_disk, out, &mut tick)
                })
                .map_err(fail1)?;
            }
            None => {
                if plan::lacks_parent(&spec) {
                    return Err(fail1(Error::invalid_argument(
                        "use -B BASE to convert into a differencing image",
                    )));
                }
                convert::create_file(dst, &spec, size, out, |out| {
                    convert::copy_into(source, out, &mut tick)
                })
                .map_err(fail1)?;
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(report_salvage(salvage.as_deref(), 0))
}

/// What to do about a source the library refuses to sign over.
fn signing_hint(e: Error) -> Error {
    match e.kind() {
        ErrorKind::Untrusted => e.with_note(
            ": check it and `vhdkit sign` the source, give its signer with --trust, or give only public --recipient keys (an unsigned output)",
        ),
        ErrorKind::NeedsRepair => {
            e.with_note(": inspect the source and `vhdkit sign` it to accept the state it opens to")
        }
        _ => e,
    }
}
