//! `merge`: write a differencing image's data into its parent or an
//! older ancestor (see [`vhdkit::merge`]).

use vhdkit::OpenOptions;
use vhdkit::merge::{self, MergeOptions};

use super::args::MergeArgs;
use super::{Outcome, fail1};

pub fn merge(a: MergeArgs) -> Outcome {
    let opts = MergeOptions::new()
        .into_ancestor(a.into.clone())
        .keep(a.keep)
        .force(a.force)
        .open(
            OpenOptions::new()
                .print_warnings(true)
                .parent_path(a.parent_file.clone()),
        );
    let plan = merge::plan(&a.child, &opts).map_err(fail1)?;
    if plan.scan_truncated {
        eprintln!(
            "vhdkit: note: only the first {} image files of a folder were checked for other children",
            vhdkit::unstable::parent::MAX_CHILD_SCAN
        );
    }
    if let Some(e) = merge::refusal(&plan, &opts) {
        let note = if plan.siblings.is_empty() {
            " (--keep keeps it for them; --force merges anyway)"
        } else {
            " (--force merges anyway)"
        };
        return Err(fail1(e.with_note(note)));
    }
    let hit: Vec<String> = plan
        .siblings
        .iter()
        .chain(plan.orphans.iter().filter(|_| !a.keep))
        .map(|p| p.display().to_string())
        .collect();
    if !hit.is_empty() {
        eprintln!(
            "vhdkit: warning: merging although {} depend on what changes; they are no longer valid",
            hit.join(", ")
        );
    }
    let report = merge::execute(plan, &opts, &mut |_| {}).map_err(fail1)?;
    if !a.quiet {
        let merged: Vec<String> = report
            .plan
            .merged
            .iter()
            .map(|l| l.path.display().to_string())
            .collect();
        let removed: Vec<String> = report
            .removed
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        println!(
            "merged {} into {} ({} bytes written){}",
            merged.join(", "),
            report.plan.ancestor.path.display(),
            report.bytes,
            if removed.is_empty() {
                "; the merged images are kept and no longer valid".to_string()
            } else {
                format!("; removed {}", removed.join(", "))
            }
        );
    }
    Ok(0)
}
