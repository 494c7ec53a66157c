//! Golden output of `info` and `check`, text and `--json`, for every format
//! and disk type: the reports are typed structures now, and what people and
//! scripts read must stay as it was, key for key and byte for byte.
//!
//! The images are the real fixtures of `../shared` (the cases skip when it
//! is absent) and small images made once with `vhdkit` and committed in
//! `tests/fixtures/reports/` (their ids and timestamps are fixed that way):
//! a fixed VHD parent with a differencing child, a dynamic VHDX parent with
//! a child, a VHDX child whose parent was written after it was made, and an
//! EVHD encrypted to `test-only-key.xml` (a key made for this test only).
//! Each command runs in a private folder holding the images side by side, so
//! the paths printed are the same on every machine.
//!
//! `VHDKIT_BLESS=1` writes the goldens instead of comparing (to record a
//! deliberate change; review the diff of `tests/golden/reports/`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{real_image, skip, vhdkit_bin};

/// Where the expected outputs live.
fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/reports")
}

/// The committed images made with `vhdkit` for this test.
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reports")
}

/// Decompress committed fixture `name.gz` into `dir`.
fn unpack(name: &str, dir: &Path) {
    let out = std::fs::File::create(dir.join(name)).unwrap();
    let status = Command::new("gzip")
        .arg("-dc")
        .arg(fixture_dir().join(format!("{name}.gz")))
        .stdout(out)
        .status()
        .expect("gzip must be installed to decompress the fixtures");
    assert!(status.success(), "gzip -dc {name}.gz failed");
}

/// Copy real fixture `name` (e.g. `dfvfs/image.vhd`) into `dir`; `false`
/// (after a skip line) when the shared folder is absent.
fn real(name: &str, dir: &Path) -> bool {
    let Some(src) = real_image(name) else {
        return false;
    };
    std::fs::copy(&src, dir.join(src.file_name().unwrap())).unwrap();
    true
}

/// Run `vhdkit args` in `dir`; the exit code, stdout and stderr as one
/// text, the form the goldens keep.
fn run_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(vhdkit_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run vhdkit");
    common::assert_no_panic(&out);
    format!(
        "$ vhdkit {}\nexit {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Compare `got` with golden `name`, or write it under `VHDKIT_BLESS`.
fn golden(name: &str, got: &str) {
    let path = golden_dir().join(format!("{name}.txt"));
    if std::env::var_os("VHDKIT_BLESS").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden {} unreadable: {e}", path.display()));
    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(got.lines().count()));
        panic!(
            "{name}: output differs from {} at line {}:\nwant: {:?}\ngot:  {:?}\n--- whole output:\n{got}",
            path.display(),
            first + 1,
            want.lines().nth(first),
            got.lines().nth(first)
        );
    }
}

/// `info`, `info --json`, `check` and `check --json` of `image` (with
/// `extra` arguments) against the goldens named after `name`.
fn reports(dir: &Path, name: &str, image: &str, extra: &[&str]) {
    for (cmd, json) in [
        ("info", false),
        ("info", true),
        ("check", false),
        ("check", true),
    ] {
        let mut args = vec![cmd];
        if json {
            args.push("--json");
        }
        args.extend_from_slice(extra);
        args.push(image);
        let suffix = if json { "-json" } else { "" };
        golden(&format!("{name}.{cmd}{suffix}"), &run_in(dir, &args));
    }
}

#[test]
fn raw_image_reports() {
    let dir = tempfile::tempdir().unwrap();
    // Every byte written: the file system stores all of it, so the
    // allocated size is the same everywhere.
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(dir.path().join("disk.raw"), data).unwrap();
    reports(dir.path(), "raw", "disk.raw", &["-f", "raw"]);
}

#[test]
fn vhd_reports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    unpack("parentf.vhd", d);
    unpack("child.vhd", d);
    reports(d, "vhd-fixed-made", "parentf.vhd", &[]);
    reports(d, "vhd-differencing-made", "child.vhd", &[]);
}

#[test]
fn vhd_real_reports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in [
        "dissect/fixed.vhd",
        "dissect/dynamic.vhd",
        "dfvfs/image.vhd",
        "dfvfs/image-differential.vhd",
        "dfvfs/fat-differential.vhd",
    ] {
        if !real(name, d) {
            return;
        }
    }
    reports(d, "vhd-fixed", "fixed.vhd", &[]);
    reports(d, "vhd-dynamic", "dynamic.vhd", &[]);
    reports(d, "vhd-bad-checksum", "image.vhd", &[]);
    reports(d, "vhd-differencing", "image-differential.vhd", &[]);
    reports(d, "vhd-parent-missing", "fat-differential.vhd", &[]);
}

#[test]
fn vhdx_reports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["parent.vhdx", "child.vhdx", "parent2.vhdx", "stale.vhdx"] {
        unpack(name, d);
    }
    reports(d, "vhdx-dynamic-made", "parent.vhdx", &[]);
    reports(d, "vhdx-differencing-made", "child.vhdx", &[]);
    reports(d, "vhdx-parent-mismatch", "stale.vhdx", &[]);
    reports(
        d,
        "vhdx-parent-mismatch-ignored",
        "stale.vhdx",
        &["--ignore-parent-id"],
    );
}

#[test]
fn vhdx_real_reports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in [
        "dissect/fixed.vhdx",
        "dissect/dynamic.vhdx",
        "dissect/differencing.avhdx",
    ] {
        if !real(name, d) {
            return;
        }
    }
    reports(d, "vhdx-fixed", "fixed.vhdx", &[]);
    reports(d, "vhdx-dynamic", "dynamic.vhdx", &[]);
    reports(d, "vhdx-parent-missing", "differencing.avhdx", &[]);
}

#[test]
fn evhd_reports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    unpack("enc.evhd", d);
    std::fs::copy(
        fixture_dir().join("test-only-key.xml"),
        d.join("test-only-key.xml"),
    )
    .unwrap();
    reports(d, "evhd-locked", "enc.evhd", &[]);
    reports(
        d,
        "evhd-unlocked",
        "enc.evhd",
        &["--key", "test-only-key.xml"],
    );
}

/// Errors whose remedy is an option: the library names no option (it gives
/// a hint), the command line says the option as it always has.
#[test]
fn errors_name_the_option_that_helps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["parent2.vhdx", "stale.vhdx", "parentf.vhd"] {
        unpack(name, d);
    }
    std::fs::write(d.join("disk.raw"), vec![7u8; 4096]).unwrap();
    std::fs::copy(
        fixture_dir().join("test-only-key.xml"),
        d.join("test-only-key.xml"),
    )
    .unwrap();
    for (name, args) in [
        (
            "error-parent-mismatch",
            &["read", "--offset", "0", "--length", "512", "stale.vhdx"][..],
        ),
        ("error-no-signature", &["info", "-f", "vhd", "disk.raw"]),
        ("error-output-exists", &["create", "parentf.vhd", "2M"]),
        (
            "error-key-file-exists",
            &["keygen", "-o", "test-only-key.xml"],
        ),
    ] {
        golden(name, &run_in(d, args));
    }
}

/// The library's side of the same errors: a hint, and no option named.
#[test]
fn library_errors_give_hints_not_options() {
    use vhdkit::{ErrorKind, Hint, OpenOptions};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["parent2.vhdx", "stale.vhdx"] {
        unpack(name, d);
    }
    let e = match vhdkit::open(d.join("stale.vhdx"), &OpenOptions::new()) {
        Err(e) => e,
        Ok(disk) => disk
            .read_at(&mut [0u8; 512], 0)
            .expect_err("the parent is not the recorded one"),
    };
    assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
    assert_eq!(e.hint(), Some(Hint::IgnoreParentId), "{e}");
    assert!(!e.to_string().contains("--"), "no option named: {e}");

    std::fs::write(d.join("disk.raw"), vec![7u8; 4096]).unwrap();
    let opts = OpenOptions::new().format(Some(vhdkit::Format::Vhd));
    let Err(e) = vhdkit::open(d.join("disk.raw"), &opts) else {
        panic!("a raw file opened as a VHD");
    };
    assert_eq!(e.hint(), Some(Hint::ReadAsRaw), "{e}");
    assert!(!e.to_string().contains("-f"), "no option named: {e}");
}

/// The goldens cannot pass by accident: a report that differs is caught.
#[test]
fn a_changed_report_is_caught() {
    if std::env::var_os("VHDKIT_BLESS").is_some() {
        skip("VHDKIT_BLESS writes the goldens");
        return;
    }
    let want = std::fs::read_to_string(golden_dir().join("vhd-fixed-made.info-json.txt")).unwrap();
    let changed = want.replacen("\"virtual_size\"", "\"virtual size\"", 1);
    assert_ne!(want, changed, "the golden has the key this test renames");
    let caught = std::panic::catch_unwind(|| golden("vhd-fixed-made.info-json", &changed));
    assert!(caught.is_err());
}
