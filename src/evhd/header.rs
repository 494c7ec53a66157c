//! The container header: two 64 KiB copies at offsets 0 and 64 KiB, each
//! with a CRC-32C (to choose a copy before the key is known) and an
//! HMAC-SHA256 under `K_hdr` (to trust it once the key is known). The valid
//! copy with the higher sequence number is current; a flush writes the
//! other copy, so a torn header write leaves the previous one intact.
//! Version 2 copies also carry an RSA-PSS signature over the MAC by one of
//! the recipients' keys ([`SIGNER_OFFSET`], [`SIGNATURE_OFFSET`],
//! [`signature`]).
//!
//! Layout of a copy (little-endian): see `docs/evhd-format.md`, which this
//! module implements field by field.

use uuid::Uuid;

use super::cipher::{CipherId, KEY_LEN, MasterKey, NONCE_LEN, TAG_LEN, ct_eq, hmac_sha256};
use super::keys::{Fingerprint, MAX_BITS, MIN_BITS, PrivateKey};
use super::recipient::Stanza;
use super::signature;
use crate::error::{Error, Result};
use crate::report::{DiskType, Format};

/// Signature at byte 0 of each header copy.
pub const MAGIC: [u8; 8] = *b"EVHDCRPT";
/// The newest format version this library reads and writes.
pub const VERSION: u32 = VERSION_SIGNED;
/// Version of an unsigned header: no signer record, stanzas may run up
/// to the MAC.
pub const VERSION_UNSIGNED: u32 = 1;
/// Version of a signed header: signer record at [`SIGNER_OFFSET`],
/// signature at [`SIGNATURE_OFFSET`] (see [`signature`]).
pub const VERSION_SIGNED: u32 = 2;
/// Bytes of one header copy.
pub const HEADER_SIZE: usize = 64 << 10;
/// File offsets of copies A and B.
pub const COPY_OFFSETS: [u64; 2] = [0, HEADER_SIZE as u64];
/// Offset of the CRC-32C field.
pub const CRC_OFFSET: usize = 12;
/// Offset of the HMAC: the last 32 bytes of the copy.
pub const MAC_OFFSET: usize = HEADER_SIZE - 32;
/// Offset of the epoch key records.
pub const EPOCH_KEYS_OFFSET: usize = 256;
/// Bytes of one epoch key record.
pub const EPOCH_KEY_RECORD: usize = 72;
/// Most epoch keys a header holds: the current one, the ones blocks still
/// use after an epoch change, and the old ones during a rekey.
pub const MAX_EPOCH_KEYS: usize = 10;
/// Offset of the recipient stanzas.
pub const RECIPIENTS_OFFSET: usize = 1024;
/// Offset of the signer record of a signed (version 2) header: the
/// signer's key fingerprint (32 bytes), the signature length (u16) and the
/// signature scheme (u16), in bytes that are zero in version 1.
pub const SIGNER_OFFSET: usize = 196;
/// Bytes of the signer record; the rest up to 256 stays zero.
pub const SIGNER_RECORD: usize = 36;
/// Largest signature: as long as the largest modulus.
pub const MAX_SIGNATURE: usize = MAX_BITS / 8;
/// Smallest signature: as long as the smallest modulus.
pub const MIN_SIGNATURE: usize = MIN_BITS / 8;
/// Offset of the signature area of a signed header, right before the MAC:
/// the signature, then zeros. It is zeroed for the MAC (the signature is
/// over the MAC) and covered by the CRC.
pub const SIGNATURE_OFFSET: usize = MAC_OFFSET - MAX_SIGNATURE;
/// Most recipients: keeps unwrapping attempts and the header size bounded.
pub const MAX_RECIPIENTS: usize = 32;
/// Smallest and largest block shift: 4 KiB to 1 MiB blocks.
pub const BLOCK_SHIFTS: std::ops::RangeInclusive<u8> = 12..=20;
/// Flag: a rekey started and has not re-encrypted every block yet.
pub const FLAG_REKEYING: u16 = 1 << 1;
/// Flags this version knows.
pub const KNOWN_FLAGS: u16 = FLAG_REKEYING;
/// Structure name in errors.
pub const STRUCTURE: &str = "EVHD header";

/// What the container was converted from, so that decrypting restores the
/// same kind of image by default (header bytes 164..228).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    /// Source format, `None` when created directly.
    pub format: Option<Format>,
    /// Source disk type.
    pub disk_type: Option<DiskType>,
    /// Source block size in bytes (0 when not sparse).
    pub block_size: u32,
    /// Source logical sector size.
    pub logical_sector_size: u32,
    /// Source physical sector size.
    pub physical_sector_size: u32,
    /// Source disk identifier (VHD unique id, VHDX disk id).
    pub disk_id: Option<Uuid>,
}

fn format_code(f: Option<Format>) -> u8 {
    match f {
        None => 0,
        Some(Format::Raw) => 1,
        Some(Format::Vhd) => 2,
        Some(Format::Vhdx) => 3,
        Some(Format::Evhd) => 4,
    }
}

fn format_from(c: u8) -> Option<Option<Format>> {
    Some(match c {
        0 => None,
        1 => Some(Format::Raw),
        2 => Some(Format::Vhd),
        3 => Some(Format::Vhdx),
        4 => Some(Format::Evhd),
        _ => return None,
    })
}

fn type_code(t: Option<DiskType>) -> u8 {
    match t {
        None => 0,
        Some(DiskType::Fixed) => 1,
        Some(DiskType::Dynamic) => 2,
        Some(DiskType::Differencing) => 3,
    }
}

fn type_from(c: u8) -> Option<Option<DiskType>> {
    Some(match c {
        0 => None,
        1 => Some(DiskType::Fixed),
        2 => Some(DiskType::Dynamic),
        3 => Some(DiskType::Differencing),
        _ => return None,
    })
}

/// One epoch's data key, wrapped under `K_wrap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochKey {
    /// The epoch number.
    pub epoch: u16,
    /// AES-256-GCM nonce of the wrapping.
    pub nonce: [u8; NONCE_LEN],
    /// Wrapped key and tag.
    pub wrapped: [u8; KEY_LEN + TAG_LEN],
}

/// The signer record and signature of a signed (version 2) header copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerRecord {
    /// Fingerprint of the signing key: one of the recipients.
    pub fingerprint: Fingerprint,
    /// RSA-PSS signature, as long as the signer's modulus (see [`signature`]).
    pub signature: Vec<u8>,
}

/// One header copy, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Sequence number; the valid copy with the higher one wins.
    pub sequence: u64,
    /// Random container identity, salt of every key derivation.
    pub container_id: [u8; 16],
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size (512 or 4096).
    pub physical_sector_size: u32,
    /// log2 of the block size.
    pub block_shift: u8,
    /// Data block cipher.
    pub cipher: CipherId,
    /// [`FLAG_REKEYING`].
    pub flags: u16,
    /// File offset of the block table.
    pub table_offset: u64,
    /// Pages of the block table.
    pub table_pages: u64,
    /// File offset of slot 1.
    pub data_offset: u64,
    /// Slots in the data area.
    pub slot_count: u64,
    /// The epoch new writes use.
    pub epoch: u16,
    /// SHA-256 over all page MACs.
    pub table_root: [u8; 32],
    /// Block writes under the current epoch.
    pub epoch_writes: u64,
    /// File offset of the journal.
    pub journal_offset: u64,
    /// Bytes of the journal region.
    pub journal_len: u64,
    /// Origin record.
    pub origin: Origin,
    /// Wrapped data keys of the live epochs.
    pub epoch_keys: Vec<EpochKey>,
    /// Recipients of the master key.
    pub recipients: Vec<Stanza>,
    /// Who signed this copy (`None`: an unsigned version 1 copy). Written
    /// by [`Header::encode_signed`]; [`Header::encode`] writes unsigned.
    pub signer: Option<SignerRecord>,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// CRC-32C of a copy with its CRC field zeroed.
pub fn compute_crc(buf: &[u8]) -> u32 {
    let c = crc32c::crc32c(&buf[..CRC_OFFSET]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &buf[CRC_OFFSET + 4..])
}

/// HMAC-SHA256 under `K_hdr` of bytes 0..65504 with the CRC field zeroed
/// and, in a signed (version 2) copy, the signature area zeroed.
pub fn compute_mac(buf: &[u8], mk: &MasterKey) -> [u8; 32] {
    let signed = u32_at(buf, 8) == VERSION_SIGNED;
    let end = if signed { SIGNATURE_OFFSET } else { MAC_OFFSET };
    let zeros = [0u8; MAX_SIGNATURE];
    hmac_sha256(
        &mk.header_mac,
        &[
            &buf[..CRC_OFFSET],
            &[0u8; 4],
            &buf[CRC_OFFSET + 4..end],
            if signed { &zeros[..] } else { &[] },
        ],
    )
}

/// Whether the HMAC of `buf` verifies under `mk`.
pub fn verify_mac(buf: &[u8], mk: &MasterKey) -> bool {
    ct_eq(&compute_mac(buf, mk), &buf[MAC_OFFSET..])
}

impl Header {
    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        1 << self.block_shift
    }

    /// Number of blocks of the virtual disk.
    pub fn blocks(&self) -> u64 {
        self.virtual_size.div_ceil(self.block_size())
    }

    /// The container id as a UUID (for display).
    pub fn container_uuid(&self) -> Uuid {
        Uuid::from_bytes(self.container_id)
    }

    /// File offset of data slot `slot`, or `None` unless `1 <= slot <=
    /// slot_count` (a slot number from the table is file data: it is
    /// checked before any arithmetic with it).
    pub fn slot_offset(&self, slot: u64) -> Option<u64> {
        if slot == 0 || slot > self.slot_count {
            return None;
        }
        (slot - 1)
            .checked_mul(self.block_size())
            .and_then(|o| self.data_offset.checked_add(o))
    }

    /// Encode an unsigned (version 1) copy, MAC'd under `mk` and
    /// checksummed. `self.signer` is ignored.
    pub fn encode(&self, mk: &MasterKey) -> Result<Vec<u8>> {
        let mut b = self.encode_fields(VERSION_UNSIGNED, MAC_OFFSET)?;
        let mac = compute_mac(&b, mk);
        b[MAC_OFFSET..].copy_from_slice(&mac);
        let crc = compute_crc(&b);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(b)
    }

    /// Encode a signed (version 2) copy: MAC'd under `mk`, the MAC signed
    /// by `key` (which must be one of the recipients), checksummed. Returns
    /// the bytes and the signer record they hold.
    pub fn encode_signed(
        &self,
        mk: &MasterKey,
        key: &PrivateKey,
    ) -> Result<(Vec<u8>, SignerRecord)> {
        let fp = key.fingerprint();
        if !self.recipients.iter().any(|s| s.key.fingerprint() == fp) {
            return Err(Error::invalid_argument(format!(
                "key {} signs this header but is not one of its recipients",
                fp.short()
            )));
        }
        let len = key.public().modulus_len();
        if !(MIN_SIGNATURE..=MAX_SIGNATURE).contains(&len) {
            return Err(Error::invalid_argument(format!(
                "a signature of {len} bytes; expected {MIN_SIGNATURE} to {MAX_SIGNATURE}"
            )));
        }
        let mut b = self.encode_fields(VERSION_SIGNED, SIGNATURE_OFFSET)?;
        b[SIGNER_OFFSET..SIGNER_OFFSET + 32].copy_from_slice(&fp.0);
        b[SIGNER_OFFSET + 32..SIGNER_OFFSET + 34].copy_from_slice(&(len as u16).to_le_bytes());
        b[SIGNER_OFFSET + 34..SIGNER_OFFSET + 36]
            .copy_from_slice(&signature::SCHEME_RSA_PSS_SHA256.to_le_bytes());
        let mac = compute_mac(&b, mk);
        b[MAC_OFFSET..].copy_from_slice(&mac);
        let msg = signature::message(&self.container_id, self.sequence, &fp, &mac);
        let sig = key.sign_pss(&msg)?;
        if sig.len() != len {
            return Err(Error::invalid_argument(format!(
                "RSA-PSS signature of {} bytes; the key's modulus has {len}",
                sig.len()
            )));
        }
        b[SIGNATURE_OFFSET..SIGNATURE_OFFSET + len].copy_from_slice(&sig);
        let crc = compute_crc(&b);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        Ok((
            b,
            SignerRecord {
                fingerprint: fp,
                signature: sig,
            },
        ))
    }

    /// The fields and stanzas of a copy of `version`, the stanzas ending
    /// by `stanzas_end`; no MAC, signature or CRC yet.
    fn encode_fields(&self, version: u32, stanzas_end: usize) -> Result<Vec<u8>> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        b[24..40].copy_from_slice(&self.container_id);
        b[40..48].copy_from_slice(&self.virtual_size.to_le_bytes());
        b[48..52].copy_from_slice(&self.logical_sector_size.to_le_bytes());
        b[52..56].copy_from_slice(&self.physical_sector_size.to_le_bytes());
        b[56] = self.block_shift;
        b[57] = self.cipher.id();
        b[58..60].copy_from_slice(&self.flags.to_le_bytes());
        b[60..68].copy_from_slice(&self.table_offset.to_le_bytes());
        b[68..76].copy_from_slice(&self.table_pages.to_le_bytes());
        b[76..84].copy_from_slice(&self.data_offset.to_le_bytes());
        b[84..92].copy_from_slice(&self.slot_count.to_le_bytes());
        b[92..94].copy_from_slice(&self.epoch.to_le_bytes());
        b[94..96].copy_from_slice(&(self.recipients.len() as u16).to_le_bytes());
        b[100..132].copy_from_slice(&self.table_root);
        b[132..140].copy_from_slice(&self.epoch_writes.to_le_bytes());
        b[140..148].copy_from_slice(&self.journal_offset.to_le_bytes());
        b[148..156].copy_from_slice(&self.journal_len.to_le_bytes());
        b[156..158].copy_from_slice(&(self.epoch_keys.len() as u16).to_le_bytes());
        let o = &self.origin;
        b[164] = format_code(o.format);
        b[165] = type_code(o.disk_type);
        b[168..172].copy_from_slice(&o.block_size.to_le_bytes());
        b[172..176].copy_from_slice(&o.logical_sector_size.to_le_bytes());
        b[176..180].copy_from_slice(&o.physical_sector_size.to_le_bytes());
        if let Some(id) = o.disk_id {
            b[180..196].copy_from_slice(id.as_bytes());
        }
        if self.epoch_keys.len() > MAX_EPOCH_KEYS {
            return Err(Error::invalid_argument(format!(
                "{} epoch keys; a header holds at most {MAX_EPOCH_KEYS}",
                self.epoch_keys.len()
            )));
        }
        for (i, k) in self.epoch_keys.iter().enumerate() {
            let p = EPOCH_KEYS_OFFSET + i * EPOCH_KEY_RECORD;
            b[p..p + 2].copy_from_slice(&k.epoch.to_le_bytes());
            b[p + 8..p + 20].copy_from_slice(&k.nonce);
            b[p + 20..p + 68].copy_from_slice(&k.wrapped);
        }
        if self.recipients.len() > MAX_RECIPIENTS {
            return Err(Error::invalid_argument(format!(
                "{} recipients; a header holds at most {MAX_RECIPIENTS}",
                self.recipients.len()
            )));
        }
        let mut stanzas = Vec::new();
        for s in &self.recipients {
            s.encode(&mut stanzas);
        }
        if stanzas.len() > stanzas_end - RECIPIENTS_OFFSET {
            return Err(Error::invalid_argument(format!(
                "recipient stanzas take {} bytes; the header has room for {}{}",
                stanzas.len(),
                stanzas_end - RECIPIENTS_OFFSET,
                if version == VERSION_SIGNED {
                    " beside the signature (remove a recipient)"
                } else {
                    ""
                }
            )));
        }
        b[96..100].copy_from_slice(&(stanzas.len() as u32).to_le_bytes());
        b[RECIPIENTS_OFFSET..RECIPIENTS_OFFSET + stanzas.len()].copy_from_slice(&stanzas);
        Ok(b)
    }

    /// Decode a copy read from file offset `at`, checking magic, version,
    /// CRC and every field's range (not the MAC: that needs the key).
    pub fn decode(b: &[u8], at: u64, file_len: u64) -> Result<Header> {
        let bad = |o: usize, msg: String| Error::corrupt(STRUCTURE, at + o as u64, msg);
        if b.len() != HEADER_SIZE {
            return Err(bad(
                0,
                format!("{} bytes; a header copy has {HEADER_SIZE}", b.len()),
            ));
        }
        if b[0..8] != MAGIC {
            return Err(bad(
                0,
                format!("signature {:02x?}; expected \"EVHDCRPT\"", &b[0..8]),
            ));
        }
        let version = u32_at(b, 8);
        if version != VERSION_UNSIGNED && version != VERSION_SIGNED {
            return Err(Error::unsupported(
                STRUCTURE,
                at + 8,
                format!(
                    "format version {version}; this library reads versions {VERSION_UNSIGNED} and {VERSION_SIGNED}"
                ),
            ));
        }
        let stored = u32_at(b, CRC_OFFSET);
        let computed = compute_crc(b);
        if stored != computed {
            return Err(bad(
                CRC_OFFSET,
                format!("CRC-32C stored {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        let block_shift = b[56];
        if !BLOCK_SHIFTS.contains(&block_shift) {
            return Err(bad(
                56,
                format!("block shift {block_shift}; expected 12 to 20"),
            ));
        }
        let cipher = CipherId::from_id(b[57]).ok_or_else(|| {
            Error::unsupported(
                STRUCTURE,
                at + 57,
                format!("cipher id {}; expected 1 or 2", b[57]),
            )
        })?;
        let flags = u16_at(b, 58);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::unsupported(
                STRUCTURE,
                at + 58,
                format!("unknown flags {flags:#06x}"),
            ));
        }
        let logical = u32_at(b, 48);
        let physical = u32_at(b, 52);
        for (o, v) in [(48, logical), (52, physical)] {
            if v != 512 && v != 4096 {
                return Err(bad(o, format!("sector size {v}; expected 512 or 4096")));
            }
        }
        let h = Header {
            sequence: u64_at(b, 16),
            container_id: b[24..40].try_into().expect("16 bytes"),
            virtual_size: u64_at(b, 40),
            logical_sector_size: logical,
            physical_sector_size: physical,
            block_shift,
            cipher,
            flags,
            table_offset: u64_at(b, 60),
            table_pages: u64_at(b, 68),
            data_offset: u64_at(b, 76),
            slot_count: u64_at(b, 84),
            epoch: u16_at(b, 92),
            table_root: b[100..132].try_into().expect("32 bytes"),
            epoch_writes: u64_at(b, 132),
            journal_offset: u64_at(b, 140),
            journal_len: u64_at(b, 148),
            origin: Origin {
                format: format_from(b[164])
                    .ok_or_else(|| bad(164, format!("origin format {}", b[164])))?,
                disk_type: type_from(b[165])
                    .ok_or_else(|| bad(165, format!("origin disk type {}", b[165])))?,
                block_size: u32_at(b, 168),
                logical_sector_size: u32_at(b, 172),
                physical_sector_size: u32_at(b, 176),
                disk_id: {
                    let id = Uuid::from_bytes(b[180..196].try_into().expect("16 bytes"));
                    (!id.is_nil()).then_some(id)
                },
            },
            epoch_keys: Vec::new(),
            recipients: Vec::new(),
            signer: None,
        };
        // Layout: journal, table and data in order, inside what the file
        // can hold, so nothing hostile sizes an allocation (the slot count
        // sizes the free-slot map; slots are written before the header
        // that counts them, so they lie inside the file).
        let blocks = h.blocks();
        let want_pages = super::table::pages_for(blocks);
        if h.table_pages != want_pages {
            return Err(bad(
                68,
                format!(
                    "{} table pages; {blocks} blocks need {want_pages}",
                    h.table_pages
                ),
            ));
        }
        let journal_end = h.journal_offset.checked_add(h.journal_len);
        let table_end = h
            .table_pages
            .checked_mul(super::table::PAGE_SIZE as u64)
            .and_then(|l| h.table_offset.checked_add(l));
        let data_end = h
            .slot_count
            .checked_mul(h.block_size())
            .and_then(|l| h.data_offset.checked_add(l));
        match (journal_end, table_end, data_end) {
            (Some(j), Some(t), Some(d))
                if h.journal_offset >= 2 * HEADER_SIZE as u64
                    && j <= h.table_offset
                    && t <= h.data_offset
                    && h.data_offset <= file_len
                    && d >= h.data_offset
                    && d <= file_len => {}
            _ => {
                return Err(bad(
                    60,
                    format!(
                        "layout out of order or beyond the file of {file_len:#x} bytes: journal {:#x}+{:#x}, table {:#x}+{} pages, data {:#x}, {} slots",
                        h.journal_offset,
                        h.journal_len,
                        h.table_offset,
                        h.table_pages,
                        h.data_offset,
                        h.slot_count
                    ),
                ));
            }
        }
        let nkeys = u16_at(b, 156) as usize;
        if nkeys == 0 || nkeys > MAX_EPOCH_KEYS {
            return Err(bad(
                156,
                format!("{nkeys} epoch keys; expected 1 to {MAX_EPOCH_KEYS}"),
            ));
        }
        let mut h = h;
        for i in 0..nkeys {
            let p = EPOCH_KEYS_OFFSET + i * EPOCH_KEY_RECORD;
            h.epoch_keys.push(EpochKey {
                epoch: u16_at(b, p),
                nonce: b[p + 8..p + 20].try_into().expect("12 bytes"),
                wrapped: b[p + 20..p + 68].try_into().expect("48 bytes"),
            });
        }
        if !h.epoch_keys.iter().any(|k| k.epoch == h.epoch) {
            return Err(bad(
                92,
                format!("current epoch {} has no key record", h.epoch),
            ));
        }
        let stanzas_end = if version == VERSION_SIGNED {
            h.signer = Some(decode_signer(b, at)?);
            SIGNATURE_OFFSET
        } else {
            MAC_OFFSET
        };
        let count = u16_at(b, 94) as usize;
        let len = u32_at(b, 96) as usize;
        if count == 0 || count > MAX_RECIPIENTS || len > stanzas_end - RECIPIENTS_OFFSET {
            return Err(bad(
                94,
                format!(
                    "{count} recipients in {len} bytes; expected 1 to {MAX_RECIPIENTS} within the header"
                ),
            ));
        }
        let mut p = RECIPIENTS_OFFSET;
        for _ in 0..count {
            let (s, n) = Stanza::decode(&b[p..RECIPIENTS_OFFSET + len], at + p as u64)?;
            h.recipients.push(s);
            p += n;
        }
        if p != RECIPIENTS_OFFSET + len {
            return Err(bad(
                96,
                format!(
                    "recipients length {len}; the stanzas take {}",
                    p - RECIPIENTS_OFFSET
                ),
            ));
        }
        Ok(h)
    }
}

/// The signer record and signature of a signed copy `b` read at `at`:
/// the scheme known, the length in range and the rest of the signature
/// area zero (it is outside the MAC, so nothing there may go unchecked).
/// Whether the signer is a recipient and the signature verifies is
/// [`signature::verify`]'s business.
fn decode_signer(b: &[u8], at: u64) -> Result<SignerRecord> {
    let bad = |o: usize, msg: String| Error::corrupt(STRUCTURE, at + o as u64, msg);
    let len = u16_at(b, SIGNER_OFFSET + 32) as usize;
    let scheme = u16_at(b, SIGNER_OFFSET + 34);
    if scheme != signature::SCHEME_RSA_PSS_SHA256 {
        return Err(Error::unsupported(
            STRUCTURE,
            at + (SIGNER_OFFSET + 34) as u64,
            format!(
                "signature scheme {scheme}; expected {} (RSA-PSS-SHA256)",
                signature::SCHEME_RSA_PSS_SHA256
            ),
        ));
    }
    if !(MIN_SIGNATURE..=MAX_SIGNATURE).contains(&len) {
        return Err(bad(
            SIGNER_OFFSET + 32,
            format!("signature of {len} bytes; expected {MIN_SIGNATURE} to {MAX_SIGNATURE}"),
        ));
    }
    if let Some(i) = b[SIGNER_OFFSET + SIGNER_RECORD..EPOCH_KEYS_OFFSET]
        .iter()
        .position(|&x| x != 0)
    {
        return Err(bad(
            SIGNER_OFFSET + SIGNER_RECORD + i,
            "reserved byte after the signer record is not zero".into(),
        ));
    }
    if let Some(i) = b[SIGNATURE_OFFSET + len..MAC_OFFSET]
        .iter()
        .position(|&x| x != 0)
    {
        return Err(bad(
            SIGNATURE_OFFSET + len + i,
            format!("byte after the {len}-byte signature is not zero"),
        ));
    }
    Ok(SignerRecord {
        fingerprint: Fingerprint(
            b[SIGNER_OFFSET..SIGNER_OFFSET + 32]
                .try_into()
                .expect("32 bytes"),
        ),
        signature: b[SIGNATURE_OFFSET..SIGNATURE_OFFSET + len].to_vec(),
    })
}
