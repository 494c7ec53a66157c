//! The region tables at 192 KiB and 256 KiB: where the BAT and the metadata
//! region lie ([MS-VHDX] 2.2.3).

use std::io::Cursor;

use binrw::{BinRead, BinWrite, binrw};
use uuid::Uuid;

use crate::checksum::crc32c_with_zeroed_field;
use crate::error::{Error, Result};
use crate::guid::{from_ms_bytes, to_ms_bytes};

/// File offsets of region table 1 and region table 2.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [192 * 1024, 256 * 1024];
/// What each of the two region tables is called, by index in
/// [`REGION_TABLE_OFFSETS`] ([MS-VHDX] 2.2.3: the first is read first).
pub const ROLE: [&str; 2] = ["primary", "backup"];
/// Bytes covered by a region table's checksum.
pub const REGION_TABLE_SIZE: usize = 64 * 1024;
/// Region table signature, "regi".
pub const SIGNATURE: [u8; 4] = *b"regi";
/// Byte offset of the checksum field.
pub const CHECKSUM_FIELD: usize = 4;
/// Size of the table header.
pub const HEADER_SIZE: usize = 16;
/// Size of one entry.
pub const ENTRY_SIZE: usize = 32;
/// Most entries a 64 KiB table can hold ([MS-VHDX] 2.2.3.1: at most 2047).
pub const MAX_ENTRIES: u32 = 2047;
/// Regions are placed on 1 MiB boundaries and sized in whole MiB.
pub const REGION_ALIGNMENT: u64 = 1 << 20;
/// The first 1 MiB holds the identifier, headers and region tables.
pub const HEADER_AREA: u64 = 1 << 20;
/// The BAT region, 2DC27766-F623-4200-9D64-115E9BFD4A08.
pub const BAT_GUID: Uuid = Uuid::from_u128(0x2DC27766_F623_4200_9D64_115E9BFD4A08);
/// The metadata region, 8B7CA206-4790-4B9A-B8FE-575F050F886E.
pub const METADATA_GUID: Uuid = Uuid::from_u128(0x8B7CA206_4790_4B9A_B8FE_575F050F886E);
/// Bit of the entry flags marking a region every reader must understand.
pub const FLAG_REQUIRED: u32 = 1;

/// The table header as stored.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTableHeader {
    /// "regi".
    pub signature: [u8; 4],
    /// CRC-32C of the 64 KiB table with this field zeroed.
    pub checksum: u32,
    /// Number of entries that follow.
    pub entry_count: u32,
    /// Reserved.
    pub reserved: u32,
}

/// One region as stored.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionTableEntry {
    /// Which region (BAT, metadata or unknown).
    pub guid: [u8; 16],
    /// File offset, a multiple of 1 MiB.
    pub file_offset: u64,
    /// Length in bytes, a multiple of 1 MiB.
    pub length: u32,
    /// Bit 0: required.
    pub flags: u32,
}

impl RegionTableEntry {
    /// A required region `guid` at `file_offset` of `length` bytes.
    pub fn required_region(guid: Uuid, file_offset: u64, length: u32) -> RegionTableEntry {
        RegionTableEntry {
            guid: to_ms_bytes(guid),
            file_offset,
            length,
            flags: FLAG_REQUIRED,
        }
    }

    /// The region's GUID.
    pub fn guid(&self) -> Uuid {
        from_ms_bytes(self.guid)
    }

    /// Whether readers must understand the region.
    pub fn required(&self) -> bool {
        self.flags & FLAG_REQUIRED != 0
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.file_offset.saturating_add(u64::from(self.length))
    }

    /// The region's name, if known.
    pub fn name(&self) -> Option<&'static str> {
        match self.guid() {
            g if g == BAT_GUID => Some("BAT"),
            g if g == METADATA_GUID => Some("metadata"),
            _ => None,
        }
    }
}

/// A decoded region table.
#[derive(Debug, Clone)]
pub struct RegionTable {
    /// File offset of the table.
    pub offset: u64,
    /// The header.
    pub header: RegionTableHeader,
    /// The entries (at most [`MAX_ENTRIES`]).
    pub entries: Vec<RegionTableEntry>,
}

impl RegionTable {
    /// Decode the 64 KiB table read at `offset`, checking signature, entry
    /// count and checksum.
    pub fn parse(bytes: &[u8], offset: u64) -> Result<RegionTable> {
        const S: &str = "VHDX region table";
        if bytes.len() != REGION_TABLE_SIZE {
            return Err(Error::corrupt(S, offset, "short region table"));
        }
        let mut c = Cursor::new(bytes);
        let header = RegionTableHeader::read(&mut c)
            .map_err(|e| Error::corrupt(S, offset, format!("cannot decode: {e}")))?;
        if header.signature != SIGNATURE {
            return Err(Error::corrupt(
                S,
                offset,
                format!(
                    "signature is {:?}, expected \"regi\"",
                    String::from_utf8_lossy(&header.signature)
                ),
            ));
        }
        let computed = crc32c_with_zeroed_field(bytes, CHECKSUM_FIELD);
        if computed != header.checksum {
            return Err(Error::corrupt(
                S,
                offset,
                format!(
                    "bad CRC-32C (its checksum field at {:#x}): stored {:#010x}, computed \
                     {computed:#010x}",
                    offset + CHECKSUM_FIELD as u64,
                    header.checksum
                ),
            ));
        }
        if header.entry_count > MAX_ENTRIES {
            return Err(Error::corrupt(
                S,
                offset + 8,
                format!(
                    "entry count {} exceeds the maximum of {MAX_ENTRIES}",
                    header.entry_count
                ),
            ));
        }
        let mut entries = Vec::with_capacity(header.entry_count as usize);
        for _ in 0..header.entry_count {
            entries.push(
                RegionTableEntry::read(&mut c)
                    .map_err(|e| Error::corrupt(S, offset, format!("cannot decode: {e}")))?,
            );
        }
        Ok(RegionTable {
            offset,
            header,
            entries,
        })
    }

    /// Encode a 64 KiB table holding `entries`, checksum computed.
    pub fn encode(entries: &[RegionTableEntry]) -> Vec<u8> {
        let mut c = Cursor::new(Vec::with_capacity(REGION_TABLE_SIZE));
        let header = RegionTableHeader {
            signature: SIGNATURE,
            checksum: 0,
            entry_count: entries.len() as u32,
            reserved: 0,
        };
        header.write(&mut c).expect("writing to memory cannot fail");
        for e in entries {
            e.write(&mut c).expect("writing to memory cannot fail");
        }
        let mut bytes = c.into_inner();
        bytes.resize(REGION_TABLE_SIZE, 0);
        let crc = crc32c_with_zeroed_field(&bytes, CHECKSUM_FIELD);
        bytes[CHECKSUM_FIELD..CHECKSUM_FIELD + 4].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// File offset of entry `i`.
    pub fn entry_offset(&self, i: usize) -> u64 {
        self.offset + (HEADER_SIZE + i * ENTRY_SIZE) as u64
    }

    /// Check every entry: alignment, placement inside the file and past the
    /// header area, no overlaps, no duplicates, the BAT and metadata regions
    /// present, no unknown required region. Returns (BAT, metadata).
    pub fn validate(&self, file_len: u64) -> Result<(RegionTableEntry, RegionTableEntry)> {
        const S: &str = "VHDX region table";
        let mut bat = None;
        let mut meta = None;
        for (i, e) in self.entries.iter().enumerate() {
            let at = self.entry_offset(i);
            let g = e.guid();
            let len = u64::from(e.length);
            if !e.file_offset.is_multiple_of(REGION_ALIGNMENT)
                || !len.is_multiple_of(REGION_ALIGNMENT)
                || len == 0
            {
                return Err(Error::corrupt(
                    S,
                    at,
                    format!(
                        "region {g} at {:#x}+{len:#x} is not a non-empty whole number of MiB on a MiB boundary",
                        e.file_offset
                    ),
                ));
            }
            if e.file_offset < HEADER_AREA || e.end() > file_len {
                return Err(Error::corrupt(
                    S,
                    at,
                    format!(
                        "region {g} at {:#x}+{len:#x} lies inside the header area or past the end of the {file_len:#x}-byte file",
                        e.file_offset
                    ),
                ));
            }
            for (j, o) in self.entries.iter().enumerate().take(i) {
                if o.guid() == g {
                    return Err(Error::corrupt(
                        S,
                        at,
                        format!("region {g} is listed twice (entries {j} and {i})"),
                    ));
                }
                if e.file_offset < o.end() && o.file_offset < e.end() {
                    return Err(Error::corrupt(
                        S,
                        at,
                        format!(
                            "region {g} at {:#x}+{len:#x} overlaps region {} at {:#x}+{:#x}",
                            e.file_offset,
                            o.guid(),
                            o.file_offset,
                            o.length
                        ),
                    ));
                }
            }
            match g {
                _ if g == BAT_GUID => bat = Some(*e),
                _ if g == METADATA_GUID => meta = Some(*e),
                _ if e.required() => {
                    return Err(Error::unsupported(
                        S,
                        at,
                        format!("unknown region {g} is marked required"),
                    ));
                }
                _ => {}
            }
        }
        match (bat, meta) {
            (Some(b), Some(m)) => Ok((b, m)),
            (None, _) => Err(Error::corrupt(S, self.offset, "no BAT region")),
            (_, None) => Err(Error::corrupt(S, self.offset, "no metadata region")),
        }
    }
}
