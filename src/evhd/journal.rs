//! The journal: one record holding a whole flush (the new header copy and
//! every changed table page), written and synced before the table is
//! touched, so a crash while the table or header is being updated is
//! repaired on the next open by replaying the record.
//!
//! Record layout at the journal offset (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `EVHDJRNL` |
//! | 8 | 4 | version 1 |
//! | 12 | 4 | CRC-32C of the whole record with this field zeroed |
//! | 16 | 8 | sequence number of the header the record commits |
//! | 24 | 16 | container id |
//! | 40 | 8 | number of pages P |
//! | 48 | 8 | record length in bytes |
//! | 56 | 4040 | zero |
//! | 4096 | 65536 | the new header copy (with its own CRC, MAC and, in version 2, signature) |
//! | 69632 | 8 P, padded to 4 KiB | u64 table page index of each page |
//! | ... | 4096 P | the pages |
//!
//! The region is sized when the container is created to hold a record of
//! every table page at once, so each flush is one atomic transaction no
//! matter how many pages it changes.

use binrw::binrw;

use super::header::HEADER_SIZE;
use super::table::PAGE_SIZE;
use crate::error::{Error, Result};
use crate::fixed::{FixedStruct, Invalid};

/// Signature of a journal record.
pub const MAGIC: [u8; 8] = *b"EVHDJRNL";
/// Record format version.
pub const VERSION: u32 = 1;
/// Bytes of the record header.
pub const RECORD_HEADER: usize = 4096;
/// Granularity of the journal region: whole MiB, as the data area.
pub const REGION_ALIGN: u64 = 1 << 20;
/// Structure name in errors.
pub const STRUCTURE: &str = "EVHD journal";

/// The first 4 KiB of a record.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    #[br(temp, assert(magic == MAGIC, Invalid::corrupt(0, format!("signature {magic:02x?}; expected \"EVHDJRNL\""))))]
    #[bw(calc = MAGIC)]
    magic: [u8; 8],
    /// Record format version ([`VERSION`]).
    #[br(assert(version == VERSION, Invalid::unsupported(8, format!("record version {version}; expected {VERSION}"))))]
    pub version: u32,
    /// CRC-32C of the whole record with this field zeroed.
    pub crc: u32,
    /// Sequence number of the header the record commits.
    pub sequence: u64,
    /// Container id.
    pub container_id: [u8; 16],
    /// Number of pages in the record.
    pub pages: u64,
    /// Record length in bytes.
    pub len: u64,
    /// Zero.
    pub reserved: [u8; RECORD_HEADER - 56],
}

impl FixedStruct for RecordHeader {
    const SIZE: usize = RECORD_HEADER;
    const NAME: &'static str = STRUCTURE;
}

/// Offset of the CRC field in a record.
const CRC_OFFSET: usize = 12;

fn index_len(pages: u64) -> u64 {
    (pages * 8).next_multiple_of(PAGE_SIZE as u64)
}

/// Bytes of a record of `pages` pages.
pub fn record_len(pages: u64) -> u64 {
    RECORD_HEADER as u64 + HEADER_SIZE as u64 + index_len(pages) + pages * PAGE_SIZE as u64
}

/// Size of the journal region for a table of `table_pages` pages.
pub fn region_len(table_pages: u64) -> u64 {
    record_len(table_pages).next_multiple_of(REGION_ALIGN)
}

/// A decoded journal record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Sequence number of the header it commits.
    pub sequence: u64,
    /// The header copy to install.
    pub header: Vec<u8>,
    /// `(page index, page bytes)` to install.
    pub pages: Vec<(u64, Vec<u8>)>,
}

/// Encode a record.
pub fn encode(
    container_id: &[u8; 16],
    sequence: u64,
    header: &[u8],
    pages: &[(u64, &[u8])],
) -> Vec<u8> {
    let n = pages.len() as u64;
    let len = record_len(n) as usize;
    let mut b = RecordHeader {
        version: VERSION,
        crc: 0,
        sequence,
        container_id: *container_id,
        pages: n,
        len: len as u64,
        reserved: [0; RECORD_HEADER - 56],
    }
    .to_bytes();
    b.resize(len, 0);
    b[RECORD_HEADER..RECORD_HEADER + HEADER_SIZE].copy_from_slice(header);
    let idx = RECORD_HEADER + HEADER_SIZE;
    let body = idx + index_len(n) as usize;
    for (i, (page, bytes)) in pages.iter().enumerate() {
        b[idx + 8 * i..idx + 8 * i + 8].copy_from_slice(&page.to_le_bytes());
        b[body + i * PAGE_SIZE..body + (i + 1) * PAGE_SIZE].copy_from_slice(bytes);
    }
    let crc = crc32c::crc32c(&b);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decode the record at the start of the journal region (at file offset
/// `region_offset`, for errors), read through `read(buf, offset within the
/// region)`. `Ok(None)` when there is no complete record (never written,
/// torn or stale garbage); errors for I/O and for a checksummed record
/// naming a page the table does not have.
pub fn decode(
    region_offset: u64,
    region_len: u64,
    container_id: &[u8; 16],
    table_pages: u64,
    read: impl Fn(&mut [u8], u64) -> Result<()>,
) -> Result<Option<Record>> {
    let mut head = vec![0u8; RECORD_HEADER];
    if region_len < RECORD_HEADER as u64 {
        return Ok(None);
    }
    read(&mut head, 0)?;
    // A wrong magic or version is no record (never written, or garbage).
    let Ok(head) = RecordHeader::parse(&head, region_offset) else {
        return Ok(None);
    };
    if head.container_id != *container_id {
        return Ok(None);
    }
    let (n, len) = (head.pages, head.len);
    if n > table_pages || len != record_len(n) || len > region_len {
        return Ok(None);
    }
    let mut b = vec![0u8; len as usize];
    read(&mut b, 0)?;
    b[CRC_OFFSET..CRC_OFFSET + 4].fill(0);
    if crc32c::crc32c(&b) != head.crc {
        return Ok(None);
    }
    let sequence = head.sequence;
    let header = b[RECORD_HEADER..RECORD_HEADER + HEADER_SIZE].to_vec();
    let idx = RECORD_HEADER + HEADER_SIZE;
    let body = idx + index_len(n) as usize;
    let mut pages = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        let mut p = [0u8; 8];
        p.copy_from_slice(&b[idx + 8 * i..idx + 8 * i + 8]);
        let page = u64::from_le_bytes(p);
        if page >= table_pages {
            return Err(Error::corrupt(
                STRUCTURE,
                region_offset + (idx + 8 * i) as u64,
                format!("page index {page}; the table has {table_pages} pages"),
            ));
        }
        pages.push((
            page,
            b[body + i * PAGE_SIZE..body + (i + 1) * PAGE_SIZE].to_vec(),
        ));
    }
    Ok(Some(Record {
        sequence,
        header,
        pages,
    }))
}
