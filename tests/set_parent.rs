//! `set-parent` (issue 14, point 4): a differencing VHD or VHDX whose
//! parent moved is pointed at it again; the content read by vhdkit and by
//! libvhdi (pyvhdi, parent set) equals the flat model; a parent of another
//! size or identity is refused and the child is unchanged; and a crash at
//! every storage operation leaves the child with its old or its new
//! record, reading correctly, and re-running completes it.
//!
//! qemu-img opens neither a differencing VHDX nor a VHD's parent, so it is
//! no oracle here.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vhdkit::reparent::{SetParentOptions, set_parent, set_parent_in};
use vhdkit::{OpenOptions, Severity};

const MIB: usize = 1 << 20;
const SIZE: usize = 8 * MIB;

/// A chain in `dir/a`: base (random data in its first 3 MiB) and child
/// (two writes over it); returns (base, child, flat model of the child).
fn chain(dir: &Path, ext: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let a = dir.join("a");
    std::fs::create_dir_all(&a).unwrap();
    let base = a.join(format!("base.{ext}"));
    let child = a.join(format!("child.{ext}"));
    let mut model = vec![0u8; SIZE];
    let data = random_bytes(3 * MIB, 7);
    model[..3 * MIB].copy_from_slice(&data);
    let input = dir.join("in.bin");
    write_raw(&input, &data);
    vhdkit_ok(["create", s(&base), "8M"]);
    vhdkit_ok(["write", s(&base), "--offset", "0", "--input", s(&input)]);
    vhdkit_ok(["create", "--parent", s(&base), s(&child)]);
    for (off, len, byte) in [(4096usize, 8192usize, 0x42u8), (5 * MIB + 512, 1536, 0x43)] {
        model[off..off + len].fill(byte);
        vhdkit_ok([
            "write",
            s(&child),
            "--offset",
            &off.to_string(),
            "--pattern",
            &byte.to_string(),
            "--length",
            &len.to_string(),
        ]);
    }
    (base, child, model)
}

/// `check` exit status of `image`.
fn check_code(image: &Path) -> i32 {
    vhdkit_run(&["check", s(image)]).0
}

/// The parent path vhdkit finds for `child`.
fn parent_path(child: &Path) -> PathBuf {
    let d = open(child);
    let p = d.info().parent.expect("a parent");
    std::fs::canonicalize(p.path.expect("found")).unwrap()
}

fn moved_parent(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (base, child, model) = chain(dir.path(), ext);
    let b = dir.path().join("b").join("deeper");
    std::fs::create_dir_all(&b).unwrap();
    let moved = b.join(base.file_name().unwrap());
    std::fs::rename(&base, &moved).unwrap();
    assert_eq!(
        check_code(&child),
        1,
        "the parent is missing before set-parent"
    );
    vhdkit_ok(["set-parent", s(&child), s(&moved)]);
    assert_eq!(check_code(&child), 0);
    assert_eq!(parent_path(&child), std::fs::canonicalize(&moved).unwrap());
    assert!(read_image(&child) == model, "vhdkit reads the model");
    // Running again changes nothing.
    let before = file_sha256(&child);
    let out = vhdkit_stdout(&["set-parent", s(&child), s(&moved)]);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(file_sha256(&child), before);
    if require_tool("pyvhdi") {
        let (n, content) = pyvhdi_read(&[&child, &moved]);
        assert_eq!(n, SIZE as u64);
        assert!(content == model, "libvhdi reads the model");
    }
    // The child moves too: the relative locator is recomputed from its folder.
    let c2 = dir.path().join("b").join(child.file_name().unwrap());
    std::fs::rename(&child, &c2).unwrap();
    vhdkit_ok(["set-parent", s(&c2), s(&moved)]);
    assert_eq!(check_code(&c2), 0);
    assert!(read_image(&c2) == model);
}

#[test]
fn vhd_child_follows_its_moved_parent() {
    moved_parent("vhd");
}

#[test]
fn vhdx_child_follows_its_moved_parent() {
    moved_parent("vhdx");
}

fn refused(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (base, child, model) = chain(dir.path(), ext);
    let other = dir.path().join(format!("other.{ext}"));
    vhdkit_ok(["create", s(&other), "16M"]);
    let before = file_sha256(&child);
    let err = vhdkit_fails(Some(1), &["set-parent", s(&child), s(&other)]);
    assert!(err.contains("--ignore-id"), "{err}");
    assert_eq!(file_sha256(&child), before);
    // --ignore-id takes a smaller parent too, saying that the child reads
    // zeros past its end where it stores nothing.
    let small = dir.path().join(format!("small.{ext}"));
    let small_child = dir.path().join(format!("small-child.{ext}"));
    vhdkit_ok(["create", s(&small), "4M"]);
    std::fs::copy(&child, &small_child).unwrap();
    let (code, _, err) = vhdkit_run(&["set-parent", "--ignore-id", s(&small_child), s(&small)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("the parent ends at byte 4194304, before the child's end (8388608)"),
        "{err}"
    );
    assert_eq!(check_code(&small_child), 0);
    let got = read_image(&small_child);
    assert!(got[4 << 20..].iter().enumerate().all(|(i, &b)| {
        let at = (4 << 20) + i;
        b == if (5 * MIB + 512..5 * MIB + 2048).contains(&at) {
            0x43
        } else {
            0
        }
    }));
    std::fs::remove_file(&small_child).unwrap();

    // A parent of the right size but another identity: refused unless
    // --ignore-id, which takes its id.
    let twin = dir.path().join(format!("twin.{ext}"));
    vhdkit_ok(["convert", s(&base), s(&twin)]);
    let err = vhdkit_fails(Some(1), &["set-parent", s(&child), s(&twin)]);
    assert!(err.contains("--ignore-id"), "{err}");
    assert_eq!(file_sha256(&child), before);
    let (code, _, err) = vhdkit_run(&["set-parent", "--ignore-id", s(&child), s(&twin)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("was replaced"), "{err}");
    assert_eq!(check_code(&child), 0);
    assert_eq!(parent_path(&child), std::fs::canonicalize(&twin).unwrap());
    assert!(read_image(&child) == model);

    // The child itself as its parent, and a non-differencing image.
    let before = file_sha256(&child);
    vhdkit_fails(Some(1), &["set-parent", s(&child), s(&child)]);
    let err = vhdkit_fails(Some(1), &["set-parent", s(&base), s(&twin)]);
    assert!(err.contains("not a differencing image"), "{err}");
    assert_eq!(file_sha256(&child), before);
}

#[test]
fn vhd_wrong_parents_are_refused() {
    refused("vhd");
}

#[test]
fn vhdx_wrong_parents_are_refused() {
    refused("vhdx");
}

/// Crash `set-parent` at every storage operation: the parent is copied
/// from `a/` to `b/` (same identity), so both the old and the new record
/// lead to a parent and the child must read the model either way.
fn crash(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (base, child, model) = chain(dir.path(), ext);
    let b = dir.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    let new_parent = b.join(base.file_name().unwrap());
    std::fs::copy(&base, &new_parent).unwrap();
    let (old_canon, new_canon) = (
        std::fs::canonicalize(&base).unwrap(),
        std::fs::canonicalize(&new_parent).unwrap(),
    );
    let image = std::fs::read(&child).unwrap();
    let mut states = 0;
    let (mut saw_old, mut saw_new) = (false, false);
    for mode in [CrashMode::Prefix { tear: true }, CrashMode::Subset] {
        for n in 0.. {
            let fs = FaultStorage::new(image.clone(), n, mode, n * 31 + 5);
            let r = set_parent_in(
                Box::new(fs.clone()),
                &child,
                &new_parent,
                &SetParentOptions::default(),
            );
            if !fs.crashed() {
                r.expect("set-parent without a crash");
                break;
            }
            assert!(r.is_err(), "a crash at op {n} must be reported");
            states += 1;
            let here = dir.path().join("a").join(format!("crashed.{ext}"));
            std::fs::write(&here, fs.durable()).unwrap();
            let ctx = format!("{mode:?} crash at op {n}");
            let d = vhdkit::open(&here, &OpenOptions::new())
                .unwrap_or_else(|e| panic!("{ctx}: the child does not open: {e}"));
            let p = std::fs::canonicalize(d.info().parent.unwrap().path.unwrap()).unwrap();
            assert!(p == old_canon || p == new_canon, "{ctx}: parent {p:?}");
            saw_old |= p == old_canon;
            saw_new |= p == new_canon;
            assert!(read_disk(d.as_ref()) == model, "{ctx}: content differs");
            drop(d);
            let r = vhdkit::check(&here, &OpenOptions::new(), false).unwrap();
            for f in &r.findings {
                assert!(
                    matches!(f.severity, Severity::Leak | Severity::Info),
                    "{ctx}: finding {f:?}"
                );
            }
            // Re-running completes it.
            set_parent(&here, &new_parent, &SetParentOptions::default())
                .unwrap_or_else(|e| panic!("{ctx}: re-running fails: {e}"));
            assert_eq!(check_code(&here), 0, "{ctx}: not clean after re-running");
            assert_eq!(parent_path(&here), new_canon, "{ctx}");
            assert!(read_image(&here) == model, "{ctx}");
        }
    }
    assert!(states >= 10, "only {states} crash points");
    assert!(
        saw_old && saw_new,
        "crashes left old ({saw_old}) and new ({saw_new}) records"
    );
}

#[test]
fn vhd_set_parent_survives_a_crash_anywhere() {
    crash("vhd");
}

#[test]
fn vhdx_set_parent_survives_a_crash_anywhere() {
    crash("vhdx");
}

/// After `set-parent` a VHD's dynamic header lies at the footer's new data
/// offset, not at 512: with the old header at 512 wiped, vhdkit (open,
/// check, write, compact, merge), qemu-img (info, convert: qemu reads a
/// differencing VHD's own blocks) and libvhdi all use the new one, and a
/// block allocated afterwards does not land on it.
#[test]
fn vhd_header_moved_by_set_parent_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let (base, child, mut model) = chain(dir.path(), "vhd");
    let qemu_before = require_tool("qemu-img").then(|| qemu_read_vpc(&child));
    let b = dir.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    let moved = b.join(base.file_name().unwrap());
    std::fs::rename(&base, &moved).unwrap();
    vhdkit_ok(["set-parent", s(&child), s(&moved)]);
    let offset = info_json(&child)["vhd"]["dynamic_header"]["offset"]
        .as_u64()
        .unwrap();
    assert!(offset > 512, "the header moved: {offset}");
    let mut bytes = std::fs::read(&child).unwrap();
    assert_eq!(&bytes[512..520], b"cxsparse", "the old header stays whole");
    bytes[512..1536].fill(0);
    std::fs::write(&child, &bytes).unwrap();
    assert_eq!(check_code(&child), 0);
    assert_eq!(parent_path(&child), std::fs::canonicalize(&moved).unwrap());
    assert!(read_image(&child) == model);
    if let Some(before) = qemu_before {
        let out = run(std::process::Command::new("qemu-img").args(["info", s(&child)]));
        let info = String::from_utf8_lossy(&out.stdout);
        assert!(info.contains("8 MiB"), "{info}");
        assert!(
            qemu_read_vpc(&child) == before,
            "qemu reads the child's blocks"
        );
    }
    if require_tool("pyvhdi") {
        assert!(pyvhdi_read(&[&child, &moved]).1 == model, "libvhdi");
    }
    // A new block goes past the header, which stays whole.
    let (off, len) = (7 * MIB, 4096);
    model[off..off + len].fill(0x44);
    vhdkit_ok([
        "write",
        s(&child),
        "--offset",
        &off.to_string(),
        "--pattern",
        "68",
        "--length",
        &len.to_string(),
    ]);
    assert_eq!(check_code(&child), 0);
    assert!(read_image(&child) == model);
    if require_tool("pyvhdi") {
        assert!(pyvhdi_read(&[&child, &moved]).1 == model, "libvhdi");
    }
    // Compact and check --repair keep it; merge goes through it.
    vhdkit_ok(["compact", s(&child)]);
    assert_eq!(check_code(&child), 0);
    assert!(read_image(&child) == model);
    vhdkit_ok(["check", "--repair", s(&child)]);
    assert!(read_image(&child) == model);
    vhdkit_ok(["merge", s(&child)]);
    assert_eq!(check_code(&moved), 0);
    assert!(read_image(&moved) == model, "the merged parent");
}

/// A parent resized with `--force` while its child was beside it (review
/// of issue 14): a VHDX parent gets a new DataWriteGuid and the child no
/// longer opens; rebase (which reads the old chain) says set-parent
/// --ignore-id links them again, and it does, the child reading as
/// before. A VHD parent keeps its unique id: the child still opens.
fn parent_resized_under_child(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (base, child, model) = chain(dir.path(), ext);
    vhdkit_ok(["resize", "--force", s(&base), "12M"]);
    if ext == "vhd" {
        assert!(read_image(&child) == model, "VHD child over a grown parent");
        return;
    }
    let before = file_sha256(&child);
    let err = vhdkit_fails(Some(1), &["rebase", s(&child), s(&base)]);
    assert!(err.contains("set-parent --ignore-id"), "{err}");
    assert!(!err.contains("--ignore-parent-id"), "{err}");
    assert_eq!(file_sha256(&child), before);
    let (code, _, err) = vhdkit_run(&["set-parent", "--ignore-id", s(&child), s(&base)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(check_code(&child), 0);
    assert!(read_image(&child) == model, "the child reads as before");
    if require_tool("pyvhdi") {
        assert!(pyvhdi_read(&[&child, &base]).1 == model, "libvhdi too");
    }
}

#[test]
fn vhd_child_of_a_resized_parent_still_opens() {
    parent_resized_under_child("vhd");
}

#[test]
fn vhdx_child_of_a_resized_parent_is_linked_again() {
    parent_resized_under_child("vhdx");
}

/// A child reached through a symbolic link in another folder finds its
/// parent from the folder it really is in (a VHDX records only a relative
/// locator off Windows).
fn child_through_a_link(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (_, child, model) = chain(dir.path(), ext);
    let b = dir.path().join("b");
    std::fs::create_dir(&b).unwrap();
    let link = b.join(format!("link.{ext}"));
    std::os::unix::fs::symlink(&child, &link).unwrap();
    assert!(read_image(&link) == model);
    assert_eq!(check_code(&link), 0);
}

#[test]
fn vhd_child_through_a_link_finds_its_parent() {
    child_through_a_link("vhd");
}

#[test]
fn vhdx_child_through_a_link_finds_its_parent() {
    child_through_a_link("vhdx");
}
