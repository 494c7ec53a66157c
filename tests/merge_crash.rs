//! Crash safety of `merge`, by brute force.
//!
//! The merge writes only into the ancestor; the merged images are read and
//! then removed (file-system operations, after the ancestor is closed). So
//! the ancestor's file is put on a [`FaultStorage`] that loses power at
//! storage operation N, for every N the merge reaches, in both fault
//! models (operations persist in order with the one at N torn; or
//! everything up to the last flush plus any subset of the later writes).
//! After each crash, with the surviving bytes in the ancestor's file:
//!
//! - the child opens with its whole chain (the ancestor's identity is
//!   unchanged) and reads exactly what it read before the merge;
//! - `check` of the child, which checks every parent too, finds no error;
//! - running the merge again completes it: the ancestor then reads as the
//!   child did, and checks clean.

mod common;
mod merge_chain;

use std::path::Path;

use common::*;
use merge_chain::{Kind, build_busy, vhdkit_view};
use vhdkit::OpenOptions;
use vhdkit::merge::{self, MergeOptions};
use vhdkit::report::Severity;

/// `check` of `image` and its parents finds no error and checks everything.
fn check_no_errors(image: &Path, what: &str) {
    let r = vhdkit::check(image, &OpenOptions::new(), false).unwrap();
    assert!(
        r.worst() != Some(Severity::Error) && r.not_checked.is_empty(),
        "{what}: check {}: {:?} / not checked {:?}",
        image.display(),
        r.findings,
        r.not_checked
    );
}

/// Crash the merge of a three-level `kind` chain into level `target` (1:
/// the parent, 2: the base) at every storage operation.
fn crash_everywhere(kind: Kind, target: usize, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let chain = build_busy(dir.path(), kind, 3, seed, 120);
    let child = &chain.paths[0];
    let ancestor = &chain.paths[target];
    let model = &chain.views[0];
    assert_ne!(
        &chain.views[target], model,
        "the merge must change something"
    );
    let opts = MergeOptions::new().into_ancestor(Some(ancestor.clone()));
    let plan = merge::plan(child, &opts).unwrap();
    let original = std::fs::read(ancestor).unwrap();

    // A run without a crash, to count the operations and prove the copy.
    let probe = FaultStorage::new(
        original.clone(),
        u64::MAX,
        CrashMode::Prefix { tear: false },
        0,
    );
    merge::copy(&plan, Box::new(probe.clone()), &opts, &mut |_| {}).unwrap();
    let total = probe.count();
    assert!(total > 100, "{kind:?}: only {total} storage operations");
    std::fs::write(ancestor, probe.durable()).unwrap();
    assert!(vhdkit_view(ancestor) == *model, "{kind:?}: uncrashed merge");
    std::fs::write(ancestor, &original).unwrap();

    for mode in [CrashMode::Prefix { tear: true }, CrashMode::Subset] {
        for n in 0..total {
            let what = format!("{kind:?} into level {target}, {mode:?}, crash at op {n}/{total}");
            let fs = FaultStorage::new(original.clone(), n, mode, n ^ seed);
            let r = merge::copy(&plan, Box::new(fs.clone()), &opts, &mut |_| {});
            assert!(r.is_err(), "{what}: the merge did not notice the crash");
            assert!(fs.crashed(), "{what}");
            std::fs::write(ancestor, fs.durable()).unwrap();

            // The child still reads as before, through its whole chain.
            assert!(
                vhdkit_view(child) == *model,
                "{what}: the child's view changed"
            );
            check_no_errors(child, &what);

            // Running the merge again finishes it.
            let again = merge::plan(child, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
            // (Durability is what the crashes above test; here it only
            // costs time.)
            let file = vhdkit::unstable::open_file(ancestor, true, false)
                .unwrap()
                .without_sync();
            merge::copy(&again, Box::new(file), &opts, &mut |_| {})
                .unwrap_or_else(|e| panic!("{what}: merging again: {e}"));
            assert!(
                vhdkit_view(ancestor) == *model,
                "{what}: the finished merge reads differently"
            );
            check_no_errors(ancestor, &what);
            std::fs::write(ancestor, &original).unwrap();
        }
    }
}

#[test]
fn vhd_merge_into_the_base_survives_a_crash_anywhere() {
    crash_everywhere(Kind::Vhd, 2, 21);
}

#[test]
fn vhd_merge_into_a_differencing_parent_survives_a_crash_anywhere() {
    crash_everywhere(Kind::Vhd, 1, 22);
}

#[test]
fn vhdx_merge_into_the_base_survives_a_crash_anywhere() {
    crash_everywhere(Kind::Vhdx, 2, 23);
}

#[test]
fn vhdx_merge_into_a_differencing_parent_survives_a_crash_anywhere() {
    crash_everywhere(Kind::Vhdx, 1, 24);
}
