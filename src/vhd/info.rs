//! What `info` reports of an open VHD.

use super::footer::{self, VhdType};
use super::geometry::SECTOR;
use super::{FooterSource, VhdDisk, bat};
use crate::parent::Parent;
use crate::report::{
    DiskType, Format, FormatDetails, ImageInfo, VhdBlocks, VhdDetails, VhdDynamicHeaderDetails,
    VhdFooterDetails, VhdGeometryDetails, VhdLocatorDetails,
};

/// `major.minor` of a version field.
fn version(v: u32) -> String {
    format!("{}.{}", v >> 16, v & 0xffff)
}

impl VhdDisk {
    /// Everything `info` reports.
    pub(super) fn image_info(&self) -> ImageInfo {
        let f = &self.footer;
        let kind = self.vhd_type();
        let file_size = self.storage.len().unwrap_or(0);
        let stored_blocks = self.sparse.as_ref().map(|s| {
            let used = f.current_size.div_ceil(s.block_size) as usize;
            s.bat
                .iter()
                .take(used)
                .filter(|&&e| e != bat::UNUSED)
                .count() as u64
        });
        let (block_size, allocated) = match (&self.sparse, stored_blocks) {
            (Some(s), Some(n)) => (Some(s.block_size), (n * s.block_size).min(f.current_size)),
            _ => (None, f.current_size),
        };
        let g = f.geometry();
        let footer = VhdFooterDetails {
            checksum: format!("{:#010x}", f.checksum),
            checksum_ok: f.checksum_ok(),
            cookie: String::from_utf8_lossy(&f.cookie).into_owned(),
            creator_application: f.creator_app_str(),
            creator_host_os: f.host_os_str(),
            creator_version: version(f.creator_version),
            current_size: f.current_size,
            data_offset: (f.data_offset != footer::NO_DATA_OFFSET).then_some(f.data_offset),
            disk_type: f.disk_type,
            features: format!("{:#010x}", f.features),
            file_format_version: version(f.file_format_version),
            geometry: VhdGeometryDetails {
                chs_size: g.size(),
                cylinders: g.cylinders,
                heads: g.heads,
                sectors_per_track: g.sectors_per_track,
            },
            original_size: f.original_size,
            saved_state: f.saved_state != 0,
            source: match self.footer_source {
                FooterSource::End => "end",
                FooterSource::EndLegacy => "end-511",
                FooterSource::Copy => "copy-at-0",
            },
            temporary: f.features & footer::FEATURE_TEMPORARY != 0,
            timestamp: footer::timestamp_iso(f.timestamp),
            unique_id: f.unique_id(),
        };
        let differencing = kind == VhdType::Differencing;
        let dynamic_header = self.sparse.as_ref().map(|s| {
            let h = &s.header;
            VhdDynamicHeaderDetails {
                block_size: h.block_size,
                checksum: format!("{:#010x}", h.checksum),
                checksum_ok: h.checksum_ok(),
                cookie: String::from_utf8_lossy(&h.cookie).into_owned(),
                data_offset: format!("{:#018x}", h.data_offset),
                header_version: version(h.header_version),
                max_table_entries: h.max_table_entries,
                offset: s.header_offset,
                parent_locators: self
                    .locators()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| VhdLocatorDetails {
                        data_length: l.data_length,
                        data_offset: l.data_offset,
                        data_space: l.data_space,
                        path: l.path,
                        platform: l.platform,
                        relative: l.relative,
                    })
                    .collect(),
                parent_timestamp: differencing.then(|| footer::timestamp_iso(h.parent_timestamp)),
                parent_unicode_name: h.parent_name(),
                parent_unique_id: differencing.then(|| h.parent_unique_id()),
                table_offset: h.table_offset,
            }
        });
        let blocks = self.sparse.as_ref().map(|s| VhdBlocks {
            allocated: stored_blocks.unwrap_or(0),
            bitmap_size: s.bitmap_size,
            total: f.current_size.div_ceil(s.block_size),
        });
        let cloud_problems = super::cloud::cloud_problems(f, self.footer_source, file_size);
        let warnings: Vec<_> = self
            .warnings
            .iter()
            .cloned()
            .chain(self.parent.iter().flat_map(Parent::warnings))
            .collect();
        let details = VhdDetails {
            blocks,
            dynamic_header,
            footer,
            footer_copy_ok: (kind != VhdType::Fixed).then_some(self.copy_ok),
            cloud_ready: cloud_problems.is_empty(),
            cloud_problems,
        };
        ImageInfo {
            format: Format::Vhd,
            disk_type: match kind {
                VhdType::Fixed => DiskType::Fixed,
                VhdType::Dynamic => DiskType::Dynamic,
                VhdType::Differencing => DiskType::Differencing,
            },
            virtual_size: f.current_size,
            file_size,
            logical_sector_size: SECTOR as u32,
            physical_sector_size: SECTOR as u32,
            block_size,
            disk_id: Some(f.unique_id().to_string()),
            creator: Some(f.creator_summary()),
            minimum_size: None,
            allocated_bytes: allocated,
            data_write_id: None,
            parent: self.parent.as_ref().map(Parent::info),
            warnings,
            details: FormatDetails::Vhd(Box::new(details)),
        }
    }
}
