//! Format detection that fails closed.
//!
//! A file is raw only when it carries no trace at all of VHD, VHDX or EVHD.
//! Each format leaves signatures at fixed offsets; a file with any of them is
//! taken for that format, and if it then does not open as that format it is
//! reported as a damaged image of it, never read as a flat disk (which would
//! hand out ciphertext, hide damage from `check` and let a write land
//! plaintext or raw bytes inside a container). `-f raw` is the only way to
//! read such a file as raw.
//!
//! The signatures are tried in two rounds, the primary ones first (the
//! signatures the formats' own probes accept, in the order VHDX, EVHD, VHD),
//! then the secondary ones that survive when the primary ones are damaged:
//!
//! | format | primary | secondary |
//! |---|---|---|
//! | VHDX | `vhdxfile` at 0 | `head` at 64/128 KiB (with version 1), `regi` at 192/256 KiB (with at most 2047 entries and a zero reserved field), `loge` at 1 MiB (with a length in whole 4 KiB sectors and a zero reserved field), `metadata` at 2 MiB |
//! | EVHD | `EVHDCRPT` at 0 or 64 KiB | `EVHDJRNL` at 128 KiB |
//! | VHD | `conectix` at EOF-512 (or EOF-511), or at 0 in a dynamic or differencing footer | `conectix` at 0, `cxsparse` at 512, a footer at EOF-512 with version 1.0 and a disk type |
//!
//! A raw disk rarely holds one of these 8-byte strings (or 4-byte ones with
//! a plausible field beside them) at exactly one of these offsets; the only common case is a raw disk whose content is
//! itself an image file (a disk dumped with `dd` that holds a VHD at sector
//! 0), which then is taken for that image unless `-f raw` is given.

use crate::error::{Error, ErrorKind};
use crate::io::Storage;
use crate::report::Format;
use crate::{evhd, vhd, vhdx};

/// File offset where Hyper-V, qemu and vhdkit put the VHDX log: right after
/// the 1 MiB header area ([MS-VHDX] 2.3 leaves the place free, but every
/// writer we know uses this one). A written log starts with an entry there.
pub const VHDX_LOG_OFFSET: u64 = vhdx::region_table::HEADER_AREA;

/// File offset where Hyper-V, qemu and vhdkit put the VHDX metadata region:
/// after a 1 MiB log.
pub const VHDX_METADATA_OFFSET: u64 = VHDX_LOG_OFFSET + vhdx::create::DEFAULT_LOG_SIZE as u64;

/// File offset of the VHD dynamic header in every writer we know: right
/// after the footer copy at offset 0.
pub const VHD_DYNAMIC_HEADER_OFFSET: u64 = vhd::footer::FOOTER_SIZE as u64;

/// Byte offset of the file format version in a VHD footer.
const VHD_FOOTER_VERSION_FIELD: usize = 12;

/// Byte offset of the disk type in a VHD footer.
const VHD_FOOTER_TYPE_FIELD: usize = 60;

/// Bytes read where a 4-byte signature is looked for, to check the fields
/// beside it.
const SHAPE_BYTES: usize = 72;

/// Byte offset of the version (1) in a VHDX header ([MS-VHDX] 2.2.2).
const VHDX_HEADER_VERSION_FIELD: usize = 66;

/// Byte offset of the entry count (at most 2047), followed by a reserved
/// zero field, in a VHDX region table header ([MS-VHDX] 2.2.3).
const VHDX_REGION_COUNT_FIELD: usize = 8;

/// Byte offset of the entry length (whole 4 KiB sectors) in a VHDX log
/// entry header ([MS-VHDX] 2.3.1.1).
const VHDX_LOG_LENGTH_FIELD: usize = 8;

/// Byte offset of the reserved (zero) field in a VHDX log entry header.
const VHDX_LOG_RESERVED_FIELD: usize = 28;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A recognised signature of a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    /// The format the signature belongs to.
    pub format: Format,
    /// What was found, for messages (e.g. "VHDX region table signature").
    pub what: &'static str,
    /// Byte offset of the signature in the file.
    pub offset: u64,
}

impl std::fmt::Display for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at offset {:#x}", self.what, self.offset)
    }
}

/// The name of a format as people write it ("VHDX", "raw").
pub fn format_name(format: Format) -> &'static str {
    match format {
        Format::Raw => "raw",
        Format::Vhd => "VHD",
        Format::Vhdx => "VHDX",
        Format::Evhd => "EVHD",
    }
}

/// "a" or "an" before the format's name.
fn article(format: Format) -> &'static str {
    if format == Format::Evhd { "an" } else { "a" }
}

/// Whether `storage` holds `magic` at `offset`.
fn has(storage: &dyn Storage, offset: u64, magic: &[u8]) -> bool {
    let mut buf = [0u8; 8];
    let buf = &mut buf[..magic.len()];
    storage.read_at(buf, offset).is_ok() && buf == magic
}

/// The primary signatures found (what the formats' probes accept), at most
/// one per format, in the order VHDX, EVHD, VHD.
fn primary(storage: &dyn Storage) -> Vec<Trace> {
    let mut found = Vec::new();
    let t = |format, what, offset| Trace {
        format,
        what,
        offset,
    };
    if vhdx::probe(storage) {
        found.push(t(
            Format::Vhdx,
            "VHDX file identifier",
            vhdx::file_identifier::FILE_IDENTIFIER_OFFSET,
        ));
    }
    if let Some(&o) = evhd::header::COPY_OFFSETS
        .iter()
        .find(|&&o| has(storage, o, &evhd::header::MAGIC))
    {
        found.push(t(Format::Evhd, "EVHD header magic", o));
    }
    if vhd::probe(storage) {
        let len = storage.len().unwrap_or(0);
        let end = [vhd::footer::FOOTER_SIZE as u64, vhd::LEGACY_FOOTER_SIZE]
            .into_iter()
            .filter_map(|back| len.checked_sub(back))
            .find(|&o| has(storage, o, &vhd::footer::FOOTER_COOKIE));
        found.push(t(Format::Vhd, "VHD footer cookie", end.unwrap_or(0)));
    }
    found
}

/// Every secondary signature found, in the order of the table above.
fn secondary(storage: &dyn Storage) -> Vec<Trace> {
    let mut found = Vec::new();
    let mut look_shaped = |format, what, offset, magic: &[u8], ok: &dyn Fn(&[u8]) -> bool| {
        let mut b = [0u8; SHAPE_BYTES];
        if storage.read_at(&mut b, offset).is_ok() && b.starts_with(magic) && ok(&b) {
            found.push(Trace {
                format,
                what,
                offset,
            });
        }
    };
    // The 4-byte VHDX signatures count with a plausible field beside them
    // (8 bytes or more in all), as the 8-byte ones do alone.
    for &o in &vhdx::header::HEADER_OFFSETS {
        look_shaped(
            Format::Vhdx,
            "VHDX header signature",
            o,
            &vhdx::header::SIGNATURE,
            &|b| le16(b, VHDX_HEADER_VERSION_FIELD) == vhdx::header::VERSION,
        );
    }
    for &o in &vhdx::region_table::REGION_TABLE_OFFSETS {
        look_shaped(
            Format::Vhdx,
            "VHDX region table signature",
            o,
            &vhdx::region_table::SIGNATURE,
            &|b| {
                le32(b, VHDX_REGION_COUNT_FIELD) <= vhdx::region_table::MAX_ENTRIES
                    && le32(b, VHDX_REGION_COUNT_FIELD + 4) == 0
            },
        );
    }
    look_shaped(
        Format::Vhdx,
        "VHDX log entry signature",
        VHDX_LOG_OFFSET,
        &vhdx::log::ENTRY_SIGNATURE,
        &|b| {
            let len = u64::from(le32(b, VHDX_LOG_LENGTH_FIELD));
            len != 0 && len % vhdx::log::LOG_SECTOR == 0 && le32(b, VHDX_LOG_RESERVED_FIELD) == 0
        },
    );
    let mut look = |format, what, offset, magic: &[u8]| {
        if has(storage, offset, magic) {
            found.push(Trace {
                format,
                what,
                offset,
            });
        }
    };
    look(
        Format::Vhdx,
        "VHDX metadata table signature",
        VHDX_METADATA_OFFSET,
        &vhdx::metadata::SIGNATURE,
    );
    look(
        Format::Evhd,
        "EVHD journal record magic",
        evhd::JOURNAL_OFFSET,
        &evhd::journal::MAGIC,
    );
    look(
        Format::Vhd,
        "VHD footer cookie",
        0,
        &vhd::footer::FOOTER_COOKIE,
    );
    look(
        Format::Vhd,
        "VHD dynamic header cookie",
        VHD_DYNAMIC_HEADER_OFFSET,
        &vhd::dynamic_header::HEADER_COOKIE,
    );
    if let Some(o) = vhd_footer_body(storage) {
        found.push(Trace {
            format: Format::Vhd,
            what: "VHD footer (version 1.0 and a disk type, cookie damaged)",
            offset: o,
        });
    }
    found
}

/// Offset of the last 512 bytes when they look like a VHD footer whose
/// cookie is damaged: the file format version 1.0 and a known disk type
/// (8 bytes that a raw disk's last sector, usually zeros or a GPT backup
/// header, does not hold). This is the only trace left of a fixed VHD with a
/// damaged cookie; a fixed VHD whose footer is zeroed has none and is raw.
fn vhd_footer_body(storage: &dyn Storage) -> Option<u64> {
    let size = vhd::footer::FOOTER_SIZE as u64;
    let at = storage.len().ok()?.checked_sub(size)?;
    let mut f = [0u8; vhd::footer::FOOTER_SIZE];
    storage.read_at(&mut f, at).ok()?;
    let word = |i: usize| u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
    (word(VHD_FOOTER_VERSION_FIELD) == vhd::footer::FILE_FORMAT_VERSION
        && vhd::footer::VhdType::from_code(word(VHD_FOOTER_TYPE_FIELD)).is_some())
    .then_some(at)
}

/// The signature that decides the format: the primary one if any, else the
/// first secondary one; `None` for a raw file.
pub fn trace(storage: &dyn Storage) -> Option<Trace> {
    primary(storage)
        .into_iter()
        .next()
        .or_else(|| secondary(storage).into_iter().next())
}

/// A signature of `format` in `storage`, if it has one.
pub fn trace_of(storage: &dyn Storage, format: Format) -> Option<Trace> {
    primary(storage)
        .into_iter()
        .chain(secondary(storage))
        .find(|t| t.format == format)
}

/// The format to open `storage` as: `forced` if given (an error naming what
/// the file holds when it has no trace of that format), else the detected one.
pub fn resolve(storage: &dyn Storage, forced: Option<Format>) -> Result<Format, Error> {
    let Some(want) = forced else {
        return Ok(trace(storage).map_or(Format::Raw, |t| t.format));
    };
    if want == Format::Raw || trace_of(storage, want).is_some() {
        return Ok(want);
    }
    let found = match trace(storage) {
        Some(t) => format!(
            "found {} {} ({} {} image)",
            article(t.format),
            t,
            article(t.format),
            format_name(t.format)
        ),
        None => "found no signature of VHD, VHDX or EVHD (a raw image: -f raw)".to_string(),
    };
    Err(Error::new(
        ErrorKind::InvalidArgument,
        format!("not {} {} image: {found}", article(want), format_name(want)),
    ))
}

/// An error from opening an image whose signature says `format`: damage
/// (a corrupt structure, a MAC that does not verify) is reported as a damaged
/// image of that format; other errors (a key or parent needed, an
/// unsupported feature, I/O) pass unchanged.
pub fn damaged(format: Format, e: Error) -> Error {
    match e.kind() {
        ErrorKind::Corrupt | ErrorKind::Authentication => match format {
            Format::Vhd => e.with_context("damaged VHD image"),
            Format::Vhdx => e.with_context("damaged VHDX image"),
            Format::Evhd => e.with_context("damaged EVHD image"),
            Format::Raw => e,
        },
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemStorage;

    /// 4 MiB of non-zero filler with `magic` at `offset` (from the end when
    /// negative).
    fn file_with(offset: i64, magic: &[u8]) -> MemStorage {
        let mut v = vec![0x5au8; 4 << 20];
        let at = if offset < 0 {
            v.len() - offset.unsigned_abs() as usize
        } else {
            offset as usize
        };
        v[at..at + magic.len()].copy_from_slice(magic);
        MemStorage::from_vec(v)
    }

    #[test]
    fn each_signature_alone_decides_its_format() {
        let mut head = [0u8; 72];
        head[..4].copy_from_slice(b"head");
        head[66] = 1;
        let mut regi = [0u8; 16];
        regi[..4].copy_from_slice(b"regi");
        regi[8] = 2;
        let mut loge = [0u8; 32];
        loge[..4].copy_from_slice(b"loge");
        loge[9] = 0x10; // 4096
        let cases: [(i64, &[u8], Format); 13] = [
            (0, b"vhdxfile", Format::Vhdx),
            (64 << 10, &head, Format::Vhdx),
            (128 << 10, &head, Format::Vhdx),
            (192 << 10, &regi, Format::Vhdx),
            (256 << 10, &regi, Format::Vhdx),
            (1 << 20, &loge, Format::Vhdx),
            (2 << 20, b"metadata", Format::Vhdx),
            (0, b"EVHDCRPT", Format::Evhd),
            (64 << 10, b"EVHDCRPT", Format::Evhd),
            (128 << 10, b"EVHDJRNL", Format::Evhd),
            (-512, b"conectix", Format::Vhd),
            (-511, b"conectix", Format::Vhd),
            (512, b"cxsparse", Format::Vhd),
        ];
        for (offset, magic, want) in cases {
            let s = file_with(offset, magic);
            assert_eq!(crate::detect(&s), want, "{magic:?} at {offset}");
            assert_eq!(resolve(&s, Some(want)).unwrap(), want);
            assert_eq!(resolve(&s, Some(Format::Raw)).unwrap(), Format::Raw);
            // One byte off (the other way at EOF-512: EOF-511 counts): no trace.
            let off = if offset == -512 { -513 } else { offset + 1 };
            let s = file_with(off, magic);
            assert_eq!(crate::detect(&s), Format::Raw, "{magic:?} at {off}");
        }
        // A 4-byte signature alone is not enough.
        for (offset, magic) in [
            (64 << 10, b"head"),
            (192 << 10, b"regi"),
            (1 << 20, b"loge"),
        ] {
            assert_eq!(crate::detect(&file_with(offset, magic)), Format::Raw);
        }
        // The cookie at 0 of any type; a footer body at the end.
        assert_eq!(crate::detect(&file_with(0, b"conectix")), Format::Vhd);
        let mut body = [0u8; 64];
        body[12..16].copy_from_slice(&vhd::footer::FILE_FORMAT_VERSION.to_be_bytes());
        body[60..64].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(crate::detect(&file_with(-512, &body)), Format::Vhd);
        body[60..64].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(crate::detect(&file_with(-512, &body)), Format::Raw);
    }

    #[test]
    fn a_forced_format_needs_a_signature_of_it() {
        let raw = MemStorage::from_vec(vec![0u8; 1 << 20]);
        assert_eq!(crate::detect(&raw), Format::Raw);
        let e = resolve(&raw, Some(Format::Vhdx)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.to_string()
                .contains("not a VHDX image: found no signature")
        );
        let s = file_with(128 << 10, b"EVHDJRNL");
        let e = resolve(&s, Some(Format::Vhd)).unwrap_err();
        assert!(
            e.to_string()
                .contains("not a VHD image: found an EVHD journal record magic at offset 0x20000 (an EVHD image)"),
            "{e}"
        );
        // Primary beats secondary; the forced format picks its own trace.
        let mut v = vec![0u8; 4 << 20];
        v[..8].copy_from_slice(b"vhdxfile");
        let end = v.len() - 512;
        v[end..end + 8].copy_from_slice(b"conectix");
        let s = MemStorage::from_vec(v);
        assert_eq!(crate::detect(&s), Format::Vhdx);
        assert_eq!(resolve(&s, Some(Format::Vhd)).unwrap(), Format::Vhd);
    }

    #[test]
    fn damage_is_named_by_format_other_errors_pass() {
        let e = damaged(Format::Vhdx, Error::corrupt("VHDX header", 0x10000, "bad"));
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(e.structure(), Some("VHDX header"));
        assert_eq!(
            e.to_string(),
            "damaged VHDX image: VHDX header at offset 0x10000: bad"
        );
        let e = damaged(Format::Evhd, Error::new(ErrorKind::KeyRequired, "key"));
        assert_eq!(e.to_string(), "key");
        let e = damaged(Format::Raw, Error::corrupt("x", 0, "y"));
        assert!(e.context().is_none());
    }
}
