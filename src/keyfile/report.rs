//! What `key show`, `keygen` and `recipients list` report about keys, and
//! how it prints for people. The JSON shapes are part of the command's
//! interface (see the README): change them only by adding keys.

use std::io::{self, Write};

use serde::Serialize;

use super::KeyKind;
use crate::evhd::keys::{KeyFile, PrivateKey, PublicKey};

/// One key: JSON `{fingerprint, short, bits, kind}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyReport {
    /// SHA-256 fingerprint of the public key, 64 hex digits.
    pub fingerprint: String,
    /// The fingerprint's first 16 hex digits.
    pub short: String,
    /// Modulus size in bits.
    pub bits: usize,
    /// Whether the key file holds the private key or only the public one.
    pub kind: KeyKind,
}

impl KeyReport {
    /// The report of a public key seen as `kind`.
    fn new(key: &PublicKey, kind: KeyKind) -> Self {
        KeyReport {
            fingerprint: key.fingerprint().hex(),
            short: key.fingerprint().short(),
            bits: key.bits(),
            kind,
        }
    }

    /// The report of a key file's key.
    pub fn of_file(key: &KeyFile) -> Self {
        let kind = match key {
            KeyFile::Private(_) => KeyKind::Private,
            KeyFile::Public(_) => KeyKind::Public,
        };
        KeyReport::new(key.public(), kind)
    }

    /// The report of a private key.
    pub fn of_private(key: &PrivateKey) -> Self {
        KeyReport::new(key.public(), KeyKind::Private)
    }
}

/// Print a key's report as aligned lines.
pub fn write_key_text(key: &KeyReport, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "fingerprint  {}", key.fingerprint)?;
    writeln!(out, "short        {}", key.short)?;
    writeln!(out, "bits         {}", key.bits)?;
    writeln!(out, "kind         {}", key.kind.as_str())
}

/// One recipient of an EVHD: JSON `{fingerprint, short, bits, label}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipientReport {
    /// SHA-256 fingerprint of the recipient's public key, 64 hex digits.
    pub fingerprint: String,
    /// The fingerprint's first 16 hex digits.
    pub short: String,
    /// Modulus size in bits.
    pub bits: usize,
    /// The label the recipient was added with.
    pub label: String,
}

impl RecipientReport {
    /// The report of the recipient `key` labelled `label`.
    pub fn new(key: &PublicKey, label: &str) -> Self {
        RecipientReport {
            fingerprint: key.fingerprint().hex(),
            short: key.fingerprint().short(),
            bits: key.bits(),
            label: label.to_string(),
        }
    }
}

/// Print recipients one a line: fingerprint, size, label.
pub fn write_recipients_text(list: &[RecipientReport], out: &mut dyn Write) -> io::Result<()> {
    for r in list {
        writeln!(out, "{}  {:>5} bits  {}", r.fingerprint, r.bits, r.label)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kind: KeyKind) -> KeyReport {
        KeyReport {
            fingerprint: "ab".repeat(32),
            short: "ab".repeat(8),
            bits: 3072,
            kind,
        }
    }

    #[test]
    fn key_json_has_the_documented_keys() {
        let v = serde_json::to_value(report(KeyKind::Public)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "fingerprint": "ab".repeat(32),
                "short": "ab".repeat(8),
                "bits": 3072,
                "kind": "public",
            })
        );
    }

    #[test]
    fn key_text_is_aligned() {
        let mut out = Vec::new();
        write_key_text(&report(KeyKind::Private), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[2], "bits         3072");
        assert_eq!(lines[3], "kind         private");
    }

    #[test]
    fn recipients_print_one_a_line() {
        let list = vec![
            RecipientReport {
                fingerprint: "01".repeat(32),
                short: "01".repeat(8),
                bits: 2048,
                label: "alice".into(),
            },
            RecipientReport {
                fingerprint: "02".repeat(32),
                short: "02".repeat(8),
                bits: 4096,
                label: "bob".into(),
            },
        ];
        let mut out = Vec::new();
        write_recipients_text(&list, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            format!(
                "{}   2048 bits  alice\n{}   4096 bits  bob\n",
                "01".repeat(32),
                "02".repeat(32)
            )
        );
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(v[1]["label"], "bob");
        assert_eq!(v[0]["bits"], 2048);
        assert_eq!(v[0].as_object().unwrap().len(), 4);
    }
}
