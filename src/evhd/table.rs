//! The block table: one 48-byte entry per virtual disk block, in 4 KiB
//! pages that each carry an HMAC; the header's table root hashes all page
//! MACs, so the header MAC binds every block's current version.
//!
//! Entry layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | slot (0 = unallocated: the block reads as zeros; slot s >= 1 lies at data offset + (s - 1) * block size) |
//! | 8 | 8 | generation: incremented on every write of the block |
//! | 16 | 12 | nonce of the last write |
//! | 28 | 16 | authentication tag of the last write |
//! | 44 | 2 | key epoch the block was written under |
//! | 46 | 2 | flags, zero |
//!
//! Page layout: entries 0..84 (4032 bytes), then
//! `HMAC-SHA256(K_tbl, container id || u64le page index || entries)` (32
//! bytes), then 32 reserved bytes that must be zero.

use sha2_10::{Digest, Sha256};

use super::cipher::{KEY_LEN, NONCE_LEN, TAG_LEN, ct_eq, hmac_sha256};

/// Bytes of one table page.
pub const PAGE_SIZE: usize = 4096;
/// Bytes of one entry.
pub const ENTRY_SIZE: usize = 48;
/// Entries per page: as many as fit before the MAC and reserved tail.
pub const ENTRIES_PER_PAGE: usize = 84;
/// Offset of the page MAC within a page.
pub const MAC_OFFSET: usize = ENTRIES_PER_PAGE * ENTRY_SIZE;
/// Offset of the reserved tail within a page.
pub const RESERVED_OFFSET: usize = MAC_OFFSET + 32;

/// One block's table entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    /// Data slot, 0 when unallocated.
    pub slot: u64,
    /// Write count of this block.
    pub generation: u64,
    /// Nonce of the last write.
    pub nonce: [u8; NONCE_LEN],
    /// Tag of the last write.
    pub tag: [u8; TAG_LEN],
    /// Key epoch of the last write.
    pub epoch: u16,
    /// Reserved flags.
    pub flags: u16,
}

impl Entry {
    /// Encode into 48 bytes.
    pub fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.slot.to_le_bytes());
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..28].copy_from_slice(&self.nonce);
        out[28..44].copy_from_slice(&self.tag);
        out[44..46].copy_from_slice(&self.epoch.to_le_bytes());
        out[46..48].copy_from_slice(&self.flags.to_le_bytes());
    }

    /// Decode 48 bytes.
    pub fn decode(b: &[u8]) -> Entry {
        Entry {
            slot: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            generation: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            nonce: b[16..28].try_into().expect("12 bytes"),
            tag: b[28..44].try_into().expect("16 bytes"),
            epoch: u16::from_le_bytes([b[44], b[45]]),
            flags: u16::from_le_bytes([b[46], b[47]]),
        }
    }
}

/// Number of pages for `blocks` entries (at least one).
pub fn pages_for(blocks: u64) -> u64 {
    blocks.div_ceil(ENTRIES_PER_PAGE as u64).max(1)
}

/// The MAC of page `index` whose entry bytes are `entries`.
pub fn page_mac(
    key: &[u8; KEY_LEN],
    container_id: &[u8; 16],
    index: u64,
    entries: &[u8],
) -> [u8; 32] {
    hmac_sha256(key, &[container_id, &index.to_le_bytes(), entries])
}

/// Encode page `index` holding `entries` (at most 84; missing ones are
/// unallocated); returns the page and its MAC.
pub fn encode_page(
    key: &[u8; KEY_LEN],
    container_id: &[u8; 16],
    index: u64,
    entries: &[Entry],
) -> (Vec<u8>, [u8; 32]) {
    let mut page = vec![0u8; PAGE_SIZE];
    for (i, e) in entries.iter().enumerate() {
        e.encode(&mut page[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE]);
    }
    let mac = page_mac(key, container_id, index, &page[..MAC_OFFSET]);
    page[MAC_OFFSET..RESERVED_OFFSET].copy_from_slice(&mac);
    (page, mac)
}

/// Why a page failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFault {
    /// The stored MAC does not match the entries.
    Mac,
    /// The reserved tail is not zero.
    Reserved,
}

/// The MAC stored in `page`.
pub fn stored_mac(page: &[u8]) -> [u8; 32] {
    page[MAC_OFFSET..RESERVED_OFFSET]
        .try_into()
        .expect("32 bytes")
}

/// Verify `page` (page `index`).
pub fn verify_page(
    key: &[u8; KEY_LEN],
    container_id: &[u8; 16],
    index: u64,
    page: &[u8],
) -> Result<(), PageFault> {
    let mac = page_mac(key, container_id, index, &page[..MAC_OFFSET]);
    if !ct_eq(&mac, &page[MAC_OFFSET..RESERVED_OFFSET]) {
        return Err(PageFault::Mac);
    }
    if page[RESERVED_OFFSET..].iter().any(|&b| b != 0) {
        return Err(PageFault::Reserved);
    }
    Ok(())
}

/// The table root: SHA-256 over all page MACs in page order.
pub fn root(macs: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for m in macs {
        h.update(m);
    }
    h.finalize().into()
}
