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

use binrw::binrw;
use sha2_10::{Digest, Sha256};

use super::cipher::{KEY_LEN, NONCE_LEN, TAG_LEN, ct_eq, hmac_sha256};
use crate::fixed::{FixedStruct, read_bytes, write_bytes};

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
/// Structure name in errors.
pub const STRUCTURE: &str = "EVHD block table";

/// One block's table entry.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    /// Data slot, 0 when unallocated.
    pub slot: u64,
    /// Write count of this block.
    pub generation: u64,
    /// Nonce of the last write.
    #[br(parse_with = read_bytes)]
    #[bw(write_with = write_bytes)]
    pub nonce: [u8; NONCE_LEN],
    /// Tag of the last write.
    #[br(parse_with = read_bytes)]
    #[bw(write_with = write_bytes)]
    pub tag: [u8; TAG_LEN],
    /// Key epoch of the last write.
    pub epoch: u16,
    /// Reserved flags.
    pub flags: u16,
}

impl FixedStruct for Entry {
    const SIZE: usize = ENTRY_SIZE;
    const NAME: &'static str = "EVHD block table entry";
}

/// One table page as stored. Whether its MAC verifies and its reserved
/// tail is zero is [`verify_page`]'s business: a page that fails is
/// reported, its blocks refused, the rest of the disk still readable.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The entries of blocks `84 * index ..`; past the last block, zero.
    pub entries: [Entry; ENTRIES_PER_PAGE],
    /// `HMAC-SHA256(K_tbl, container id || u64le page index || entries)`.
    #[br(parse_with = read_bytes)]
    #[bw(write_with = write_bytes)]
    pub mac: [u8; 32],
    /// Must be zero.
    #[br(parse_with = read_bytes)]
    #[bw(write_with = write_bytes)]
    pub reserved: [u8; PAGE_SIZE - RESERVED_OFFSET],
}

impl FixedStruct for Page {
    const SIZE: usize = PAGE_SIZE;
    const NAME: &'static str = STRUCTURE;
}

impl Page {
    /// A page holding `entries` (at most 84; missing ones are unallocated)
    /// and no MAC yet.
    pub fn new(entries: &[Entry]) -> Page {
        let mut all = [Entry::default(); ENTRIES_PER_PAGE];
        all[..entries.len()].copy_from_slice(entries);
        Page {
            entries: all,
            mac: [0; 32],
            reserved: [0; PAGE_SIZE - RESERVED_OFFSET],
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
    let mut page = Page::new(entries).to_bytes();
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

/// The MAC stored in `page` (zeros when `page` is shorter than a page).
pub fn stored_mac(page: &[u8]) -> [u8; 32] {
    let mut mac = [0u8; 32];
    if let Some(m) = page.get(MAC_OFFSET..RESERVED_OFFSET) {
        mac.copy_from_slice(m);
    }
    mac
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
