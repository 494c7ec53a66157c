//! RSA key files: the .NET `KeyPair.xml` form (`RSAKeyValue`) and PEM
//! (PKCS#8, PKCS#1, SubjectPublicKeyInfo), and key fingerprints.
//!
//! Reading is lenient (whitespace, element order, a namespace prefix,
//! leading zero bytes); validation is strict: a private key whose components
//! do not form one consistent key is refused with the reason.

use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use quick_xml::events::Event;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::{
    DecodePrivateKey, Document, EncodePrivateKey, EncodePublicKey, LineEnding,
    SubjectPublicKeyInfoRef,
};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, Oaep, RsaPrivateKey, RsaPublicKey};
use sha2_10::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};

/// Smallest modulus `keygen` creates and recipients may have: 2048 bits is
/// the floor NIST SP 800-57 sets for RSA keys in use after 2010.
pub const MIN_BITS: usize = 2048;
/// Largest modulus accepted: bounds the size of a recipient stanza (the
/// wrapped key is as long as the modulus) and the cost of hostile keys.
/// The `rsa` crate's default limit for public keys is 4096 bits
/// (`RsaPublicKey::MAX_SIZE`), so every public key is built here with this
/// limit given explicitly ([`PublicKey::from_parts`]), never through the
/// crate's default constructor or its public-key decoders.
pub const MAX_BITS: usize = 8192;
/// Default modulus size of `keygen` (NIST: 128-bit security).
pub const DEFAULT_BITS: usize = 3072;
/// Domain separation of key fingerprints.
pub const FINGERPRINT_DOMAIN: &[u8] = b"evhd/v1/rsa-fp";
/// OAEP label under which the master key is wrapped for each recipient.
pub const OAEP_LABEL: &str = "evhd/v1/mk";
/// Salt length of RSA-PSS signatures: the SHA-256 output size, as RFC 8017
/// recommends and `openssl` verifies with `rsa_pss_saltlen:32`.
pub const PSS_SALT_LEN: usize = 32;
/// Hex digits of the short fingerprint form shown in messages.
pub const SHORT_FINGERPRINT_DIGITS: usize = 16;

/// SHA-256 of `"evhd/v1/rsa-fp" || u32be(len n) || n || u32be(len e) || e`,
/// with `n` and `e` big-endian without leading zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of the public key `(n, e)`.
    pub fn of(key: &RsaPublicKey) -> Self {
        let n = key.n().to_bytes_be();
        let e = key.e().to_bytes_be();
        let mut h = Sha256::new();
        h.update(FINGERPRINT_DOMAIN);
        h.update((n.len() as u32).to_be_bytes());
        h.update(&n);
        h.update((e.len() as u32).to_be_bytes());
        h.update(&e);
        Fingerprint(h.finalize().into())
    }

    /// Lowercase hex of all 32 bytes.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first 16 hex digits.
    pub fn short(&self) -> String {
        self.hex()[..SHORT_FINGERPRINT_DIGITS].to_string()
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// A recipient's public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: RsaPublicKey,
    fingerprint: Fingerprint,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PublicKey({}, {} bits)",
            self.fingerprint.short(),
            self.bits()
        )
    }
}

impl PublicKey {
    fn new(key: RsaPublicKey) -> Result<Self> {
        let bits = key.n().bits();
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!("RSA modulus of {bits} bits; expected {MIN_BITS} to {MAX_BITS}"),
            ));
        }
        let fingerprint = Fingerprint::of(&key);
        Ok(PublicKey { key, fingerprint })
    }

    /// The public key of modulus `n` and exponent `e`, of `MIN_BITS` to
    /// `MAX_BITS` bits.
    pub fn from_parts(n: BigUint, e: BigUint) -> Result<Self> {
        let bits = n.bits();
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(invalid(format!(
                "RSA modulus of {bits} bits; expected {MIN_BITS} to {MAX_BITS}"
            )));
        }
        let k = RsaPublicKey::new_with_max_size(n, e, MAX_BITS)
            .map_err(|e| invalid(format!("public key: {e}")))?;
        Self::new(k)
    }

    /// The key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Big-endian public exponent without leading zeros.
    pub fn rsa_exponent(&self) -> Vec<u8> {
        self.key.e().to_bytes_be()
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key.n().bits()
    }

    /// Modulus size in bytes: the length of an OAEP ciphertext.
    pub fn modulus_len(&self) -> usize {
        self.key.size()
    }

    /// Big-endian modulus without leading zeros.
    pub fn modulus(&self) -> Vec<u8> {
        self.key.n().to_bytes_be()
    }

    /// The `rsa` crate's key.
    pub fn rsa(&self) -> &RsaPublicKey {
        &self.key
    }

    /// RSA-OAEP-SHA256 (MGF1-SHA256, label [`OAEP_LABEL`]) encryption of a
    /// master key.
    pub fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>> {
        let padding = Oaep::new_with_label::<Sha256, _>(OAEP_LABEL);
        self.key
            .encrypt(&mut rand_core::OsRng, padding, secret)
            .map_err(|e| Error::new(ErrorKind::InvalidKey, format!("RSA-OAEP encryption: {e}")))
    }

    /// The .NET `RSAKeyValue` form with Modulus and Exponent only.
    pub fn to_xml(&self) -> String {
        format!(
            "<RSAKeyValue><Modulus>{}</Modulus><Exponent>{}</Exponent></RSAKeyValue>",
            BASE64.encode(self.key.n().to_bytes_be()),
            BASE64.encode(self.key.e().to_bytes_be())
        )
    }

    /// Whether `sig` is this key's RSASSA-PSS signature of `msg` (SHA-256,
    /// MGF1-SHA-256, salt of `PSS_SALT_LEN` bytes), as long as the
    /// modulus.
    pub fn verify_pss(&self, msg: &[u8], sig: &[u8]) -> bool {
        use rsa::signature::Verifier;
        if sig.len() != self.modulus_len() {
            return false;
        }
        let Ok(sig) = rsa::pss::Signature::try_from(sig) else {
            return false;
        };
        rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(self.key.clone(), PSS_SALT_LEN)
            .verify(msg, &sig)
            .is_ok()
    }

    /// SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`).
    pub fn to_pem(&self) -> Result<String> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::new(ErrorKind::InvalidKey, format!("PEM encoding: {e}")))
    }
}

/// A private key. The `rsa` crate zeroizes its components on drop; every
/// serialized form this type hands out is in a [`Zeroizing`] buffer.
pub struct PrivateKey {
    key: RsaPrivateKey,
    public: PublicKey,
    /// The last few keys this key unwrapped, by wrapped form: opening the
    /// same image again (reopen, check then open) skips the RSA private
    /// operation. Zeroized with the key.
    unwrapped: Mutex<Vec<Unwrapped>>,
}

/// A wrapped key and what it unwrapped to.
type Unwrapped = (Vec<u8>, Zeroizing<Vec<u8>>);

/// How many unwrapped keys a [`PrivateKey`] remembers.
pub const UNWRAP_CACHE: usize = 4;

impl Clone for PrivateKey {
    /// The copy starts with an empty cache.
    fn clone(&self) -> Self {
        PrivateKey {
            key: self.key.clone(),
            public: self.public.clone(),
            unwrapped: Mutex::new(Vec::new()),
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PrivateKey({}, {} bits)",
            self.public.fingerprint.short(),
            self.public.bits()
        )
    }
}

impl PrivateKey {
    fn new(key: RsaPrivateKey) -> Result<Self> {
        let public = PublicKey::new(key.to_public_key())?;
        Ok(PrivateKey {
            key,
            public,
            unwrapped: Mutex::new(Vec::new()),
        })
    }

    /// Generate a new key pair of `bits` bits (at least `MIN_BITS`).
    pub fn generate(bits: usize) -> Result<Self> {
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(Error::invalid_argument(format!(
                "key size of {bits} bits; expected {MIN_BITS} to {MAX_BITS}"
            )));
        }
        let key = RsaPrivateKey::new(&mut rand_core::OsRng, bits)
            .map_err(|e| Error::new(ErrorKind::InvalidKey, format!("key generation: {e}")))?;
        Self::new(key)
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.public.fingerprint
    }

    /// Undo [`PublicKey::wrap`]. Uses the `rsa` crate's blinded decryption,
    /// which is still not constant-time (RUSTSEC-2023-0071, no fixed
    /// release): never unwrap stanzas that others choose where they can
    /// time it. See the README's note on the RSA timing side channel.
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let mut cache = self.unwrapped.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, k)) = cache.iter().find(|(w, _)| w == wrapped) {
            return Ok(k.clone());
        }
        let padding = Oaep::new_with_label::<Sha256, _>(OAEP_LABEL);
        let key = self
            .key
            .decrypt_blinded(&mut rand_core::OsRng, padding, wrapped)
            .map(Zeroizing::new)
            .map_err(|_| {
                Error::new(
                    ErrorKind::Authentication,
                    "RSA-OAEP unwrapping failed: the recipient stanza or the key file is damaged",
                )
            })?;
        if cache.len() == UNWRAP_CACHE {
            cache.remove(0);
        }
        cache.push((wrapped.to_vec(), key.clone()));
        Ok(key)
    }

    /// RSASSA-PSS signature of `msg` (SHA-256, MGF1-SHA-256, salt of
    /// `PSS_SALT_LEN` bytes), as long as the modulus. Blinded, as
    /// unwrapping is.
    pub fn sign_pss(&self, msg: &[u8]) -> Result<Vec<u8>> {
        use rsa::signature::{RandomizedSigner, SignatureEncoding};
        let signer = rsa::pss::BlindedSigningKey::<Sha256>::new_with_salt_len(
            self.key.clone(),
            PSS_SALT_LEN,
        );
        let sig = signer
            .try_sign_with_rng(&mut rand_core::OsRng, msg)
            .map_err(|e| Error::new(ErrorKind::InvalidKey, format!("RSA-PSS signing: {e}")))?;
        Ok(sig.to_vec())
    }

    /// The .NET `RSA.ToXmlString(true)` form: fixed element order, no
    /// whitespace, D padded to the modulus length and P, Q, DP, DQ,
    /// InverseQ to half of it.
    pub fn to_xml(&self) -> Zeroizing<String> {
        let k = &self.key;
        let len = k.size();
        let half = len.div_ceil(2);
        let enc = |v: &BigUint, width: usize| -> String {
            let b = Zeroizing::new(v.to_bytes_be());
            let mut padded = Zeroizing::new(vec![0u8; width.saturating_sub(b.len())]);
            padded.extend_from_slice(&b);
            BASE64.encode(&padded[..])
        };
        let p = &k.primes()[0];
        let q = &k.primes()[1];
        let dp = k.dp().cloned().unwrap_or_default();
        let dq = k.dq().cloned().unwrap_or_default();
        let qinv = k.crt_coefficient().unwrap_or_default();
        Zeroizing::new(format!(
            "<RSAKeyValue><Modulus>{}</Modulus><Exponent>{}</Exponent><P>{}</P><Q>{}</Q><DP>{}</DP><DQ>{}</DQ><InverseQ>{}</InverseQ><D>{}</D></RSAKeyValue>",
            BASE64.encode(k.n().to_bytes_be()),
            BASE64.encode(k.e().to_bytes_be()),
            enc(p, half),
            enc(q, half),
            enc(&dp, half),
            enc(&dq, half),
            enc(&qinv, half),
            enc(k.d(), len),
        ))
    }

    /// PKCS#8 PEM (`BEGIN PRIVATE KEY`), as `openssl` writes it.
    pub fn to_pem(&self) -> Result<Zeroizing<String>> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| Error::new(ErrorKind::InvalidKey, format!("PEM encoding: {e}")))
    }
}

/// A key file's content: a key pair or a public key.
#[derive(Debug, Clone)]
pub enum KeyFile {
    /// A private key (which includes its public key).
    Private(Box<PrivateKey>),
    /// A public key only.
    Public(PublicKey),
}

impl KeyFile {
    /// Parse a `KeyPair.xml` or PEM text.
    pub fn parse(text: &str) -> Result<KeyFile> {
        if text.contains("-----BEGIN") {
            parse_pem(text)
        } else {
            parse_xml(text)
        }
    }

    /// Read and parse the key file at `path`.
    pub fn read(path: &Path) -> Result<KeyFile> {
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| Error::io(e, "cannot read key file").with_path(path))?,
        );
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Error::new(ErrorKind::InvalidKey, "key file is not UTF-8 text").with_path(path)
        })?;
        Self::parse(text).map_err(|e| e.with_path(path))
    }

    /// The public key.
    pub fn public(&self) -> &PublicKey {
        match self {
            KeyFile::Private(k) => k.public(),
            KeyFile::Public(k) => k,
        }
    }

    /// The private key, or an error saying a private key is needed.
    pub fn into_private(self) -> Result<PrivateKey> {
        match self {
            KeyFile::Private(k) => Ok(*k),
            KeyFile::Public(k) => Err(Error::new(
                ErrorKind::InvalidKey,
                format!(
                    "key {} is a public key; this needs the private key (KeyPair.xml with D, P, Q)",
                    k.fingerprint().short()
                ),
            )),
        }
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidKey, msg)
}

fn parse_pem(text: &str) -> Result<KeyFile> {
    let text = text.trim();
    if text.contains("BEGIN PRIVATE KEY") {
        let k = RsaPrivateKey::from_pkcs8_pem(text)
            .map_err(|e| invalid(format!("PKCS#8 private key: {e}")))?;
        Ok(KeyFile::Private(Box::new(PrivateKey::new(k)?)))
    } else if text.contains("BEGIN RSA PRIVATE KEY") {
        let k = RsaPrivateKey::from_pkcs1_pem(text)
            .map_err(|e| invalid(format!("PKCS#1 private key: {e}")))?;
        Ok(KeyFile::Private(Box::new(PrivateKey::new(k)?)))
    } else if text.contains("BEGIN PUBLIC KEY") {
        decode_public_pem(text, PUBLIC_KEY_LABEL)
            .map_err(|e| invalid(format!("public key: {e}")))
            .and_then(|(n, e)| PublicKey::from_parts(n, e))
            .map(KeyFile::Public)
    } else if text.contains("BEGIN RSA PUBLIC KEY") {
        decode_public_pem(text, PKCS1_PUBLIC_KEY_LABEL)
            .map_err(|e| invalid(format!("PKCS#1 public key: {e}")))
            .and_then(|(n, e)| PublicKey::from_parts(n, e))
            .map(KeyFile::Public)
    } else {
        Err(invalid(
            "PEM file holds no RSA key (expected PRIVATE KEY, RSA PRIVATE KEY or PUBLIC KEY)",
        ))
    }
}

/// PEM label of a SubjectPublicKeyInfo (RFC 7468 section 13).
const PUBLIC_KEY_LABEL: &str = "PUBLIC KEY";
/// PEM label of a PKCS#1 `RSAPublicKey` (RFC 8017 appendix A.1.1).
const PKCS1_PUBLIC_KEY_LABEL: &str = "RSA PUBLIC KEY";

/// The modulus and exponent of a public key PEM block labelled `label`.
/// Decoded here rather than by the `rsa` crate, whose decoders refuse
/// moduli over 4096 bits; the size is checked by [`PublicKey::from_parts`].
fn decode_public_pem(text: &str, label: &str) -> std::result::Result<(BigUint, BigUint), String> {
    let (found, doc) = Document::from_pem(text).map_err(|e| e.to_string())?;
    if found != label {
        return Err(format!("PEM label {found:?}; expected {label:?}"));
    }
    let pkcs1_der = if label == PUBLIC_KEY_LABEL {
        let spki = SubjectPublicKeyInfoRef::from_der(doc.as_bytes()).map_err(|e| e.to_string())?;
        spki.algorithm
            .assert_algorithm_oid(rsa::pkcs1::ALGORITHM_OID)
            .map_err(|_| format!("algorithm {} is not RSA", spki.algorithm.oid))?;
        match spki.algorithm.parameters {
            Some(p) if p.is_null() => {}
            _ => return Err("RSA algorithm parameters are not NULL".into()),
        }
        spki.subject_public_key
            .as_bytes()
            .ok_or("the key bit string has unused bits")?
    } else {
        doc.as_bytes()
    };
    let k = rsa::pkcs1::RsaPublicKey::from_der(pkcs1_der).map_err(|e| e.to_string())?;
    Ok((
        BigUint::from_bytes_be(k.modulus.as_bytes()),
        BigUint::from_bytes_be(k.public_exponent.as_bytes()),
    ))
}

/// The `RSAKeyValue` element names, in .NET's order.
const XML_FIELDS: [&str; 8] = ["Modulus", "Exponent", "P", "Q", "DP", "DQ", "InverseQ", "D"];

fn parse_xml(text: &str) -> Result<KeyFile> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut values: [Option<Zeroizing<Vec<u8>>>; 8] = Default::default();
    let mut current: Option<usize> = None;
    let mut saw_root = false;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| invalid(format!("KeyPair.xml is not well-formed XML: {e}")))?;
        match ev {
            Event::Start(e) => {
                let name = e.local_name();
                let name = std::str::from_utf8(name.as_ref()).unwrap_or("");
                if name == "RSAKeyValue" {
                    saw_root = true;
                }
                current = XML_FIELDS.iter().position(|f| *f == name);
            }
            Event::Text(t) => {
                if let Some(i) = current {
                    let raw = t
                        .unescape()
                        .map_err(|e| invalid(format!("KeyPair.xml <{}>: {e}", XML_FIELDS[i])))?;
                    let clean: Zeroizing<String> =
                        Zeroizing::new(raw.chars().filter(|c| !c.is_whitespace()).collect());
                    let bytes = BASE64.decode(clean.as_bytes()).map_err(|e| {
                        invalid(format!(
                            "KeyPair.xml <{}> is not base64: {e}",
                            XML_FIELDS[i]
                        ))
                    })?;
                    if values[i].is_some() {
                        return Err(invalid(format!(
                            "KeyPair.xml has <{}> twice",
                            XML_FIELDS[i]
                        )));
                    }
                    values[i] = Some(Zeroizing::new(bytes));
                }
            }
            Event::End(_) => current = None,
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(invalid(
            "not a key file: no <RSAKeyValue> element and no PEM block",
        ));
    }
    let num = |i: usize| -> Result<BigUint> {
        values[i]
            .as_ref()
            .map(|b| BigUint::from_bytes_be(b))
            .ok_or_else(|| invalid(format!("KeyPair.xml lacks <{}>", XML_FIELDS[i])))
    };
    let n = num(0)?;
    let e = num(1)?;
    let private_parts = values[2..].iter().filter(|v| v.is_some()).count();
    if private_parts == 0 {
        return Ok(KeyFile::Public(PublicKey::from_parts(n, e)?));
    }
    // Bound the cost of the consistency checks below on a hostile file.
    let bits = n.bits();
    if !(MIN_BITS..=MAX_BITS).contains(&bits) {
        return Err(invalid(format!(
            "RSA modulus of {bits} bits; expected {MIN_BITS} to {MAX_BITS}"
        )));
    }
    let (p, q, dp, dq, qinv, d) = (num(2)?, num(3)?, num(4)?, num(5)?, num(6)?, num(7)?);
    let key = RsaPrivateKey::from_components(n.clone(), e, d, vec![p.clone(), q.clone()])
        .map_err(|e| invalid(format!("inconsistent private key: {e}")))?;
    if &p * &q != n {
        return Err(invalid("inconsistent private key: P * Q != Modulus"));
    }
    if key.dp() != Some(&dp) {
        return Err(invalid("inconsistent private key: DP != D mod (P - 1)"));
    }
    if key.dq() != Some(&dq) {
        return Err(invalid("inconsistent private key: DQ != D mod (Q - 1)"));
    }
    if key.crt_coefficient().as_ref() != Some(&qinv) {
        return Err(invalid("inconsistent private key: InverseQ != Q^-1 mod P"));
    }
    Ok(KeyFile::Private(Box::new(PrivateKey::new(key)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evhd::recipient::Stanza;
    use rsa::pkcs1::EncodeRsaPublicKey;

    /// An odd modulus of exactly `bits` bits. Not a product of two primes,
    /// which public-key handling cannot tell: enough to test sizes without
    /// generating keys.
    fn modulus(bits: usize) -> BigUint {
        let mut b = vec![0x5au8; bits.div_ceil(8)];
        b[0] = 0x80 >> ((8 - bits % 8) % 8);
        *b.last_mut().unwrap() |= 1;
        BigUint::from_bytes_be(&b)
    }

    /// Public keys above the `rsa` crate's default 4096-bit limit load from
    /// every form vhdkit reads and writes, and wrap into a stanza that
    /// decodes again; one bit over [`MAX_BITS`] is refused with the sizes.
    #[test]
    fn public_keys_up_to_max_bits_load_everywhere() {
        for bits in [MIN_BITS, 4096, 4097, 4608, 6144, MAX_BITS] {
            let k = PublicKey::from_parts(modulus(bits), BigUint::from(65537u32)).unwrap();
            assert_eq!(k.bits(), bits);
            let fp = k.fingerprint();
            let spki = k.to_pem().unwrap();
            let pkcs1 = k.rsa().to_pkcs1_pem(LineEnding::LF).unwrap();
            assert!(pkcs1.contains("BEGIN RSA PUBLIC KEY"));
            for text in [k.to_xml(), spki, pkcs1] {
                let back = KeyFile::parse(&text).unwrap_or_else(|e| panic!("{bits} bits: {e}"));
                assert!(matches!(back, KeyFile::Public(_)));
                assert_eq!(back.public().fingerprint(), fp, "{bits} bits");
            }
            let s = Stanza::wrap(&k, "label", &[7u8; 32]).unwrap();
            let mut enc = Vec::new();
            s.encode(&mut enc);
            let (back, len) = Stanza::decode(&enc, 0).unwrap();
            assert_eq!((back, len), (s, enc.len()));
        }
        let e = PublicKey::from_parts(modulus(MAX_BITS + 1), BigUint::from(65537u32)).unwrap_err();
        assert!(e.to_string().contains("8193 bits"), "{e}");
        let e = PublicKey::from_parts(modulus(MIN_BITS - 1), BigUint::from(65537u32)).unwrap_err();
        assert!(e.to_string().contains("2047 bits"), "{e}");
    }

    /// A PEM block whose label does not match its content is refused.
    #[test]
    fn public_pem_label_must_match() {
        let k = PublicKey::from_parts(modulus(MIN_BITS), BigUint::from(65537u32)).unwrap();
        let pkcs1 = k.rsa().to_pkcs1_pem(LineEnding::LF).unwrap();
        let relabelled = pkcs1.replace("RSA PUBLIC KEY", "PUBLIC KEY");
        let e = KeyFile::parse(&relabelled).unwrap_err();
        assert!(e.to_string().contains("public key"), "{e}");
    }
}
