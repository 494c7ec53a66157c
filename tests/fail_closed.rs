//! Fail-closed format detection: EVHD, VHDX and VHD images whose magics,
//! identifiers, headers, region tables or footers are damaged are never
//! read as raw. Every command is run on each: `check` exits 2 naming the
//! format, `write` refuses and leaves the file byte for byte unchanged,
//! the others fail with "damaged FORMAT image"; only `-f raw` reads the
//! file as raw. `--key` on an image that is not EVHD is an error.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use common::{vhdkit_ok_stdout as ok, vhdkit_run as run};

/// Virtual size of the test images.
const SIZE: usize = 4 << 20;

/// Overwrite `len` bytes at `offset` (negative: from the end) with `byte`.
fn damage(path: &Path, offset: i64, len: usize, byte: u8) {
    let at = if offset < 0 {
        std::fs::metadata(path).unwrap().len() - offset.unsigned_abs()
    } else {
        offset as u64
    };
    patch_file(path, at, &vec![byte; len]);
}

/// A copy of `src` named `name` in `dir` with `damages` applied.
fn damaged_copy(dir: &Path, src: &Path, name: &str, damages: &[(i64, usize, u8)]) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(src, &p).unwrap();
    for &(o, l, b) in damages {
        damage(&p, o, l, b);
    }
    p
}

/// Every command on the damaged image `img` of format `fmt` ("EVHD",
/// "VHDX", "VHD"): none reads it as raw, `check` exits 2 naming the format,
/// `write` refuses, and the file is unchanged; `-f raw` reads the file's
/// own bytes. `key` is passed where a command takes one (EVHD).
fn assert_fails_closed(dir: &Path, img: &Path, fmt: &str, key: Option<&Path>) {
    let before = file_sha256(img);
    let damaged = format!("damaged {fmt} image");
    let mut keyed: Vec<&str> = Vec::new();
    if let Some(k) = key {
        keyed.extend(["--key", s(k)]);
    }
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(keyed.iter())
            .map(|a| a.to_string())
            .collect()
    };
    let name = img.display();

    // info, map, read: an error naming the damaged format, nothing on stdout
    // that presents the file as raw.
    for args in [
        with(&["info", s(img)]),
        with(&["info", "--json", s(img)]),
        with(&["map", s(img)]),
        with(&["read", s(img), "--offset", "0", "--length", "4096"]),
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(&a);
        assert_eq!(code, 1, "{name}: {a:?} must fail: {err}");
        assert!(err.contains(&damaged), "{name}: {a:?}: {err}");
        assert!(out.is_empty(), "{name}: {a:?} printed {} bytes", out.len());
    }

    // check: corrupt (exit 2), a finding naming the format, text and JSON.
    let a = with(&["check", s(img)]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, out, err) = run(&a);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, 2, "{name}: check: {out}{err}");
    assert!(out.contains(&damaged), "{name}: check: {out}");
    assert!(!out.contains("No errors found"), "{name}: check: {out}");
    let a = with(&["check", "--json", s(img)]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, out, _) = run(&a);
    assert_eq!(code, 2, "{name}: check --json");
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["status"], "corrupt", "{name}: {v}");

    // check --repair finds no trusted copy to repair from: corrupt, unchanged.
    let a = with(&["check", "--repair", s(img)]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, _, err) = run(&a);
    assert_eq!(code, 2, "{name}: check --repair: {err}");
    assert_eq!(
        file_sha256(img),
        before,
        "{name}: check --repair changed the file"
    );

    // write refuses; the file is unchanged.
    let a = with(&[
        "write",
        s(img),
        "--offset",
        "0",
        "--pattern",
        "0x5a",
        "--length",
        "4096",
    ]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, _, err) = run(&a);
    assert_eq!(code, 1, "{name}: write must be refused: {err}");
    assert!(err.contains(&damaged), "{name}: write: {err}");
    assert_eq!(file_sha256(img), before, "{name}: write changed the file");

    // convert: fails and leaves no output.
    for ext in ["raw", "vhdx"] {
        let dst = dir.join(format!("out-of-damaged.{ext}"));
        let a = with(&["convert", "-q", s(img), s(&dst)]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, _, err) = run(&a);
        assert_eq!(code, 1, "{name}: convert to {ext} must fail: {err}");
        assert!(err.contains(&damaged), "{name}: convert: {err}");
        assert!(!dst.exists(), "{name}: convert left {}", dst.display());
    }
    // Streaming to stdout: nothing streamed.
    let a = with(&["convert", "-q", s(img), "-"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, out, err) = run(&a);
    assert_eq!(code, 1, "{name}: convert to - must fail: {err}");
    assert!(
        out.is_empty(),
        "{name}: convert streamed {} bytes",
        out.len()
    );

    // compare against the file's own bytes as a raw image: an error (2),
    // never "identical".
    let as_raw = dir.join("damaged-as-raw.raw");
    std::fs::copy(img, &as_raw).unwrap();
    let a = with(&["compare", s(img), s(&as_raw)]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, out, err) = run(&a);
    assert_eq!(
        code,
        2,
        "{name}: compare: {}{err}",
        String::from_utf8_lossy(&out)
    );
    assert!(err.contains(&damaged), "{name}: compare: {err}");

    // -f raw is the way to read it as raw: the file's own bytes.
    let info: serde_json::Value =
        serde_json::from_slice(&ok(&["info", "--json", "-f", "raw", s(img)])).unwrap();
    assert_eq!(info["format"], "raw", "{name}");
    let head = ok(&[
        "read",
        "-f",
        "raw",
        s(img),
        "--offset",
        "0",
        "--length",
        "4096",
    ]);
    assert_eq!(head, file_bytes(img, 0, 4096), "{name}: -f raw read");
    let (code, out, _) = run(&["check", "-f", "raw", s(img)]);
    assert_eq!(
        code,
        0,
        "{name}: check -f raw: {}",
        String::from_utf8_lossy(&out)
    );
    ok(&["compare", "-f", "raw", s(img), s(&as_raw)]);

    assert_eq!(
        file_sha256(img),
        before,
        "{name}: a command changed the file"
    );
    std::fs::remove_file(&as_raw).unwrap();
}

/// A raw source of mixed content.
fn source(dir: &Path) -> (PathBuf, Vec<u8>) {
    let data = mixed_content(SIZE, 11);
    let p = dir.join("src.raw");
    write_raw(&p, &data);
    (p, data)
}

#[test]
fn evhd_damaged_magics_or_zeroed_start_are_damaged_evhd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = &test_key().1;
    let (src, data) = source(d);
    let e = d.join("e.evhd");
    make_evhd(&src, &e);
    // Converted from zeros only: no block written, no flush with changes;
    // the journal magic is there all the same (written at create).
    let zeros = d.join("zeros.raw");
    write_raw(&zeros, &vec![0u8; SIZE]);
    let ez = d.join("zeros.evhd");
    make_evhd(&zeros, &ez);
    assert_eq!(file_bytes(&ez, 128 << 10, 8), b"EVHDJRNL");

    let cases = [
        damaged_copy(d, &e, "magics.evhd", &[(0, 2, 0), (64 << 10, 2, 0)]),
        damaged_copy(d, &e, "zero128k.evhd", &[(0, 128 << 10, 0)]),
        damaged_copy(d, &ez, "zero128k-fresh.evhd", &[(0, 128 << 10, 0)]),
    ];
    for img in &cases {
        assert_fails_closed(d, img, "EVHD", Some(key));
        // Without a key too.
        assert_fails_closed(d, img, "EVHD", None);
        // The EVHD commands say it is a damaged EVHD.
        let (code, _, err) = run(&["recipients", "list", s(img)]);
        assert_eq!(code, 1);
        assert!(err.contains("damaged EVHD image"), "{err}");
        // -f evhd states what detection found; -f vhd names the EVHD trace.
        let (code, _, err) = run(&["info", "-f", "evhd", s(img)]);
        assert_eq!(code, 1);
        assert!(err.contains("damaged EVHD image"), "{err}");
        let (code, _, err) = run(&["info", "-f", "vhd", s(img)]);
        assert_eq!(code, 1);
        assert!(
            err.contains("not a VHD image")
                && err.contains("EVHD journal record magic at offset 0x20000"),
            "{err}"
        );
    }

    // One magic damaged: opens from the other copy, with the key, content intact.
    for (name, at) in [("magic-a.evhd", 0i64), ("magic-b.evhd", 64 << 10)] {
        let img = damaged_copy(d, &e, name, &[(at, 2, 0)]);
        let got = ok(&[
            "read",
            s(&img),
            "--key",
            s(key),
            "--offset",
            "0",
            "--length",
            &SIZE.to_string(),
        ]);
        assert!(got == data, "{name}: content differs");
        ok(&["compare", "--key", s(key), s(&img), s(&src)]);
        let info: serde_json::Value =
            serde_json::from_slice(&ok(&["info", "--json", "--key", s(key), s(&img)])).unwrap();
        assert_eq!(info["format"], "evhd");
    }
}

#[test]
fn vhdx_damaged_identifier_headers_regions_are_damaged_vhdx() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, _) = source(d);
    let x = d.join("x.vhdx");
    ok(&["convert", "-q", s(&src), s(&x)]);
    // A write goes through the log: an entry at its start (1 MiB).
    ok(&[
        "write",
        s(&x),
        "--offset",
        "0",
        "--pattern",
        "0xab",
        "--length",
        "4096",
    ]);
    assert_eq!(file_bytes(&x, 1 << 20, 4), b"loge");
    // A VHDX never written: the log is empty, the metadata table remains.
    let fresh = d.join("fresh.vhdx");
    ok(&["create", s(&fresh), "8M"]);
    assert_ne!(file_bytes(&fresh, 1 << 20, 4), b"loge");

    let cases = [
        damaged_copy(d, &x, "ident.vhdx", &[(0, 2, 0)]),
        damaged_copy(d, &x, "zero1m.vhdx", &[(0, 1 << 20, 0)]),
        damaged_copy(d, &fresh, "zero1m-fresh.vhdx", &[(0, 1 << 20, 0)]),
        damaged_copy(
            d,
            &x,
            "headers.vhdx",
            &[(64 << 10, 2, 0), (128 << 10, 2, 0)],
        ),
        damaged_copy(
            d,
            &x,
            "regions.vhdx",
            &[(192 << 10, 2, 0), (256 << 10, 2, 0)],
        ),
        // Only the region tables left.
        damaged_copy(
            d,
            &x,
            "regions-only.vhdx",
            &[(0, 2, 0), (64 << 10, 2, 0), (128 << 10, 2, 0)],
        ),
    ];
    for img in &cases {
        assert_fails_closed(d, img, "VHDX", None);
        let (code, _, err) = run(&["info", "-f", "evhd", s(img)]);
        assert_eq!(code, 1);
        assert!(
            err.contains("not an EVHD image") && err.contains("VHDX"),
            "{err}"
        );
    }
}

#[test]
fn vhd_damaged_footers_are_damaged_vhd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, data) = source(d);
    let dy = d.join("d.vhd");
    ok(&["convert", "-q", "-t", "dynamic", s(&src), s(&dy)]);
    let fx = d.join("f.vhd");
    ok(&["convert", "-q", "-t", "fixed", s(&src), s(&fx)]);

    let cases = [
        // Both cookies of a dynamic VHD: the dynamic header remains.
        damaged_copy(d, &dy, "cookies.vhd", &[(-512, 2, 0), (0, 2, 0)]),
        // The whole end footer and the copy's cookie.
        damaged_copy(d, &dy, "footers.vhd", &[(-512, 512, 0), (0, 8, 0)]),
        // A fixed VHD's only cookie: the rest of its footer remains.
        damaged_copy(d, &fx, "fixed-cookie.vhd", &[(-512, 2, 0)]),
    ];
    for img in &cases {
        assert_fails_closed(d, img, "VHD", None);
    }

    // The end footer of a dynamic VHD damaged, the copy at 0 intact: opens
    // as today, with a warning, content intact.
    let img = damaged_copy(d, &dy, "end-footer.vhd", &[(-512, 512, 0)]);
    let info: serde_json::Value =
        serde_json::from_slice(&ok(&["info", "--json", s(&img)])).unwrap();
    assert_eq!(info["format"], "vhd");
    assert!(!info["warnings"].as_array().unwrap().is_empty(), "{info}");
    let got = ok(&[
        "read",
        s(&img),
        "--offset",
        "0",
        "--length",
        &SIZE.to_string(),
    ]);
    assert!(got == data);

    // A fixed VHD whose footer is zeroed has no trace left: it is the raw
    // disk it holds (plus a zero sector), and `-f vhd` says so.
    let img = damaged_copy(d, &fx, "fixed-zeroed.vhd", &[(-512, 512, 0)]);
    let info: serde_json::Value =
        serde_json::from_slice(&ok(&["info", "--json", s(&img)])).unwrap();
    assert_eq!(info["format"], "raw");
    let got = ok(&[
        "read",
        s(&img),
        "--offset",
        "0",
        "--length",
        &SIZE.to_string(),
    ]);
    assert!(got == data);
    let (code, _, err) = run(&["info", "-f", "vhd", s(&img)]);
    assert_eq!(code, 1);
    assert!(err.contains("not a VHD image: found no signature"), "{err}");
}

#[test]
fn key_on_an_image_that_is_not_evhd_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = &test_key().1;
    let (src, _) = source(d);
    let vhd = d.join("d.vhd");
    ok(&["convert", "-q", s(&src), s(&vhd)]);
    let vhdx = d.join("x.vhdx");
    ok(&["convert", "-q", s(&src), s(&vhdx)]);
    for (img, fmt) in [(&vhd, "VHD"), (&vhdx, "VHDX"), (&src, "raw")] {
        let before = file_sha256(img);
        let want = format!(
            "--key is for encrypted (EVHD) images; {} is a {fmt} image",
            img.display()
        );
        let out = d.join("out.vhdx");
        for (args, code) in [
            (vec!["info", s(img)], 1),
            (vec!["check", s(img)], 1),
            (vec!["map", s(img)], 1),
            (vec!["read", s(img), "--offset", "0", "--length", "512"], 1),
            (
                vec![
                    "write",
                    s(img),
                    "--offset",
                    "0",
                    "--pattern",
                    "1",
                    "--length",
                    "512",
                ],
                1,
            ),
            (vec!["convert", "-q", s(img), s(&out)], 1),
            (vec!["compare", s(img), s(&src)], 2),
        ] {
            let mut a = args.clone();
            a.extend(["--key", s(key)]);
            let (got, stdout, err) = run(&a);
            assert_eq!(got, code, "{a:?}: {err}");
            assert!(err.contains(&want), "{a:?}: {err}");
            assert!(stdout.is_empty(), "{a:?} printed output");
            assert!(!out.exists());
        }
        assert_eq!(
            file_sha256(img),
            before,
            "{fmt}: --key write changed the file"
        );
    }
    // compare: the key serves when one of the two images is an EVHD.
    let e = d.join("e.evhd");
    make_evhd(&src, &e);
    ok(&["compare", "--key", s(key), s(&vhd), s(&e)]);
}

#[test]
fn format_option_states_the_input_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, data) = source(d);
    let vhd = d.join("d.vhd");
    ok(&["convert", "-q", s(&src), s(&vhd)]);
    // The stated format opens it; another names what the file holds.
    ok(&["info", "-f", "vhd", s(&vhd)]);
    ok(&["info", "--format", "vhd", s(&vhd)]);
    let (code, _, err) = run(&["info", "-f", "vhdx", s(&vhd)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not a VHDX image: found a VHD footer cookie at offset"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "read",
        "-f",
        "vhd",
        s(&src),
        "--offset",
        "0",
        "--length",
        "1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not a VHD image: found no signature"), "{err}");
    // convert: -f is the input format, -O the output's.
    let out = d.join("out.bin");
    ok(&["convert", "-q", "-f", "vhd", "-O", "raw", s(&vhd), s(&out)]);
    assert!(std::fs::read(&out).unwrap() == data);
    let out2 = d.join("out2.bin");
    ok(&["convert", "-q", "-f", "raw", "-O", "raw", s(&vhd), s(&out2)]);
    assert!(std::fs::read(&out2).unwrap() == std::fs::read(&vhd).unwrap());
    // create keeps its own -f for the output format.
    let c = d.join("c.img");
    ok(&["create", "-f", "vhdx", s(&c), "4M"]);
    assert_eq!(info_json(&c)["format"], "vhdx");
}

#[test]
fn real_images_damaged_are_damaged_not_raw() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Hyper-V VHDX: the log (with entries) at 1 MiB and the metadata at
    // 2 MiB remain when the whole header area is zeroed.
    for name in ["dissect/fixed.vhdx", "dissect/dynamic.vhdx"] {
        let Some(img) = real_image_copy(name, d) else {
            return;
        };
        damage(&img, 0, 1 << 20, 0);
        assert_fails_closed(d, &img, "VHDX", None);
        std::fs::remove_file(&img).unwrap();
    }
    // VHD: a dynamic image with both cookies damaged, a fixed one with its
    // only cookie damaged.
    for name in ["dfvfs/image.vhd", "dissect/fixed.vhd"] {
        let Some(img) = real_image_copy(name, d) else {
            return;
        };
        damage(&img, -512, 2, 0);
        damage(&img, 0, 2, 0);
        assert_fails_closed(d, &img, "VHD", None);
        std::fs::remove_file(&img).unwrap();
    }
}

/// An EVHD with both header magics and the journal magic damaged (one byte
/// each) is still a damaged EVHD: its header copies and journal record are
/// recognised by their fields, and the journal's header copy by its magic.
/// The limit: with the first 192 KiB zeroed nothing fixed is left (the rest
/// of the journal, the table and the data are random-looking), so the file
/// is raw and `-f evhd` says it found no signature.
#[test]
fn evhd_with_all_three_magics_damaged_is_damaged_evhd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = &test_key().1;
    let (src, _) = source(d);
    let e = d.join("e.evhd");
    make_evhd(&src, &e);
    let three = damaged_copy(
        d,
        &e,
        "three.evhd",
        &[(0, 1, 0), (64 << 10, 1, 0), (128 << 10, 1, 0)],
    );
    assert_fails_closed(d, &three, "EVHD", Some(key));
    assert_fails_closed(d, &three, "EVHD", None);
    // The header copy inside the journal record damaged as well: the
    // fields of the header copies and of the journal record remain.
    let four = damaged_copy(d, &three, "four.evhd", &[((128 << 10) + 4096, 1, 0)]);
    assert_fails_closed(d, &four, "EVHD", Some(key));
    for img in [&three, &four] {
        let (code, _, err) = run(&["recipients", "list", s(img)]);
        assert_eq!(code, 1);
        assert!(err.contains("damaged EVHD image"), "{err}");
        let (code, _, err) = run(&["info", "-f", "vhd", s(img)]);
        assert_eq!(code, 1);
        assert!(
            err.contains("not a VHD image") && err.contains("EVHD"),
            "{err}"
        );
    }

    // The documented limit.
    let zeroed = damaged_copy(d, &e, "zero192k.evhd", &[(0, 192 << 10, 0)]);
    let info: serde_json::Value =
        serde_json::from_slice(&ok(&["info", "--json", s(&zeroed)])).unwrap();
    assert_eq!(info["format"], "raw");
    let (code, _, err) = run(&["info", "-f", "evhd", s(&zeroed)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not an EVHD image: found no signature"),
        "{err}"
    );
}

/// A legacy VHD (a 511-byte footer at the end, the file 512 n + 511 bytes
/// long) whose cookie is damaged is a damaged VHD: the footer-shaped last
/// bytes are looked for at EOF-511 too.
#[test]
fn legacy_vhd_with_a_damaged_cookie_is_damaged_vhd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, data) = source(d);
    let fx = d.join("f.vhd");
    ok(&["convert", "-q", "-t", "fixed", s(&src), s(&fx)]);
    // Drop the footer's last (reserved, zero) byte: a legacy footer.
    let legacy = d.join("legacy.vhd");
    let mut bytes = std::fs::read(&fx).unwrap();
    assert_eq!(bytes.pop(), Some(0));
    std::fs::write(&legacy, &bytes).unwrap();
    assert_eq!(bytes.len() % 512, 511);
    let info: serde_json::Value =
        serde_json::from_slice(&ok(&["info", "--json", s(&legacy)])).unwrap();
    assert_eq!(info["format"], "vhd", "{info}");
    let got = ok(&[
        "read",
        s(&legacy),
        "--offset",
        "0",
        "--length",
        &SIZE.to_string(),
    ]);
    assert!(got == data);
    let img = damaged_copy(d, &legacy, "legacy-cookie.vhd", &[(-511, 2, 0)]);
    assert_fails_closed(d, &img, "VHD", None);
}
