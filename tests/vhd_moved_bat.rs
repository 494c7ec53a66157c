//! A dynamic VHD whose block allocation table (BAT) a grow moved past the
//! blocks (issue #14): after the grow, a second grow and a compaction,
//! `check` finds nothing at all (no leaked space) and the compacted file
//! is as small as a fresh image of the same content.

mod common;

use std::path::Path;

use common::*;

/// `vhdkit check` exits 0 ("No errors found", no leak either).
fn clean(path: &Path) {
    let (code, out, err) = vhdkit_run(&["check", s(path)]);
    assert_eq!(
        code,
        0,
        "{}: {}{err}",
        path.display(),
        String::from_utf8_lossy(&out)
    );
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn compact_after_a_grow_that_moved_the_bat_cuts_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k.vhd");
    vhdkit_ok(["create", "-t", "dynamic", s(&k), "64M"]);
    vhdkit_ok([
        "write",
        s(&k),
        "--offset",
        "0",
        "--pattern",
        "0x11",
        "--length",
        "32M",
    ]);
    vhdkit_ok(["resize", s(&k), "100G"]);
    clean(&k);
    vhdkit_ok([
        "write",
        s(&k),
        "--offset",
        "0",
        "--pattern",
        "0",
        "--length",
        "30M",
    ]);
    let before = len(&k);
    vhdkit_ok(["compact", s(&k)]);
    clean(&k);
    // One 2 MiB block and a 200 KiB table are left.
    assert!(len(&k) < 3 << 20, "{before} -> {} bytes", len(&k));
    let fresh = dir.path().join("fresh.vhd");
    vhdkit_ok(["convert", "-O", "vhd", s(&k), s(&fresh)]);
    assert!(
        len(&k) <= len(&fresh) + (2 << 20) + 512,
        "{} bytes, a fresh copy {}",
        len(&k),
        len(&fresh)
    );
}

#[test]
fn a_second_grow_leaves_no_hole_where_the_first_put_the_bat() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d.vhd");
    vhdkit_ok(["create", "-t", "dynamic", s(&d), "10G"]);
    vhdkit_ok([
        "write",
        s(&d),
        "--offset",
        "0",
        "--pattern",
        "0x22",
        "--length",
        "1M",
    ]);
    vhdkit_ok(["resize", s(&d), "1500G"]);
    clean(&d);
    vhdkit_ok(["resize", s(&d), "2040G"]);
    clean(&d);
}

#[test]
fn a_grow_by_one_table_sector_over_a_block_leaves_no_leak() {
    // 4 KiB blocks: the grown table (2177 entries, 18 sectors) needs one
    // sector more, where the only block lies.
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.vhd");
    let (size, grown) = (0x82_4200u64.to_string(), 0x88_0004u64.to_string());
    vhdkit_ok([
        "create",
        "-t",
        "dynamic",
        "--block-size",
        "4K",
        s(&m),
        &size,
    ]);
    vhdkit_ok([
        "write",
        s(&m),
        "--offset",
        "8536575",
        "--pattern",
        "0x11",
        "--length",
        "1",
    ]);
    vhdkit_ok(["resize", s(&m), &grown]);
    clean(&m);
    vhdkit_ok(["compact", s(&m)]);
    clean(&m);
    // Footer copy, header, table, one block of 512 + 4096 bytes, footer;
    // and at most one block more.
    assert!(
        len(&m) <= 0x600 + 0x2400 + 2 * 0x1200 + 0x200,
        "{}",
        len(&m)
    );
    let (code, out, _) = vhdkit_run(&["read", s(&m), "--offset", "8536575", "--length", "1"]);
    assert_eq!(code, 0);
    assert_eq!(out, [0x11]);
}
