//! `merge`: a differencing chain's data written into its parent or an
//! older ancestor in place. Every result is compared with a flat model of
//! what the child read before the merge, read back by vhdkit, `qemu-img
//! convert` and libvhdi (pyvhdi), and checked by `qemu-img check` and
//! vhdkit's `check`.

mod common;
mod merge_chain;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::*;
use merge_chain::{Kind, MIB, SIZE, build, build_named, sibling, vhdkit_view};
use vhdkit::merge::{self, MergeOptions};
use vhdkit::{ErrorKind, OpenOptions};

const KINDS: [Kind; 2] = [Kind::Vhd, Kind::Vhdx];

fn merge_ok(child: &Path, opts: &MergeOptions) -> merge::MergeReport {
    merge::merge(child, opts, &mut |_| {})
        .unwrap_or_else(|e| panic!("merge {}: {e}", child.display()))
}

/// The content of `chain[0]` (with `chain[1..]` as its parents) as qemu-img
/// reads it.
fn qemu_view(kind: Kind, image: &Path) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("out.raw");
    qemu_img([
        OsStr::new("convert"),
        OsStr::new("-f"),
        OsStr::new(kind.qemu()),
        OsStr::new("-O"),
        OsStr::new("raw"),
        image.as_os_str(),
        raw.as_os_str(),
    ]);
    std::fs::read(raw).unwrap()
}

/// `qemu-img check` of one file (qemu checks VHDX, not VHD).
fn qemu_check(kind: Kind, image: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-f", kind.qemu()])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check {}:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// vhdkit's check of `image` (and its parents) finds nothing.
fn vhdkit_check_clean(image: &Path) {
    let r = vhdkit::check(image, &OpenOptions::new(), false).unwrap();
    assert!(
        r.findings.is_empty() && r.not_checked.is_empty(),
        "check {}: {:?} / not checked {:?}",
        image.display(),
        r.findings,
        r.not_checked
    );
}

/// `chain` (an image then its parents) reads as `model` in vhdkit,
/// qemu-img (which reads neither VHD nor VHDX differencing images, so only
/// a chain of one) and libvhdi, and every file checks clean.
fn assert_content(kind: Kind, chain: &[&Path], model: &[u8]) {
    let got = vhdkit_view(chain[0]);
    assert!(
        got == model,
        "vhdkit reads {} differently",
        chain[0].display()
    );
    vhdkit_check_clean(chain[0]);
    if chain.len() == 1 && require_tool("qemu-img") {
        if kind == Kind::Vhdx {
            qemu_check(kind, chain[0]);
        }
        let q = qemu_view(kind, chain[0]);
        assert!(
            q == model,
            "qemu-img reads {} differently",
            chain[0].display()
        );
    }
    if require_tool("pyvhdi") {
        let (size, mut data) = pyvhdi_read(chain);
        if chain.len() > 1 && kind == Kind::Vhdx {
            // libvhdi 20210425 reads a block of a differencing VHDX whose
            // state is ZERO from the parent (vhdkit's discard in the tests'
            // chains makes such blocks, before any merge too): those runs
            // are left out of its comparison.
            let d = vhdkit::open(chain[0], &OpenOptions::new()).unwrap();
            for e in d.map(0, SIZE).unwrap() {
                if e.kind == vhdkit::ExtentKind::Zero {
                    let r = e.start as usize..e.end() as usize;
                    data[r.clone()].copy_from_slice(&model[r]);
                }
            }
        }
        assert_eq!(size, SIZE);
        assert!(
            data == model,
            "libvhdi reads {} differently",
            chain[0].display()
        );
    }
}

#[test]
fn two_levels_merge_into_the_base() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let c = build(dir.path(), kind, 2, 1);
        let (child, base) = (&c.paths[0], &c.paths[1]);
        // The child changes what the base reads.
        assert_ne!(c.views[0], c.views[1]);
        let r = merge_ok(child, &MergeOptions::new());
        assert_eq!(r.plan.ancestor.path, *base);
        assert_eq!(r.removed, vec![child.clone()]);
        assert!(!r.renewed_id);
        assert!(!child.exists(), "{kind:?}: the merged child is removed");
        assert_content(kind, &[base], &c.views[0]);
    }
}

#[test]
fn three_levels_merge_into_the_parent_only() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let c = build(dir.path(), kind, 3, 2);
        let (child, mid, base) = (&c.paths[0], &c.paths[1], &c.paths[2]);
        let base_hash = file_sha256(base);
        let r = merge_ok(child, &MergeOptions::new());
        assert_eq!(r.plan.ancestor.path, *mid);
        assert!(!child.exists());
        // The parent, itself differencing, now reads as the child did;
        // its own parent is untouched.
        assert_content(kind, &[mid, base], &c.views[0]);
        assert_eq!(
            file_sha256(base),
            base_hash,
            "{kind:?}: the base is untouched"
        );
    }
}

#[test]
fn merge_into_an_ancestor_through_two_levels() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let c = build(dir.path(), kind, 3, 3);
        let (child, mid, base) = (&c.paths[0], &c.paths[1], &c.paths[2]);
        let opts = MergeOptions::new().into_ancestor(Some(base.clone()));
        let r = merge_ok(child, &opts);
        assert_eq!(r.plan.merged.len(), 2);
        assert_eq!(r.removed, vec![child.clone(), mid.clone()]);
        assert!(!child.exists() && !mid.exists());
        assert_content(kind, &[base], &c.views[0]);
    }
}

#[test]
fn keep_leaves_the_child_which_still_reads_its_content() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let c = build(dir.path(), kind, 2, 4);
        let (child, base) = (&c.paths[0], &c.paths[1]);
        let r = merge_ok(child, &MergeOptions::new().keep(true));
        assert!(r.removed.is_empty() && !r.renewed_id);
        assert!(child.exists());
        assert_content(kind, &[base], &c.views[0]);
        // The base's identity was kept, and the base holds what the child
        // reads, so the kept child reads the same.
        assert_content(kind, &[child, base], &c.views[0]);
    }
}

#[test]
fn keep_across_levels_gives_a_vhdx_ancestor_a_new_identity() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let c = build(dir.path(), kind, 3, 5);
        let (child, mid, base) = (&c.paths[0], &c.paths[1], &c.paths[2]);
        let opts = MergeOptions::new()
            .into_ancestor(Some(base.clone()))
            .keep(true);
        let r = merge_ok(child, &opts);
        assert!(child.exists() && mid.exists());
        assert_content(kind, &[base], &c.views[0]);
        match kind {
            // The kept middle level would read the child's data through the
            // base: it must no longer open.
            Kind::Vhdx => {
                assert!(r.renewed_id);
                let e = open_err(mid, &OpenOptions::new());
                assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
            }
            // A VHD's unique id never changes on writes.
            Kind::Vhd => assert!(!r.renewed_id),
        }
    }
}

/// Every file in `dir` with its hash.
fn hashes(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let h = file_sha256(&p);
            (p, h)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn another_child_of_the_parent_is_refused_and_nothing_changes() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let c = build(dir.path(), kind, 2, 6);
        let (child, base) = (&c.paths[0], &c.paths[1]);
        let other = dir.path().join(format!("other.{}", kind.ext(true)));
        sibling(kind, &other, base);
        let before = hashes(dir.path());
        let e = merge::merge(child, &MergeOptions::new(), &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("other."), "{e}");
        assert_eq!(hashes(dir.path()), before, "{kind:?}: nothing changed");
        // The command line names the other child and the way to force.
        let (code, _, err) = vhdkit_run(&["merge", s(child)]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(s(&other)) && err.contains("--force"), "{err}");
        assert_eq!(hashes(dir.path()), before, "{kind:?}: nothing changed");
    }
}

#[test]
fn another_child_of_an_intermediate_level_is_refused() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let c = build(dir.path(), kind, 3, 7);
        let (child, mid, base) = (&c.paths[0], &c.paths[1], &c.paths[2]);
        let other = dir.path().join(format!("other.{}", kind.ext(true)));
        sibling(kind, &other, mid);
        let before = hashes(dir.path());
        let opts = MergeOptions::new().into_ancestor(Some(base.clone()));
        let e = merge::merge(child, &opts, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("other."), "{e}");
        assert_eq!(hashes(dir.path()), before);
    }
}

#[test]
fn a_child_with_children_of_its_own_is_kept_or_refused() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let c = build(dir.path(), kind, 2, 15);
        let (child, base) = (&c.paths[0], &c.paths[1]);
        let grandchild = dir.path().join(format!("g.{}", kind.ext(true)));
        sibling(kind, &grandchild, child);
        let g_view = vhdkit_view(&grandchild);
        let before = hashes(dir.path());
        let e = merge::merge(child, &MergeOptions::new(), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("g."), "{e}");
        assert_eq!(hashes(dir.path()), before, "{kind:?}: nothing changed");
        let (code, _, err) = vhdkit_run(&["merge", s(child)]);
        assert_eq!(code, 1);
        assert!(
            err.contains(s(&grandchild)) && err.contains("--keep"),
            "{err}"
        );
        // Kept, the child reads as before, and so does its own child.
        merge_ok(child, &MergeOptions::new().keep(true));
        assert_content(kind, &[base], &c.views[0]);
        assert!(vhdkit_view(&grandchild) == g_view, "{kind:?}");
    }
}

#[test]
fn forced_merge_breaks_the_other_vhdx_child_detectably() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let c = build(dir.path(), kind, 2, 8);
        let (child, base) = (&c.paths[0], &c.paths[1]);
        let other = dir.path().join(format!("other.{}", kind.ext(true)));
        sibling(kind, &other, base);
        let r = merge_ok(child, &MergeOptions::new().force(true));
        assert_eq!(r.plan.siblings, vec![other.clone()]);
        assert_content(kind, &[base], &c.views[0]);
        if kind == Kind::Vhdx {
            assert!(r.renewed_id);
            let e = open_err(&other, &OpenOptions::new());
            assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
        }
    }
}

#[test]
fn children_of_other_chains_in_the_folder_do_not_count() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let c = build(dir.path(), kind, 2, 9);
        // A second, unrelated chain in the same folder.
        let _other = build_named(dir.path(), kind, 2, 10, "x");
        merge_ok(&c.paths[0], &MergeOptions::new());
        assert_content(kind, &[&c.paths[1]], &c.views[0]);
    }
}

#[test]
fn images_without_a_parent_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = build(dir.path(), Kind::Vhdx, 2, 11);
    let base = &c.paths[1];
    let e = merge::merge(base, &MergeOptions::new(), &mut |_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("not a differencing"), "{e}");
    let evhd = dir.path().join("e.evhd");
    make_evhd(base, &evhd);
    let e = merge::merge(&evhd, &MergeOptions::new(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Unsupported | ErrorKind::KeyRequired),
        "{e}"
    );
}

#[test]
fn a_chain_whose_parent_was_written_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = build(dir.path(), Kind::Vhdx, 2, 16);
    let (child, base) = (&c.paths[0], &c.paths[1]);
    // A write into the parent gives it a new data write id.
    let mut d = vhdkit::open(base, &OpenOptions::new().writable(true)).unwrap();
    d.write_at(&[1; 512], 0).unwrap();
    d.close().unwrap();
    drop(d);
    let before = hashes(dir.path());
    let e = merge::merge(child, &MergeOptions::new(), &mut |_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
    let (code, _, err) = vhdkit_run(&["merge", s(child)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot be merged") && !err.contains("override"),
        "{err}"
    );
    assert_eq!(hashes(dir.path()), before);
}

#[test]
fn into_an_image_outside_the_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = build(dir.path(), Kind::Vhd, 2, 12);
    let stranger = build_named(dir.path(), Kind::Vhd, 1, 13, "s");
    let before = hashes(dir.path());
    for into in [&stranger.paths[0], &c.paths[0]] {
        let opts = MergeOptions::new().into_ancestor(Some(into.clone()));
        let e = merge::merge(&c.paths[0], &opts, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    }
    assert_eq!(hashes(dir.path()), before);
}

#[test]
fn the_command_line_merges_and_says_what_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let c = build(dir.path(), Kind::Vhdx, 3, 14);
    let (child, base) = (&c.paths[0], &c.paths[2]);
    let out = vhdkit_ok_stdout(&["merge", s(child), "--into", s(base)]);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("merged") && text.contains(s(base)), "{text}");
    assert_content(Kind::Vhdx, &[base], &c.views[0]);
    // Nothing is left to merge.
    let (code, _, err) = vhdkit_run(&["merge", s(base)]);
    assert_eq!(code, 1);
    assert!(err.contains("not a differencing"), "{err}");
    let _ = MIB;
}
