//! The block allocation table: one big-endian u32 per block, the sector
//! offset of the block's bitmap, or all ones when the block is not allocated.

use crate::error::Result;
use crate::io::{Storage, read_struct};

/// BAT value of a block that is not allocated.
pub const UNUSED: u32 = 0xFFFF_FFFF;
/// Bytes per BAT entry.
pub const ENTRY_SIZE: u64 = 4;

/// Read `entries` entries at `table_offset`. The caller has checked that the
/// table lies inside the file, so the allocation is bounded by the file size.
pub fn load(storage: &dyn Storage, table_offset: u64, entries: u32) -> Result<Vec<u32>> {
    let mut raw = vec![0u8; entries as usize * ENTRY_SIZE as usize];
    read_struct(
        storage,
        "VHD block allocation table",
        &mut raw,
        table_offset,
    )?;
    Ok(raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Bytes the table occupies on disk, padded to whole sectors.
pub fn table_bytes(entries: u32) -> u64 {
    (u64::from(entries) * ENTRY_SIZE).div_ceil(512) * 512
}

/// Byte offset of entry `index` in the file.
pub fn entry_offset(table_offset: u64, index: usize) -> u64 {
    table_offset + index as u64 * ENTRY_SIZE
}
