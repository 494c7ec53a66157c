//! The metadata log: a circular buffer of entries, each describing 4 KiB
//! sector writes and zeroed ranges of the file ([MS-VHDX] 2.3). A file whose
//! header carries a LogGuid may hold updates that were logged but not
//! applied; they are replayed before anything else is read, into memory
//! ([`Overlay`]) for a read-only open, onto the file ([`replay_on_disk`])
//! otherwise.

mod replay;
mod search;
mod write;

use binrw::binrw;

pub use replay::{LogView, Overlay, replay_on_disk};
pub use search::{Sequence, entry_problems, find_active};
pub use write::{EntryParams, LogWriter, encode_entry};

/// Unit of the log: entries, descriptors areas and data sectors are 4 KiB.
pub const LOG_SECTOR: u64 = 4096;
/// Entry signature, "loge".
pub const ENTRY_SIGNATURE: [u8; 4] = *b"loge";
/// Zero descriptor signature, "zero".
pub const ZERO_SIGNATURE: [u8; 4] = *b"zero";
/// Data descriptor signature, "desc".
pub const DESC_SIGNATURE: [u8; 4] = *b"desc";
/// Data sector signature, "data".
pub const DATA_SIGNATURE: [u8; 4] = *b"data";
/// Size of the entry header.
pub const ENTRY_HEADER_SIZE: u64 = 64;
/// Size of one descriptor.
pub const DESCRIPTOR_SIZE: u64 = 32;
/// Byte offset of the checksum field in the entry header.
pub const CHECKSUM_FIELD: usize = 4;
/// Bytes of a data sector's payload (the first 8 and last 4 bytes of the
/// target sector live in the descriptor).
pub const DATA_PAYLOAD: usize = 4084;
/// Largest log we load into memory to search it. Hyper-V and qemu use 1 MiB
/// logs; a pending log larger than this is refused rather than read.
pub const MAX_LOG_LENGTH: u64 = 256 << 20;
/// Highest file offset a descriptor or entry may name: 64 TiB of payload
/// plus generous room for metadata. Beyond is damage, not a real file.
pub const MAX_FILE_OFFSET: u64 = 1 << 47;

/// How many times over its length the log search may checksum entries. A
/// valid log is checksummed about twice (each run of entries once, plus the
/// run that continues across the end of the buffer), a torn entry adds at
/// most one more pass; entry headers crafted to each claim the whole log
/// would otherwise make the search quadratic in the log's length.
pub const LOG_SCAN_PASSES: u64 = 4;

/// A log entry header as stored.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// "loge".
    pub signature: [u8; 4],
    /// CRC-32C of the whole entry with this field zeroed.
    pub checksum: u32,
    /// Bytes of the entry, a multiple of 4 KiB.
    pub entry_length: u32,
    /// Log offset of the oldest entry still needed.
    pub tail: u32,
    /// Increases by one per entry.
    pub sequence_number: u64,
    /// Descriptors after the header.
    pub descriptor_count: u32,
    /// Reserved.
    pub reserved: u32,
    /// Must match the header's LogGuid.
    pub log_guid: [u8; 16],
    /// File size that was durable when the entry was written.
    pub flushed_file_offset: u64,
    /// File size the entry's updates need.
    pub last_file_offset: u64,
}

/// A zero or data descriptor as stored (the two share one layout).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// "zero" or "desc".
    pub signature: [u8; 4],
    /// Data: the last 4 bytes of the sector; zero: reserved.
    pub trailing_bytes: u32,
    /// Data: the first 8 bytes of the sector; zero: length of the range.
    pub leading_bytes: u64,
    /// Target file offset, a multiple of 4 KiB.
    pub file_offset: u64,
    /// Must match the entry's sequence number.
    pub sequence_number: u64,
}

/// One update of the file described by the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write zeros over `[offset, offset + length)`.
    Zero {
        /// File offset.
        offset: u64,
        /// Bytes, a multiple of 4 KiB.
        length: u64,
    },
    /// Write a 4 KiB sector.
    Data {
        /// File offset.
        offset: u64,
        /// The rebuilt sector.
        sector: Box<[u8]>,
    },
}

/// A valid entry of the log.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Offset of the entry inside the log.
    pub position: u64,
    /// Its header.
    pub header: EntryHeader,
    /// Its updates, in order.
    pub ops: Vec<Op>,
}
