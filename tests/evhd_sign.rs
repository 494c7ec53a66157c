//! Writer-authenticated EVHD (issue 11, part 5): images made from public
//! keys only are unsigned; a writer holding a recipient's private key signs
//! every header commit; `--require-signed` refuses unsigned images and
//! images signed by keys the reader does not trust, naming the signer;
//! `--trust` adds trusted keys; a damaged or forged signature is tampering,
//! also in a journaled header; `openssl` verifies the signatures.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, OnceLock};

use common::{
    code_out_err, key_show_json, keypair, require_tool, s, vhdkit, vhdkit_fails,
    vhdkit_ok_output as ok,
};
use vhdkit::MemStorage;
use vhdkit::SignatureStatus as Status;
use vhdkit::unstable::evhd::header::{
    self, COPY_OFFSETS, HEADER_SIZE, Header, MAC_OFFSET, SIGNATURE_OFFSET, SIGNER_OFFSET,
};
use vhdkit::unstable::evhd::journal;
use vhdkit::unstable::evhd::signature;
use vhdkit::{ErrorKind, OpenOptions, VirtualDisk};
use vhdkit::{EvhdBuilder, EvhdDisk};
use vhdkit::{KeyFile, PrivateKey};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit status 1 (an ordinary command error); returns stderr.
fn fails(args: &[&str]) -> String {
    vhdkit_fails(Some(1), args)
}

/// Key pairs A, B, C (KeyPair.xml, private) and their public halves
/// (`*.pub.xml`), made once per test binary with `keygen`.
struct Keys {
    _dir: tempfile::TempDir,
    private: [PathBuf; 3],
    public: [PathBuf; 3],
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let pairs = ["a", "b", "c"].map(|n| keypair(dir.path(), n));
        let private = pairs.clone().map(|(k, _)| k);
        let public = pairs.map(|(_, p)| p);
        Keys {
            _dir: dir,
            private,
            public,
        }
    })
}

fn short(key: &Path) -> String {
    key_show_json(key)["short"].as_str().unwrap().to_string()
}

/// `info --json` with extra arguments.
fn info(image: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["info", "--json", s(image)];
    args.extend_from_slice(extra);
    serde_json::from_slice(&ok(&args).stdout).unwrap()
}

/// A raw source of 3 MiB whose bytes depend on `seed`.
fn source(path: &Path, seed: u64) {
    std::fs::write(path, common::mixed_content(3 << 20, seed)).unwrap();
}

/// `convert -O evhd` of `src` to `dst` for recipients A ("alpha") and B
/// ("beta"), each given as the key file in `a` and `b` (private files sign).
fn make(src: &Path, dst: &Path, a: &Path, b: &Path) {
    ok(&[
        "convert",
        "-q",
        "--force",
        "-O",
        "evhd",
        "--recipient",
        s(a),
        "--label",
        "alpha",
        "--recipient",
        s(b),
        "--label",
        "beta",
        s(src),
        s(dst),
    ]);
}

fn read_all(image: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["read", s(image), "--offset", "0", "--length", "3M"];
    args.extend_from_slice(extra);
    vhdkit(&args)
}

/// The current header copy of an image file: its index, offset and bytes.
fn current_copy(image: &[u8]) -> (usize, usize) {
    let seq = |i: usize| {
        let o = COPY_OFFSETS[i] as usize;
        Header::decode(&image[o..o + HEADER_SIZE], o as u64, image.len() as u64)
            .map(|h| h.sequence)
            .unwrap_or(0)
    };
    let i = if seq(1) > seq(0) { 1 } else { 0 };
    (i, COPY_OFFSETS[i] as usize)
}

/// Flip one bit of header copy byte `at` (offset inside the copy at
/// `base`) and recompute the copy's CRC, as an attacker would.
fn flip_with_crc(image: &mut [u8], base: usize, at: usize) {
    image[base + at] ^= 0x10;
    let crc = header::compute_crc(&image[base..base + HEADER_SIZE]);
    image[base + header::CRC_OFFSET..base + header::CRC_OFFSET + 4]
        .copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn public_keys_only_image_is_unsigned() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let (src, e) = (dir.path().join("src.raw"), dir.path().join("pub.evhd"));
    source(&src, 1);
    make(&src, &e, &k.public[0], &k.public[1]);
    let key_a = ["--key", s(&k.private[0])];
    let v = info(&e, &key_a);
    assert_eq!(v["evhd"]["version"], 1, "{v}");
    assert_eq!(v["evhd"]["signature"]["signed"], false, "{v}");
    assert!(
        v["warnings"].to_string().contains("not signed"),
        "info names the problem: {v}"
    );
    // Without --require-signed it opens, with a warning on stderr.
    let o = read_all(&e, &key_a);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, std::fs::read(&src).unwrap());
    assert!(stderr(&o).contains("warning") && stderr(&o).contains("not signed"));
    let text = stdout(&ok(&["info", s(&e), "--key", s(&k.private[0])]));
    assert!(
        text.contains("WARNING") && text.contains("not signed"),
        "{text}"
    );
    // With it: refused, for every opening command.
    for args in [
        vec!["read", s(&e), "--offset", "0", "--length", "1"],
        vec!["info", s(&e)],
        vec!["map", s(&e)],
        vec!["compare", s(&e), s(&e)],
        vec![
            "write",
            s(&e),
            "--offset",
            "0",
            "--pattern",
            "1",
            "--length",
            "1",
        ],
    ] {
        let mut a = args.clone();
        a.extend_from_slice(&key_a);
        a.push("--require-signed");
        let o = vhdkit(&a);
        let (code, _, err) = code_out_err(&o);
        let want = if args[0] == "compare" { 2 } else { 1 };
        assert_eq!(code, want, "{args:?}: {err}");
        assert!(err.contains("EVHD image is not signed"), "{args:?}: {err}");
        assert!(err.contains(s(&e)), "the image is named: {err}");
    }
    assert_eq!(
        std::fs::read(&src).unwrap(),
        read_all(&e, &key_a).stdout,
        "the refused write changed nothing"
    );
    // check: a warning without --require-signed, an error finding with it.
    let o = vhdkit(["check", s(&e), "--key", s(&k.private[0])]);
    let (code, out, _) = code_out_err(&o);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning") && out.contains("not signed"),
        "{out}"
    );
    let o = vhdkit([
        "check",
        s(&e),
        "--key",
        s(&k.private[0]),
        "--require-signed",
    ]);
    let (code, out, _) = code_out_err(&o);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("error") && out.contains("not signed"), "{out}");
    // Without a key too.
    let err = fails(&["info", s(&e), "--require-signed"]);
    assert!(err.contains("not signed"), "{err}");
    // Other formats carry no signature: refused before they are opened (a
    // file swapped for a plain image must not pass).
    let before = std::fs::read(&src).unwrap();
    let err = fails(&[
        "write",
        s(&src),
        "--offset",
        "0",
        "--pattern",
        "7",
        "--length",
        "512",
        "--require-signed",
    ]);
    assert!(err.contains("raw image carries no signature"), "{err}");
    assert_eq!(std::fs::read(&src).unwrap(), before);
}

#[test]
fn forged_or_untrusted_images_are_refused_naming_the_signer() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    source(&d("src.raw"), 2);
    source(&d("evil.raw"), 3);
    let key_a = ["--key", s(&k.private[0]), "--require-signed"];
    // The genuine image, written by A: accepted.
    make(&d("src.raw"), &d("img.evhd"), &k.private[0], &k.public[1]);
    ok(
        &["read", s(&d("img.evhd")), "--offset", "0", "--length", "1"]
            .iter()
            .chain(&key_a)
            .copied()
            .collect::<Vec<_>>(),
    );

    // 1. Someone with only the public keys builds a fully valid image of
    // other content for the same recipients and puts it in place.
    make(&d("evil.raw"), &d("img.evhd"), &k.public[0], &k.public[1]);
    let o = read_all(&d("img.evhd"), &key_a);
    let (code, _, err) = code_out_err(&o);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not signed"), "{err}");
    let o = read_all(&d("img.evhd"), &key_a[..2]);
    assert!(o.status.success());
    assert_eq!(o.stdout, std::fs::read(d("evil.raw")).unwrap());
    assert!(stderr(&o).contains("not signed"), "warned: {}", stderr(&o));

    // 2. A key holder the reader does not trust signs: C, added as a
    // recipient of its own forgery.
    ok(&[
        "convert",
        "-q",
        "--force",
        "-O",
        "evhd",
        "--recipient",
        s(&k.public[0]),
        "--label",
        "alpha",
        "--recipient",
        s(&k.private[2]),
        "--label",
        "mallory",
        s(&d("evil.raw")),
        s(&d("img.evhd")),
    ]);
    let c = short(&k.private[2]);
    let err = fails(
        &["info", s(&d("img.evhd"))]
            .iter()
            .chain(&key_a)
            .copied()
            .collect::<Vec<_>>(),
    );
    assert!(
        err.contains(&c) && err.contains("\"mallory\"") && err.contains("not trust"),
        "the signer is named: {err}"
    );
    let o = read_all(&d("img.evhd"), &key_a[..2]);
    assert!(o.status.success());
    assert!(
        stderr(&o).contains(&c) && stderr(&o).contains("not trust"),
        "warned: {}",
        stderr(&o)
    );
    let v = info(&d("img.evhd"), &key_a[..2]);
    assert_eq!(v["evhd"]["signature"]["signer_short"], c.as_str());
    assert_eq!(v["evhd"]["signature"]["trusted"], false);
    let o = vhdkit([
        "check",
        s(&d("img.evhd")),
        "--key",
        s(&k.private[0]),
        "--require-signed",
    ]);
    let (code, out, _) = code_out_err(&o);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&c), "{out}");

    // 3. A recipient the reader does not trust (B) signs: a reader with A's
    // key alone refuses, naming B.
    make(&d("src.raw"), &d("img.evhd"), &k.public[0], &k.private[1]);
    let err = fails(
        &["map", s(&d("img.evhd"))]
            .iter()
            .chain(&key_a)
            .copied()
            .collect::<Vec<_>>(),
    );
    assert!(
        err.contains(&short(&k.private[1])) && err.contains("\"beta\""),
        "{err}"
    );
}

#[test]
fn images_written_by_a_trusted_key_holder_open_with_require_signed() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    source(&d("src.raw"), 4);
    let a = short(&k.private[0]);
    let b = short(&k.private[1]);
    // convert with a private recipient key.
    make(&d("src.raw"), &d("conv.evhd"), &k.private[0], &k.public[1]);
    let v = info(
        &d("conv.evhd"),
        &["--key", s(&k.private[0]), "--require-signed"],
    );
    let sig = &v["evhd"]["signature"];
    assert_eq!(v["evhd"]["version"], 2, "{v}");
    assert_eq!(sig["signed"], true);
    assert_eq!(sig["signer_short"], a.as_str());
    assert_eq!(sig["signer_label"], "alpha");
    assert_eq!(sig["trusted"], true);
    assert_eq!(sig["verified"], "signature and header MAC");
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");
    let text = stdout(&ok(&[
        "info",
        s(&d("conv.evhd")),
        "--key",
        s(&k.private[0]),
    ]));
    assert!(
        text.contains(&a) && text.contains("alpha") && !text.contains("WARNING"),
        "{text}"
    );
    let o = read_all(
        &d("conv.evhd"),
        &["--key", s(&k.private[0]), "--require-signed"],
    );
    assert!(o.status.success() && o.stderr.is_empty(), "{}", stderr(&o));
    assert_eq!(o.stdout, std::fs::read(d("src.raw")).unwrap());
    let o = vhdkit([
        "check",
        s(&d("conv.evhd")),
        "--key",
        s(&k.private[0]),
        "--require-signed",
    ]);
    let (code, out, _) = code_out_err(&o);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&a) && out.contains("trusted"), "{out}");

    // `sign` by B of an unsigned image.
    make(&d("src.raw"), &d("pub.evhd"), &k.public[0], &k.public[1]);
    let seq_before = info(&d("pub.evhd"), &[])["evhd"]["sequence"]
        .as_u64()
        .unwrap();
    let out = stdout(&ok(&["sign", s(&d("pub.evhd")), "--key", s(&k.private[1])]));
    assert!(out.contains(&b) && out.contains("was unsigned"), "{out}");
    let v = info(
        &d("pub.evhd"),
        &["--key", s(&k.private[1]), "--require-signed"],
    );
    assert_eq!(v["evhd"]["sequence"].as_u64().unwrap(), seq_before + 1);
    assert_eq!(v["evhd"]["signature"]["signer_short"], b.as_str());
    // B's key, A trusted: both signed images compare equal.
    assert!(
        ok(&[
            "compare",
            "--key",
            s(&k.private[1]),
            "--trust",
            s(&k.public[0]),
            "--require-signed",
            s(&d("conv.evhd")),
            s(&d("pub.evhd"))
        ])
        .stdout
        .starts_with(b"Images are identical")
    );
    // A reader holding only A's key does not trust B's signature.
    let err = fails(&[
        "info",
        s(&d("pub.evhd")),
        "--key",
        s(&k.private[0]),
        "--require-signed",
    ]);
    assert!(err.contains(&b), "{err}");

    // A write by a key holder signs, but never an image no trusted key
    // signed (that would vouch for content nobody trusted wrote): `write
    // --key A` on an unsigned image is refused until `sign` vouches for it.
    make(&d("src.raw"), &d("w.evhd"), &k.public[0], &k.public[1]);
    let w = d("w.evhd");
    let write_a = [
        "write",
        s(&w),
        "--key",
        s(&k.private[0]),
        "--offset",
        "4096",
        "--pattern",
        "0x5a",
        "--length",
        "4096",
    ];
    let err = fails(&write_a);
    assert!(
        err.contains("refusing to write") && err.contains("not signed"),
        "{err}"
    );
    ok(&["sign", s(&d("w.evhd")), "--key", s(&k.private[0])]);
    ok(&[
        "write",
        s(&d("w.evhd")),
        "--key",
        s(&k.private[0]),
        "--offset",
        "4096",
        "--pattern",
        "0x5a",
        "--length",
        "4096",
    ]);
    let v = info(
        &d("w.evhd"),
        &["--key", s(&k.private[0]), "--require-signed"],
    );
    assert_eq!(v["evhd"]["signature"]["signer_short"], a.as_str());

    // recipients add / remove and rekey sign with the key they were given
    // (trusting the previous signer); removing the signing key itself lets
    // another given key sign.
    ok(&[
        "recipients",
        "add",
        s(&d("w.evhd")),
        "--key",
        s(&k.private[1]),
        "--trust",
        s(&k.public[0]),
        "--recipient",
        s(&k.public[2]),
    ]);
    assert_eq!(
        info(&d("w.evhd"), &["--key", s(&k.private[1])])["evhd"]["signature"]["signer_short"],
        b.as_str()
    );
    let err = fails(&[
        "recipients",
        "remove",
        s(&d("w.evhd")),
        "--key",
        s(&k.private[1]),
        "--recipient",
        s(&k.public[1]),
    ]);
    assert!(err.contains("remains a recipient"), "{err}");
    ok(&[
        "recipients",
        "remove",
        s(&d("w.evhd")),
        "--key",
        s(&k.private[1]),
        "--key",
        s(&k.private[2]),
        "--recipient",
        s(&k.public[1]),
    ]);
    let v = info(
        &d("w.evhd"),
        &["--key", s(&k.private[2]), "--require-signed"],
    );
    assert_eq!(
        v["evhd"]["signature"]["signer_short"],
        short(&k.private[2]).as_str()
    );
    ok(&[
        "rekey",
        "-q",
        s(&d("w.evhd")),
        "--key",
        s(&k.private[0]),
        "--trust",
        s(&k.public[2]),
    ]);
    let v = info(
        &d("w.evhd"),
        &["--key", s(&k.private[0]), "--require-signed"],
    );
    assert_eq!(v["evhd"]["signature"]["signer_short"], a.as_str());
}

#[test]
fn trust_accepts_a_signature_by_another_key() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    source(&d("src.raw"), 5);
    make(&d("src.raw"), &d("img.evhd"), &k.private[0], &k.public[1]);
    let b_reads = |extra: &[&str]| {
        let mut args = vec!["--key", s(&k.private[1]), "--require-signed"];
        args.extend_from_slice(extra);
        read_all(&d("img.evhd"), &args)
    };
    let o = b_reads(&[]);
    assert_eq!(o.status.code(), Some(1), "B alone does not trust A");
    assert!(stderr(&o).contains(&short(&k.private[0])), "{}", stderr(&o));
    // A's public key file as KeyPair.xml, then as PEM.
    let o = b_reads(&["--trust", s(&k.public[0])]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, std::fs::read(d("src.raw")).unwrap());
    ok(&[
        "key",
        "export-pem",
        "--public",
        s(&k.private[0]),
        "-o",
        s(&d("a.pem")),
    ]);
    let o = b_reads(&["--trust", s(&d("a.pem"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A trusted key that did not sign does not help.
    let o = b_reads(&["--trust", s(&k.public[2])]);
    assert_eq!(o.status.code(), Some(1));
    // Without any key: the signature (over the stored MAC) is judged too.
    let v = info(
        &d("img.evhd"),
        &["--trust", s(&k.public[0]), "--require-signed"],
    );
    assert_eq!(v["evhd"]["signature"]["trusted"], true);
    assert!(
        v["evhd"]["signature"]["verified"]
            .as_str()
            .unwrap()
            .contains("signature only")
    );
}

#[test]
fn a_flipped_signature_or_signer_byte_is_tampering() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    source(&d("src.raw"), 6);
    make(&d("src.raw"), &d("good.evhd"), &k.private[0], &k.public[1]);
    let good = std::fs::read(d("good.evhd")).unwrap();
    let (_, base) = current_copy(&good);
    let fp_at = SIGNER_OFFSET + 5;
    let sig_first = SIGNATURE_OFFSET;
    let sig_last = SIGNATURE_OFFSET + 255; // a 2048-bit signature
    // Bytes the MAC or the signature covers: every open fails. Bytes only
    // the copy's own checks cover (the zeros after the signature): that
    // copy is unusable, the open falls back to the other copy and the
    // journal, and `check` reports the damage.
    for (what, at, open_fails) in [
        ("signature first byte", sig_first, true),
        ("signature middle", sig_first + 100, true),
        ("signature last byte", sig_last, true),
        ("signer fingerprint", fp_at, true),
        ("signature length", SIGNER_OFFSET + 32, true),
        ("zero after the signature", sig_last + 1, false),
    ] {
        let mut img = good.clone();
        flip_with_crc(&mut img, base, at);
        let p = d("bad.evhd");
        std::fs::write(&p, &img).unwrap();
        // With and without --require-signed, with and without a key: an error.
        for extra in [
            &["--key", s(&k.private[0])][..],
            &["--key", s(&k.private[1])][..],
            &[][..],
        ]
        .into_iter()
        .filter(|_| !open_fails)
        {
            let mut args = vec!["check", s(&p)];
            args.extend_from_slice(extra);
            let o = vhdkit(&args);
            let (code, out, _) = code_out_err(&o);
            assert_eq!(code, 2, "{what} {extra:?}: {out}");
            assert!(out.contains("EVHD header copy"), "{what}: {out}");
        }
        for extra in [
            &["--key", s(&k.private[0])][..],
            &["--key", s(&k.private[0]), "--require-signed"][..],
            &["--key", s(&k.private[1])][..],
            &[][..],
        ]
        .into_iter()
        .filter(|_| open_fails)
        {
            let mut args = vec!["info", s(&p)];
            args.extend_from_slice(extra);
            let err = fails(&args);
            assert!(
                [
                    "does not verify",
                    "MAC mismatch",
                    "not one of its recipients",
                    "no usable header",
                    "signature of",
                    "not zero"
                ]
                .iter()
                .any(|n| err.contains(n)),
                "{what} {extra:?}: {err}"
            );
        }
        let o = vhdkit(["check", s(&p), "--key", s(&k.private[0])]);
        let (code, out, _) = code_out_err(&o);
        assert_eq!(code, 2, "{what}: {out}");
        // The signature bytes themselves are outside the MAC: only the
        // signature check catches them.
        if (sig_first..=sig_last).contains(&at) {
            let err = fails(&[
                "read",
                s(&p),
                "--key",
                s(&k.private[0]),
                "--offset",
                "0",
                "--length",
                "1",
            ]);
            assert!(
                err.contains("does not verify") && err.contains("tampered"),
                "{what}: {err}"
            );
        }
    }
    // A flip without the CRC fixed leaves that copy unusable: check says so.
    let mut img = good.clone();
    img[base + sig_first + 7] ^= 1;
    std::fs::write(d("torn.evhd"), &img).unwrap();
    let o = vhdkit(["check", s(&d("torn.evhd")), "--key", s(&k.private[0])]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
}

#[test]
fn unknown_versions_are_refused() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    source(&d("src.raw"), 7);
    make(&d("src.raw"), &d("img.evhd"), &k.private[0], &k.public[1]);
    let mut img = std::fs::read(d("img.evhd")).unwrap();
    for base in COPY_OFFSETS.map(|o| o as usize) {
        img[base + 8..base + 12].copy_from_slice(&3u32.to_le_bytes());
        let crc = header::compute_crc(&img[base..base + HEADER_SIZE]);
        img[base + 12..base + 16].copy_from_slice(&crc.to_le_bytes());
    }
    std::fs::write(d("v3.evhd"), &img).unwrap();
    let err = fails(&["info", s(&d("v3.evhd")), "--key", s(&k.private[0])]);
    assert!(err.contains("format version 3"), "{err}");
}

// ---- library level: the journal path and the signature bytes ----

fn lib_keys() -> &'static [Arc<PrivateKey>; 2] {
    static K: OnceLock<[Arc<PrivateKey>; 2]> = OnceLock::new();
    K.get_or_init(|| {
        let k = keys();
        [0, 1].map(|i| {
            Arc::new(
                KeyFile::read(&k.private[i])
                    .and_then(KeyFile::into_private)
                    .unwrap(),
            )
        })
    })
}

const BS: u64 = 4096;
const SIZE: u64 = 32 * BS;

/// An image signed by key 0 (recipients 0 and 1), two commits made, and
/// the file as it was right before the second commit's header was
/// written (a crash after the journal and the pages were synced): its
/// journal holds the signed header the open must replay.
fn crashed_image() -> (Vec<u8>, Vec<u8>) {
    let [a, b] = lib_keys();
    let mem = Arc::new(MemStorage::new());
    let mut d = EvhdBuilder::new(SIZE)
        .block_size(BS)
        .recipient(a.public().clone(), "alpha")
        .recipient(b.public().clone(), "beta")
        .signer(a.clone())
        .create(Box::new(mem.clone()), None)
        .unwrap();
    let first = vec![0x11u8; 8 * BS as usize];
    d.write_at(&first, 0).unwrap();
    d.flush().unwrap();
    let before = mem.to_vec();
    let second = vec![0x22u8; 4 * BS as usize];
    d.write_at(&second, 8 * BS).unwrap();
    d.flush().unwrap();
    let after = mem.to_vec();
    drop(d);
    let (_, base) = current_copy(&after);
    let mut img = after.clone();
    img[base..base + HEADER_SIZE].copy_from_slice(&before[base..base + HEADER_SIZE]);
    let mut content = vec![0u8; SIZE as usize];
    content[..first.len()].copy_from_slice(&first);
    content[8 * BS as usize..12 * BS as usize].copy_from_slice(&second);
    (img, content)
}

fn open(img: Vec<u8>, key: usize, require: bool) -> vhdkit::Result<EvhdDisk> {
    let mut o = OpenOptions::new().key(lib_keys()[key].clone());
    o.require_signed = require;
    EvhdDisk::open(Box::new(MemStorage::from_vec(img)), None, &o)
}

#[test]
fn a_journaled_header_is_verified_like_a_header_copy() {
    let (img, content) = crashed_image();
    let d = open(img.clone(), 0, true).expect("replays the signed record");
    let mut buf = vec![0u8; SIZE as usize];
    d.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, content, "the journaled commit was applied");
    assert!(d.signature().is_trusted());
    assert!(
        d.warnings()
            .iter()
            .any(|w| w.kind == vhdkit::report::WarningKind::JournalInMemory),
        "{:?}",
        d.warnings()
    );
    // A reader with the other recipient's key does not trust it.
    let e = open(img.clone(), 1, true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Untrusted, "{e}");
    // Flip a byte of the journaled header's signature and fix the record's
    // CRC: opening fails as tampering, it does not fall back silently.
    let j = vhdkit::unstable::evhd::JOURNAL_OFFSET as usize;
    let h = j + journal::RECORD_HEADER;
    let mut bad = img.clone();
    bad[h + SIGNATURE_OFFSET + 3] ^= 0x40;
    let crc = header::compute_crc(&bad[h..h + HEADER_SIZE]);
    bad[h + 12..h + 16].copy_from_slice(&crc.to_le_bytes());
    let len = u64::from_le_bytes(bad[j + 48..j + 56].try_into().unwrap()) as usize;
    bad[j + 12..j + 16].fill(0);
    let rcrc = crc32c::crc32c(&bad[j..j + len]);
    bad[j + 12..j + 16].copy_from_slice(&rcrc.to_le_bytes());
    for require in [false, true] {
        let e = open(bad.clone(), 0, require).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
        assert!(e.to_string().contains("does not verify"), "{e}");
    }
}

#[test]
fn writable_open_installs_the_signed_record_and_signs_later_commits() {
    let (img, content) = crashed_image();
    let mem = Arc::new(MemStorage::from_vec(img));
    let o = OpenOptions::new().writable(true).key(lib_keys()[1].clone());
    // B does not trust A's signature: a writable open is refused (B's
    // commits would vouch for A's content) unless B vouches.
    let e = EvhdDisk::open(Box::new(mem.clone()), None, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Untrusted, "{e}");
    let o = o.vouch(true);
    let mut d = EvhdDisk::open(Box::new(mem.clone()), None, &o).unwrap();
    // B opened it: A's signature stands until B commits.
    match d.signature() {
        Status::Signed { label, trusted, .. } => {
            assert_eq!(label, "alpha");
            assert!(!trusted);
        }
        s => panic!("{s:?}"),
    }
    d.write_at(&[0x33; BS as usize], 20 * BS).unwrap();
    d.flush().unwrap();
    assert!(
        matches!(d.signature(), Status::Signed { label, trusted: true, .. } if label == "beta")
    );
    drop(d);
    let d = open(mem.to_vec(), 1, true).unwrap();
    let mut buf = vec![0u8; SIZE as usize];
    d.read_at(&mut buf, 0).unwrap();
    let mut want = content;
    want[20 * BS as usize..21 * BS as usize].fill(0x33);
    assert_eq!(buf, want);
    assert_eq!(
        open(mem.to_vec(), 0, true).unwrap_err().kind(),
        ErrorKind::Untrusted
    );
}

#[test]
fn every_signed_byte_is_checked() {
    // Sampled flips over the signer record and the whole signature area
    // (with the CRC fixed) of the current copy: each one fails the open or
    // (when it makes the copy unusable, so the open falls back) `check`.
    let (img, _) = crashed_image();
    let d = open(img.clone(), 0, false).unwrap();
    let len = match d.signature() {
        Status::Signed { .. } => d.header().signer.as_ref().unwrap().signature.len(),
        s => panic!("{s:?}"),
    };
    assert_eq!(len, 256);
    drop(d);
    // The installed state: open writable once so the record is installed.
    let mem = Arc::new(MemStorage::from_vec(img));
    drop(
        EvhdDisk::open(
            Box::new(mem.clone()),
            None,
            &OpenOptions::new().writable(true).key(lib_keys()[0].clone()),
        )
        .unwrap(),
    );
    let img = mem.to_vec();
    let (_, base) = current_copy(&img);
    let mut offsets: Vec<usize> = (SIGNER_OFFSET..256).collect();
    offsets.extend((SIGNATURE_OFFSET..MAC_OFFSET).step_by(7));
    offsets.push(MAC_OFFSET - 1);
    let mut missed = Vec::new();
    for &o in &offsets {
        let mut bad = img.clone();
        flip_with_crc(&mut bad, base, o);
        if open(bad.clone(), 0, false).is_err() {
            continue;
        }
        let mut report = vhdkit::CheckReport::default();
        vhdkit::unstable::evhd::check::check(
            Box::new(MemStorage::from_vec(bad)),
            &[lib_keys()[0].clone()],
            &mut report,
        )
        .unwrap();
        if report.worst() != Some(vhdkit::report::Severity::Error) {
            missed.push(o);
        }
    }
    assert!(missed.is_empty(), "undetected flips at {missed:?}");
}

#[test]
fn openssl_verifies_the_header_signature() {
    if !require_tool("openssl") {
        return;
    }
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    source(&d("src.raw"), 8);
    make(&d("src.raw"), &d("img.evhd"), &k.private[0], &k.public[1]);
    ok(&[
        "key",
        "export-pem",
        "--public",
        s(&k.private[0]),
        "-o",
        s(&d("a.pem")),
    ]);
    let img = std::fs::read(d("img.evhd")).unwrap();
    let (_, base) = current_copy(&img);
    let copy = &img[base..base + HEADER_SIZE];
    let h = Header::decode(copy, base as u64, img.len() as u64).unwrap();
    let rec = h.signer.as_ref().expect("signed");
    let mac: [u8; 32] = copy[MAC_OFFSET..].try_into().unwrap();
    let msg = signature::message(&h.container_id, h.sequence, &rec.fingerprint, &mac);
    std::fs::write(d("msg"), &msg).unwrap();
    std::fs::write(d("sig"), &rec.signature).unwrap();
    let verify = |sig: &Path| {
        std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss"])
            .args([
                "-sigopt",
                "rsa_pss_saltlen:32",
                "-sigopt",
                "rsa_mgf1_md:sha256",
            ])
            .args([
                "-verify",
                s(&d("a.pem")),
                "-signature",
                s(sig),
                s(&d("msg")),
            ])
            .output()
            .unwrap()
    };
    let o = verify(&d("sig"));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let mut bad = rec.signature.clone();
    bad[17] ^= 1;
    std::fs::write(d("bad"), &bad).unwrap();
    assert!(
        !verify(&d("bad")).status.success(),
        "openssl rejects a flipped one"
    );
}

/// A signed image crashed at every storage operation of a session of
/// writes and flushes (by the key holder that signed it) still opens with
/// `--require-signed` and a good signature: signing happens before the
/// journal and header writes, so no crash leaves a header unsigned or
/// with a signature that does not match it.
#[test]
fn a_crash_at_any_operation_leaves_a_signed_image() {
    use common::{CrashMode, FaultStorage};
    let [a, _] = lib_keys();
    let mem = Arc::new(MemStorage::new());
    drop(
        EvhdBuilder::new(SIZE)
            .block_size(BS)
            .recipient(a.public().clone(), "alpha")
            .signer(a.clone())
            .create(Box::new(mem.clone()), None)
            .unwrap(),
    );
    let base = mem.to_vec();
    let session = |fs: &FaultStorage| -> vhdkit::Result<()> {
        let o = OpenOptions::new().writable(true).key(a.clone());
        let mut d = EvhdDisk::open(Box::new(fs.clone()), None, &o)?;
        for i in 0..4u64 {
            d.write_at(&vec![i as u8 + 1; 3 * BS as usize], i * 5 * BS + 512)?;
            d.flush()?;
        }
        d.sign().map(|_| ())
    };
    let probe = FaultStorage::new(base.clone(), u64::MAX, CrashMode::Prefix { tear: false }, 0);
    session(&probe).unwrap();
    let total = probe.count();
    assert!(total > 20, "{total} storage operations");
    for mode in [CrashMode::Prefix { tear: true }, CrashMode::Subset] {
        for at in 0..=total {
            let fs = FaultStorage::new(base.clone(), at, mode, at ^ 0x51);
            let _ = session(&fs);
            let d = open(fs.durable(), 0, true)
                .unwrap_or_else(|e| panic!("{mode:?} crash at {at}/{total}: {e}"));
            assert!(d.signature().is_trusted(), "{mode:?} at {at}");
        }
    }
}

/// A master-key holder who signs as a key that is not a recipient (here:
/// C, removed from the stanzas of a header C re-MACs and signs itself) is
/// refused as tampering, with or without `require_signed`, key or no key.
#[test]
fn a_signer_that_is_not_a_recipient_is_refused() {
    let [a, _] = lib_keys();
    let c = Arc::new(
        KeyFile::read(&keys().private[2])
            .and_then(KeyFile::into_private)
            .unwrap(),
    );
    let mem = Arc::new(MemStorage::new());
    let mut d = EvhdBuilder::new(SIZE)
        .block_size(BS)
        .recipient(a.public().clone(), "alpha")
        .recipient(c.public().clone(), "carol")
        .signer(c.clone())
        .create(Box::new(mem.clone()), None)
        .unwrap();
    d.write_at(&[0x44; BS as usize], 0).unwrap();
    d.flush().unwrap();
    drop(d);
    let mut img = mem.to_vec();
    let (_, base) = current_copy(&img);
    let mut h = Header::decode(
        &img[base..base + HEADER_SIZE],
        base as u64,
        img.len() as u64,
    )
    .unwrap();
    let stanza = h.recipients.iter().find(|s| s.label == "carol").unwrap();
    let mk = vhdkit::unstable::evhd::cipher::MasterKey::from_unwrapped(
        &c.unwrap_key(&stanza.wrapped).unwrap(),
        &h.container_id,
    )
    .unwrap();
    // Drop C's stanza, write the header unsigned, then make it a version 2
    // copy naming C as signer, MAC'd and signed by C.
    h.recipients.retain(|s| s.label != "carol");
    let mut b = h.encode(&mk).unwrap();
    b[8..12].copy_from_slice(&header::VERSION_SIGNED.to_le_bytes());
    b[SIGNER_OFFSET..SIGNER_OFFSET + 32].copy_from_slice(&c.fingerprint().0);
    b[SIGNER_OFFSET + 32..SIGNER_OFFSET + 34].copy_from_slice(&256u16.to_le_bytes());
    b[SIGNER_OFFSET + 34..SIGNER_OFFSET + 36]
        .copy_from_slice(&signature::SCHEME_RSA_PSS_SHA256.to_le_bytes());
    b[SIGNATURE_OFFSET..].fill(0);
    let mac = header::compute_mac(&b, &mk);
    b[MAC_OFFSET..].copy_from_slice(&mac);
    let msg = signature::message(&h.container_id, h.sequence, &c.fingerprint(), &mac);
    let sig = c.sign_pss(&msg).unwrap();
    b[SIGNATURE_OFFSET..SIGNATURE_OFFSET + sig.len()].copy_from_slice(&sig);
    let crc = header::compute_crc(&b);
    b[header::CRC_OFFSET..header::CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    img[base..base + HEADER_SIZE].copy_from_slice(&b);
    // Sanity: the forged copy decodes and its MAC verifies under MK.
    let forged = Header::decode(&b, base as u64, img.len() as u64).unwrap();
    assert!(header::verify_mac(&b, &mk));
    assert_eq!(forged.signer.as_ref().unwrap().fingerprint, c.fingerprint());
    for require in [false, true] {
        let e = open(img.clone(), 0, require).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
        assert!(e.to_string().contains("not one of its recipients"), "{e}");
        assert!(e.to_string().contains(&c.fingerprint().short()), "{e}");
    }
    let e = EvhdDisk::open(
        Box::new(MemStorage::from_vec(img.clone())),
        None,
        &OpenOptions::new(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
}
