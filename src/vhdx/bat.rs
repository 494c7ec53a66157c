//! The block allocation table: one little-endian u64 per payload block, with
//! a sector-bitmap entry after every `chunk_ratio` payload entries
//! ([MS-VHDX] 2.5).

use crate::error::{Error, Result};
use crate::io::{Storage, read_struct};

/// Bytes per BAT entry.
pub const ENTRY_SIZE: u64 = 8;
/// Mask of the state bits (bits 0-2).
pub const STATE_MASK: u64 = 0x7;
/// Mask of the file offset (bits 20-63, in 1 MiB units, i.e. the byte offset).
pub const OFFSET_MASK: u64 = !0xF_FFFF;
/// Sectors one sector-bitmap block describes: 2^23 (1 MiB of bits).
pub const SECTORS_PER_BITMAP_BLOCK: u64 = 1 << 23;
/// Size of a sector-bitmap block.
pub const BITMAP_BLOCK_SIZE: u64 = 1 << 20;

/// Payload block: not stored here (differencing: read the parent).
pub const PAYLOAD_NOT_PRESENT: u8 = 0;
/// Payload block: content undefined; reads as zeros.
pub const PAYLOAD_UNDEFINED: u8 = 1;
/// Payload block: reads as zeros.
pub const PAYLOAD_ZERO: u8 = 2;
/// Payload block: unmapped (trimmed); reads as zeros.
pub const PAYLOAD_UNMAPPED: u8 = 3;
/// Payload block: stored in full at the entry's offset.
pub const PAYLOAD_FULLY_PRESENT: u8 = 6;
/// Payload block: some sectors stored, per the sector bitmap (differencing only).
pub const PAYLOAD_PARTIALLY_PRESENT: u8 = 7;
/// Sector-bitmap block: absent.
pub const BITMAP_NOT_PRESENT: u8 = 0;
/// Sector-bitmap block: stored at the entry's offset.
pub const BITMAP_PRESENT: u8 = 6;

/// State bits of an entry.
pub fn state(entry: u64) -> u8 {
    (entry & STATE_MASK) as u8
}

/// Byte offset in the file of an entry's block.
pub fn file_offset(entry: u64) -> u64 {
    entry & OFFSET_MASK
}

/// An entry of `state` pointing at byte offset `offset` (a multiple of 1 MiB).
pub fn entry(state: u8, offset: u64) -> u64 {
    debug_assert!(offset & !OFFSET_MASK == 0, "block offsets are whole MiB");
    (offset & OFFSET_MASK) | u64::from(state)
}

/// Name of a payload state, or `None` if the value is not one.
pub fn payload_state_name(s: u8, differencing: bool) -> Option<&'static str> {
    Some(match s {
        PAYLOAD_NOT_PRESENT => "not_present",
        PAYLOAD_UNDEFINED => "undefined",
        PAYLOAD_ZERO => "zero",
        PAYLOAD_UNMAPPED => "unmapped",
        PAYLOAD_FULLY_PRESENT => "fully_present",
        PAYLOAD_PARTIALLY_PRESENT if differencing => "partially_present",
        _ => return None,
    })
}

/// Name of a sector-bitmap state, or `None` if the value is not one.
pub fn bitmap_state_name(s: u8) -> Option<&'static str> {
    match s {
        BITMAP_NOT_PRESENT => Some("not_present"),
        BITMAP_PRESENT => Some("present"),
        _ => None,
    }
}

/// The BAT's shape, derived from the metadata ([MS-VHDX] 2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Payload block size.
    pub block_size: u64,
    /// Logical sector size.
    pub sector_size: u64,
    /// Payload blocks per chunk: (2^23 * sector size) / block size.
    pub chunk_ratio: u64,
    /// Payload blocks covering the virtual disk.
    pub data_blocks: u64,
    /// Sector-bitmap blocks (one per chunk).
    pub bitmap_blocks: u64,
    /// Entries the table holds.
    pub total_entries: u64,
}

impl Layout {
    /// Compute the layout; sizes were validated by the metadata parser.
    pub fn new(virtual_size: u64, block_size: u32, sector_size: u32, differencing: bool) -> Layout {
        let block_size = u64::from(block_size);
        let sector_size = u64::from(sector_size);
        let chunk_ratio = SECTORS_PER_BITMAP_BLOCK * sector_size / block_size;
        let data_blocks = virtual_size.div_ceil(block_size);
        let bitmap_blocks = data_blocks.div_ceil(chunk_ratio);
        let total_entries = if differencing {
            bitmap_blocks * (chunk_ratio + 1)
        } else {
            data_blocks + data_blocks.saturating_sub(1) / chunk_ratio
        };
        Layout {
            block_size,
            sector_size,
            chunk_ratio,
            data_blocks,
            bitmap_blocks,
            total_entries,
        }
    }

    /// BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// BAT index of the sector-bitmap entry of chunk `chunk`.
    pub fn bitmap_index(&self, chunk: u64) -> u64 {
        chunk * (self.chunk_ratio + 1) + self.chunk_ratio
    }

    /// Whether BAT index `i` is a sector-bitmap entry.
    pub fn is_bitmap_index(&self, i: u64) -> bool {
        i % (self.chunk_ratio + 1) == self.chunk_ratio
    }

    /// Sectors per payload block.
    pub fn sectors_per_block(&self) -> u64 {
        self.block_size / self.sector_size
    }
}

/// Read `layout.total_entries` entries at `offset`, which must fit in the
/// BAT region of `region_length` bytes (so the allocation is bounded by a
/// region that lies inside the file).
pub fn load(
    storage: &dyn Storage,
    offset: u64,
    region_length: u32,
    layout: &Layout,
) -> Result<Vec<u64>> {
    let bytes = layout
        .total_entries
        .checked_mul(ENTRY_SIZE)
        .filter(|&b| b <= u64::from(region_length))
        .ok_or_else(|| {
            Error::corrupt(
                "VHDX BAT",
                offset,
                format!(
                    "{} entries do not fit in the {region_length:#x}-byte BAT region",
                    layout.total_entries
                ),
            )
        })?;
    let mut raw = vec![0u8; bytes as usize];
    read_struct(storage, "VHDX BAT", &mut raw, offset)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .collect())
}
