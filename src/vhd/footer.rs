//! The hard disk footer: 512 bytes at the end of every VHD, with a copy at
//! offset 0 in dynamic and differencing disks (VHD specification, "Hard Disk
//! Footer Format").

use binrw::binrw;
use uuid::Uuid;

use super::geometry::Geometry;
use crate::checksum::vhd_checksum;
use crate::error::{Error, Result};
use crate::fixed::FixedStruct;

/// Size of the footer structure in bytes.
pub const FOOTER_SIZE: usize = 512;
/// Footer cookie, "conectix".
pub const FOOTER_COOKIE: [u8; 8] = *b"conectix";
/// Byte offset of the checksum field inside the footer.
pub const CHECKSUM_FIELD: usize = 64;
/// Features bit that must always be set ("reserved").
pub const FEATURE_RESERVED: u32 = 0x2;
/// Features bit marking a temporary disk.
pub const FEATURE_TEMPORARY: u32 = 0x1;
/// The only file format version: 1.0.
pub const FILE_FORMAT_VERSION: u32 = 0x0001_0000;
/// `data_offset` of a fixed disk: no dynamic header.
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// Seconds from the Unix epoch to the VHD epoch, 2000-01-01 00:00:00 UTC.
pub const VHD_EPOCH_UNIX: i64 = 946_684_800;
/// Our creator application id.
pub const CREATOR_APPLICATION: [u8; 4] = *b"vhdk";
/// Creator host OS code for Windows, which readers expect.
pub const HOST_OS_WINDOWS: u32 = u32::from_be_bytes(*b"Wi2k");

/// The footer's `disk_type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhdType {
    /// Type 2: data then footer.
    Fixed,
    /// Type 3: sparse blocks behind a block allocation table.
    Dynamic,
    /// Type 4: sparse blocks over a parent.
    Differencing,
}

impl VhdType {
    /// Decode the footer's field.
    pub fn from_code(code: u32) -> Option<VhdType> {
        match code {
            2 => Some(VhdType::Fixed),
            3 => Some(VhdType::Dynamic),
            4 => Some(VhdType::Differencing),
            _ => None,
        }
    }

    /// Encode for the footer.
    pub fn code(self) -> u32 {
        match self {
            VhdType::Fixed => 2,
            VhdType::Dynamic => 3,
            VhdType::Differencing => 4,
        }
    }
}

/// The footer as stored, big-endian.
#[binrw]
#[brw(big)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// "conectix".
    pub cookie: [u8; 8],
    /// Feature bits.
    pub features: u32,
    /// 0x00010000.
    pub file_format_version: u32,
    /// Offset of the dynamic header, or all ones for fixed disks.
    pub data_offset: u64,
    /// Creation time, seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// Four-character id of the creating program.
    pub creator_application: [u8; 4],
    /// Version of the creating program (major in the high 16 bits).
    pub creator_version: u32,
    /// Host OS code ("Wi2k", "Mac ").
    pub creator_host_os: u32,
    /// Size at creation.
    pub original_size: u64,
    /// Size now: the virtual disk's size.
    pub current_size: u64,
    /// CHS cylinders.
    pub cylinders: u16,
    /// CHS heads.
    pub heads: u8,
    /// CHS sectors per track.
    pub sectors_per_track: u8,
    /// 2 fixed, 3 dynamic, 4 differencing.
    pub disk_type: u32,
    /// One's complement byte sum.
    pub checksum: u32,
    /// The disk's unique id.
    pub unique_id: [u8; 16],
    /// 1 when the disk is in a saved state.
    pub saved_state: u8,
    /// Reserved; kept as found.
    pub reserved: [u8; 427],
}

/// Decoding takes 512 bytes (a 511-byte legacy footer is passed padded
/// with a zero); only the layout is decoded, [`Footer::validate`] judges
/// the values.
impl FixedStruct for Footer {
    const SIZE: usize = FOOTER_SIZE;
    const NAME: &'static str = "VHD footer";
}

impl Footer {
    /// A new footer for a disk we create.
    pub fn new(
        kind: VhdType,
        size: u64,
        data_offset: u64,
        unique_id: Uuid,
        timestamp: u32,
    ) -> Self {
        let g = Geometry::to_store(size);
        let version = env!("CARGO_PKG_VERSION_MAJOR").parse::<u32>().unwrap_or(0) << 16
            | env!("CARGO_PKG_VERSION_MINOR").parse::<u32>().unwrap_or(0);
        let mut f = Footer {
            cookie: FOOTER_COOKIE,
            features: FEATURE_RESERVED,
            file_format_version: FILE_FORMAT_VERSION,
            data_offset,
            timestamp,
            creator_application: CREATOR_APPLICATION,
            creator_version: version,
            creator_host_os: HOST_OS_WINDOWS,
            original_size: size,
            current_size: size,
            cylinders: g.cylinders,
            heads: g.heads,
            sectors_per_track: g.sectors_per_track,
            disk_type: kind.code(),
            checksum: 0,
            unique_id: *unique_id.as_bytes(),
            saved_state: 0,
            reserved: [0; 427],
        };
        f.checksum = f.compute_checksum();
        f
    }

    /// The checksum the footer should carry.
    pub fn compute_checksum(&self) -> u32 {
        vhd_checksum(&self.to_bytes(), CHECKSUM_FIELD)
    }

    /// Whether the stored checksum is right.
    pub fn checksum_ok(&self) -> bool {
        self.checksum == self.compute_checksum()
    }

    /// The decoded disk type, if valid.
    pub fn vhd_type(&self) -> Option<VhdType> {
        VhdType::from_code(self.disk_type)
    }

    /// The unique id.
    pub fn unique_id(&self) -> Uuid {
        crate::guid::from_be_bytes(self.unique_id)
    }

    /// The stored CHS geometry.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            cylinders: self.cylinders,
            heads: self.heads,
            sectors_per_track: self.sectors_per_track,
        }
    }

    /// Check the values a reader depends on; the cookie and checksum are
    /// judged by the caller, which may fall back to the other copy.
    pub fn validate(&self, offset: u64) -> Result<VhdType> {
        let kind = self.vhd_type().ok_or_else(|| {
            Error::unsupported(
                "VHD footer",
                offset + 60,
                format!(
                    "disk type {} is not 2 (fixed), 3 (dynamic) or 4 (differencing)",
                    self.disk_type
                ),
            )
        })?;
        if self.file_format_version >> 16 != 1 {
            return Err(Error::unsupported(
                "VHD footer",
                offset + 12,
                format!(
                    "file format version {:#010x}, expected major version 1",
                    self.file_format_version
                ),
            ));
        }
        if !self.current_size.is_multiple_of(super::geometry::SECTOR) {
            return Err(Error::corrupt(
                "VHD footer",
                offset + 48,
                format!(
                    "current size {} is not a multiple of 512",
                    self.current_size
                ),
            ));
        }
        if self.current_size > super::MAX_VIRTUAL_SIZE {
            return Err(Error::unsupported(
                "VHD footer",
                offset + 48,
                format!(
                    "current size {} exceeds the VHD maximum of {} bytes",
                    self.current_size,
                    super::MAX_VIRTUAL_SIZE
                ),
            ));
        }
        if kind != VhdType::Fixed && self.data_offset == NO_DATA_OFFSET {
            return Err(Error::corrupt(
                "VHD footer",
                offset + 16,
                "a dynamic disk must have a dynamic header offset",
            ));
        }
        Ok(kind)
    }

    /// `creator_application` as text, trailing spaces and NULs trimmed.
    pub fn creator_app_str(&self) -> String {
        printable(&self.creator_application)
    }

    /// Host OS code as text.
    pub fn host_os_str(&self) -> String {
        printable(&self.creator_host_os.to_be_bytes())
    }

    /// "win  10.0 (Wi2k)"-style creator summary.
    pub fn creator_summary(&self) -> String {
        format!(
            "{} {}.{} ({})",
            self.creator_app_str(),
            self.creator_version >> 16,
            self.creator_version & 0xffff,
            self.host_os_str()
        )
    }
}

/// Four-character codes as text, with unprintable bytes escaped.
pub fn printable(b: &[u8]) -> String {
    let s: String = b
        .iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                (c as char).to_string()
            } else {
                format!("\\x{c:02x}")
            }
        })
        .collect();
    s.trim_end_matches([' '])
        .trim_end_matches("\\x00")
        .to_string()
}

/// VHD timestamp to ISO-8601.
pub fn timestamp_iso(ts: u32) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(VHD_EPOCH_UNIX + i64::from(ts));
    match t {
        Ok(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The current time as a VHD timestamp.
pub fn now_timestamp() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(VHD_EPOCH_UNIX);
    u32::try_from(unix - VHD_EPOCH_UNIX).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksum() {
        let f = Footer::new(VhdType::Dynamic, 10 << 20, 512, Uuid::nil(), 0);
        let b = f.to_bytes();
        assert_eq!(&b[..8], b"conectix");
        let g = Footer::parse(&b, 0).unwrap();
        assert_eq!(g, f);
        assert!(g.checksum_ok());
        assert_eq!(g.validate(0).unwrap(), VhdType::Dynamic);
        assert_eq!(timestamp_iso(0), "2000-01-01T00:00:00Z");
    }
}
