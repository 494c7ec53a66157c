//! The origin record of a container (header bytes 164..196): what it was
//! converted from, so that decrypting restores the same kind of image by
//! default.

use uuid::Uuid;

use crate::report::{DiskType, Format, ImageInfo};

/// What the container was converted from, so that decrypting restores the
/// same kind of image by default (header bytes 164..228).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    /// Source format, `None` when created directly.
    pub format: Option<Format>,
    /// Source disk type.
    pub disk_type: Option<DiskType>,
    /// Source block size in bytes (0 when not sparse).
    pub block_size: u32,
    /// Source logical sector size.
    pub logical_sector_size: u32,
    /// Source physical sector size.
    pub physical_sector_size: u32,
    /// Source disk identifier (VHD unique id, VHDX disk id).
    pub disk_id: Option<Uuid>,
}

pub(super) fn format_code(f: Option<Format>) -> u8 {
    match f {
        None => 0,
        Some(Format::Raw) => 1,
        Some(Format::Vhd) => 2,
        Some(Format::Vhdx) => 3,
        Some(Format::Evhd) => 4,
    }
}

pub(super) fn format_from(c: u8) -> Option<Option<Format>> {
    Some(match c {
        0 => None,
        1 => Some(Format::Raw),
        2 => Some(Format::Vhd),
        3 => Some(Format::Vhdx),
        4 => Some(Format::Evhd),
        _ => return None,
    })
}

pub(super) fn type_code(t: Option<DiskType>) -> u8 {
    match t {
        None => 0,
        Some(DiskType::Fixed) => 1,
        Some(DiskType::Dynamic) => 2,
        Some(DiskType::Differencing) => 3,
    }
}

pub(super) fn type_from(c: u8) -> Option<Option<DiskType>> {
    Some(match c {
        0 => None,
        1 => Some(DiskType::Fixed),
        2 => Some(DiskType::Dynamic),
        3 => Some(DiskType::Differencing),
        _ => return None,
    })
}

impl Origin {
    /// The origin recorded in an EVHD's `info` (its `evhd.origin` object).
    pub fn from_info(info: &ImageInfo) -> Option<Origin> {
        let o = &info.details.evhd()?.origin;
        Some(Origin {
            format: o.format,
            disk_type: o.disk_type,
            block_size: o.block_size.unwrap_or(0),
            logical_sector_size: o.logical_sector_size,
            physical_sector_size: o.physical_sector_size,
            disk_id: o.disk_id,
        })
    }

    /// The origin of converting `src` (an EVHD keeps its own origin).
    pub fn of(info: &ImageInfo) -> Origin {
        if info.format == Format::Evhd {
            return Origin::from_info(info).unwrap_or_default();
        }
        Origin {
            format: Some(info.format),
            disk_type: Some(match info.disk_type {
                DiskType::Differencing => DiskType::Dynamic,
                t => t,
            }),
            block_size: info
                .block_size
                .and_then(|b| u32::try_from(b).ok())
                .unwrap_or(0),
            logical_sector_size: info.logical_sector_size,
            physical_sector_size: info.physical_sector_size,
            disk_id: info
                .disk_id
                .as_deref()
                .and_then(|s| Uuid::parse_str(s).ok()),
        }
    }
}
