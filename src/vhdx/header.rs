//! The two VHDX headers at 64 KiB and 128 KiB: sequence number, write GUIDs,
//! log location ([MS-VHDX] 2.2.2). The current one is the valid header with
//! the higher sequence number; updates write the other one first so that a
//! torn write always leaves one valid header.

use binrw::binrw;
use uuid::Uuid;

use crate::checksum::crc32c_with_zeroed_field;
use crate::error::{Error, Result};
use crate::fixed::FixedStruct;
use crate::guid::{from_ms_bytes, to_ms_bytes};
use crate::io::{Storage, io_err, read_struct};

/// File offsets of header 1 and header 2.
pub const HEADER_OFFSETS: [u64; 2] = [64 * 1024, 128 * 1024];
/// Bytes covered by a header's checksum (the header and its padding).
pub const HEADER_SIZE: usize = 4096;
/// Header signature, "head".
pub const SIGNATURE: [u8; 4] = *b"head";
/// Byte offset of the checksum field inside the header.
pub const CHECKSUM_FIELD: usize = 4;
/// The only header version defined ([MS-VHDX] 2.2.2: must be 1).
pub const VERSION: u16 = 1;
/// The only log version defined ([MS-VHDX] 2.2.2: must be 0).
pub const LOG_VERSION: u16 = 0;
/// Log offsets and lengths are multiples of 1 MiB.
pub const LOG_ALIGNMENT: u64 = 1 << 20;

/// A header as stored, little-endian.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// "head".
    pub signature: [u8; 4],
    /// CRC-32C of the 4 KiB header with this field zeroed.
    pub checksum: u32,
    /// Higher is newer.
    pub sequence_number: u64,
    /// Changes before the first write to the file in a session.
    pub file_write_guid: [u8; 16],
    /// Changes before the first write of guest-visible data; a child's
    /// `parent_linkage` names its parent by this GUID.
    pub data_write_guid: [u8; 16],
    /// Non-zero when the log holds entries to replay.
    pub log_guid: [u8; 16],
    /// Must be 0.
    pub log_version: u16,
    /// Must be 1.
    pub version: u16,
    /// Bytes of the log region.
    pub log_length: u32,
    /// File offset of the log region.
    pub log_offset: u64,
    /// Reserved, covered by the checksum; kept as found.
    pub reserved: [u8; 4016],
}

/// Decoding takes 4 KiB; [`Header::problem`] judges the values.
impl FixedStruct for Header {
    const SIZE: usize = HEADER_SIZE;
    const NAME: &'static str = "VHDX header";
}

impl Header {
    /// The checksum the header should carry.
    pub fn compute_checksum(&self) -> u32 {
        crc32c_with_zeroed_field(&self.to_bytes(), CHECKSUM_FIELD)
    }

    /// Why the header is not usable, or `None` if it is valid.
    pub fn problem(&self) -> Option<String> {
        if self.signature != SIGNATURE {
            return Some(format!(
                "signature is {:?}, expected \"head\"",
                String::from_utf8_lossy(&self.signature)
            ));
        }
        let computed = self.compute_checksum();
        if self.checksum != computed {
            return Some(format!(
                "bad CRC-32C: stored {:#010x}, computed {computed:#010x}",
                self.checksum
            ));
        }
        None
    }

    /// The FileWriteGuid.
    pub fn file_write_guid(&self) -> Uuid {
        from_ms_bytes(self.file_write_guid)
    }

    /// The DataWriteGuid.
    pub fn data_write_guid(&self) -> Uuid {
        from_ms_bytes(self.data_write_guid)
    }

    /// The LogGuid (nil when the log is empty).
    pub fn log_guid(&self) -> Uuid {
        from_ms_bytes(self.log_guid)
    }

    /// Set the LogGuid.
    pub fn set_log_guid(&mut self, g: Uuid) {
        self.log_guid = to_ms_bytes(g);
    }

    /// Set the FileWriteGuid.
    pub fn set_file_write_guid(&mut self, g: Uuid) {
        self.file_write_guid = to_ms_bytes(g);
    }

    /// Set the DataWriteGuid.
    pub fn set_data_write_guid(&mut self, g: Uuid) {
        self.data_write_guid = to_ms_bytes(g);
    }

    /// A new header: the given GUIDs, an empty log at `log_offset` of
    /// `log_length` bytes, checksum computed.
    pub fn new(
        sequence_number: u64,
        file_write_guid: Uuid,
        data_write_guid: Uuid,
        log_offset: u64,
        log_length: u32,
    ) -> Header {
        let mut h = Header {
            signature: SIGNATURE,
            checksum: 0,
            sequence_number,
            file_write_guid: to_ms_bytes(file_write_guid),
            data_write_guid: to_ms_bytes(data_write_guid),
            log_guid: [0; 16],
            log_version: LOG_VERSION,
            version: VERSION,
            log_length,
            log_offset,
            reserved: [0; 4016],
        };
        h.checksum = h.compute_checksum();
        h
    }

    /// Check the values a reader depends on (header at `offset`).
    pub fn validate(&self, offset: u64, file_len: u64) -> Result<()> {
        if self.version != VERSION {
            return Err(Error::unsupported(
                "VHDX header",
                offset + 66,
                format!("version {} is not {VERSION}", self.version),
            ));
        }
        if self.log_version != LOG_VERSION {
            return Err(Error::unsupported(
                "VHDX header",
                offset + 64,
                format!("log version {} is not {LOG_VERSION}", self.log_version),
            ));
        }
        let len = u64::from(self.log_length);
        if !len.is_multiple_of(LOG_ALIGNMENT) || !self.log_offset.is_multiple_of(LOG_ALIGNMENT) {
            return Err(Error::corrupt(
                "VHDX header",
                offset + 68,
                format!(
                    "log offset {:#x} and length {len:#x} must be multiples of 1 MiB",
                    self.log_offset
                ),
            ));
        }
        if len > 0
            && (self.log_offset < LOG_ALIGNMENT
                || self
                    .log_offset
                    .checked_add(len)
                    .is_none_or(|e| e > file_len))
        {
            return Err(Error::corrupt(
                "VHDX header",
                offset + 72,
                format!(
                    "log region {:#x}+{len:#x} lies outside the {file_len:#x}-byte file or inside the header area",
                    self.log_offset
                ),
            ));
        }
        Ok(())
    }
}

/// One of the two header slots as found in the file.
#[derive(Debug, Clone)]
pub struct HeaderSlot {
    /// File offset of the slot.
    pub offset: u64,
    /// The decoded header (decoding a complete 4 KiB block cannot fail).
    pub header: Header,
    /// Why the header is not valid, if it is not.
    pub problem: Option<String>,
}

impl HeaderSlot {
    /// Whether the header is valid (signature and checksum).
    pub fn is_valid(&self) -> bool {
        self.problem.is_none()
    }
}

/// Read both header slots.
pub fn read_slots(storage: &dyn Storage) -> Result<[HeaderSlot; 2]> {
    let read = |offset: u64| -> Result<HeaderSlot> {
        let mut b = [0u8; HEADER_SIZE];
        read_struct(storage, "VHDX header", &mut b, offset)?;
        let header = Header::parse(&b, offset)?;
        let problem = header.problem();
        Ok(HeaderSlot {
            offset,
            header,
            problem,
        })
    };
    Ok([read(HEADER_OFFSETS[0])?, read(HEADER_OFFSETS[1])?])
}

/// The index (0 or 1) of the current header: the valid one with the higher
/// sequence number, header 1 on a tie. Fails when neither is valid.
pub fn current(slots: &[HeaderSlot; 2]) -> Result<usize> {
    match (slots[0].is_valid(), slots[1].is_valid()) {
        (true, true) => Ok(
            if slots[1].header.sequence_number > slots[0].header.sequence_number {
                1
            } else {
                0
            },
        ),
        (true, false) => Ok(0),
        (false, true) => Ok(1),
        (false, false) => Err(Error::corrupt(
            "VHDX header",
            HEADER_OFFSETS[0],
            format!(
                "neither header is valid: header 1 at {:#x}: {}; header 2 at {:#x}: {}",
                HEADER_OFFSETS[0],
                slots[0].problem.as_deref().unwrap_or("?"),
                HEADER_OFFSETS[1],
                slots[1].problem.as_deref().unwrap_or("?")
            ),
        )),
    }
}

/// Replace the headers with `new` (sequence number taken from the current
/// header): write the non-current slot with sequence + 1, flush, then the
/// other with sequence + 2, flush. A crash at any point leaves a valid
/// header, either the old or the new content. Returns the new slots.
pub fn update(
    storage: &dyn Storage,
    slots: &[HeaderSlot; 2],
    cur: usize,
    new: &Header,
) -> Result<[HeaderSlot; 2]> {
    let mut out = slots.clone();
    let mut seq = slots[cur].header.sequence_number;
    for slot in [1 - cur, cur] {
        seq = seq.checked_add(1).ok_or_else(|| {
            Error::unsupported(
                "VHDX header",
                HEADER_OFFSETS[slot],
                "sequence number is at its maximum",
            )
        })?;
        let mut h = new.clone();
        h.sequence_number = seq;
        h.checksum = h.compute_checksum();
        let off = HEADER_OFFSETS[slot];
        storage
            .write_at(&h.to_bytes(), off)
            .map_err(io_err("VHDX header", off))?;
        storage.flush().map_err(io_err("VHDX header", off))?;
        out[slot] = HeaderSlot {
            offset: off,
            header: h,
            problem: None,
        };
    }
    Ok(out)
}
