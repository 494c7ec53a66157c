//! Header signatures (format version 2): a writer holding a recipient's
//! private key signs every header commit, so a reader can tell that a
//! holder of a key it trusts wrote the image (the header MAC only shows
//! that someone who knew the master key did, and anyone with the
//! recipients' public keys can make a new master key).
//!
//! The signature is RSASSA-PSS (RFC 8017 8.1) with SHA-256, MGF1-SHA-256
//! and a 32-byte salt, by the signer's RSA key, over the message
//!
//! `"evhd/v2/sig" || container id (16) || u64le sequence || signer fingerprint (32) || header MAC (32)`
//!
//! The header MAC covers every other byte of the copy (the table root, so
//! every page and through the pages every block), so the signature covers
//! the whole committed state. The signer must be one of the recipients:
//! its public key is then in the header already, and a writer has to unwrap
//! the master key to MAC a header anyway.

use super::header::{
    Header, MAX_SIGNATURE, MIN_SIGNATURE, RECIPIENTS_OFFSET, RawHeader, SIGNATURE_OFFSET,
    SIGNER_OFFSET, SIGNER_RECORD, STRUCTURE, SignerRecord,
};
use super::keys::Fingerprint;
use crate::error::{Error, ErrorKind, Result};
use crate::report::{Warning, WarningKind};

/// Signature scheme 1: RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt.
pub const SCHEME_RSA_PSS_SHA256: u16 = 1;
/// Domain separation of the signed message.
pub const DOMAIN: &[u8] = b"evhd/v2/sig";

/// The message a header copy's signature is over.
pub fn message(
    container_id: &[u8; 16],
    sequence: u64,
    signer: &Fingerprint,
    mac: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 16 + 8 + 32 + 32);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(container_id);
    m.extend_from_slice(&sequence.to_le_bytes());
    m.extend_from_slice(&signer.0);
    m.extend_from_slice(mac);
    m
}

/// Who signed an image, as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// A version 1 header: no signature.
    Unsigned,
    /// A verified signature by a recipient's key.
    Signed {
        /// The signer's key fingerprint.
        fingerprint: Fingerprint,
        /// The signer's recipient label.
        label: String,
        /// Whether this reader trusts the signer (a `--key` or `--trust`).
        trusted: bool,
    },
}

impl Status {
    /// Whether a trusted key signed.
    pub fn is_trusted(&self) -> bool {
        matches!(self, Status::Signed { trusted: true, .. })
    }

    /// Why a reader that requires a trusted signature refuses this image,
    /// or `None` when it is signed by a trusted key.
    pub fn problem(&self) -> Option<String> {
        match self {
            Status::Unsigned => Some("EVHD image is not signed".into()),
            Status::Signed {
                fingerprint,
                label,
                trusted: false,
            } => Some(format!(
                "EVHD image is signed by key {} (recipient labelled {label:?} in the image), which this reader does not trust",
                fingerprint.short()
            )),
            Status::Signed { .. } => None,
        }
    }

    /// The warning a reader that does not require a signature prints, or
    /// `None` for an image signed by a trusted key (what can be done about
    /// it is [`Status::hint`]).
    pub fn warning(&self) -> Option<String> {
        let p = self.problem()?;
        Some(match self {
            Status::Unsigned => {
                format!("{p}: nothing shows that a holder of a recipient's private key wrote it")
            }
            _ => p,
        })
    }

    /// What can be done about [`Status::warning`]: sign the image, or
    /// trust its signer (either way, requiring a signature refuses it).
    pub fn hint(&self) -> Option<crate::Hint> {
        match self {
            Status::Unsigned => Some(crate::Hint::Sign),
            Status::Signed { trusted: false, .. } => Some(crate::Hint::Trust),
            Status::Signed { .. } => None,
        }
    }

    /// [`Status::warning`] as one of `info`'s warnings.
    pub fn as_warning(&self) -> Option<Warning> {
        let kind = match self {
            Status::Unsigned => WarningKind::Unsigned,
            Status::Signed { .. } => WarningKind::UntrustedSigner,
        };
        let w = Warning::new(kind, self.warning()?).in_structure(STRUCTURE);
        Some(match self.hint() {
            Some(h) => w.with_hint(h),
            None => w,
        })
    }
}

/// Verify the signature of header copy `h` (its encoded form `bytes`, read
/// at file offset `at`) and judge its signer against `trusted`. A signature
/// that does not verify, or a signer that is not a recipient, is an
/// `Authentication` error: the header was tampered with or damaged after
/// its CRC was computed. The header MAC is checked by the caller (it needs
/// the master key); without it a verified signature only shows that the
/// signer signed this MAC value.
pub fn verify(h: &Header, bytes: &[u8], at: u64, trusted: &[Fingerprint]) -> Result<Status> {
    let Some(rec) = &h.signer else {
        return Ok(Status::Unsigned);
    };
    let fp = rec.fingerprint;
    let stanza = h
        .recipients
        .iter()
        .find(|s| s.key.fingerprint() == fp)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Authentication,
                format!(
                    "the header names signer {}, which is not one of its recipients: the header was modified or damaged",
                    fp.short()
                ),
            )
            .at(STRUCTURE, at + SIGNER_OFFSET as u64)
        })?;
    let mac: [u8; 32] = bytes[super::header::MAC_OFFSET..]
        .try_into()
        .expect("32 bytes");
    let msg = message(&h.container_id, h.sequence, &fp, &mac);
    if !stanza.key.verify_pss(&msg, &rec.signature) {
        return Err(Error::new(
            ErrorKind::Authentication,
            format!(
                "the header signature by {} ({:?}) does not verify: the header was modified (tampered with) or damaged",
                fp.short(),
                stanza.label
            ),
        )
        .at(STRUCTURE, at + SIGNATURE_OFFSET as u64));
    }
    Ok(Status::Signed {
        fingerprint: fp,
        label: stanza.label.clone(),
        trusted: trusted.contains(&fp),
    })
}

/// The signer record and signature of a signed copy `raw` read at `at`:
/// the scheme known, the length in range and the rest of the signature
/// area zero (it is outside the MAC, so nothing there may go unchecked).
/// Whether the signer is a recipient and the signature verifies is
/// [`verify`]'s business.
pub(super) fn signer_of(raw: &RawHeader, at: u64) -> Result<SignerRecord> {
    let bad = |o: usize, msg: String| Error::corrupt(STRUCTURE, at + o as u64, msg);
    let len = raw.signer.signature_len as usize;
    let scheme = raw.signer.scheme;
    if scheme != SCHEME_RSA_PSS_SHA256 {
        return Err(Error::unsupported(
            STRUCTURE,
            at + (SIGNER_OFFSET + 34) as u64,
            format!(
                "signature scheme {scheme}; expected {} (RSA-PSS-SHA256)",
                SCHEME_RSA_PSS_SHA256
            ),
        ));
    }
    if !(MIN_SIGNATURE..=MAX_SIGNATURE).contains(&len) {
        return Err(bad(
            SIGNER_OFFSET + 32,
            format!("signature of {len} bytes; expected {MIN_SIGNATURE} to {MAX_SIGNATURE}"),
        ));
    }
    if let Some(i) = raw.reserved.iter().position(|&x| x != 0) {
        return Err(bad(
            SIGNER_OFFSET + SIGNER_RECORD + i,
            "reserved byte after the signer record is not zero".into(),
        ));
    }
    let sig = SIGNATURE_OFFSET - RECIPIENTS_OFFSET;
    if let Some(i) = raw.body[sig + len..].iter().position(|&x| x != 0) {
        return Err(bad(
            SIGNATURE_OFFSET + len + i,
            format!("byte after the {len}-byte signature is not zero"),
        ));
    }
    Ok(SignerRecord {
        fingerprint: Fingerprint(raw.signer.fingerprint),
        signature: raw.body[sig..sig + len].to_vec(),
    })
}
