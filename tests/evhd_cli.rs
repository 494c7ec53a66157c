//! EVHD through the command line: round trips from raw and VHD with the
//! origin restored, two recipients, remove, rekey, key commands.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{key_show_json, s, vhdkit_bin, vhdkit_fails, vhdkit_stdout as ok};

/// Any failure; returns stderr.
fn fails(args: &[&str]) -> String {
    vhdkit_fails(None, args)
}

/// Three key pairs (A, B, C) made once per test binary with `keygen`.
fn keys() -> &'static (tempfile::TempDir, [PathBuf; 3]) {
    static K: OnceLock<(tempfile::TempDir, [PathBuf; 3])> = OnceLock::new();
    K.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let paths = ["a.xml", "b.xml", "c.xml"].map(|n| dir.path().join(n));
        for p in &paths {
            ok(&["keygen", "--bits", "2048", "-o", s(p)]);
        }
        (dir, paths)
    })
}

fn short(key: &Path) -> String {
    key_show_json(key)["short"].as_str().unwrap().to_string()
}

fn info(image: &Path, key: Option<&Path>) -> serde_json::Value {
    let mut args = vec!["info", "--json", s(image)];
    if let Some(k) = key {
        args.extend(["--key", s(k)]);
    }
    serde_json::from_str(&ok(&args)).unwrap()
}

/// A raw image of mixed content: random, text, zeros.
fn mixed_raw(path: &Path, size: usize) {
    let mut v = vec![0u8; size];
    let mut x: u32 = 12345;
    for (i, b) in v.iter_mut().enumerate() {
        let piece = i / (96 << 10);
        *b = match piece % 3 {
            0 => {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            }
            1 => b"plain text of the disk "[i % 23],
            _ => 0,
        };
    }
    std::fs::write(path, v).unwrap();
}

#[test]
fn raw_vhd_and_vhdx_round_trips_keep_content_and_origin() {
    let (_, k) = keys();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    mixed_raw(&d("src.raw"), 6 << 20);
    ok(&[
        "convert",
        "-q",
        "-O",
        "vhd",
        "--block-size",
        "512K",
        s(&d("src.raw")),
        s(&d("dyn.vhd")),
    ]);
    ok(&[
        "convert",
        "-q",
        "-O",
        "vhd",
        "-t",
        "fixed",
        s(&d("src.raw")),
        s(&d("fixed.vhd")),
    ]);
    ok(&[
        "convert",
        "-q",
        "-O",
        "vhdx",
        "--block-size",
        "8M",
        s(&d("src.raw")),
        s(&d("dyn.vhdx")),
    ]);
    ok(&[
        "convert",
        "-q",
        "-O",
        "vhdx",
        "-t",
        "fixed",
        "--block-size",
        "1M",
        "--sector-size",
        "4096",
        s(&d("src.raw")),
        s(&d("fixed4k.vhdx")),
    ]);
    for cipher in ["aes-256-gcm", "aes-256-gcm-siv"] {
        for (src, back_name, format, ty, bs, sectors) in [
            ("src.raw", "back.img", "raw", "fixed", None, (512, 512)),
            (
                "dyn.vhd",
                "back.vhd",
                "vhd",
                "dynamic",
                Some(512 << 10),
                (512, 512),
            ),
            ("fixed.vhd", "backf.vhd", "vhd", "fixed", None, (512, 512)),
            (
                "dyn.vhdx",
                "back.vhdx",
                "vhdx",
                "dynamic",
                Some(8 << 20),
                (512, 4096),
            ),
            (
                "fixed4k.vhdx",
                "back4k.vhdx",
                "vhdx",
                "fixed",
                Some(1 << 20),
                (4096, 4096),
            ),
        ] {
            let e = d("x.evhd");
            let back = d(back_name);
            let _ = std::fs::remove_file(&e);
            let _ = std::fs::remove_file(&back);
            ok(&[
                "convert",
                "-q",
                "-O",
                "evhd",
                "--cipher",
                cipher,
                "--recipient",
                s(&k[0]),
                "--label",
                "host-a",
                s(&d(src)),
                s(&e),
            ]);
            let i = info(&e, None);
            assert_eq!(i["evhd"]["cipher"], cipher);
            assert_eq!(i["evhd"]["locked"], true);
            assert_eq!(i["evhd"]["origin"]["format"], format);
            assert_eq!(i["evhd"]["origin"]["type"], ty);
            assert_eq!(i["evhd"]["recipients"][0]["label"], "host-a");
            // Without a key: reads fail with a clear message.
            let err = fails(&["read", s(&e), "--offset", "0", "--length", "512"]);
            assert!(err.contains("--key"), "{err}");
            assert_eq!(
                ok(&["compare", "--key", s(&k[0]), s(&d(src)), s(&e)]).trim(),
                "Images are identical."
            );
            ok(&["check", "--key", s(&k[0]), s(&e)]);
            // Back: an extension-less name would restore the origin format;
            // here the extension names it, type and block size come from the origin.
            ok(&["convert", "-q", "--key", s(&k[0]), s(&e), s(&back)]);
            let bi = info(&back, None);
            assert_eq!(bi["format"], format, "{src}");
            assert_eq!(bi["type"], ty, "{src}");
            if let Some(bs) = bs {
                assert_eq!(bi["block_size"], bs, "{src}");
            }
            assert_eq!(bi["logical_sector_size"], sectors.0, "{src}");
            assert_eq!(bi["physical_sector_size"], sectors.1, "{src}");
            if format == "raw" {
                assert_eq!(
                    std::fs::read(&back).unwrap(),
                    std::fs::read(d(src)).unwrap()
                );
            } else {
                assert_eq!(
                    ok(&["compare", s(&d(src)), s(&back)]).trim(),
                    "Images are identical."
                );
            }
        }
    }
    // An unknown extension restores the origin format.
    ok(&[
        "convert",
        "-q",
        "-O",
        "evhd",
        "--recipient",
        s(&k[0]),
        s(&d("dyn.vhd")),
        s(&d("y.evhd")),
    ]);
    ok(&[
        "convert",
        "-q",
        "--key",
        s(&k[0]),
        s(&d("y.evhd")),
        s(&d("restored.out")),
    ]);
    let ri = info(&d("restored.out"), None);
    assert_eq!(ri["format"], "vhd");
    assert_eq!(ri["block_size"], 512 << 10);
}

#[test]
fn two_recipients_remove_and_rekey() {
    let (_, k) = keys();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    mixed_raw(&d("src.raw"), 3 << 20);
    let e = d("two.evhd");
    ok(&[
        "convert",
        "-q",
        "-O",
        "evhd",
        "--recipient",
        s(&k[0]),
        "--label",
        "alpha",
        "--recipient",
        s(&k[1]),
        "--label",
        "beta",
        s(&d("src.raw")),
        s(&e),
    ]);
    let same = |key: &Path| ok(&["compare", "--key", s(key), s(&d("src.raw")), s(&e)]);
    assert!(same(&k[0]).contains("identical"));
    assert!(same(&k[1]).contains("identical"));
    // The third key is told whom the image is addressed to.
    let err = fails(&[
        "read",
        "--key",
        s(&k[2]),
        s(&e),
        "--offset",
        "0",
        "--length",
        "1",
    ]);
    for needle in [
        short(&k[2]),
        short(&k[0]),
        short(&k[1]),
        "\"alpha\"".into(),
        "\"beta\"".into(),
    ] {
        assert!(err.contains(&needle), "{needle} missing from: {err}");
    }
    let list = ok(&["recipients", "list", s(&e)]);
    assert!(list.contains("alpha") && list.contains("beta"), "{list}");
    // Adding needs a recipient's key; a non-recipient cannot.
    let err = fails(&[
        "recipients",
        "add",
        s(&e),
        "--key",
        s(&k[2]),
        "--recipient",
        s(&k[2]),
    ]);
    assert!(err.contains("no recipient"), "{err}");
    // Remove A, authorised by B. A signed the image: a writer that does
    // not trust A's signature refuses (its commit would vouch for A's
    // content); trusting A's public key lets B write. Then A fails, B still
    // opens.
    let args = [
        "recipients",
        "remove",
        s(&e),
        "--key",
        s(&k[1]),
        "--recipient",
        s(&k[0]),
    ];
    let err = fails(&args);
    assert!(
        err.contains("refusing to write") && err.contains(&short(&k[0])),
        "{err}"
    );
    let mut trusting = args.to_vec();
    trusting.extend(["--trust", s(&k[0])]);
    ok(&trusting);
    let err = fails(&[
        "read",
        "--key",
        s(&k[0]),
        s(&e),
        "--offset",
        "0",
        "--length",
        "1",
    ]);
    assert!(err.contains("no recipient"), "{err}");
    assert!(same(&k[1]).contains("identical"));
    // Add C with B's key, then rekey: content unchanged, B and C open.
    ok(&[
        "recipients",
        "add",
        s(&e),
        "--key",
        s(&k[1]),
        "--recipient",
        s(&k[2]),
        "--label",
        "gamma",
    ]);
    let before = info(&e, Some(&k[1]));
    ok(&["rekey", "-q", s(&e), "--key", s(&k[2]), "--trust", s(&k[1])]);
    let after = info(&e, Some(&k[1]));
    assert_ne!(before["evhd"]["key_epoch"], after["evhd"]["key_epoch"]);
    assert_eq!(after["evhd"]["rekey_in_progress"], false);
    assert!(same(&k[1]).contains("identical"));
    assert!(same(&k[2]).contains("identical"));
    ok(&["check", "--key", s(&k[2]), s(&e)]);
    // Writes through the CLI with a key.
    ok(&[
        "write",
        "--key",
        s(&k[1]),
        s(&e),
        "--offset",
        "1000",
        "--pattern",
        "0xab",
        "--length",
        "70000",
        "--trust",
        s(&k[2]),
    ]);
    let out = Command::new(vhdkit_bin())
        .args([
            "read",
            "--key",
            s(&k[2]),
            s(&e),
            "--offset",
            "999",
            "--length",
            "70002",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let src = std::fs::read(d("src.raw")).unwrap();
    assert_eq!(out.stdout[0], src[999]);
    assert!(out.stdout[1..70001].iter().all(|&b| b == 0xab));
    assert_eq!(out.stdout[70001], src[71000]);
}

#[test]
fn key_commands() {
    let (_, k) = keys();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let show = ok(&["key", "show", s(&k[0])]);
    assert!(show.contains("private") && show.contains("2048"), "{show}");
    ok(&["key", "public", s(&k[0]), "-o", s(&d("pub.xml"))]);
    let xml = std::fs::read_to_string(d("pub.xml")).unwrap();
    assert!(
        xml.starts_with("<RSAKeyValue><Modulus>") && !xml.contains("<D>"),
        "{xml}"
    );
    assert!(ok(&["key", "show", s(&d("pub.xml"))]).contains("public"));
    ok(&["key", "export-pem", s(&k[0]), "-o", s(&d("k.pem"))]);
    // Same fingerprint from every form.
    assert_eq!(short(&d("pub.xml")), short(&k[0]));
    assert_eq!(short(&d("k.pem")), short(&k[0]));
    // A public key can be a recipient but cannot open.
    // An odd-sized raw source (not a multiple of 512) works too.
    let odd: Vec<u8> = (0..100_003u32).map(|i| (i % 7) as u8 + 1).collect();
    std::fs::write(d("odd.raw"), &odd).unwrap();
    ok(&[
        "convert",
        "-q",
        "-O",
        "evhd",
        "--recipient",
        s(&d("pub.xml")),
        s(&d("odd.raw")),
        s(&d("p.evhd")),
    ]);
    ok(&[
        "convert",
        "-q",
        "--key",
        s(&d("k.pem")),
        s(&d("p.evhd")),
        s(&d("odd.img")),
    ]);
    assert_eq!(std::fs::read(d("odd.img")).unwrap(), odd);
    let err = fails(&["info", "--key", s(&d("pub.xml")), s(&d("p.evhd"))]);
    assert!(err.contains("public key"), "{err}");
    assert!(ok(&["info", "--key", s(&d("k.pem")), s(&d("p.evhd"))]).contains("evhd.unlocked_with"));
    let err = fails(&["keygen", "--bits", "1024", "-o", s(&d("small.xml"))]);
    assert!(err.contains("2048"), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&k[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "private key files are owner-only");
    }
}
