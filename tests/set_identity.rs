//! `set --reset-id | --physical-sector-size` (issue 14, point 5).
//!
//! VHD: the unique id (what children record) is refused in a parent with
//! children beside it unless `--force`; the physical sector size cannot be
//! represented and is refused. VHDX: the virtual disk id and the physical
//! sector size change through the log (crash tested); children, which
//! record the DataWriteGuid, keep opening. Content is unchanged for
//! vhdkit, qemu-img and libvhdi.

mod common;

use common::*;
use vhdkit::OpenOptions;
use vhdkit::report::FindingKind;
use vhdkit::set_identity::{SetOptions, set_in};

#[test]
fn a_vhd_parent_with_children_keeps_its_id_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (p, c) = (dir.path().join("p.vhd"), dir.path().join("c.vhd"));
    vhdkit_ok(["create", s(&p), "4M"]);
    vhdkit_ok([
        "write",
        s(&p),
        "--offset",
        "0",
        "--pattern",
        "7",
        "--length",
        "65536",
    ]);
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    let before = file_sha256(&p);
    let err = vhdkit_fails(Some(1), &["set", s(&p), "--reset-id"]);
    assert!(err.contains("c.vhd") && err.contains("--force"), "{err}");
    let err = vhdkit_fails(Some(1), &["set", s(&p), "--physical-sector-size", "4096"]);
    assert!(err.contains("no physical sector size"), "{err}");
    assert_eq!(file_sha256(&p), before);

    let old = info_json(&p)["disk_id"].clone();
    let content = read_image(&p);
    let (code, _, err) = vhdkit_run(&["set", s(&p), "--reset-id", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("c.vhd"), "the orphaned child is named: {err}");
    assert_ne!(info_json(&p)["disk_id"], old);
    assert_eq!(vhdkit_run(&["check", s(&p)]).0, 0);
    assert!(read_image(&p) == content);
    if require_tool("qemu-img") {
        assert!(qemu_read_vpc(&p) == content);
    }
    // The child no longer matches.
    assert_eq!(vhdkit_run(&["check", s(&c)]).0, 1);
    // A VHD without children needs no --force.
    let lone = dir.path().join("lone.vhd");
    vhdkit_ok(["create", "-t", "fixed", s(&lone), "1M"]);
    vhdkit_ok(["set", s(&lone), "--reset-id"]);
    assert_eq!(vhdkit_run(&["check", s(&lone)]).0, 0);
}

#[test]
fn vhdx_disk_id_and_sector_size_change_and_children_keep_opening() {
    let dir = tempfile::tempdir().unwrap();
    let (p, c) = (dir.path().join("p.vhdx"), dir.path().join("c.vhdx"));
    vhdkit_ok(["create", s(&p), "4M"]);
    vhdkit_ok([
        "write",
        s(&p),
        "--offset",
        "512",
        "--pattern",
        "9",
        "--length",
        "4096",
    ]);
    vhdkit_ok(["create", "--parent", s(&p), s(&c)]);
    let content = read_image(&p);
    let old = info_json(&p)["disk_id"].clone();
    vhdkit_ok(["set", s(&p), "--reset-id"]);
    vhdkit_ok(["set", s(&p), "--physical-sector-size", "512"]);
    let v = info_json(&p);
    assert_ne!(v["disk_id"], old);
    assert_eq!(v["physical_sector_size"], 512);
    assert_eq!(vhdkit_run(&["check", s(&p)]).0, 0);
    assert_eq!(
        vhdkit_run(&["check", s(&c)]).0,
        0,
        "the child keeps its link"
    );
    assert!(read_image(&c) == content);
    let err = vhdkit_fails(Some(1), &["set", s(&p), "--physical-sector-size", "1024"]);
    assert!(err.contains("512 or 4096"), "{err}");
    if require_tool("qemu-img") {
        run(std::process::Command::new("qemu-img").args(["check", "-f", "vhdx", s(&p)]));
    }
    if require_tool("pyvhdi") {
        assert!(pyvhdi_read(&[&p]).1 == content);
    }
}

#[test]
fn vhdx_sector_size_survives_a_crash_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.vhdx");
    vhdkit_ok(["create", s(&p), "4M"]);
    vhdkit_ok([
        "write",
        s(&p),
        "--offset",
        "0",
        "--pattern",
        "5",
        "--length",
        "8192",
    ]);
    let content = read_image(&p);
    let image = std::fs::read(&p).unwrap();
    let opts = SetOptions {
        physical_sector_size: Some(512),
        ..SetOptions::default()
    };
    let (mut old, mut new) = (0, 0);
    for mode in [CrashMode::Prefix { tear: true }, CrashMode::Subset] {
        for n in 0.. {
            let fs = FaultStorage::new(image.clone(), n, mode, n + 11);
            let r = set_in(Box::new(fs.clone()), Some(&p), &[], &opts);
            if !fs.crashed() {
                r.unwrap();
                break;
            }
            let ctx = format!("{mode:?} crash at op {n}");
            let here = dir.path().join("crashed.vhdx");
            std::fs::write(&here, fs.durable()).unwrap();
            let d =
                vhdkit::open(&here, &OpenOptions::new()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            match d.physical_sector_size() {
                4096 => old += 1,
                512 => new += 1,
                x => panic!("{ctx}: physical sector size {x}"),
            }
            assert!(read_disk(d.as_ref()) == content, "{ctx}");
            drop(d);
            let r = vhdkit::check(&here, &OpenOptions::new(), false).unwrap();
            assert!(r.exit_code() == 0, "{ctx}: {:?}", r.findings);
            vhdkit_ok(["set", s(&here), "--physical-sector-size", "512"]);
            assert_eq!(info_json(&here)["physical_sector_size"], 512, "{ctx}");
        }
    }
    assert!(old > 0 && new > 0, "old {old}, new {new}");
}

/// `set --reset-id` on a dynamic VHD crashed at every storage operation:
/// the disk opens with its old or its new id and the same content;
/// `check` finds no damage (the copy at offset 0 left with the old id is
/// reported as an interrupted update, not as an error); running it again
/// leaves both footers equal.
#[test]
fn vhd_reset_id_survives_a_crash_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.vhd");
    vhdkit_ok(["create", s(&p), "4M"]);
    vhdkit_ok([
        "write",
        s(&p),
        "--offset",
        "4096",
        "--pattern",
        "6",
        "--length",
        "8192",
    ]);
    let content = read_image(&p);
    let old_id = open(&p).info().disk_id;
    let image = std::fs::read(&p).unwrap();
    let opts = SetOptions {
        reset_id: true,
        ..SetOptions::default()
    };
    let (mut old, mut new, mut stale_copy) = (0, 0, 0);
    for mode in [CrashMode::Prefix { tear: true }, CrashMode::Subset] {
        for n in 0.. {
            let fs = FaultStorage::new(image.clone(), n, mode, n + 3);
            let r = set_in(Box::new(fs.clone()), Some(&p), &[], &opts);
            if !fs.crashed() {
                r.unwrap();
                break;
            }
            let ctx = format!("{mode:?} crash at op {n}");
            let here = dir.path().join("crashed.vhd");
            std::fs::write(&here, fs.durable()).unwrap();
            let d =
                vhdkit::open(&here, &OpenOptions::new()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            if d.info().disk_id == old_id {
                old += 1;
            } else {
                new += 1;
            }
            assert!(read_disk(d.as_ref()) == content, "{ctx}");
            drop(d);
            let r = vhdkit::check(&here, &OpenOptions::new(), false).unwrap();
            assert!(r.exit_code() == 0, "{ctx}: {:?}", r.findings);
            stale_copy += r
                .findings
                .iter()
                .filter(|f| f.kind == FindingKind::CopyDiffers && f.message.contains("unique id"))
                .count();
            vhdkit_ok(["set", s(&here), "--reset-id"]);
            let r = vhdkit::check(&here, &OpenOptions::new(), false).unwrap();
            assert!(r.findings.is_empty(), "{ctx}: {:?}", r.findings);
            assert!(read_image(&here) == content, "{ctx}");
        }
    }
    assert!(
        old > 0 && new > 0 && stale_copy > 0,
        "old {old}, new {new}, stale copy {stale_copy}"
    );
}
