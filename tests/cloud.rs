//! `convert --cloud` (issue 14, point 7): a fixed VHD whose virtual size
//! is rounded up to a whole MiB, with the footer right after the data;
//! qemu-img reads the content (padded with zeros) and sees that size;
//! `info` says `cloud_ready` and lists what keeps an image from being
//! ready (`cloud_problems`).

mod common;

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn convert_cloud_makes_a_mib_aligned_fixed_vhd() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let data = mixed_content(3 * MIB - 4096 - 512, 4);
    write_raw(&src, &data);
    let dst = dir.path().join("cloud.vhd");
    vhdkit_ok(["convert", "--cloud", s(&src), s(&dst)]);
    let v = info_json(&dst);
    assert_eq!(v["type"], "fixed");
    assert_eq!(v["virtual_size"], 3 * MIB);
    assert_eq!(v["vhd"]["cloud_ready"], true, "{v}");
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(
        std::fs::metadata(&dst).unwrap().len(),
        3 * MIB as u64 + 512,
        "data then the footer"
    );
    assert_eq!(vhdkit_run(&["check", s(&dst)]).0, 0);
    let mut model = data.clone();
    model.resize(3 * MIB, 0);
    assert!(read_image(&dst) == model);
    if require_tool("qemu-img") {
        assert_eq!(qemu_virtual_size(&dst), 3 * MIB as u64);
        assert!(qemu_read_vpc(&dst) == model);
    }
    if require_tool("pyvhdi") {
        assert!(pyvhdi_read(&[&dst]).1 == model);
    }
    // From a dynamic VHD too, and another format is refused.
    let dynamic = dir.path().join("dyn.vhd");
    vhdkit_ok(["convert", s(&src), s(&dynamic)]);
    assert_eq!(info_json(&dynamic)["vhd"]["cloud_ready"], false);
    let again = dir.path().join("again.vhd");
    vhdkit_ok(["convert", "--cloud", s(&dynamic), s(&again)]);
    assert_eq!(info_json(&again)["vhd"]["cloud_ready"], true);
    let err = vhdkit_fails(
        Some(1),
        &[
            "convert",
            "--cloud",
            "-O",
            "vhdx",
            s(&src),
            s(&dir.path().join("x.vhdx")),
        ],
    );
    assert!(err.contains("--cloud makes a fixed VHD"), "{err}");
}

#[test]
fn info_names_what_keeps_a_fixed_vhd_from_being_cloud_ready() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    write_raw(&src, &vec![1u8; 3 * MIB - 512]);
    let dst = dir.path().join("odd.vhd");
    vhdkit_ok(["convert", "-t", "fixed", s(&src), s(&dst)]);
    let v = info_json(&dst);
    assert_eq!(v["vhd"]["cloud_ready"], false);
    let w = v["vhd"]["cloud_problems"].to_string();
    assert!(w.contains("whole number of MiB"), "{w}");
    // Not a warning about the image's health: nothing else flags it.
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");
    let text = vhdkit_stdout(&["info", s(&dst)]);
    assert!(
        text.contains("cloud_ready") && text.contains("whole number of MiB"),
        "{text}"
    );
    // A fixed VHD of a whole number of MiB is ready as it is.
    let fixed = dir.path().join("ok.vhd");
    write_raw(&src, &vec![1u8; 2 * MIB]);
    vhdkit_ok(["convert", "-t", "fixed", s(&src), s(&fixed)]);
    assert_eq!(info_json(&fixed)["vhd"]["cloud_ready"], true);
}

/// `--cloud` makes a VHD file: standard output (raw bytes) and a
/// destination whose extension names another format are refused, and
/// nothing is written.
#[test]
fn convert_cloud_refuses_stdout_and_another_extension() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    write_raw(&src, &vec![1u8; MIB]);
    let (code, out, err) = vhdkit_run(&["convert", "--cloud", s(&src), "-"]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{} bytes streamed", out.len());
    assert!(err.contains("--cloud") && err.contains("stdout"), "{err}");
    for name in ["out.vhdx", "out.img"] {
        let dst = dir.path().join(name);
        let err = vhdkit_fails(Some(1), &["convert", "--cloud", s(&src), s(&dst)]);
        assert!(
            err.contains("--cloud makes a fixed VHD") && err.contains(name),
            "{name}: {err}"
        );
        assert!(!dst.exists(), "{name} was written");
    }
}
