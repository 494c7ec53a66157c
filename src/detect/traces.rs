//! The signatures of each format that detection looks for, and the
//! fields beside them that make a damaged one still count.

use super::Trace;
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

/// Byte offset of the reserved (zero) u16 in a VHDX metadata table header
/// ([MS-VHDX] 2.6.1.1).
const VHDX_METADATA_RESERVED_FIELD: usize = 8;

/// Byte offset of the entry count (at most 2047) in a VHDX metadata table
/// header.
const VHDX_METADATA_COUNT_FIELD: usize = 10;

/// Byte offset of the second reserved (zero) field, 20 bytes, in a VHDX
/// metadata table header.
const VHDX_METADATA_RESERVED2_FIELD: usize = 12;

/// End of the VHDX metadata table header (32 bytes).
const VHDX_METADATA_HEADER_END: usize = vhdx::metadata::HEADER_SIZE;

/// End of the first region detection reads: the last window it looks at
/// from the start of the file is the VHDX metadata table header at 2 MiB
/// (`SHAPE_BYTES` bytes read there). A write below this offset may change
/// what detection finds.
pub const DETECTION_HEAD_END: u64 = VHDX_METADATA_OFFSET + SHAPE_BYTES as u64;

/// Length of the region at the end of the file detection reads (the VHD
/// footer at EOF-512 or EOF-511, rounded up to 1 KiB).
pub const DETECTION_TAIL_LEN: u64 = 1024;

/// File offset of the header copy inside the EVHD journal record (after the
/// record's 4 KiB header); every EVHD has a record from its creation.
const EVHD_JOURNAL_HEADER_OFFSET: u64 = evhd::JOURNAL_OFFSET + evhd::journal::RECORD_HEADER as u64;

/// Byte offset of the format version (1 or 2) in an EVHD header copy.
const EVHD_HEADER_VERSION_FIELD: usize = 8;

/// Byte offset of the table offset in an EVHD header copy.
const EVHD_HEADER_TABLE_OFFSET_FIELD: usize = 60;

/// Byte offset of the data offset (whole MiB) in an EVHD header copy.
const EVHD_HEADER_DATA_OFFSET_FIELD: usize = 76;

/// Byte offset of the journal offset (always 128 KiB) in an EVHD header copy.
const EVHD_HEADER_JOURNAL_OFFSET_FIELD: usize = 140;

/// Byte offset of the journal length (whole MiB) in an EVHD header copy.
const EVHD_HEADER_JOURNAL_LEN_FIELD: usize = 148;

/// Byte offset of the zero field after the epoch key count in an EVHD
/// header copy, and its length.
const EVHD_HEADER_ZERO_FIELD: usize = 158;
const EVHD_HEADER_ZERO_LEN: usize = 6;

/// Byte offset of the record version (1) in an EVHD journal record.
const EVHD_JOURNAL_VERSION_FIELD: usize = 8;

/// Byte offset of the page count in an EVHD journal record.
const EVHD_JOURNAL_PAGES_FIELD: usize = 40;

/// Byte offset of the record length in an EVHD journal record.
const EVHD_JOURNAL_LENGTH_FIELD: usize = 48;

/// Byte offset of the zero area in an EVHD journal record (looked at up to
/// [`SHAPE_BYTES`]).
const EVHD_JOURNAL_ZERO_FIELD: usize = 56;

/// Upper bound on the page count of a plausible journal record, so that its
/// record length cannot overflow (2^32 pages describe a 2^32 * 84 block disk).
const EVHD_JOURNAL_MAX_PAGES: u64 = 1 << 32;

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A trace of `format` when `storage` holds `magic` at `offset`.
fn magic_trace(
    storage: &dyn Storage,
    format: Format,
    what: &'static str,
    offset: u64,
    magic: &[u8],
) -> Option<Trace> {
    has(storage, offset, magic).then_some(Trace {
        format,
        what,
        offset,
    })
}

/// Whether `storage` holds `magic` at `offset`.
fn has(storage: &dyn Storage, offset: u64, magic: &[u8]) -> bool {
    let mut buf = [0u8; 8];
    let buf = &mut buf[..magic.len()];
    storage.read_at(buf, offset).is_ok() && buf == magic
}

/// The primary signatures found (what the formats' probes accept), at most
/// one per format, in the order VHDX, EVHD, VHD.
pub(super) fn primary(storage: &dyn Storage) -> Vec<Trace> {
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
pub(super) fn secondary(storage: &dyn Storage) -> Vec<Trace> {
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
    // The 8-byte metadata signature is an ordinary word, so it counts only
    // with its header's fields ([MS-VHDX] 2.6.1.1): a zero reserved field, at
    // most 2047 entries and 20 more zero reserved bytes.
    look_shaped(
        Format::Vhdx,
        "VHDX metadata table signature",
        VHDX_METADATA_OFFSET,
        &vhdx::metadata::SIGNATURE,
        &|b| {
            le16(b, VHDX_METADATA_RESERVED_FIELD) == 0
                && le16(b, VHDX_METADATA_COUNT_FIELD) <= vhdx::metadata::MAX_ENTRIES
                && b[VHDX_METADATA_RESERVED2_FIELD..VHDX_METADATA_HEADER_END]
                    .iter()
                    .all(|&x| x == 0)
        },
    );
    found.extend(magic_trace(
        storage,
        Format::Evhd,
        "EVHD journal record magic",
        evhd::JOURNAL_OFFSET,
        &evhd::journal::MAGIC,
    ));
    found.extend(magic_trace(
        storage,
        Format::Evhd,
        "EVHD header magic of the header copy in the journal record",
        EVHD_JOURNAL_HEADER_OFFSET,
        &evhd::header::MAGIC,
    ));
    for &o in &evhd::header::COPY_OFFSETS {
        if evhd_header_fields(storage, o) {
            found.push(Trace {
                format: Format::Evhd,
                what: "EVHD header copy (version, journal and table fields; magic damaged)",
                offset: o,
            });
        }
    }
    if evhd_journal_fields(storage) {
        found.push(Trace {
            format: Format::Evhd,
            what: "EVHD journal record (version and length fields; magic damaged)",
            offset: evhd::JOURNAL_OFFSET,
        });
    }
    found.extend(magic_trace(
        storage,
        Format::Vhd,
        "VHD footer cookie",
        0,
        &vhd::footer::FOOTER_COOKIE,
    ));
    found.extend(magic_trace(
        storage,
        Format::Vhd,
        "VHD dynamic header cookie",
        VHD_DYNAMIC_HEADER_OFFSET,
        &vhd::dynamic_header::HEADER_COOKIE,
    ));
    if let Some(o) = vhd_footer_body(storage) {
        found.push(Trace {
            format: Format::Vhd,
            what: "VHD footer (version 1.0 and a disk type, cookie damaged)",
            offset: o,
        });
    }
    found
}

/// Offset of the last 512 bytes (or, in a legacy file, the last 511) when
/// they look like a VHD footer whose cookie is damaged: the file format
/// version 1.0 and a known disk type (8 bytes that a raw disk's last sector,
/// usually zeros or a GPT backup header, does not hold). This is the only
/// trace left of a fixed VHD with a damaged cookie; a fixed VHD whose footer
/// is zeroed has none and is raw.
fn vhd_footer_body(storage: &dyn Storage) -> Option<u64> {
    let len = storage.len().ok()?;
    [vhd::footer::FOOTER_SIZE as u64, vhd::LEGACY_FOOTER_SIZE]
        .into_iter()
        .filter_map(|back| len.checked_sub(back))
        .find(|&at| {
            let mut f = [0u8; VHD_FOOTER_TYPE_FIELD + 4];
            storage.read_at(&mut f, at).is_ok() && {
                let word = |i: usize| u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
                word(VHD_FOOTER_VERSION_FIELD) == vhd::footer::FILE_FORMAT_VERSION
                    && vhd::footer::VhdType::from_code(word(VHD_FOOTER_TYPE_FIELD)).is_some()
            }
        })
}

/// Whether the EVHD header copy at `offset` is recognisable by its fields
/// although its magic is damaged: a format version vhdkit writes (1 or 2),
/// the journal at its fixed offset with a length in whole MiB, the table
/// after the journal, the data in whole MiB after the table, and the zero
/// field beside the epoch key count. Together that is over 40 bytes that
/// must agree, which a raw disk's sector does not hold by chance.
fn evhd_header_fields(storage: &dyn Storage, offset: u64) -> bool {
    let mut b = [0u8; EVHD_HEADER_ZERO_FIELD + EVHD_HEADER_ZERO_LEN];
    if storage.read_at(&mut b, offset).is_err() {
        return false;
    }
    let version = le32(&b, EVHD_HEADER_VERSION_FIELD);
    let journal_offset = le64(&b, EVHD_HEADER_JOURNAL_OFFSET_FIELD);
    let journal_len = le64(&b, EVHD_HEADER_JOURNAL_LEN_FIELD);
    let table_offset = le64(&b, EVHD_HEADER_TABLE_OFFSET_FIELD);
    let data_offset = le64(&b, EVHD_HEADER_DATA_OFFSET_FIELD);
    let align = evhd::journal::REGION_ALIGN;
    matches!(
        version,
        evhd::header::VERSION_UNSIGNED | evhd::header::VERSION_SIGNED
    ) && journal_offset == evhd::JOURNAL_OFFSET
        && journal_len != 0
        && journal_len.is_multiple_of(align)
        && journal_offset
            .checked_add(journal_len)
            .is_some_and(|end| end <= table_offset)
        && data_offset > table_offset
        && data_offset.is_multiple_of(evhd::DATA_ALIGN)
        && b[EVHD_HEADER_ZERO_FIELD..].iter().all(|&x| x == 0)
}

/// Whether the journal record at the journal offset is recognisable by its
/// fields although its magic is damaged: version 1, a page count whose
/// record length is the one stored, and the first bytes of the zero area.
fn evhd_journal_fields(storage: &dyn Storage) -> bool {
    let mut b = [0u8; SHAPE_BYTES];
    if storage.read_at(&mut b, evhd::JOURNAL_OFFSET).is_err() {
        return false;
    }
    let pages = le64(&b, EVHD_JOURNAL_PAGES_FIELD);
    let len = le64(&b, EVHD_JOURNAL_LENGTH_FIELD);
    le32(&b, EVHD_JOURNAL_VERSION_FIELD) == evhd::journal::VERSION
        && pages <= EVHD_JOURNAL_MAX_PAGES
        && len == evhd::journal::record_len(pages)
        && b[EVHD_JOURNAL_ZERO_FIELD..].iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::file_with;
    use crate::detect::{resolve, trace};
    use crate::io::MemStorage;

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
        let mut meta = [0u8; 32];
        meta[..8].copy_from_slice(b"metadata");
        meta[10] = 5;
        let cases: [(i64, &[u8], Format); 13] = [
            (0, b"vhdxfile", Format::Vhdx),
            (64 << 10, &head, Format::Vhdx),
            (128 << 10, &head, Format::Vhdx),
            (192 << 10, &regi, Format::Vhdx),
            (256 << 10, &regi, Format::Vhdx),
            (1 << 20, &loge, Format::Vhdx),
            (2 << 20, &meta, Format::Vhdx),
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
        // A 4-byte signature alone is not enough, nor `metadata` alone.
        for (offset, magic) in [
            (64 << 10, &b"head"[..]),
            (192 << 10, b"regi"),
            (1 << 20, b"loge"),
            (2 << 20, b"metadata"),
            (2 << 20, b"metadata:\n  name: x\n"),
        ] {
            assert_eq!(crate::detect(&file_with(offset, magic)), Format::Raw);
        }
        // Each field of the metadata table header is needed.
        for (at, value) in [(8usize, 1u8), (11, 0x08), (12, 1), (31, 1)] {
            let mut bad = meta;
            bad[at] = value;
            assert_eq!(
                crate::detect(&file_with(2 << 20, &bad)),
                Format::Raw,
                "byte {at} = {value:#x}"
            );
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

    /// The fields of an EVHD header copy as vhdkit writes them (64 KiB
    /// blocks, one table page), without the magic.
    fn evhd_header_fields_only() -> [u8; 168] {
        let mut h = [0u8; 168];
        h[8..12].copy_from_slice(&2u32.to_le_bytes());
        h[60..68].copy_from_slice(&((128u64 << 10) + (1 << 20)).to_le_bytes());
        h[76..84].copy_from_slice(&(3u64 << 20).to_le_bytes());
        h[140..148].copy_from_slice(&(128u64 << 10).to_le_bytes());
        h[148..156].copy_from_slice(&(1u64 << 20).to_le_bytes());
        h[156] = 1;
        h
    }

    #[test]
    fn evhd_structures_are_recognised_by_their_fields_without_magic() {
        let h = evhd_header_fields_only();
        for at in [0i64, 64 << 10] {
            let s = file_with(at, &h);
            assert_eq!(crate::detect(&s), Format::Evhd, "header fields at {at}");
            let t = trace(&s).unwrap();
            assert_eq!(t.offset, at as u64);
            assert!(t.what.contains("magic damaged"), "{t}");
            // Not one byte off.
            assert_eq!(crate::detect(&file_with(at + 8, &h)), Format::Raw);
        }
        // Each agreeing field is needed.
        for (field, value) in [
            (8usize, 3u64),          // version
            (140, 256 << 10),        // journal offset
            (148, (1 << 20) + 4096), // journal length not in whole MiB
            (148, 0),                // no journal
            (60, 64 << 10),          // table before the journal's end
            (76, (3 << 20) + 512),   // data not in whole MiB
            (158, 1),                // reserved field not zero
        ] {
            let mut bad = h;
            let width = if field == 8 {
                4
            } else if field == 158 {
                1
            } else {
                8
            };
            bad[field..field + width].copy_from_slice(&value.to_le_bytes()[..width]);
            assert_eq!(
                crate::detect(&file_with(0, &bad)),
                Format::Raw,
                "field {field} = {value:#x}"
            );
        }
        // The journal record's fields, and the header copy inside it.
        let mut j = [0u8; 72];
        j[8..12].copy_from_slice(&1u32.to_le_bytes());
        j[40..48].copy_from_slice(&3u64.to_le_bytes());
        j[48..56].copy_from_slice(&crate::evhd::journal::record_len(3).to_le_bytes());
        let s = file_with(128 << 10, &j);
        assert_eq!(crate::detect(&s), Format::Evhd);
        assert_eq!(trace(&s).unwrap().offset, 128 << 10);
        let mut bad = j;
        bad[48] ^= 8;
        assert_eq!(crate::detect(&file_with(128 << 10, &bad)), Format::Raw);
        let mut bad = j;
        bad[64] = 1;
        assert_eq!(crate::detect(&file_with(128 << 10, &bad)), Format::Raw);
        let mut bad = j;
        bad[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(crate::detect(&file_with(128 << 10, &bad)), Format::Raw);
        let s = file_with(132 << 10, b"EVHDCRPT");
        assert_eq!(crate::detect(&s), Format::Evhd);
        assert_eq!(trace(&s).unwrap().offset, 132 << 10);
        // Zeros (a fresh raw disk) are raw.
        assert_eq!(
            crate::detect(&MemStorage::from_vec(vec![0u8; 4 << 20])),
            Format::Raw
        );
    }

    #[test]
    fn a_legacy_footer_with_a_damaged_cookie_is_a_vhd() {
        // A 511-byte footer at the end of a file of 512 n + 511 bytes.
        let mut v = vec![0x5au8; (4 << 20) + 511];
        let at = v.len() - 511;
        v[at..].fill(0);
        v[at + 12..at + 16].copy_from_slice(&vhd::footer::FILE_FORMAT_VERSION.to_be_bytes());
        v[at + 60..at + 64].copy_from_slice(&2u32.to_be_bytes());
        let t = trace(&MemStorage::from_vec(v.clone())).unwrap();
        assert_eq!((t.format, t.offset), (Format::Vhd, at as u64));
        v[at + 60..at + 64].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(crate::detect(&MemStorage::from_vec(v)), Format::Raw);
    }
}
