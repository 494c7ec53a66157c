//! Bad input to the lifecycle verbs (issue 14, acceptance 6), VHD and
//! VHDX: shrinking over stored data, merging into a parent with other
//! children, merging an image that is not differencing, set-parent onto
//! another image, compacting a damaged image. Each
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

fn other_image(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = image(d, &format!("p.{ext}"), "dynamic");
    let c = d.join(format!("c.{ext}"));
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    pattern(&c, MIB, 4096, 0x31);
    // Another image: its identity is not the recorded one.
    let big = d.join(format!("big.{ext}"));
    vhdkit_ok(["create", s(&big), "16M"]);
    let err = refused(d, &["set-parent", s(&c), s(&big)]);
    assert!(
        err.contains("--ignore-id")
            && err.contains(&format!("big.{ext}"))
            && err.contains("its virtual size is 16 MiB")
            && err.contains("the child's 8 MiB"),
        "{ext}: {err}"
    );
}

#[test]
fn vhd_set_parent_onto_another_image_is_refused() {
    other_image("vhd");
}

#[test]
fn vhdx_set_parent_onto_another_image_is_refused() {
    other_image("vhdx");
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

/// Compact with `--ignore-parent-id` over a parent that is not the
/// recorded one: blocks of zeros that read as the wrong parent does would
/// be dropped and then read the recorded parent's data. Refused, the
/// child unchanged, and it still reads zeros over its real parent.
fn compact_over_a_wrong_parent(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join(format!("p.{ext}"));
    vhdkit_ok(["create", "-t", "dynamic", s(&p), "8M"]);
    pattern(&p, 0, 8 * MIB, 0x10);
    let c = d.join(format!("c.{ext}"));
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    pattern(&c, 0, 8 * MIB, 0);
    let real = d.join(format!("real.{ext}"));
    std::fs::rename(&p, &real).unwrap();
    vhdkit_ok(["create", "-t", "dynamic", s(&p), "8M"]);
    for quick in [false, true] {
        let mut args = vec!["compact", "--ignore-parent-id", s(&c)];
        if quick {
            args.insert(1, "--quick");
        }
        let err = refused(d, &args);
        assert!(
            err.contains("recorded parent only") && err.contains(&format!("p.{ext}")),
            "{ext} {args:?}: {err}"
        );
    }
    std::fs::rename(&real, &p).unwrap();
    assert!(read_image(&c).iter().all(|&b| b == 0), "{ext}: c changed");
}

#[test]
fn vhd_compact_over_a_parent_taken_despite_its_id_is_refused() {
    compact_over_a_wrong_parent("vhd");
}

#[test]
fn vhdx_compact_over_a_parent_taken_despite_its_id_is_refused() {
    compact_over_a_wrong_parent("vhdx");
}

/// Every writer in place refuses an image its open finds damaged, as
/// `write` and `compact` do, and leaves every file as it was.
fn writers_refused(d: &Path, img: &Path, vhdx: bool) {
    let mut runs: Vec<Vec<&str>> = vec![
        vec!["resize", s(img), "16M"],
        vec!["set", "--reset-id", s(img)],
    ];
    if vhdx {
        runs.push(vec!["set", "--physical-sector-size", "4096", s(img)]);
    }
    for args in runs {
        let err = refused(d, &args);
        assert!(
            err.contains("damaged") && err.contains("check --repair"),
            "{args:?}: {err}"
        );
    }
}

/// Block 2 of an 8 MiB dynamic or differencing VHD pointed into the BAT.
fn vhd_into_the_bat(p: &Path) {
    patch_file(p, 0x608, &3u32.to_be_bytes());
}

/// The first payload entry of a VHDX pointed past the end of the file.
fn vhdx_past_the_end(p: &Path) {
    let bat = info_json(p)["vhdx"]["bat"]["offset"].as_u64().unwrap();
    patch_file(p, bat, &((1000u64 << 20) | 6).to_le_bytes());
}

#[test]
fn vhd_resize_and_set_of_a_damaged_image_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), "d.vhd", "dynamic");
    vhd_into_the_bat(&p);
    writers_refused(dir.path(), &p, false);
}

#[test]
fn vhdx_resize_and_set_of_a_damaged_image_are_refused() {
    // A table entry past the end of the file.
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), "d.vhdx", "dynamic");
    vhdx_past_the_end(&p);
    writers_refused(dir.path(), &p, true);
    // A block cut short by the end of the file.
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), "d.vhdx", "dynamic");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - MIB)
        .unwrap();
    writers_refused(dir.path(), &p, true);
    // The region table's copy (at 256 KiB) with a bad CRC.
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), "d.vhdx", "dynamic");
    patch_file(&p, 0x40000 + 0x8000, &[0x5a]);
    writers_refused(dir.path(), &p, true);
}

/// set-parent (with a new identity) and rebase of a damaged child.
fn reparent_damaged(ext: &str, damage: fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = image(d, &format!("p.{ext}"), "dynamic");
    let q = image(d, &format!("q.{ext}"), "dynamic");
    let c = d.join(format!("c.{ext}"));
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    pattern(&c, 0, 4 * MIB, 0x31);
    damage(&c);
    for args in [
        vec!["set-parent", "--ignore-id", s(&c), s(&q)],
        vec!["rebase", s(&c), s(&q)],
    ] {
        let err = refused(d, &args);
        assert!(
            err.contains("damaged") && err.contains("check --repair"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn vhd_set_parent_and_rebase_of_a_damaged_child_are_refused() {
    reparent_damaged("vhd", vhd_into_the_bat);
}

#[test]
fn vhdx_set_parent_and_rebase_of_a_damaged_child_are_refused() {
    reparent_damaged("vhdx", vhdx_past_the_end);
}

/// Merging through a symbolic link removes the image, not the link, and
/// says so by the image's real path.
fn merge_through_a_link(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = image(d, &format!("p.{ext}"), "dynamic");
    let c = d.join(format!("c.{ext}"));
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    pattern(&c, MIB, 4096, 0x41);
    let want = read_image(&c);
    let link = d.join(format!("link.{ext}"));
    std::os::unix::fs::symlink(&c, &link).unwrap();
    let out = String::from_utf8(vhdkit_ok(["merge", s(&link)])).unwrap();
    assert!(!c.exists(), "{ext}: the image stayed: {out}");
    let real = std::fs::canonicalize(d).unwrap().join(format!("c.{ext}"));
    assert!(
        out.contains(&format!("removed {}", real.display())),
        "{ext}: {out}"
    );
    assert_eq!(read_image(&p), want, "{ext}");
}

#[test]
fn vhd_merge_through_a_link_removes_the_image() {
    merge_through_a_link("vhd");
}

#[test]
fn vhdx_merge_through_a_link_removes_the_image() {
    merge_through_a_link("vhdx");
}

/// Rebasing a VHDX gives it a new DataWriteGuid: refused while an image
/// beside it records it as its parent, naming that image; `--force`
/// rebases anyway and warns about it.
#[test]
fn vhdx_rebase_of_a_parent_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = image(d, "p.vhdx", "dynamic");
    let q = image(d, "q.vhdx", "dynamic");
    let c = d.join("c.vhdx");
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    pattern(&c, MIB, 4096, 0x51);
    let g = d.join("g.vhdx");
    vhdkit_ok(["create", "--parent", s(&c), s(&g)]);
    let err = refused(d, &["rebase", s(&c), s(&q)]);
    assert!(
        err.contains("g.vhdx") && err.contains("DataWriteGuid") && err.contains("--force"),
        "{err}"
    );
    let (code, _, err) = vhdkit_run(&["rebase", "--force", s(&c), s(&q)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("g.vhdx") && err.contains("no longer opens"),
        "{err}"
    );
}
