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

use binrw::binrw;
use uuid::Uuid;

use super::cipher::{CipherId, KEY_LEN, MasterKey, NONCE_LEN, TAG_LEN, ct_eq, hmac_sha256};
use super::keys::{Fingerprint, MAX_BITS, MIN_BITS, PrivateKey};
pub use super::origin::Origin;
use super::origin::{format_code, format_from, type_code, type_from};
use super::recipient::Stanza;
use super::signature;
use crate::error::{Error, Result};
use crate::fixed::{FixedStruct, Invalid};

/// Signature at byte 0 of each header copy.
pub const MAGIC: [u8; 8] = *b"EVHDCRPT";
/// Version of an unsigned header: no signer record, stanzas may run up
/// to the MAC.
pub const VERSION_UNSIGNED: u32 = 1;
/// Version of a signed header: signer record at [`SIGNER_OFFSET`],
/// signature at `SIGNATURE_OFFSET` (see `signature`).
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
/// The sector sizes a container may have (logical and physical).
pub const SECTOR_SIZES: [u32; 2] = [512, 4096];
/// Smallest and largest block shift: 4 KiB to 1 MiB blocks.
pub const BLOCK_SHIFTS: std::ops::RangeInclusive<u8> = 12..=20;
/// Flag: a rekey started and has not re-encrypted every block yet.
pub const FLAG_REKEYING: u16 = 1 << 1;
/// Flags this version knows.
pub const KNOWN_FLAGS: u16 = FLAG_REKEYING;
/// Structure name in errors.
pub const STRUCTURE: &str = "EVHD header";

/// One epoch's data key, wrapped under `K_wrap`: a 72-byte record at
/// [`EPOCH_KEYS_OFFSET`] + 72 i.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochKey {
    /// The epoch number.
    pub epoch: u16,
    /// AES-256-GCM nonce of the wrapping (after 6 zero bytes).
    #[brw(pad_before = 6)]
    pub nonce: [u8; NONCE_LEN],
    /// Wrapped key and tag (then 4 zero bytes).
    #[brw(pad_after = 4)]
    pub wrapped: [u8; KEY_LEN + TAG_LEN],
}

impl FixedStruct for EpochKey {
    const SIZE: usize = EPOCH_KEY_RECORD;
    const NAME: &'static str = "EVHD epoch key record";
}

impl EpochKey {
    /// An unused record: zeros.
    const UNUSED: EpochKey = EpochKey {
        epoch: 0,
        nonce: [0; NONCE_LEN],
        wrapped: [0; KEY_LEN + TAG_LEN],
    };
}

/// The signer record of a signed (version 2) copy at [`SIGNER_OFFSET`]
/// (zeros in version 1).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignerFields {
    /// Fingerprint of the signing key.
    pub fingerprint: [u8; 32],
    /// Bytes of the signature.
    pub signature_len: u16,
    /// [`signature::SCHEME_RSA_PSS_SHA256`].
    pub scheme: u16,
}

/// Bytes of the recipient area and the signature area, between the fixed
/// fields and the MAC.
const BODY_LEN: usize = MAC_OFFSET - RECIPIENTS_OFFSET;

/// One header copy as stored (little-endian), field by field. The magic
/// and the version are checked when it is read; [`Header::decode`] checks
/// the CRC, then every field's range.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    #[br(temp, assert(magic == MAGIC, Invalid::corrupt(0, format!("signature {magic:02x?}; expected \"EVHDCRPT\""))))]
    #[bw(calc = MAGIC)]
    magic: [u8; 8],
    /// [`VERSION_UNSIGNED`] or [`VERSION_SIGNED`].
    #[br(assert(
        version == VERSION_UNSIGNED || version == VERSION_SIGNED,
        Invalid::unsupported(8, format!("format version {version}; this library reads versions {VERSION_UNSIGNED} and {VERSION_SIGNED}"))
    ))]
    pub version: u32,
    /// CRC-32C of the copy with this field zeroed ([`compute_crc`]).
    pub crc: u32,
    /// Sequence number; the valid copy with the higher one wins.
    pub sequence: u64,
    /// Random container identity.
    pub container_id: [u8; 16],
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// log2 of the block size.
    pub block_shift: u8,
    /// [`CipherId::id`].
    pub cipher: u8,
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
    /// Number of recipient stanzas.
    pub recipient_count: u16,
    /// Bytes of the recipient stanzas.
    pub recipients_len: u32,
    /// SHA-256 over all page MACs.
    pub table_root: [u8; 32],
    /// Block writes under the current epoch.
    pub epoch_writes: u64,
    /// File offset of the journal.
    pub journal_offset: u64,
    /// Bytes of the journal region.
    pub journal_len: u64,
    /// Number of epoch key records in use.
    pub epoch_key_count: u16,
    /// Origin format code (then 6 zero bytes before it).
    #[brw(pad_before = 6)]
    pub origin_format: u8,
    /// Origin disk type code.
    pub origin_type: u8,
    /// Origin block size (after 2 zero bytes).
    #[brw(pad_before = 2)]
    pub origin_block_size: u32,
    /// Origin logical sector size.
    pub origin_logical_sector_size: u32,
    /// Origin physical sector size.
    pub origin_physical_sector_size: u32,
    /// Origin disk id, zero when unknown.
    pub origin_disk_id: [u8; 16],
    /// The signer record (zeros in version 1).
    pub signer: SignerFields,
    /// Zero (checked in version 2, where the MAC does not cover the rest
    /// of the signature area).
    pub reserved: [u8; EPOCH_KEYS_OFFSET - SIGNER_OFFSET - SIGNER_RECORD],
    /// Epoch key records, the first `epoch_key_count` in use (then 48
    /// zero bytes).
    #[brw(pad_after = RECIPIENTS_OFFSET - EPOCH_KEYS_OFFSET - MAX_EPOCH_KEYS * EPOCH_KEY_RECORD)]
    pub epoch_keys: [EpochKey; MAX_EPOCH_KEYS],
    /// Recipient stanzas from [`RECIPIENTS_OFFSET`], then in version 2 the
    /// signature area from [`SIGNATURE_OFFSET`].
    #[br(count = BODY_LEN)]
    pub body: Vec<u8>,
    /// HMAC-SHA256 under `K_hdr` ([`compute_mac`]).
    pub mac: [u8; 32],
}

impl FixedStruct for RawHeader {
    const SIZE: usize = HEADER_SIZE;
    const NAME: &'static str = STRUCTURE;
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
    /// `FLAG_REKEYING`.
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

/// CRC-32C of a copy with its CRC field zeroed.
pub fn compute_crc(buf: &[u8]) -> u32 {
    let c = crc32c::crc32c(&buf[..CRC_OFFSET]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &buf[CRC_OFFSET + 4..])
}

/// HMAC-SHA256 under `K_hdr` of bytes 0..65504 with the CRC field zeroed
/// and, in a signed (version 2) copy, the signature area zeroed.
pub fn compute_mac(buf: &[u8], mk: &MasterKey) -> [u8; 32] {
    let signed = buf.get(8..12) == Some(&VERSION_SIGNED.to_le_bytes()[..]);
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
        let mut b = self.to_raw(VERSION_UNSIGNED, None)?.to_bytes();
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
        let signer = SignerFields {
            fingerprint: fp.0,
            signature_len: len as u16,
            scheme: signature::SCHEME_RSA_PSS_SHA256,
        };
        let mut b = self.to_raw(VERSION_SIGNED, Some(signer))?.to_bytes();
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

    /// The copy of `version` as stored, the stanzas inside the room
    /// `version` leaves them; no MAC, signature or CRC yet.
    fn to_raw(&self, version: u32, signer: Option<SignerFields>) -> Result<RawHeader> {
        if self.epoch_keys.len() > MAX_EPOCH_KEYS {
            return Err(Error::invalid_argument(format!(
                "{} epoch keys; a header holds at most {MAX_EPOCH_KEYS}",
                self.epoch_keys.len()
            )));
        }
        if self.recipients.len() > MAX_RECIPIENTS {
            return Err(Error::invalid_argument(format!(
                "{} recipients; a header holds at most {MAX_RECIPIENTS}",
                self.recipients.len()
            )));
        }
        let mut body = Vec::with_capacity(BODY_LEN);
        for s in &self.recipients {
            s.encode(&mut body);
        }
        let stanzas_len = body.len();
        let stanzas_end = if version == VERSION_SIGNED {
            SIGNATURE_OFFSET
        } else {
            MAC_OFFSET
        };
        if stanzas_len > stanzas_end - RECIPIENTS_OFFSET {
            return Err(Error::invalid_argument(format!(
                "recipient stanzas take {stanzas_len} bytes; the header has room for {}{}",
                stanzas_end - RECIPIENTS_OFFSET,
                if version == VERSION_SIGNED {
                    " beside the signature (remove a recipient)"
                } else {
                    ""
                }
            )));
        }
        body.resize(BODY_LEN, 0);
        let mut epoch_keys = [EpochKey::UNUSED; MAX_EPOCH_KEYS];
        epoch_keys[..self.epoch_keys.len()].copy_from_slice(&self.epoch_keys);
        let o = &self.origin;
        Ok(RawHeader {
            version,
            crc: 0,
            sequence: self.sequence,
            container_id: self.container_id,
            virtual_size: self.virtual_size,
            logical_sector_size: self.logical_sector_size,
            physical_sector_size: self.physical_sector_size,
            block_shift: self.block_shift,
            cipher: self.cipher.id(),
            flags: self.flags,
            table_offset: self.table_offset,
            table_pages: self.table_pages,
            data_offset: self.data_offset,
            slot_count: self.slot_count,
            epoch: self.epoch,
            recipient_count: self.recipients.len() as u16,
            recipients_len: stanzas_len as u32,
            table_root: self.table_root,
            epoch_writes: self.epoch_writes,
            journal_offset: self.journal_offset,
            journal_len: self.journal_len,
            epoch_key_count: self.epoch_keys.len() as u16,
            origin_format: format_code(o.format),
            origin_type: type_code(o.disk_type),
            origin_block_size: o.block_size,
            origin_logical_sector_size: o.logical_sector_size,
            origin_physical_sector_size: o.physical_sector_size,
            origin_disk_id: o.disk_id.map_or([0; 16], |id| *id.as_bytes()),
            signer: signer.unwrap_or(SignerFields {
                fingerprint: [0; 32],
                signature_len: 0,
                scheme: 0,
            }),
            reserved: [0; EPOCH_KEYS_OFFSET - SIGNER_OFFSET - SIGNER_RECORD],
            epoch_keys,
            body,
            mac: [0; 32],
        })
    }

    /// The unsigned copy as stored, for the layout tests.
    #[cfg(test)]
    pub(crate) fn to_raw_for_test(&self) -> RawHeader {
        self.to_raw(VERSION_UNSIGNED, None).expect("a valid header")
    }

    /// Decode a copy read from file offset `at`, checking magic, version,
    /// CRC and every field's range (not the MAC: that needs the key).
    pub fn decode(b: &[u8], at: u64, file_len: u64) -> Result<Header> {
        if b.len() != HEADER_SIZE {
            return Err(Error::corrupt(
                STRUCTURE,
                at,
                format!("{} bytes; a header copy has {HEADER_SIZE}", b.len()),
            ));
        }
        let raw = RawHeader::parse(b, at)?;
        let computed = compute_crc(b);
        if raw.crc != computed {
            return Err(Error::corrupt(
                STRUCTURE,
                at + CRC_OFFSET as u64,
                format!(
                    "CRC-32C stored {:#010x}, computed {computed:#010x}",
                    raw.crc
                ),
            ));
        }
        Header::from_raw(&raw, at, file_len)
    }

    /// The header `raw` (read at `at`, its CRC verified) holds, once every
    /// field's range is checked.
    fn from_raw(raw: &RawHeader, at: u64, file_len: u64) -> Result<Header> {
        let bad = |o: usize, msg: String| Error::corrupt(STRUCTURE, at + o as u64, msg);
        let block_shift = raw.block_shift;
        if !BLOCK_SHIFTS.contains(&block_shift) {
            return Err(bad(
                56,
                format!("block shift {block_shift}; expected 12 to 20"),
            ));
        }
        let cipher = CipherId::from_id(raw.cipher).ok_or_else(|| {
            Error::unsupported(
                STRUCTURE,
                at + 57,
                format!("cipher id {}; expected 1 or 2", raw.cipher),
            )
        })?;
        let flags = raw.flags;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::unsupported(
                STRUCTURE,
                at + 58,
                format!("unknown flags {flags:#06x}"),
            ));
        }
        let logical = raw.logical_sector_size;
        let physical = raw.physical_sector_size;
        for (o, v) in [(48, logical), (52, physical)] {
            if !SECTOR_SIZES.contains(&v) {
                return Err(bad(o, format!("sector size {v}; expected 512 or 4096")));
            }
        }
        let mut h = Header {
            sequence: raw.sequence,
            container_id: raw.container_id,
            virtual_size: raw.virtual_size,
            logical_sector_size: logical,
            physical_sector_size: physical,
            block_shift,
            cipher,
            flags,
            table_offset: raw.table_offset,
            table_pages: raw.table_pages,
            data_offset: raw.data_offset,
            slot_count: raw.slot_count,
            epoch: raw.epoch,
            table_root: raw.table_root,
            epoch_writes: raw.epoch_writes,
            journal_offset: raw.journal_offset,
            journal_len: raw.journal_len,
            origin: Origin {
                format: format_from(raw.origin_format)
                    .ok_or_else(|| bad(164, format!("origin format {}", raw.origin_format)))?,
                disk_type: type_from(raw.origin_type)
                    .ok_or_else(|| bad(165, format!("origin disk type {}", raw.origin_type)))?,
                block_size: raw.origin_block_size,
                logical_sector_size: raw.origin_logical_sector_size,
                physical_sector_size: raw.origin_physical_sector_size,
                disk_id: {
                    let id = Uuid::from_bytes(raw.origin_disk_id);
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
        let nkeys = raw.epoch_key_count as usize;
        if nkeys == 0 || nkeys > MAX_EPOCH_KEYS {
            return Err(bad(
                156,
                format!("{nkeys} epoch keys; expected 1 to {MAX_EPOCH_KEYS}"),
            ));
        }
        h.epoch_keys = raw.epoch_keys[..nkeys].to_vec();
        if !h.epoch_keys.iter().any(|k| k.epoch == h.epoch) {
            return Err(bad(
                92,
                format!("current epoch {} has no key record", h.epoch),
            ));
        }
        let stanzas_end = if raw.version == VERSION_SIGNED {
            h.signer = Some(signature::signer_of(raw, at)?);
            SIGNATURE_OFFSET
        } else {
            MAC_OFFSET
        };
        let count = raw.recipient_count as usize;
        let len = raw.recipients_len as usize;
        if count == 0 || count > MAX_RECIPIENTS || len > stanzas_end - RECIPIENTS_OFFSET {
            return Err(bad(
                94,
                format!(
                    "{count} recipients in {len} bytes; expected 1 to {MAX_RECIPIENTS} within the header"
                ),
            ));
        }
        let mut p = 0;
        for _ in 0..count {
            let (s, n) = Stanza::decode(&raw.body[p..len], at + (RECIPIENTS_OFFSET + p) as u64)?;
            h.recipients.push(s);
            p += n;
        }
        if p != len {
            return Err(bad(
                96,
                format!("recipients length {len}; the stanzas take {p}"),
            ));
        }
        Ok(h)
    }
}
