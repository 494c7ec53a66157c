//! Every RSA size `keygen` makes (2048 to 8192 bits) is usable everywhere:
//! key files, PEM export and import, EVHD creation, opening, recipients add
//! and remove, and rekey. The `rsa` crate refuses public keys over 4096 bits
//! unless told otherwise; this test keeps the rest of vhdkit honest about
//! the sizes it offers.
//!
//! Generating 6144- and 8192-bit keys is slow (tens of seconds for 8192
//! bits), so each size is generated exactly once, all sizes at the same
//! time in separate processes, and the keys are reused by every step.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use base64::Engine;

use common::*;

/// The sizes tested: the smallest, the default, the crate's default
/// public-key limit, and two above it up to the largest `keygen` makes.
const SIZES: [usize; 5] = [2048, 3072, 4096, 6144, 8192];
/// Size of the test image's content.
const CONTENT_LEN: usize = 1 << 20;

/// The key files of one size.
struct Keys {
    bits: usize,
    /// `keygen` output (KeyPair.xml with the private key).
    xml: PathBuf,
    /// `key public` output (KeyPair.xml, public only).
    public_xml: PathBuf,
    /// `key export-pem` output (PKCS#8 private key).
    pem: PathBuf,
    /// `key export-pem --public` output (SubjectPublicKeyInfo).
    public_pem: PathBuf,
}

/// `key show --json` of `p`: (bits, kind).
fn show(p: &Path) -> (u64, String) {
    let v = key_show_json(p);
    (
        v["bits"].as_u64().unwrap(),
        v["kind"].as_str().unwrap().to_string(),
    )
}

/// `recipients list --json` of `image`: (fingerprint, bits) in order.
fn recipients(image: &Path) -> Vec<(String, u64)> {
    let out = vhdkit_ok([
        OsStr::new("recipients"),
        OsStr::new("list"),
        OsStr::new("--json"),
        os(image),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["fingerprint"].as_str().unwrap().to_string(),
                r["bits"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn fingerprint(key: &Path) -> String {
    key_show_json(key)["fingerprint"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The whole virtual disk of `image` read with `key`.
fn read_with(image: &Path, key: &Path) -> Vec<u8> {
    vhdkit_ok([
        OsStr::new("read"),
        OsStr::new("--key"),
        os(key),
        OsStr::new("--offset"),
        OsStr::new("0"),
        OsStr::new("--length"),
        OsStr::new(&CONTENT_LEN.to_string()),
        os(image),
    ])
}

/// Run every `keygen` at once; returns the keys and prints what each cost.
fn generate_all(dir: &Path) -> Vec<Keys> {
    let start = Instant::now();
    let children: Vec<_> = SIZES
        .iter()
        .map(|&bits| {
            let xml = dir.join(format!("k{bits}.xml"));
            let child = Command::new(vhdkit_bin())
                .args([OsStr::new("keygen"), OsStr::new("--bits")])
                .arg(bits.to_string())
                .arg("-o")
                .arg(&xml)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run vhdkit keygen");
            (bits, xml, child)
        })
        .collect();
    let mut keys = Vec::new();
    for (bits, xml, child) in children {
        let out = child.wait_with_output().unwrap();
        assert_no_panic(&out);
        assert!(
            out.status.success(),
            "keygen --bits {bits} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "keygen --bits {bits}: done after {:.1} s",
            start.elapsed().as_secs_f64()
        );
        keys.push(Keys {
            bits,
            public_xml: dir.join(format!("p{bits}.xml")),
            pem: dir.join(format!("k{bits}.pem")),
            public_pem: dir.join(format!("p{bits}.pem")),
            xml,
        });
    }
    keys
}

/// keygen, key public, key export-pem (private and public): every file
/// loads back as a key of the right size and kind, with the right mode.
fn key_files(k: &Keys) {
    assert_eq!(show(&k.xml), (k.bits as u64, "private".into()));
    #[cfg(unix)]
    assert_eq!(mode(&k.xml), "600", "keygen output of {} bits", k.bits);
    vhdkit_ok([
        OsStr::new("key"),
        OsStr::new("public"),
        os(&k.xml),
        OsStr::new("-o"),
        os(&k.public_xml),
    ]);
    vhdkit_ok([
        OsStr::new("key"),
        OsStr::new("export-pem"),
        os(&k.xml),
        OsStr::new("-o"),
        os(&k.pem),
    ]);
    vhdkit_ok([
        OsStr::new("key"),
        OsStr::new("export-pem"),
        OsStr::new("--public"),
        os(&k.xml),
        OsStr::new("-o"),
        os(&k.public_pem),
    ]);
    assert_eq!(show(&k.public_xml), (k.bits as u64, "public".into()));
    assert_eq!(show(&k.pem), (k.bits as u64, "private".into()));
    assert_eq!(show(&k.public_pem), (k.bits as u64, "public".into()));
    let fp = fingerprint(&k.xml);
    for p in [&k.public_xml, &k.pem, &k.public_pem] {
        assert_eq!(fingerprint(p), fp, "{}", p.display());
    }
    #[cfg(unix)]
    {
        assert_eq!(mode(&k.pem), "600", "private PEM of {} bits", k.bits);
        assert_eq!(mode(&k.public_xml), "644", "public key of {} bits", k.bits);
        assert_eq!(mode(&k.public_pem), "644", "public PEM of {} bits", k.bits);
    }
}

/// An EVHD made for `k` with its public PEM; `other` (another size) is
/// added as a recipient, takes over through rekey, and `k` is removed.
fn image_round_trip(dir: &Path, k: &Keys, other: &Keys, src: &Path, content: &[u8]) {
    let image = dir.join(format!("d{}.evhd", k.bits));
    vhdkit_ok([
        OsStr::new("convert"),
        OsStr::new("-q"),
        OsStr::new("-O"),
        OsStr::new("evhd"),
        OsStr::new("--recipient"),
        os(&k.public_pem),
        os(src),
        os(&image),
    ]);
    assert_eq!(
        recipients(&image),
        vec![(fingerprint(&k.xml), k.bits as u64)]
    );
    assert!(
        read_with(&image, &k.xml) == content,
        "{} bits, KeyPair.xml",
        k.bits
    );
    assert!(read_with(&image, &k.pem) == content, "{} bits, PEM", k.bits);
    // Made from a public key, the image is unsigned: the key's holder signs
    // it (an RSA-PSS signature of this size), which lets writers proceed.
    vhdkit_ok([
        OsStr::new("sign"),
        OsStr::new("--key"),
        os(&k.xml),
        os(&image),
    ]);
    let out = vhdkit_ok([
        OsStr::new("info"),
        OsStr::new("--require-signed"),
        OsStr::new("--key"),
        os(&k.pem),
        os(&image),
    ]);
    assert!(
        String::from_utf8_lossy(&out).contains(&fingerprint(&k.xml)[..16]),
        "{} bits: signed by the key",
        k.bits
    );

    // recipients add with a public KeyPair.xml of another size: the new
    // stanza must be in the header the next process reads.
    vhdkit_ok([
        OsStr::new("recipients"),
        OsStr::new("add"),
        OsStr::new("--key"),
        os(&k.xml),
        OsStr::new("--recipient"),
        os(&other.public_xml),
        os(&image),
    ]);
    assert_eq!(
        recipients(&image),
        vec![
            (fingerprint(&k.xml), k.bits as u64),
            (fingerprint(&other.xml), other.bits as u64)
        ],
        "{} bits + {} bits",
        k.bits,
        other.bits
    );
    assert!(
        read_with(&image, &other.pem) == content,
        "added {} bits",
        other.bits
    );

    vhdkit_ok([
        OsStr::new("rekey"),
        OsStr::new("-q"),
        OsStr::new("--key"),
        os(&other.xml),
        OsStr::new("--trust"),
        os(&k.public_xml),
        os(&image),
    ]);
    assert!(
        read_with(&image, &k.pem) == content,
        "{} bits after rekey",
        k.bits
    );
    assert!(
        read_with(&image, &other.xml) == content,
        "{} bits after rekey",
        other.bits
    );

    let fp = fingerprint(&k.xml);
    vhdkit_ok([
        OsStr::new("recipients"),
        OsStr::new("remove"),
        OsStr::new("--key"),
        os(&other.xml),
        OsStr::new("--fingerprint"),
        OsStr::new(&fp),
        os(&image),
    ]);
    assert_eq!(
        recipients(&image),
        vec![(fingerprint(&other.xml), other.bits as u64)]
    );
    let out = vhdkit([
        OsStr::new("read"),
        OsStr::new("--key"),
        os(&k.xml),
        OsStr::new("--offset"),
        OsStr::new("0"),
        OsStr::new("--length"),
        OsStr::new("512"),
        os(&image),
    ]);
    assert!(
        !out.status.success(),
        "removed {}-bit key still opens",
        k.bits
    );
    vhdkit_ok([
        OsStr::new("check"),
        OsStr::new("--key"),
        os(&other.xml),
        os(&image),
    ]);
}

/// An 8192-bit key in the PEM forms openssl writes (PKCS#8 and PKCS#1
/// private, SubjectPublicKeyInfo and PKCS#1 public) loads, and opens an
/// image made for it.
fn openssl_forms(dir: &Path, k: &Keys, src: &Path, content: &[u8]) {
    if !require_tool("openssl") {
        return;
    }
    let pkcs8 = dir.join("ossl-pkcs8.pem");
    let pkcs1 = dir.join("ossl-pkcs1.pem");
    let spki = dir.join("ossl-spki.pem");
    let pkcs1_pub = dir.join("ossl-pkcs1-pub.pem");
    run(Command::new("openssl").args([
        OsStr::new("pkey"),
        OsStr::new("-in"),
        os(&k.pem),
        OsStr::new("-out"),
        os(&pkcs8),
    ]));
    run(Command::new("openssl").args([
        OsStr::new("rsa"),
        OsStr::new("-traditional"),
        OsStr::new("-in"),
        os(&k.pem),
        OsStr::new("-out"),
        os(&pkcs1),
    ]));
    run(Command::new("openssl").args([
        OsStr::new("pkey"),
        OsStr::new("-pubout"),
        OsStr::new("-in"),
        os(&k.pem),
        OsStr::new("-out"),
        os(&spki),
    ]));
    run(Command::new("openssl").args([
        OsStr::new("rsa"),
        OsStr::new("-RSAPublicKey_out"),
        OsStr::new("-in"),
        os(&k.pem),
        OsStr::new("-out"),
        os(&pkcs1_pub),
    ]));
    assert!(
        std::fs::read_to_string(&pkcs1)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    assert!(
        std::fs::read_to_string(&pkcs1_pub)
            .unwrap()
            .contains("BEGIN RSA PUBLIC KEY")
    );
    let fp = fingerprint(&k.xml);
    assert_eq!(show(&pkcs8), (k.bits as u64, "private".into()));
    assert_eq!(show(&pkcs1), (k.bits as u64, "private".into()));
    assert_eq!(show(&spki), (k.bits as u64, "public".into()));
    assert_eq!(show(&pkcs1_pub), (k.bits as u64, "public".into()));
    for p in [&pkcs8, &pkcs1, &spki, &pkcs1_pub] {
        assert_eq!(fingerprint(p), fp, "{}", p.display());
    }
    let image = dir.join("ossl.evhd");
    vhdkit_ok([
        OsStr::new("convert"),
        OsStr::new("-q"),
        OsStr::new("-O"),
        OsStr::new("evhd"),
        OsStr::new("--recipient"),
        os(&pkcs1_pub),
        os(src),
        os(&image),
    ]);
    assert!(
        read_with(&image, &pkcs1) == content,
        "openssl PKCS#1 private key"
    );
    assert!(
        read_with(&image, &pkcs8) == content,
        "openssl PKCS#8 private key"
    );
}

#[test]
fn every_keygen_size_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let keys = generate_all(dir.path());
    let keygen = start.elapsed();
    let content = random_bytes(CONTENT_LEN, 11);
    let src = dir.path().join("src.raw");
    write_raw(&src, &content);
    for k in &keys {
        key_files(k);
    }
    for (i, k) in keys.iter().enumerate() {
        // The next size up (the largest goes with the smallest), so every
        // size is both an image's first recipient and an added one.
        let other = &keys[(i + 1) % keys.len()];
        image_round_trip(dir.path(), k, other, &src, &content);
    }
    let largest = keys.last().unwrap();
    assert_eq!(largest.bits, 8192);
    openssl_forms(dir.path(), largest, &src, &content);
    eprintln!(
        "keygen of all sizes: {:.1} s; everything else: {:.1} s",
        keygen.as_secs_f64(),
        (start.elapsed() - keygen).as_secs_f64()
    );
}

/// A public key over 8192 bits is refused with the sizes in the message,
/// in every form it can arrive in.
#[test]
fn keys_over_the_maximum_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // 8200 bits: an odd modulus just over the limit; it need not be a
    // product of two primes to be refused for its size.
    let mut n = vec![0xffu8; 1025];
    n[0] = 0x80;
    let xml = format!(
        "<RSAKeyValue><Modulus>{}</Modulus><Exponent>AQAB</Exponent></RSAKeyValue>",
        base64::engine::general_purpose::STANDARD.encode(&n)
    );
    let p = dir.path().join("big.xml");
    std::fs::write(&p, xml).unwrap();
    let out = vhdkit([OsStr::new("key"), OsStr::new("show"), os(&p)]);
    let (code, _, err) = code_out_err(&out);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("8200 bits"), "{err}");
    assert!(err.contains("2048 to 8192"), "{err}");
}
