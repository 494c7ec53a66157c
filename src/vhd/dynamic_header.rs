//! The dynamic disk header: 1024 bytes pointed to by the footer's
//! `data_offset` in dynamic and differencing disks (VHD specification,
//! "Dynamic Disk Header Format").

use binrw::binrw;
use uuid::Uuid;

use super::parent_locator::ParentLocatorEntry;
use crate::checksum::vhd_checksum;
use crate::error::{Error, Result};
use crate::fixed::FixedStruct;

/// Size of the dynamic header in bytes.
pub const HEADER_SIZE: usize = 1024;
/// Dynamic header cookie, "cxsparse".
pub const HEADER_COOKIE: [u8; 8] = *b"cxsparse";
/// Byte offset of the checksum field inside the header.
pub const CHECKSUM_FIELD: usize = 36;
/// The only header version: 1.0.
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// Byte offset of the parent's UTF-16BE name inside the header.
pub const PARENT_NAME_FIELD: u64 = 64;
/// Number of parent locator entries in the header.
pub const LOCATOR_COUNT: usize = 8;
/// Byte offset of the first parent locator entry inside the header.
pub const LOCATORS_FIELD: u64 = 576;
/// Smallest block size we accept: one sector.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size we accept. The specification allows any power of two;
/// real writers use 512 KiB to 2 MiB. 256 MiB keeps one block's bitmap and
/// buffers bounded.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Default block size, 2 MiB, as Windows and qemu write.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;

/// The dynamic header as stored, big-endian.
#[binrw]
#[brw(big)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// "cxsparse".
    pub cookie: [u8; 8],
    /// Unused, all ones.
    pub data_offset: u64,
    /// Offset of the block allocation table.
    pub table_offset: u64,
    /// 0x00010000.
    pub header_version: u32,
    /// Number of BAT entries.
    pub max_table_entries: u32,
    /// Bytes per block (data only, without the sector bitmap).
    pub block_size: u32,
    /// One's complement byte sum.
    pub checksum: u32,
    /// Differencing: the parent's footer unique id.
    pub parent_unique_id: [u8; 16],
    /// Differencing: the parent's modification time, seconds since 2000.
    pub parent_timestamp: u32,
    /// Reserved.
    pub reserved1: u32,
    /// Differencing: the parent's file name, UTF-16 big-endian.
    pub parent_unicode_name: [u8; 512],
    /// Differencing: where to find the parent.
    pub parent_locators: [ParentLocatorEntry; LOCATOR_COUNT],
    /// Reserved; kept as found.
    pub reserved2: [u8; 256],
}

/// Decoding takes 1024 bytes; [`DynamicHeader::validate`] judges the
/// values.
impl FixedStruct for DynamicHeader {
    const SIZE: usize = HEADER_SIZE;
    const NAME: &'static str = "VHD dynamic header";
}

impl DynamicHeader {
    /// A new header for a disk we create.
    pub fn new(table_offset: u64, max_table_entries: u32, block_size: u32) -> Self {
        let mut h = DynamicHeader {
            cookie: HEADER_COOKIE,
            data_offset: u64::MAX,
            table_offset,
            header_version: HEADER_VERSION,
            max_table_entries,
            block_size,
            checksum: 0,
            parent_unique_id: [0; 16],
            parent_timestamp: 0,
            reserved1: 0,
            parent_unicode_name: [0; 512],
            parent_locators: Default::default(),
            reserved2: [0; 256],
        };
        h.checksum = h.compute_checksum();
        h
    }

    /// The checksum the header should carry.
    pub fn compute_checksum(&self) -> u32 {
        vhd_checksum(&self.to_bytes(), CHECKSUM_FIELD)
    }

    /// Whether the stored checksum is right.
    pub fn checksum_ok(&self) -> bool {
        self.checksum == self.compute_checksum()
    }

    /// The parent's unique id.
    pub fn parent_unique_id(&self) -> Uuid {
        crate::guid::from_be_bytes(self.parent_unique_id)
    }

    /// The parent's name, decoded from UTF-16BE up to the first NUL.
    pub fn parent_name(&self) -> String {
        let units: Vec<u16> = self
            .parent_unicode_name
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }

    /// Store `name` as the parent name (UTF-16BE, truncated to 255 units).
    pub fn set_parent_name(&mut self, name: &str) {
        self.parent_unicode_name = [0; 512];
        for (i, u) in name.encode_utf16().take(255).enumerate() {
            self.parent_unicode_name[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
        }
    }

    /// Check the values a reader depends on, against the disk's virtual
    /// size and the file length.
    pub fn validate(&self, offset: u64, virtual_size: u64, file_len: u64) -> Result<()> {
        let s = "VHD dynamic header";
        if self.cookie != HEADER_COOKIE {
            return Err(Error::corrupt(
                s,
                offset,
                format!(
                    "cookie is {:?}, expected \"cxsparse\"",
                    String::from_utf8_lossy(&self.cookie)
                ),
            ));
        }
        if self.header_version >> 16 != 1 {
            return Err(Error::unsupported(
                s,
                offset + 24,
                format!(
                    "header version {:#010x}, expected major version 1",
                    self.header_version
                ),
            ));
        }
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(Error::corrupt(
                s,
                offset + 32,
                format!(
                    "block size {bs} is not a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}"
                ),
            ));
        }
        let needed = virtual_size.div_ceil(u64::from(bs));
        if u64::from(self.max_table_entries) < needed {
            return Err(Error::corrupt(
                s,
                offset + 28,
                format!(
                    "max table entries {} cannot cover the virtual size {virtual_size} with {bs}-byte blocks: {needed} needed",
                    self.max_table_entries
                ),
            ));
        }
        if !self.table_offset.is_multiple_of(512) || self.table_offset >= file_len {
            return Err(Error::corrupt(
                s,
                offset + 16,
                format!(
                    "block allocation table offset {:#x} is not a sector inside the {file_len:#x}-byte file",
                    self.table_offset
                ),
            ));
        }
        let bat_bytes = u64::from(self.max_table_entries) * 4;
        if self
            .table_offset
            .checked_add(bat_bytes)
            .is_none_or(|end| end > file_len)
        {
            return Err(Error::corrupt(
                s,
                offset + 28,
                format!(
                    "max table entries {} ({bat_bytes:#x} bytes from {:#x}) do not fit in the {file_len:#x}-byte file",
                    self.max_table_entries, self.table_offset
                ),
            ));
        }
        Ok(())
    }
}
