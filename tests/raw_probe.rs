//! Raw images whose format was detected (not stated with `-f raw`) refuse
//! writes that would make detection find another format (the CVE-2008-2004
//! class qemu guards against): a guest that controls a raw disk's content
//! must not be able to turn it into, say, a differencing VHD whose parent
//! is another VM's image. And a raw disk whose data merely holds the word
//! `metadata` at 2 MiB is raw, not a damaged VHDX.

mod common;

use std::path::Path;

use common::*;

/// Run vhdkit with string arguments; returns (status, stdout bytes, stderr).
fn run(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = vhdkit(args);
    assert_no_panic(&out);
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> Vec<u8> {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "vhdkit {args:?}: {err}");
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A sparse raw image of `len` bytes.
fn sparse_raw(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// The format `info --json` reports (with `extra` options before the path).
fn info_format(path: &Path, extra: &[&str]) -> String {
    let mut args = vec!["info", "--json"];
    args.extend_from_slice(extra);
    args.push(s(path));
    let v: serde_json::Value = serde_json::from_slice(&ok(&args)).unwrap();
    v["format"].as_str().unwrap().to_string()
}

/// `write IMG --offset OFFSET --input INPUT` (with `extra` options first).
fn write(img: &Path, offset: u64, input: &Path, extra: &[&str]) -> (i32, String) {
    let off = offset.to_string();
    let mut args = vec!["write"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[s(img), "--offset", &off, "--input", s(input)]);
    let (code, _, err) = run(&args);
    (code, err)
}

#[test]
fn a_guest_cannot_turn_a_probed_raw_disk_into_a_differencing_vhd() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("othervm.vhd");
    ok(&["create", "-f", "vhd", s(&other), "4M"]);
    let secret = dir.path().join("secret.bin");
    std::fs::write(&secret, b"the other VM's secret").unwrap();
    ok(&["write", s(&other), "--offset", "0", "--input", s(&secret)]);
    let kid = dir.path().join("kid.vhd");
    ok(&["create", "-f", "vhd", "--parent", s(&other), s(&kid)]);
    let k1 = dir.path().join("k1.bin");
    std::fs::write(&k1, &std::fs::read(&kid).unwrap()[..3072]).unwrap();

    let guest = dir.path().join("guest.raw");
    sparse_raw(&guest, 8 << 20);
    assert_eq!(info_format(&guest, &[]), "raw");
    let before = file_sha256(&guest);

    let (code, err) = write(&guest, 0, &k1, &[]);
    assert_eq!(code, 1, "the write must be refused: {err}");
    assert!(
        err.contains("refusing to write: this data would make the raw image look like a VHD image")
            && err.contains("at offset 0x0")
            && err.contains("-f raw"),
        "{err}"
    );
    assert_eq!(
        file_sha256(&guest),
        before,
        "a refused write changed the file"
    );
    assert_eq!(info_format(&guest, &[]), "raw");
    let (code, out, err) = run(&["read", s(&guest), "--offset", "0", "--length", "512"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.iter().all(|&b| b == 0), "the guest reads its own zeros");

    // Stated raw: the caller knows the content is guest data.
    let (code, err) = write(&guest, 0, &k1, &["-f", "raw"]);
    assert_eq!(code, 0, "with -f raw the write is the caller's word: {err}");
    assert_eq!(
        &std::fs::read(&guest).unwrap()[..3072],
        &std::fs::read(&k1).unwrap()[..]
    );
    assert_eq!(info_format(&guest, &["-f", "raw"]), "raw");
}

#[test]
fn other_signatures_are_refused_on_a_probed_raw_disk() {
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest.raw");
    sparse_raw(&guest, 8 << 20);
    let before = file_sha256(&guest);
    let cases: [(u64, &[u8], &str); 4] = [
        (
            0,
            b"vhdxfile",
            "a VHDX image (VHDX file identifier at offset 0x0)",
        ),
        (
            64 << 10,
            b"EVHDCRPT",
            "an EVHD image (EVHD header magic at offset 0x10000)",
        ),
        (
            128 << 10,
            b"EVHDJRNL",
            "an EVHD image (EVHD journal record magic at offset 0x20000)",
        ),
        (
            (8 << 20) - 512,
            b"conectix",
            "a VHD image (VHD footer cookie at offset 0x7ffe00)",
        ),
    ];
    for (offset, magic, want) in cases {
        let input = dir.path().join("sig.bin");
        std::fs::write(&input, magic).unwrap();
        let (code, err) = write(&guest, offset, &input, &[]);
        assert_eq!(code, 1, "{magic:?} at {offset}: {err}");
        assert!(err.contains(want), "{magic:?} at {offset}: {err}");
        assert_eq!(file_sha256(&guest), before, "{magic:?} at {offset}");
    }
    // A signature assembled from two writes: the one completing it is refused.
    let half = dir.path().join("half.bin");
    std::fs::write(&half, b"vhdx").unwrap();
    assert_eq!(write(&guest, 0, &half, &[]).0, 0);
    std::fs::write(&half, b"file").unwrap();
    let (code, err) = write(&guest, 4, &half, &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(info_format(&guest, &[]), "raw");
}

#[test]
fn ordinary_writes_to_a_probed_raw_disk_work() {
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest.raw");
    sparse_raw(&guest, 8 << 20);
    // An MBR-like first sector, data in the detection windows and elsewhere.
    let data = random_bytes(1 << 20, 7);
    let input = dir.path().join("data.bin");
    std::fs::write(&input, &data).unwrap();
    for offset in [0u64, 1 << 20, 5 << 20, (8 << 20) - (1 << 20)] {
        let (code, err) = write(&guest, offset, &input, &[]);
        assert_eq!(code, 0, "write at {offset}: {err}");
        let len = (1u64 << 20).to_string();
        let off = offset.to_string();
        let (code, out, err) = run(&["read", s(&guest), "--offset", &off, "--length", &len]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, data, "read back at {offset}");
    }
    assert_eq!(info_format(&guest, &[]), "raw");
}

#[test]
fn the_word_metadata_at_2_mib_of_a_raw_disk_is_data() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ext4.raw");
    sparse_raw(&img, 64 << 20);
    patch_file(&img, 2 << 20, b"metadata:\n  name: x\n");
    assert_eq!(info_format(&img, &[]), "raw");
    let (code, _, err) = run(&["check", s(&img)]);
    assert_eq!(code, 0, "check: {err}");
    let input = dir.path().join("x.bin");
    std::fs::write(&input, b"more data").unwrap();
    let (code, err) = write(&img, 3 << 20, &input, &[]);
    assert_eq!(code, 0, "write: {err}");
    let (code, out, err) = run(&["read", s(&img), "--offset", "2097152", "--length", "9"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"metadata:");
}

#[test]
fn a_vhdx_detected_from_its_metadata_table_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vhdx");
    ok(&["create", "-f", "vhdx", s(&img), "8M"]);
    // Zero the whole header area (identifier, headers, region tables) and
    // the log: the metadata table at 2 MiB is the only trace left.
    patch_file(&img, 0, &vec![0u8; 2 << 20]);
    assert_eq!(info_format(&img, &["-f", "raw"]), "raw");
    let (code, _, err) = run(&["read", s(&img), "--offset", "0", "--length", "512"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("damaged VHDX image")
            && err.contains(
                "(detected as VHDX from its VHDX metadata table signature at offset 0x200000); \
                 if this is a raw disk, -f raw reads it as one"
            ),
        "{err}"
    );
    let (code, out, err) = run(&["check", s(&img)]);
    assert_eq!(code, 2, "check: {err}");
    let all = format!("{}{err}", String::from_utf8_lossy(&out));
    assert!(
        all.contains("detected as VHDX from its VHDX metadata table signature at offset 0x200000"),
        "{all}"
    );
}
