//! A writer never vouches for what it did not check: its next commit signs
//! the image with its key, so a writable open of an EVHD that no key the
//! writer trusts has signed, or that fell back to its older header copy
//! without the journal confirming it, is refused until `vhdkit sign`
//! vouches for the state explicitly. Without this, an attacker who can write
//! the file could swap in a forged image (for the same recipients plus a key
//! of their own) and have the next honest write sign it, or undo the
//! newest commit (a recipient removal) and have the next write make that
//! permanent.

mod common;

use std::path::{Path, PathBuf};

use common::{
    code_out_err, file_sha256, info_json, keypair, patch_file, s, vhdkit, vhdkit_fails,
    vhdkit_ok_output as ok, write_raw,
};

/// Exit status 1; returns stderr.
fn fails(args: &[&str]) -> String {
    vhdkit_fails(Some(1), args)
}

fn short(key: &Path) -> String {
    let out = ok(&["key", "show", s(key)]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("short")).unwrap();
    line.split_whitespace().nth(1).unwrap().to_string()
}

fn raw(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let p = dir.join(name);
    write_raw(&p, &vec![byte; 4 << 20]);
    p
}

fn read4(image: &Path, key: &Path) -> Vec<u8> {
    ok(&[
        "read",
        s(image),
        "--key",
        s(key),
        "--offset",
        "0",
        "--length",
        "4",
    ])
    .stdout
}

#[test]
fn a_write_does_not_sign_a_forged_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, a_pub) = keypair(d, "a");
    let (_, b_pub) = keypair(d, "b");
    let (m, _) = keypair(d, "m");
    let victim = d.join("victim.evhd");
    // The genuine image: signed by A (a private --recipient signs).
    let good = raw(d, "good.raw", 0x11);
    ok(&[
        "convert",
        "-q",
        s(&good),
        s(&victim),
        "--recipient",
        s(&a),
        "--recipient",
        s(&b_pub),
    ]);
    ok(&[
        "write",
        s(&victim),
        "--key",
        s(&a),
        "--offset",
        "8192",
        "--pattern",
        "0x22",
        "--length",
        "512",
    ]);

    // Forgeries over the same file: (1) public keys only, unsigned; (2) the
    // same recipients plus the attacker's own key, signed by the attacker.
    let evil = raw(d, "evil.raw", 0x66);
    for (forger, signer) in [(None, None), (Some(&m), Some(short(&m)))] {
        let mut args = vec![
            "convert",
            "-q",
            "--force",
            s(&evil),
            s(&victim),
            "--recipient",
            s(&a_pub),
            "--recipient",
            s(&b_pub),
        ];
        if let Some(m) = forger {
            args.extend(["--recipient", s(m)]);
        }
        ok(&args);
        let before = file_sha256(&victim);
        // The honest writer (A) refuses: its commit would sign the forgery.
        let write = [
            "write",
            s(&victim),
            "--key",
            s(&a),
            "--offset",
            "0",
            "--pattern",
            "0x53",
            "--length",
            "16",
        ];
        let err = fails(&write);
        assert!(err.contains("refusing to write"), "{err}");
        match &signer {
            Some(fp) => assert!(err.contains(fp.as_str()), "names the signer: {err}"),
            None => assert!(err.contains("not signed"), "{err}"),
        }
        // So do the other commands that commit with A's key.
        let err = fails(&[
            "recipients",
            "remove",
            s(&victim),
            "--key",
            s(&a),
            "--recipient",
            s(&b_pub),
        ]);
        assert!(err.contains("refusing to write"), "{err}");
        let err = fails(&["rekey", "-q", s(&victim), "--key", s(&a)]);
        assert!(err.contains("refusing to write"), "{err}");
        assert_eq!(
            file_sha256(&victim),
            before,
            "a refused write changed the file"
        );
        // A reader that requires a trusted signature still refuses it.
        let err = fails(&[
            "read",
            s(&victim),
            "--key",
            s(&a),
            "--require-signed",
            "--offset",
            "0",
            "--length",
            "4",
        ]);
        assert!(err.contains("--require-signed"), "{err}");
    }

    // Vouching is explicit: `sign` signs the current content with A's key,
    // and then A writes.
    ok(&["sign", s(&victim), "--key", s(&a)]);
    ok(&[
        "write",
        s(&victim),
        "--key",
        s(&a),
        "--offset",
        "0",
        "--pattern",
        "0x53",
        "--length",
        "4",
    ]);
    assert_eq!(read4(&victim, &a), vec![0x53; 4]);
    let info = info_json_key(&victim, &a);
    assert_eq!(info["evhd"]["signature"]["trusted"], true, "{info}");
}

fn info_json_key(image: &Path, key: &Path) -> serde_json::Value {
    let out = ok(&["info", "--json", s(image), "--key", s(key)]);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_write_does_not_make_a_rollback_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, _) = keypair(d, "a");
    let (_, b_pub) = keypair(d, "b");
    let (_, m_pub) = keypair(d, "m");
    let image = d.join("h.evhd");
    let src = raw(d, "src.raw", 0x11);
    ok(&[
        "convert",
        "-q",
        s(&src),
        s(&image),
        "--recipient",
        s(&a),
        "--recipient",
        s(&b_pub),
    ]);
    ok(&[
        "recipients",
        "add",
        s(&image),
        "--key",
        s(&a),
        "--recipient",
        s(&m_pub),
    ]);
    ok(&[
        "recipients",
        "remove",
        s(&image),
        "--key",
        s(&a),
        "--recipient",
        s(&m_pub),
    ]);
    // Damage one byte of the current header copy and the journal magic:
    // open falls back to the older copy, in which M is a recipient.
    let copy = info_json(&image)["evhd"]["header_copy"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_default();
    let at: u64 = if copy == "B" { 65536 } else { 0 };
    patch_file(&image, at + 30, b"X");
    patch_file(&image, 131072, b"X");
    let (code, _, _) = code_out_err(&vhdkit(["check", s(&image), "--key", s(&a)]));
    assert_eq!(code, 2, "check reports the fall back");
    let before = file_sha256(&image);
    let err = fails(&[
        "write",
        s(&image),
        "--key",
        s(&a),
        "--offset",
        "8192",
        "--pattern",
        "0x55",
        "--length",
        "512",
    ]);
    assert!(
        err.contains("refusing to write") && err.contains("older"),
        "{err}"
    );
    let err = fails(&[
        "recipients",
        "remove",
        s(&image),
        "--key",
        s(&a),
        "--recipient",
        s(&m_pub),
    ]);
    assert!(err.contains("refusing to write"), "{err}");
    assert_eq!(
        file_sha256(&image),
        before,
        "a refused write changed the file"
    );
    // The evidence is still there for check.
    let (code, _, _) = code_out_err(&vhdkit(["check", s(&image), "--key", s(&a)]));
    assert_eq!(code, 2);
    // Accepting the older state is explicit: `sign` (it says what it saw on
    // stderr), then writes work and the image checks clean.
    let out = ok(&["sign", s(&image), "--key", s(&a)]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("older"),
        "sign shows the fall back"
    );
    ok(&[
        "write",
        s(&image),
        "--key",
        s(&a),
        "--offset",
        "8192",
        "--pattern",
        "0x55",
        "--length",
        "512",
    ]);
    ok(&["check", s(&image), "--key", s(&a)]);
}

#[test]
fn a_journal_record_rewritten_to_match_the_older_copy_does_not_confirm_it() {
    // The journal record has only a CRC: without any key, an attacker can
    // write a record of the older copy's sequence holding that copy's bytes
    // and damage the newer copy. The newer copy's sequence field still
    // reads the later sequence, so the record does not confirm the older
    // copy: open warns, check reports, writers refuse.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, _) = keypair(d, "a");
    let (_, b_pub) = keypair(d, "b");
    let (_, m_pub) = keypair(d, "m");
    let image = d.join("r.evhd");
    let src = raw(d, "src.raw", 0x11);
    ok(&[
        "convert",
        "-q",
        s(&src),
        s(&image),
        "--recipient",
        s(&a),
        "--recipient",
        s(&b_pub),
    ]);
    ok(&[
        "recipients",
        "add",
        s(&image),
        "--key",
        s(&a),
        "--recipient",
        s(&m_pub),
    ]);
    ok(&[
        "recipients",
        "remove",
        s(&image),
        "--key",
        s(&a),
        "--recipient",
        s(&m_pub),
    ]);
    let mut file = std::fs::read(&image).unwrap();
    let seq = |c: &[u8]| u64::from_le_bytes(c[16..24].try_into().unwrap());
    const COPY: usize = 65536;
    let (sa, sb) = (seq(&file[..COPY]), seq(&file[COPY..2 * COPY]));
    let (older, newer) = if sa < sb { (0, COPY) } else { (COPY, 0) };
    let mut rec = vec![0u8; 4096 + COPY];
    rec[..8].copy_from_slice(b"EVHDJRNL");
    rec[8..12].copy_from_slice(&1u32.to_le_bytes());
    rec[16..24].copy_from_slice(&sa.min(sb).to_le_bytes());
    rec[24..40].copy_from_slice(&file[older + 24..older + 40]);
    let rec_len = rec.len() as u64;
    rec[48..56].copy_from_slice(&rec_len.to_le_bytes());
    rec[4096..].copy_from_slice(&file[older..older + COPY]);
    let crc = crc32c::crc32c(&rec);
    rec[12..16].copy_from_slice(&crc.to_le_bytes());
    file[2 * COPY..2 * COPY + rec.len()].copy_from_slice(&rec);
    file[newer + 300] ^= 0xff;
    std::fs::write(&image, &file).unwrap();

    let (code, out, _) = code_out_err(&vhdkit(["check", s(&image), "--key", s(&a)]));
    assert_eq!(code, 2, "check reports the fall back: {out}");
    assert!(out.contains("fell back"), "{out}");
    let before = file_sha256(&image);
    let err = fails(&[
        "write",
        s(&image),
        "--key",
        s(&a),
        "--offset",
        "8192",
        "--pattern",
        "0x55",
        "--length",
        "512",
    ]);
    assert!(err.contains("refusing to write"), "{err}");
    assert_eq!(file_sha256(&image), before);
}

#[test]
fn convert_does_not_sign_an_untrusted_source() {
    // convert with a private --recipient signs its output: from an EVHD
    // that no trusted key signed, that would launder a forgery into an
    // image a --require-signed reader accepts.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, a_pub) = keypair(d, "a");
    let (_, b_pub) = keypair(d, "b");
    let (m, _) = keypair(d, "m");
    let evil = raw(d, "evil.raw", 0x66);
    let forged = d.join("forged.evhd");
    ok(&[
        "convert",
        "-q",
        s(&evil),
        s(&forged),
        "--recipient",
        s(&m),
        "--recipient",
        s(&a_pub),
        "--recipient",
        s(&b_pub),
    ]);
    let out = d.join("out.evhd");
    let signing = [
        "convert",
        "-q",
        "--key",
        s(&a),
        s(&forged),
        s(&out),
        "-O",
        "evhd",
        "--recipient",
        s(&a),
        "--recipient",
        s(&b_pub),
    ];
    let err = fails(&signing);
    assert!(
        err.contains("refusing to sign") && err.contains(&short(&m)),
        "{err}"
    );
    assert!(!out.exists(), "no output after a refusal");
    // Public recipients only: the output is unsigned, which is honest.
    ok(&[
        "convert",
        "-q",
        "--key",
        s(&a),
        s(&forged),
        s(&out),
        "-O",
        "evhd",
        "--recipient",
        s(&a_pub),
        "--recipient",
        s(&b_pub),
    ]);
    // Trusting the source's signer makes the signed output possible.
    let mut trusting = signing.to_vec();
    trusting.extend(["--force", "--trust", s(&m)]);
    ok(&trusting);
}
