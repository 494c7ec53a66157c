//! The structures every VHDX reader needs (headers, region table,
//! metadata, BAT), read through the replayed log, and where blocks may lie.

use super::bat::{self, Layout};
use super::file_identifier::{DECODED_SIZE, FileIdentifier};
use super::header::{self, HeaderSlot};
use super::metadata::Metadata;
use super::region_table::{
    HEADER_AREA, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, RegionTable, RegionTableEntry,
};
use crate::error::{Error, Result};
use crate::io::{Storage, io_err, read_struct};

/// The structures every VHDX reader needs, read through the replayed log.
#[derive(Debug)]
pub struct Structure {
    /// The creator recorded in the file identifier.
    pub creator: String,
    /// Both header slots.
    pub slots: [HeaderSlot; 2],
    /// Index of the current header.
    pub current: usize,
    /// The region table in use.
    pub region_table: RegionTable,
    /// Which copy (0 or 1) is in use.
    pub region_table_used: usize,
    /// Why each copy is unusable, if it is.
    pub region_table_problems: [Option<String>; 2],
    /// The BAT region.
    pub bat_region: RegionTableEntry,
    /// The metadata region.
    pub metadata_region: RegionTableEntry,
    /// The metadata items.
    pub metadata: Metadata,
    /// The BAT's shape.
    pub layout: Layout,
    /// The BAT.
    pub bat: Vec<u64>,
    /// File length (after the replay).
    pub file_len: u64,
}

/// Read the file identifier.
pub fn read_file_identifier(storage: &dyn Storage) -> Result<FileIdentifier> {
    let mut b = [0u8; DECODED_SIZE];
    read_struct(storage, "VHDX file identifier", &mut b, 0)?;
    FileIdentifier::parse(&b)
}

/// Read both region tables; the first valid one is used.
#[allow(clippy::type_complexity)]
pub fn read_region_tables(
    storage: &dyn Storage,
) -> Result<(RegionTable, usize, [Option<String>; 2])> {
    let mut tables: [Option<RegionTable>; 2] = [None, None];
    let mut problems: [Option<String>; 2] = [None, None];
    for (i, &off) in REGION_TABLE_OFFSETS.iter().enumerate() {
        let mut b = vec![0u8; REGION_TABLE_SIZE];
        match read_struct(storage, "VHDX region table", &mut b, off)
            .and_then(|_| RegionTable::parse(&b, off))
        {
            Ok(t) => tables[i] = Some(t),
            // Said of the table by the caller: the message alone, with
            // the field's offset when it is not the table's.
            Err(e) => {
                problems[i] = Some(match (e.structure(), e.offset()) {
                    (Some("VHDX region table"), Some(o)) if o == off => e.message().to_string(),
                    (Some("VHDX region table"), Some(o)) => format!("at {o:#x}: {}", e.message()),
                    _ => e.to_string(),
                })
            }
        }
    }
    let [a, b] = tables;
    match (a, b) {
        (Some(t), _) => Ok((t, 0, problems)),
        (None, Some(t)) => Ok((t, 1, problems)),
        (None, None) => Err(Error::corrupt(
            "VHDX region table",
            REGION_TABLE_OFFSETS[0],
            format!(
                "neither region table is valid: the primary (at {:#x}): {}; the backup (at {:#x}): {}",
                REGION_TABLE_OFFSETS[0],
                problems[0].as_deref().unwrap_or("?"),
                REGION_TABLE_OFFSETS[1],
                problems[1].as_deref().unwrap_or("?")
            ),
        )),
    }
}

impl Structure {
    /// Read everything past the headers from `storage` (already showing the
    /// replayed log), given the header slots and the current one.
    /// `unlogged_len` is the file's length before the log extended it: the
    /// regions were made with the file and must lie within it, so a log
    /// that claims a huge file cannot make the BAT's memory grow with it.
    pub fn load(
        storage: &dyn Storage,
        creator: String,
        slots: [HeaderSlot; 2],
        current: usize,
        unlogged_len: u64,
    ) -> Result<Structure> {
        let file_len = storage.len().map_err(io_err("VHDX file", 0))?;
        let (region_table, region_table_used, region_table_problems) = read_region_tables(storage)?;
        let (bat_region, metadata_region) = region_table.validate(file_len.min(unlogged_len))?;
        let h = &slots[current].header;
        if h.log_length > 0 {
            let (ls, le) = (h.log_offset, h.log_offset + u64::from(h.log_length));
            for e in &region_table.entries {
                if e.file_offset < le && ls < e.end() {
                    return Err(Error::corrupt(
                        "VHDX region table",
                        region_table.offset,
                        format!(
                            "region {} at {:#x}+{:#x} overlaps the log at {ls:#x}+{:#x}",
                            e.guid(),
                            e.file_offset,
                            e.length,
                            h.log_length
                        ),
                    ));
                }
            }
        }
        let metadata =
            Metadata::load(storage, metadata_region.file_offset, metadata_region.length)?;
        let layout = Layout::new(
            metadata.virtual_size,
            metadata.block_size,
            metadata.logical_sector_size,
            metadata.has_parent,
        );
        let bat = bat::load(storage, bat_region.file_offset, bat_region.length, &layout)?;
        Ok(Structure {
            creator,
            slots,
            current,
            region_table,
            region_table_used,
            region_table_problems,
            bat_region,
            metadata_region,
            metadata,
            layout,
            bat,
            file_len,
        })
    }

    /// The current header.
    pub fn header(&self) -> &header::Header {
        &self.slots[self.current].header
    }

    /// File offset of BAT entry `index`.
    pub fn entry_offset(&self, index: u64) -> u64 {
        self.bat_region.file_offset + index * bat::ENTRY_SIZE
    }

    /// Fixed regions a block must not overlap: header area, log, BAT,
    /// metadata and any other region.
    pub fn reserved_ranges(&self) -> Vec<(u64, u64, String)> {
        let mut v = vec![(0, HEADER_AREA, "the header area".to_string())];
        let h = self.header();
        if h.log_length > 0 {
            v.push((
                h.log_offset,
                h.log_offset + u64::from(h.log_length),
                "the log".into(),
            ));
        }
        for e in &self.region_table.entries {
            let name = e
                .name()
                .map(|n| format!("the {n} region"))
                .unwrap_or_else(|| format!("region {}", e.guid()));
            v.push((e.file_offset, e.end(), name));
        }
        v
    }

    /// Why the block of BAT entry `index` (`size` bytes at its offset)
    /// cannot be used, if it cannot: it must lie past the header area,
    /// start inside the file and not overlap a region. A block the file
    /// ends inside is allowed here: reading its missing tail is an error
    /// or, salvaging, zeros ([`crate::damage`]).
    pub fn block_problem(&self, index: u64, size: u64) -> Option<String> {
        let off = bat::file_offset(self.bat[index as usize]);
        if off >= self.file_len {
            return Some(format!(
                "block offset {off:#x} lies past the end of the {:#x}-byte file",
                self.file_len
            ));
        }
        let end = off.saturating_add(size);
        // The common case without building the list and its names.
        let h = self.header();
        let log_end = h.log_offset + u64::from(h.log_length);
        let hits = off < HEADER_AREA
            || (h.log_length > 0 && off < log_end && h.log_offset < end)
            || self
                .region_table
                .entries
                .iter()
                .any(|e| off < e.end() && e.file_offset < end);
        if !hits {
            return None;
        }
        for (s, e, what) in self.reserved_ranges() {
            if off < e && s < end {
                return Some(format!(
                    "block at {off:#x}+{size:#x} overlaps {what} at {s:#x}..{e:#x}"
                ));
            }
        }
        None
    }

    pub(crate) fn corrupt_entry(&self, index: u64, msg: String) -> Error {
        Error::corrupt("VHDX BAT entry", self.entry_offset(index), msg)
    }
}
