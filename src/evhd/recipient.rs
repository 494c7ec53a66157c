//! Recipient stanzas: the master key wrapped for each RSA key that may open
//! the container, stored in the header from byte 1024.
//!
//! Stanza layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | type: 1 = RSA-OAEP-SHA256 with MGF1-SHA256, label `evhd/v1/mk` |
//! | 2 | 2 | stanza length in bytes, padding included (a multiple of 8) |
//! | 4 | 32 | key fingerprint (see [`keys::Fingerprint`](super::keys::Fingerprint)) |
//! | 36 | 2 | modulus bits |
//! | 38 | 2 | label length L (at most 64) |
//! | 40 | 2 | public exponent length E |
//! | 42 | 2 | reserved, zero |
//! | 44 | L | label, UTF-8 |
//! | 44+L | E | public exponent, big-endian |
//! | 44+L+E | M | modulus, big-endian, M = ceil(bits / 8) |
//! | 44+L+E+M | M | wrapped master key |
//! | ... | | zero padding to a multiple of 8 |
//!
//! The public key is stored so that `rekey` can wrap a new master key for
//! every recipient without asking for their key files.

use binrw::binrw;
use rsa::BigUint;

use super::keys::{Fingerprint, MAX_BITS, MIN_BITS, PublicKey};
use crate::error::{Error, ErrorKind, Result};
use crate::fixed::{FixedStruct, Invalid};

/// Stanza type of RSA-OAEP-SHA256 recipients.
pub const TYPE_RSA_OAEP_SHA256: u16 = 1;
/// Longest label in bytes: enough for a host or team name, short enough
/// that the header holds many recipients.
pub const MAX_LABEL: usize = 64;
/// Longest public exponent accepted, in bytes (65537 takes 3).
pub const MAX_EXPONENT_LEN: usize = 8;
/// Bytes before the label.
pub const FIXED_LEN: usize = 44;
/// Structure name in errors.
const STRUCTURE: &str = "EVHD recipient stanza";

/// The fixed part of a stanza, before the label. The type is checked when
/// it is read; [`Stanza::decode`] checks the rest.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StanzaHead {
    #[br(temp, assert(
        kind == TYPE_RSA_OAEP_SHA256,
        Invalid::unsupported(0, format!("stanza type {kind}; expected {TYPE_RSA_OAEP_SHA256} (RSA-OAEP-SHA256)"))
    ))]
    #[bw(calc = TYPE_RSA_OAEP_SHA256)]
    kind: u16,
    /// Stanza length in bytes, padding included.
    pub len: u16,
    /// Key fingerprint.
    pub fingerprint: [u8; 32],
    /// Modulus bits.
    pub bits: u16,
    /// Label length.
    pub label_len: u16,
    /// Public exponent length.
    pub exponent_len: u16,
    /// Zero.
    pub reserved: u16,
}

impl FixedStruct for StanzaHead {
    const SIZE: usize = FIXED_LEN;
    const NAME: &'static str = STRUCTURE;
}

/// One recipient of the master key.
#[derive(Clone, PartialEq, Eq)]
pub struct Stanza {
    /// The recipient's public key.
    pub key: PublicKey,
    /// A free-form name for people (host, team).
    pub label: String,
    /// The master key, RSA-OAEP-wrapped for `key`.
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for Stanza {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Stanza({} {:?})",
            self.key.fingerprint().short(),
            self.label
        )
    }
}

impl Stanza {
    /// Wrap `mk` for `key` under `label`. The stanza is decoded back before
    /// it is returned: a key this program could not read from the header
    /// (once, keys over 4096 bits) is an error here, before anything is
    /// written, rather than a header copy that no reader can open.
    pub fn wrap(key: &PublicKey, label: &str, mk: &[u8]) -> Result<Stanza> {
        let label = truncate_label(label);
        let stanza = Stanza {
            key: key.clone(),
            wrapped: key.wrap(mk)?,
            label,
        };
        let mut encoded = Vec::with_capacity(stanza.encoded_len());
        stanza.encode(&mut encoded);
        let why = match Stanza::decode(&encoded, 0) {
            Ok((back, _)) if back == stanza => None,
            Ok(_) => Some("it reads back differently".to_string()),
            Err(e) => Some(e.message().to_string()),
        };
        if let Some(why) = why {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!(
                    "key {} cannot be stored as a recipient: {why}",
                    key.fingerprint().short()
                ),
            ));
        }
        Ok(stanza)
    }

    /// Encoded length, padding included.
    pub fn encoded_len(&self) -> usize {
        let e = self.key.rsa_exponent().len();
        let m = self.key.modulus_len();
        (FIXED_LEN + self.label.len() + e + 2 * m).next_multiple_of(8)
    }

    /// Append the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let len = self.encoded_len();
        let m = self.key.modulus_len();
        let e = self.key.rsa_exponent();
        let head = StanzaHead {
            len: len as u16,
            fingerprint: self.key.fingerprint().0,
            bits: self.key.bits() as u16,
            label_len: self.label.len() as u16,
            exponent_len: e.len() as u16,
            reserved: 0,
        };
        out.extend_from_slice(&head.to_bytes());
        out.extend_from_slice(self.label.as_bytes());
        out.extend_from_slice(&e);
        let n = self.key.modulus();
        out.resize(out.len() + m - n.len(), 0);
        out.extend_from_slice(&n);
        out.resize(out.len() + m - self.wrapped.len(), 0);
        out.extend_from_slice(&self.wrapped);
        out.resize(start + len, 0);
    }

    /// Decode one stanza from the start of `buf`, which lies at `offset` in
    /// the file; returns it and its length.
    pub fn decode(buf: &[u8], offset: u64) -> Result<(Stanza, usize)> {
        let bad = |at: usize, msg: String| Error::corrupt(STRUCTURE, offset + at as u64, msg);
        if buf.len() < FIXED_LEN {
            return Err(bad(
                0,
                format!(
                    "{} bytes left, a stanza needs at least {FIXED_LEN}",
                    buf.len()
                ),
            ));
        }
        let head = StanzaHead::parse(buf, offset)?;
        let len = head.len as usize;
        let bits = head.bits as usize;
        let label_len = head.label_len as usize;
        let e_len = head.exponent_len as usize;
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(bad(
                36,
                format!("modulus of {bits} bits; expected {MIN_BITS} to {MAX_BITS}"),
            ));
        }
        if label_len > MAX_LABEL {
            return Err(bad(
                38,
                format!("label of {label_len} bytes; at most {MAX_LABEL}"),
            ));
        }
        if e_len == 0 || e_len > MAX_EXPONENT_LEN {
            return Err(bad(
                40,
                format!("exponent of {e_len} bytes; expected 1 to {MAX_EXPONENT_LEN}"),
            ));
        }
        if head.reserved != 0 {
            return Err(bad(42, "reserved field is not zero".into()));
        }
        let m = bits.div_ceil(8);
        let need = (FIXED_LEN + label_len + e_len + 2 * m).next_multiple_of(8);
        if len != need || len > buf.len() {
            return Err(bad(
                2,
                format!(
                    "stanza length {len}; expected {need} within the {} bytes left",
                    buf.len()
                ),
            ));
        }
        let mut p = FIXED_LEN;
        let label = std::str::from_utf8(&buf[p..p + label_len])
            .map_err(|_| bad(p, "label is not UTF-8".into()))?
            .to_string();
        p += label_len;
        let e = BigUint::from_bytes_be(&buf[p..p + e_len]);
        p += e_len;
        let n = BigUint::from_bytes_be(&buf[p..p + m]);
        p += m;
        let wrapped = buf[p..p + m].to_vec();
        let key = PublicKey::from_parts(n, e).map_err(|e| bad(44, e.message().to_string()))?;
        if key.bits() != bits {
            return Err(bad(
                36,
                format!("modulus bits {bits}; the stored modulus has {}", key.bits()),
            ));
        }
        let fp = Fingerprint(head.fingerprint);
        if fp != key.fingerprint() {
            return Err(bad(
                4,
                format!(
                    "fingerprint {} does not match the stored public key ({})",
                    fp.short(),
                    key.fingerprint().short()
                ),
            ));
        }
        Ok((
            Stanza {
                key,
                label,
                wrapped,
            },
            len,
        ))
    }
}

/// Cut `label` to at most [`MAX_LABEL`] bytes at a character boundary.
pub fn truncate_label(label: &str) -> String {
    let mut end = label.len().min(MAX_LABEL);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    label[..end].to_string()
}
