//! What `info` reports of an open VHDX.

use std::collections::BTreeMap;

use super::header::HeaderSlot;
use super::log::Sequence;
use super::metadata::{FLAG_IS_VIRTUAL_DISK, Metadata};
use super::parent_locator::ParentLocator;
use super::region_table::RegionTableEntry;
use super::{LogReplay, VhdxDisk, bat};
use crate::parent::Parent;
use crate::report::{
    DiskType, Format, FormatDetails, ImageInfo, VhdxBatDetails, VhdxDetails, VhdxFileParameters,
    VhdxHeaderDetails, VhdxLogDetails, VhdxLogSequenceDetails, VhdxLogState, VhdxMetadataDetails,
    VhdxMetadataItemDetails, VhdxMetadataValue, VhdxParentLocatorDetails, VhdxRegionDetails,
    VhdxRegionTableDetails,
};

/// BAT entries counted by state name.
struct StateCounts {
    payload: BTreeMap<String, u64>,
    bitmaps: BTreeMap<String, u64>,
    /// Payload blocks stored in the file (fully or partly present).
    stored: u64,
}

impl VhdxDisk {
    /// Everything `info` reports.
    pub(super) fn image_info(&self) -> ImageInfo {
        let s = &self.s;
        let m = &s.metadata;
        let counts = self.count_states();
        let h = s.header();
        let details = VhdxDetails {
            bat: VhdxBatDetails {
                entries: s.layout.total_entries,
                offset: s.bat_region.file_offset,
                payload_blocks: s.layout.data_blocks,
                payload_states: counts.payload,
                sector_bitmap_blocks: s.layout.bitmap_blocks,
                sector_bitmap_states: counts.bitmaps,
            },
            chunk_ratio: s.layout.chunk_ratio,
            creator: s.creator.clone(),
            file_parameters: file_parameters(m),
            headers: s
                .slots
                .iter()
                .enumerate()
                .map(|(i, slot)| header_details(i, slot, i == s.current))
                .collect(),
            log: VhdxLogDetails {
                guid: h.log_guid(),
                length: h.log_length,
                offset: h.log_offset,
                replayed: sequence_details(&self.log_sequence),
                state: match self.log_replay {
                    LogReplay::Empty => VhdxLogState::Empty,
                    LogReplay::NoActiveSequence => VhdxLogState::NoActiveSequence,
                    LogReplay::InMemory => VhdxLogState::ReplayedInMemory,
                    LogReplay::OnDisk => VhdxLogState::ReplayedOnDisk,
                },
            },
            metadata: metadata_details(m),
            parent_locator: m.parent_locator.as_ref().map(locator_details),
            region_table: VhdxRegionTableDetails {
                copy_used: s.region_table_used as u64 + 1,
                entries: s.region_table.entries.iter().map(region_details).collect(),
                problems: s.region_table_problems.to_vec(),
            },
        };
        let allocated = (counts.stored * s.layout.block_size).min(m.virtual_size);
        ImageInfo {
            format: Format::Vhdx,
            disk_type: if m.has_parent {
                DiskType::Differencing
            } else if m.leave_block_allocated {
                DiskType::Fixed
            } else {
                DiskType::Dynamic
            },
            virtual_size: m.virtual_size,
            file_size: self.storage.inner().len().unwrap_or(0),
            logical_sector_size: m.logical_sector_size,
            physical_sector_size: m.physical_sector_size,
            block_size: Some(u64::from(m.block_size)),
            disk_id: Some(m.page_83.to_string()),
            creator: Some(s.creator.clone()),
            minimum_size: None,
            allocated_bytes: allocated,
            data_write_id: Some(h.data_write_guid().to_string()),
            parent: self.parent.as_ref().map(Parent::info),
            warnings: self
                .warnings
                .iter()
                .cloned()
                .chain(self.parent.iter().flat_map(Parent::warnings))
                .collect(),
            details: FormatDetails::Vhdx(Box::new(details)),
        }
    }

    fn count_states(&self) -> StateCounts {
        let l = &self.s.layout;
        let diff = self.is_differencing();
        let mut counts = StateCounts {
            payload: BTreeMap::new(),
            bitmaps: BTreeMap::new(),
            stored: 0,
        };
        for i in 0..l.total_entries {
            let st = bat::state(self.s.bat[i as usize]);
            let (map, name) = if l.is_bitmap_index(i) {
                (&mut counts.bitmaps, bat::bitmap_state_name(st))
            } else {
                if i - i / (l.chunk_ratio + 1) >= l.data_blocks {
                    continue;
                }
                if matches!(
                    st,
                    bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT
                ) {
                    counts.stored += 1;
                }
                (&mut counts.payload, bat::payload_state_name(st, diff))
            };
            let key = name.map_or_else(|| format!("invalid_{st}"), str::to_string);
            *map.entry(key).or_insert(0) += 1;
        }
        counts
    }
}

fn file_parameters(m: &Metadata) -> VhdxFileParameters {
    VhdxFileParameters {
        block_size: m.block_size,
        has_parent: m.has_parent,
        leave_block_allocated: m.leave_block_allocated,
    }
}

/// Header slot `i` (0 or 1).
fn header_details(i: usize, slot: &HeaderSlot, current: bool) -> VhdxHeaderDetails {
    let h = &slot.header;
    VhdxHeaderDetails {
        checksum: format!("{:#010x}", h.checksum),
        current,
        data_write_guid: h.data_write_guid(),
        file_write_guid: h.file_write_guid(),
        log_guid: h.log_guid(),
        log_length: h.log_length,
        log_offset: h.log_offset,
        log_version: h.log_version,
        offset: slot.offset,
        problem: slot.problem.clone(),
        sequence_number: h.sequence_number,
        slot: i as u64 + 1,
        valid: slot.is_valid(),
        version: h.version,
    }
}

fn sequence_details(seq: &Sequence) -> VhdxLogSequenceDetails {
    let ends = seq.entries.first().zip(seq.entries.last());
    VhdxLogSequenceDetails {
        descriptors: ends.map(|_| seq.entries.iter().map(|e| e.ops.len() as u64).sum()),
        entries: seq.entries.len() as u64,
        first_sequence_number: ends.map(|(t, _)| t.header.sequence_number),
        head_offset: ends.map(|(_, h)| h.position),
        last_sequence_number: ends.map(|(_, h)| h.header.sequence_number),
        tail_offset: ends.map(|(t, _)| t.position),
    }
}

/// Every item, known ones with their decoded value.
fn metadata_details(m: &Metadata) -> VhdxMetadataDetails {
    let items = m
        .entries
        .iter()
        .map(|e| {
            let value = match e.name() {
                Some("file_parameters") => {
                    Some(VhdxMetadataValue::FileParameters(file_parameters(m)))
                }
                Some("virtual_disk_size") => Some(VhdxMetadataValue::Number(m.virtual_size)),
                Some("page_83_data") => Some(VhdxMetadataValue::Id(m.page_83)),
                Some("logical_sector_size") => {
                    Some(VhdxMetadataValue::Number(u64::from(m.logical_sector_size)))
                }
                Some("physical_sector_size") => {
                    Some(VhdxMetadataValue::Number(u64::from(m.physical_sector_size)))
                }
                Some("parent_locator") => m
                    .parent_locator
                    .as_ref()
                    .map(|p| VhdxMetadataValue::ParentLocator(locator_details(p))),
                _ => None,
            };
            VhdxMetadataItemDetails {
                is_required: e.is_required(),
                is_user: e.is_user(),
                is_virtual_disk: e.flags & FLAG_IS_VIRTUAL_DISK != 0,
                item_id: e.item_id(),
                known: e.name().is_some(),
                length: e.length,
                name: e.name(),
                offset: e.offset,
                value,
            }
        })
        .collect();
    VhdxMetadataDetails {
        items,
        offset: m.region_offset,
    }
}

fn locator_details(p: &ParentLocator) -> VhdxParentLocatorDetails {
    VhdxParentLocatorDetails {
        // A key stored twice shows its last value.
        entries: p.entries.iter().cloned().collect(),
        locator_type: p.locator_type,
    }
}

fn region_details(e: &RegionTableEntry) -> VhdxRegionDetails {
    VhdxRegionDetails {
        file_offset: e.file_offset,
        guid: e.guid(),
        length: e.length,
        name: e.name(),
        required: e.required(),
    }
}
