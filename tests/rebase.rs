//! `rebase` (issue 14, point 4): a child put over another base keeps what
//! it reads, for vhdkit and for libvhdi (pyvhdi, with the new base as its
//! parent); only what differs is copied; a base of another size (the
//! child then reads zeros past its end) is taken, the child keeping its
//! content.

mod common;

use std::path::Path;

use common::*;

const MIB: usize = 1 << 20;

fn write_pattern(img: &Path, off: usize, len: usize, byte: u8) {
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

fn rebase_keeps_content(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [old, child, newb] = ["old", "child", "new"].map(|n| d.join(format!("{n}.{ext}")));
    vhdkit_ok(["create", s(&old), "8M"]);
    let data = random_bytes(3 * MIB, 3);
    let input = d.join("in.bin");
    write_raw(&input, &data);
    vhdkit_ok(["write", s(&old), "--offset", "0", "--input", s(&input)]);
    vhdkit_ok(["create", "--parent", s(&old), s(&child)]);
    write_pattern(&child, MIB + 512, 3 * 512, 0x22);
    // The new base shares the first MiB with the old one and has data
    // where the old one has zeros.
    vhdkit_ok(["create", s(&newb), "8M"]);
    write_raw(&input, &data[..MIB]);
    vhdkit_ok(["write", s(&newb), "--offset", "0", "--input", s(&input)]);
    write_pattern(&newb, 6 * MIB, 8192, 0x99);
    let model = read_image(&child);

    let out = vhdkit_stdout(&["rebase", s(&child), s(&newb)]);
    // 1 MiB..3 MiB of the old base and the 8 KiB at 6 MiB differ; the
    // 4 KiB unit holding the child's own sectors is copied whole where a
    // VHDX reads part of it from the parent (sector-precise), not at all
    // in a VHD (whose writes mark 4 KiB groups present).
    let copied = if ext == "vhd" {
        2 * MIB + 4096
    } else {
        2 * MIB + 12288
    };
    assert!(out.contains(&format!("({copied} bytes copied")), "{out}");
    assert_eq!(vhdkit_run(&["check", s(&child)]).0, 0);
    let p = open(&child).info().parent.unwrap().path.unwrap();
    assert_eq!(
        std::fs::canonicalize(p).unwrap(),
        std::fs::canonicalize(&newb).unwrap()
    );
    assert!(read_image(&child) == model, "vhdkit reads the old content");
    if require_tool("pyvhdi") {
        assert!(pyvhdi_read(&[&child, &newb]).1 == model, "libvhdi too");
    }
    // The old base can go.
    std::fs::remove_file(&old).unwrap();
    assert!(read_image(&child) == model);

    // A smaller base: what the child read past its end (the old base's
    // data at 1..3 MiB is before it; the child's own sectors) stays, and
    // the rest of the child reads zeros as before.
    let small = d.join(format!("small.{ext}"));
    vhdkit_ok(["create", s(&small), "2M"]);
    write_pattern(&small, 0, 4096, 0x55);
    let out = vhdkit_stdout(&["rebase", s(&child), s(&small)]);
    assert!(out.contains("rebased onto"), "{out}");
    assert_eq!(vhdkit_run(&["check", s(&child)]).0, 0);
    assert!(read_image(&child) == model, "over a smaller base");
    if require_tool("pyvhdi") {
        // libvhdi reads a child over a smaller parent only up to the
        // parent's end (see tests/resize_diff_crash.rs).
        let (_, got) = pyvhdi_prefix(&child, &small, 2 * MIB as u64);
        assert!(got == model[..2 * MIB], "libvhdi up to the base's end");
    }
    // A larger base: its bytes past the child's end are never read.
    let big = d.join(format!("big.{ext}"));
    vhdkit_ok(["create", s(&big), "16M"]);
    write_pattern(&big, 0, 16 * MIB, 0x66);
    vhdkit_ok(["rebase", s(&child), s(&big)]);
    assert_eq!(vhdkit_run(&["check", s(&child)]).0, 0);
    let got = read_image(&child);
    assert_eq!(got.len(), model.len());
    assert!(got == model, "over a larger base");
    if require_tool("pyvhdi") {
        assert!(pyvhdi_read(&[&child, &big]).1 == model, "libvhdi too");
    }
}

#[test]
fn vhd_rebase_keeps_content() {
    rebase_keeps_content("vhd");
}

#[test]
fn vhdx_rebase_keeps_content() {
    rebase_keeps_content("vhdx");
}
