//! Key interop with openssl: PEM export checked by `openssl rsa -check`, a
//! master key wrapped by `openssl pkeyutl` unwrapped by vhdkit, a .NET
//! `RSAKeyValue` built from an openssl key parsed to openssl's modulus.
//! Skips when openssl is missing, unless `CI` is set.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use vhdkit::unstable::evhd::keys::OAEP_LABEL;
use vhdkit::{KeyFile, PrivateKey};

fn openssl(args: &[&str]) -> String {
    let out = common::run(Command::new("openssl").args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn key() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::generate(2048).expect("keygen"))
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

#[test]
fn pem_export_passes_openssl_check() {
    if !common::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.pem"), key().to_pem().unwrap().as_bytes()).unwrap();
    let out = openssl(&["rsa", "-check", "-noout", "-in", &p(dir.path(), "k.pem")]);
    assert!(out.contains("RSA key ok"), "{out}");
    // The KeyPair.xml written by vhdkit reads back to the same key.
    let back = KeyFile::parse(&key().to_xml())
        .unwrap()
        .into_private()
        .unwrap();
    assert_eq!(back.fingerprint(), key().fingerprint());
    let modulus = openssl(&["rsa", "-modulus", "-noout", "-in", &p(dir.path(), "k.pem")]);
    let hex: String = key()
        .public()
        .modulus()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(modulus.trim(), format!("Modulus={hex}"));
}

#[test]
fn master_key_wrapped_by_openssl_unwraps() {
    if !common::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pub.pem"), key().public().to_pem().unwrap()).unwrap();
    let mk: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    std::fs::write(dir.path().join("mk.bin"), &mk).unwrap();
    let label_hex: String = OAEP_LABEL.bytes().map(|b| format!("{b:02x}")).collect();
    let label_opt = format!("rsa_oaep_label:{label_hex}");
    openssl(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        &p(dir.path(), "pub.pem"),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
        "-pkeyopt",
        &label_opt,
        "-in",
        &p(dir.path(), "mk.bin"),
        "-out",
        &p(dir.path(), "wrapped.bin"),
    ]);
    let wrapped = std::fs::read(dir.path().join("wrapped.bin")).unwrap();
    assert_eq!(wrapped.len(), 256);
    let un = key()
        .unwrap_key(&wrapped)
        .expect("vhdkit unwraps what openssl wrapped");
    assert_eq!(&un[..], &mk[..]);
    // And the other way: what vhdkit wraps, openssl unwraps.
    std::fs::write(dir.path().join("k.pem"), key().to_pem().unwrap().as_bytes()).unwrap();
    std::fs::write(
        dir.path().join("ours.bin"),
        key().public().wrap(&mk).unwrap(),
    )
    .unwrap();
    openssl(&[
        "pkeyutl",
        "-decrypt",
        "-inkey",
        &p(dir.path(), "k.pem"),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
        "-pkeyopt",
        &label_opt,
        "-in",
        &p(dir.path(), "ours.bin"),
        "-out",
        &p(dir.path(), "back.bin"),
    ]);
    assert_eq!(std::fs::read(dir.path().join("back.bin")).unwrap(), mk);
}

/// The components of an openssl key from `openssl rsa -text`.
fn components(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(':').filter(|l| !l.starts_with(' ')) {
            out.push((name.to_string(), Vec::new()));
        } else if line.starts_with("    ")
            && let Some((_, v)) = out.last_mut()
        {
            for h in line.trim().trim_end_matches(':').split(':') {
                v.push(u8::from_str_radix(h, 16).unwrap());
            }
        }
    }
    out
}

#[test]
fn dotnet_keypair_xml_parses_to_openssls_modulus() {
    if !common::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kp = p(dir.path(), "o.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &kp,
    ]);
    let text = openssl(&["rsa", "-in", &kp, "-text", "-noout"]);
    let c = components(&text);
    let get = |n: &str| {
        let v = &c
            .iter()
            .find(|(k, _)| k == n)
            .unwrap_or_else(|| panic!("{n} in {text}"))
            .1;
        // .NET writes no sign byte: strip ASN.1's leading zero.
        let v: &[u8] = if v.len() > 1 && v[0] == 0 { &v[1..] } else { v };
        B64.encode(v)
    };
    // Exponent line reads "publicExponent: 65537 (0x10001)".
    let xml = format!(
        "<RSAKeyValue><Modulus>{}</Modulus><Exponent>AQAB</Exponent><P>{}</P><Q>{}</Q><DP>{}</DP><DQ>{}</DQ><InverseQ>{}</InverseQ><D>{}</D></RSAKeyValue>",
        get("modulus"),
        get("prime1"),
        get("prime2"),
        get("exponent1"),
        get("exponent2"),
        get("coefficient"),
        get("privateExponent")
    );
    let k = KeyFile::parse(&xml).unwrap().into_private().unwrap();
    let modulus = openssl(&["rsa", "-modulus", "-noout", "-in", &kp]);
    let hex: String = k
        .public()
        .modulus()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(modulus.trim(), format!("Modulus={hex}"));
    // The same key from openssl's PEM has the same fingerprint.
    let pem = KeyFile::read(Path::new(&kp)).unwrap();
    assert_eq!(pem.public().fingerprint(), k.fingerprint());
    // Lenient reading: whitespace, another element order, a namespace prefix.
    let lenient = xml
        .replace(
            "<RSAKeyValue>",
            "<ds:RSAKeyValue xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\">\n  ",
        )
        .replace("</RSAKeyValue>", "\n</ds:RSAKeyValue>")
        .replace("<Modulus>", "<ds:Modulus>\n")
        .replace("</Modulus>", "\n</ds:Modulus>");
    assert_eq!(
        KeyFile::parse(&lenient).unwrap().public().fingerprint(),
        k.fingerprint()
    );
    // vhdkit's own XML of it has the .NET shape and reads back.
    let ours = k.to_xml();
    assert!(ours.starts_with("<RSAKeyValue><Modulus>") && ours.ends_with("</D></RSAKeyValue>"));
    assert_eq!(
        KeyFile::parse(&ours).unwrap().public().fingerprint(),
        k.fingerprint()
    );
    // Strict validation: a wrong DP is refused with the reason.
    let bad = xml.replace(
        &format!("<DP>{}</DP>", get("exponent1")),
        &format!("<DP>{}</DP>", get("exponent2")),
    );
    let err = KeyFile::parse(&bad).unwrap_err().to_string();
    assert!(err.contains("DP"), "{err}");
    // A public-only KeyPair.xml.
    let public = format!(
        "<RSAKeyValue><Modulus>{}</Modulus><Exponent>AQAB</Exponent></RSAKeyValue>",
        get("modulus")
    );
    assert!(matches!(
        KeyFile::parse(&public).unwrap(),
        KeyFile::Public(_)
    ));
}
