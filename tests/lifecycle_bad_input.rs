//! Bad input to the lifecycle verbs (issue 14, acceptance 6), VHD and
//! VHDX: shrinking over stored data, merging into a parent with other
//! children, merging an image that is not differencing, set-parent or
//! rebase onto an image of another size, compacting a damaged image. Each
//! fails with a clear error naming what is wrong, and every file in the
//! folder (child, parents, siblings) is byte-identical afterwards, with no
//! file added or removed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

const MIB: u64 = 1 << 20;

/// The SHA-256 of every file in `dir`, by name.
fn hashes(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, file_sha256(&p))
        })
        .collect()
}

/// Run `args`, which must fail with exit code 1 and leave every file of
/// `dir` as it was; returns the error message.
fn refused(dir: &Path, args: &[&str]) -> String {
    let before = hashes(dir);
    let err = vhdkit_fails(Some(1), args);
    assert_eq!(hashes(dir), before, "vhdkit {args:?} changed files: {err}");
    err
}

fn pattern(img: &Path, off: u64, len: u64, byte: u8) {
    vhdkit_ok([
        "write",
        s(img),
        "--offset",
        &off.to_string(),
        "--pattern",
        &byte.to_string(),
        "--length",
        &len.to_string(),
    ]);
}

/// An 8 MiB image `name` in `dir` (`-t kind`) with data at 0 and at 7 MiB.
fn image(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let p = dir.join(name);
    vhdkit_ok(["create", "-t", kind, s(&p), "8M"]);
    pattern(&p, 0, 4096, 0x11);
    pattern(&p, 7 * MIB, 4096, 0x12);
    p
}

fn shrink_over_data(ext: &str) {
    for kind in ["fixed", "dynamic"] {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), &format!("{kind}.{ext}"), kind);
        let err = refused(dir.path(), &["resize", "--shrink", s(&p), "4M"]);
        assert!(
            err.contains("cannot shrink") && err.contains("0x700000..0x701000"),
            "{kind} {ext}: {err}"
        );
        // The same size without --shrink is refused too.
        let err = refused(dir.path(), &["resize", s(&p), "4M"]);
        assert!(err.contains("--shrink"), "{kind} {ext}: {err}");
    }
}

#[test]
fn vhd_shrink_over_stored_data_is_refused() {
    shrink_over_data("vhd");
}

#[test]
fn vhdx_shrink_over_stored_data_is_refused() {
    shrink_over_data("vhdx");
}

fn merge_refused(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = image(d, &format!("p.{ext}"), "dynamic");
    let [c1, c2] = ["c1", "c2"].map(|n| d.join(format!("{n}.{ext}")));
    for c in [&c1, &c2] {
        vhdkit_ok(["create", "--parent", s(&p), s(c)]);
    }
    pattern(&c1, MIB, 4096, 0x21);
    pattern(&c2, 2 * MIB, 4096, 0x22);
    // Into a parent that has another child.
    let err = refused(d, &["merge", s(&c1)]);
    assert!(
        err.contains("other differencing images") && err.contains(&format!("c2.{ext}")),
        "{ext}: {err}"
    );
    // An image that has no parent.
    let err = refused(d, &["merge", s(&p)]);
    assert!(err.contains("not a differencing one"), "{ext}: {err}");
    assert!(err.contains(&format!("p.{ext}")), "{ext}: {err}");
}

#[test]
fn vhd_merge_refusals() {
    merge_refused("vhd");
}

#[test]
fn vhdx_merge_refusals() {
    merge_refused("vhdx");
}

fn other_size(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = image(d, &format!("p.{ext}"), "dynamic");
    let c = d.join(format!("c.{ext}"));
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    pattern(&c, MIB, 4096, 0x31);
    let big = d.join(format!("big.{ext}"));
    vhdkit_ok(["create", s(&big), "16M"]);
    for verb in ["set-parent", "rebase"] {
        let err = refused(d, &[verb, s(&c), s(&big)]);
        assert!(
            err.contains("must be the same size")
                && err.contains("16 MiB")
                && err.contains("8 MiB")
                && err.contains(&format!("big.{ext}")),
            "{verb} {ext}: {err}"
        );
    }
    // --ignore-id does not let a parent of another size through.
    let err = refused(d, &["set-parent", "--ignore-id", s(&c), s(&big)]);
    assert!(err.contains("must be the same size"), "{ext}: {err}");
}

#[test]
fn vhd_set_parent_and_rebase_onto_another_size_are_refused() {
    other_size("vhd");
}

#[test]
fn vhdx_set_parent_and_rebase_onto_another_size_are_refused() {
    other_size("vhdx");
}

/// Compact, full and quick, of an image `check` finds damaged.
fn compact_refused(d: &Path, img: &Path, what: &[&str]) {
    assert_eq!(vhdkit_run(&["check", s(img)]).0, 2, "the image is damaged");
    for args in [vec!["compact", s(img)], vec!["compact", "--quick", s(img)]] {
        let err = refused(d, &args);
        assert!(err.contains("damaged"), "{args:?}: {err}");
        for w in what {
            assert!(err.contains(w), "{args:?}: {w:?} missing from {err}");
        }
    }
}

#[test]
fn vhd_compact_of_a_damaged_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), "d.vhd", "dynamic");
    // Block 3 (7 MiB) made to overlap block 0: its table entry at 0x60c.
    let mut b = std::fs::read(&p).unwrap();
    let e0 = u32::from_be_bytes(b[0x600..0x604].try_into().unwrap());
    b[0x60c..0x610].copy_from_slice(&(e0 + 8).to_be_bytes());
    std::fs::write(&p, b).unwrap();
    compact_refused(dir.path(), &p, &["overlap", "0x600", "0x60c"]);
}

#[test]
fn vhdx_compact_of_a_damaged_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), "d.vhdx", "dynamic");
    // The first table entry pointed past the end of the file (1000 MiB,
    // fully present).
    let bat = info_json(&p)["vhdx"]["bat"]["offset"].as_u64().unwrap() as usize;
    let mut b = std::fs::read(&p).unwrap();
    b[bat..bat + 8].copy_from_slice(&((1000u64 << 20) | 6).to_le_bytes());
    std::fs::write(&p, b).unwrap();
    compact_refused(dir.path(), &p, &["past the end", "0x3e800000"]);
}
