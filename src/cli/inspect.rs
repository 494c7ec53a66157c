//! `info`, `check` and `map`: reports about one image, printed by the
//! library's report writers.

use std::path::Path;

use vhdkit::report;

use super::args::ParentArgs;
use super::open::{force_share_hint, warn_signature};
use super::output::emit;
use super::{Outcome, fail1};

/// `vhdkit info`.
pub fn info(json: bool, image: &Path, parent: &ParentArgs) -> Outcome {
    parent.warn_force_share(&[image]);
    let disk = parent
        .open(image, &parent.options().allow_missing_parent(true))
        .map_err(fail1)?;
    warn_signature(disk.as_ref(), image);
    let mut info = disk.info();
    super::say_info_hints(&mut info);
    // A table that cannot be read only means there is no minimum to show.
    info.minimum_size = vhdkit::resize::minimum_size(disk.as_ref()).unwrap_or(None);
    if json {
        emit(json, &info, report::write_info_text)?;
    } else {
        let mut text = Vec::new();
        report::write_info_text(&info, &mut text).map_err(super::output::stdout_err)?;
        add_rows(&mut text, &super::partitions::info_lines(disk.as_ref()));
        use std::io::Write;
        std::io::stdout()
            .lock()
            .write_all(&text)
            .map_err(super::output::stdout_err)?;
    }
    Ok(0)
}

/// Append `key  value` rows to the info report `text`, their values in
/// its value column (wider keys push theirs further).
fn add_rows(text: &mut Vec<u8>, rows: &[(String, String)]) {
    use std::io::Write;
    // The report's value column: where the first line's value starts.
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let key_end = first.windows(2).position(|w| w == b"  ").unwrap_or(0);
    let column = key_end + first[key_end..].iter().take_while(|&&b| b == b' ').count();
    let width = rows
        .iter()
        .map(|(k, _)| k.len())
        .chain([column.saturating_sub(2)])
        .max()
        .unwrap_or(0);
    for (k, v) in rows {
        let _ = writeln!(text, "{k:<width$}  {v}");
    }
}

/// `vhdkit check`: the exit status is the report's.
pub fn check(json: bool, repair: bool, image: &Path, parent: &ParentArgs) -> Outcome {
    if repair {
        parent.refuse_force_share(image, "check --repair")?;
    }
    parent.warn_force_share(&[image]);
    let opts = parent.options();
    parent.refuse_key_for(&[image], &opts).map_err(fail1)?;
    let mut r =
        vhdkit::check(image, &opts, repair).map_err(|e| fail1(force_share_hint(e, repair)))?;
    super::say_check_hints(&mut r, parent.ignore_parent_id);
    if parent.ignore_parent_id && r.parent_mismatch {
        eprintln!(
            "vhdkit: warning: --ignore-parent-id lets check read a parent that is not the \
             recorded one, but cannot make the chain clean: the mismatch stays listed \
             under not checked (exit 1 unless damage is found)"
        );
    }
    emit(json, &r, report::write_check_text)?;
    Ok(r.exit_code() as u8)
}

/// `vhdkit map`.
pub fn map(json: bool, image: &Path, parent: &ParentArgs) -> Outcome {
    parent.warn_force_share(&[image]);
    let disk = parent
        .open(image, &parent.options().allow_missing_parent(true))
        .map_err(fail1)?;
    warn_signature(disk.as_ref(), image);
    let extents = disk
        .map(0, disk.virtual_size())
        .map_err(|e| fail1(e.with_path(image)))?;
    emit(json, &extents[..], report::write_map_text)?;
    Ok(0)
}
