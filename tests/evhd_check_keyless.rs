//! `check` of an EVHD without `--key` says what it checked and what it
//! could not (everything encrypted), and does not call the image clean:
//! exit 1, JSON status `incomplete`. With the key the same image is clean.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::{code_out_err, make_evhd, patch_file, test_key, vhdkit};

fn check(img: &Path, json: bool, key: bool) -> (i32, String) {
    let mut a: Vec<&OsStr> = vec![OsStr::new("check")];
    if json {
        a.push(OsStr::new("--json"));
    }
    if key {
        a.push(OsStr::new("--key"));
        a.push(test_key().1.as_os_str());
    }
    a.push(img.as_os_str());
    let (code, out, err) = code_out_err(&vhdkit(&a));
    assert!(err.is_empty() || code != 0, "{err}");
    (code, out)
}

fn image(dir: &Path) -> std::path::PathBuf {
    let raw = dir.join("src.raw");
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&raw, data).unwrap();
    let img = dir.join("d.evhd");
    make_evhd(&raw, &img);
    img
}

#[test]
fn keyless_check_lists_what_it_could_not_check() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());

    let (code, out) = check(&img, false, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("checked: header copies A and B"), "{out}");
    assert!(out.contains("checked: journal record: CRC-32C"), "{out}");
    assert!(
        out.contains("not checked: header MACs") && out.contains("--key"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l == "No errors found."), "{out}");
    assert!(out.contains("could not be checked"), "{out}");

    let (code, out) = check(&img, true, false);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "incomplete", "{v}");
    assert!(!v["checked"].as_array().unwrap().is_empty(), "{v}");
    let not = v["not_checked"].as_array().unwrap();
    assert_eq!(not.len(), 1, "{v}");
    for what in ["header MACs", "epoch keys", "table pages", "data blocks"] {
        assert!(not[0].as_str().unwrap().contains(what), "{what}: {v}");
    }
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] != "error"),
        "{v}"
    );

    // With the key everything is checked: clean.
    let (code, out) = check(&img, false, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l == "No errors found."), "{out}");
    let (code, out) = check(&img, true, true);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "clean", "{v}");
    assert_eq!(v["not_checked"].as_array().unwrap().len(), 0, "{v}");
}

/// Damage that needs no key to see still makes `check` exit 2 without one.
#[test]
fn keyless_check_still_finds_public_damage() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let a = common::file_bytes(&img, 16, 8);
    let b = common::file_bytes(&img, 65536 + 16, 8);
    let older =
        if u64::from_le_bytes(b.try_into().unwrap()) > u64::from_le_bytes(a.try_into().unwrap()) {
            0
        } else {
            65536
        };
    // A reserved byte of the older copy: its CRC no longer matches.
    let at = older + 300;
    let byte = common::file_bytes(&img, at, 1)[0] ^ 0x80;
    patch_file(&img, at, &[byte]);
    let (code, out) = check(&img, true, false);
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "corrupt", "{v}");
    assert!(out.contains("CRC-32C"), "{v}");
    assert_eq!(v["not_checked"].as_array().unwrap().len(), 1, "{v}");
}
