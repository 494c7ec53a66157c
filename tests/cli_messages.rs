//! Error messages that name the image and say what is wrong with it in the
//! user's terms.

mod common;

use std::path::Path;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `rekey` on a file that is not an EVHD, or on a damaged EVHD, says so as
/// `sign` and `recipients` do, and leaves the file alone.
#[test]
fn rekey_names_what_the_image_is() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = &test_key().1;
    let src = d.join("src.raw");
    write_raw(&src, &mixed_content(2 << 20, 3));
    let vhd = d.join("base.vhd");
    vhdkit_ok(["convert", "-q", s(&src), s(&vhd)]);
    let e = d.join("e.evhd");
    make_evhd(&src, &e);
    let damaged = d.join("damaged.evhd");
    std::fs::copy(&e, &damaged).unwrap();
    patch_file(&damaged, 0, &[0]);
    patch_file(&damaged, 64 << 10, &[0]);

    for (img, want) in [
        (&vhd, "not an EVHD image"),
        (&damaged, "damaged EVHD image"),
    ] {
        let before = file_sha256(img);
        let out = vhdkit(["rekey", s(img), "--key", s(key), "-q"]);
        let (code, _, err) = code_out_err(&out);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(s(img)) && err.contains(want), "{err}");
        // The same words as recipients list.
        let out = vhdkit(["recipients", "list", s(img)]);
        let (_, _, err2) = code_out_err(&out);
        assert!(err2.contains(want), "{err2}");
        assert_eq!(file_sha256(img), before);
    }
    // A real EVHD still rekeys.
    vhdkit_ok(["rekey", s(&e), "--key", s(key), "-q"]);
}

/// `read` of a range outside the virtual disk names the image.
#[test]
fn read_out_of_range_names_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.vhdx");
    vhdkit_ok(["create", s(&x), "16M"]);
    for (offset, length) in [("16M", "1"), ("15M", "2M"), ("17M", "0")] {
        let out = vhdkit(["read", s(&x), "--offset", offset, "--length", length]);
        let (code, stdout, err) = code_out_err(&out);
        assert_eq!(code, 1, "{err}");
        assert!(stdout.is_empty());
        assert!(err.contains(s(&x)), "{offset}+{length}: {err}");
    }
}
