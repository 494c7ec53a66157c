//! Encoding entries and appending them to the log.

use uuid::Uuid;

use super::{
    CHECKSUM_FIELD, DATA_PAYLOAD, DATA_SIGNATURE, DESC_SIGNATURE, DESCRIPTOR_SIZE,
    ENTRY_HEADER_SIZE, ENTRY_SIGNATURE, LOG_SECTOR, Op, ZERO_SIGNATURE,
};
use crate::checksum::crc32c_with_zeroed_field;
use crate::error::{Error, Result};
use crate::io::{Storage, io_err};

/// Bytes of the descriptor area of an entry holding `descriptors`
/// descriptors: the header and descriptors, padded to a 4 KiB boundary
/// (data sectors start on the next boundary).
pub fn descriptor_area(descriptors: u64) -> u64 {
    (ENTRY_HEADER_SIZE + descriptors * DESCRIPTOR_SIZE).div_ceil(LOG_SECTOR) * LOG_SECTOR
}

/// Bytes of an entry holding `ops`.
pub fn entry_length(ops: &[Op]) -> u64 {
    let data = ops.iter().filter(|o| matches!(o, Op::Data { .. })).count() as u64;
    descriptor_area(ops.len() as u64) + data * LOG_SECTOR
}

/// Most data sectors one entry may carry in a log of `log_length` bytes:
/// an entry never takes more than half the log, so that the previous entry
/// and a new one always fit together.
pub fn max_data_sectors(log_length: u64) -> u64 {
    let half = log_length / 2 / LOG_SECTOR;
    let mut n = half.saturating_sub(1);
    while n > 0 && descriptor_area(n) / LOG_SECTOR + n > half {
        n -= 1;
    }
    n
}

/// Fields of an entry header that the writer chooses.
#[derive(Debug, Clone, Copy)]
pub struct EntryParams {
    /// Sequence number (non-zero, one more than the previous entry's).
    pub sequence_number: u64,
    /// Log offset of the oldest entry still needed.
    pub tail: u32,
    /// The header's LogGuid.
    pub log_guid: Uuid,
    /// File size known to be durable when the entry is written.
    pub flushed_file_offset: u64,
    /// File size the entry's updates need.
    pub last_file_offset: u64,
}

/// Encode an entry ([MS-VHDX] 2.3.1): header, descriptors padded to 4 KiB,
/// then one data sector per data descriptor; the CRC-32C covers it all.
/// Data ops must hold exactly 4 KiB.
pub fn encode_entry(p: &EntryParams, ops: &[Op]) -> Vec<u8> {
    let len = entry_length(ops);
    let mut out = vec![0u8; len as usize];
    let seq = p.sequence_number;
    out[0..4].copy_from_slice(&ENTRY_SIGNATURE);
    out[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    out[12..16].copy_from_slice(&p.tail.to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    out[24..28].copy_from_slice(&(ops.len() as u32).to_le_bytes());
    out[32..48].copy_from_slice(&crate::guid::to_ms_bytes(p.log_guid));
    out[48..56].copy_from_slice(&p.flushed_file_offset.to_le_bytes());
    out[56..64].copy_from_slice(&p.last_file_offset.to_le_bytes());
    let mut data_pos = descriptor_area(ops.len() as u64) as usize;
    for (i, op) in ops.iter().enumerate() {
        let mut desc = [0u8; DESCRIPTOR_SIZE as usize];
        match op {
            Op::Zero { offset, length } => {
                desc[0..4].copy_from_slice(&ZERO_SIGNATURE);
                desc[8..16].copy_from_slice(&length.to_le_bytes());
                desc[16..24].copy_from_slice(&offset.to_le_bytes());
            }
            Op::Data { offset, sector } => {
                assert_eq!(
                    sector.len(),
                    LOG_SECTOR as usize,
                    "log data sectors are 4 KiB"
                );
                desc[0..4].copy_from_slice(&DESC_SIGNATURE);
                desc[4..8].copy_from_slice(&sector[8 + DATA_PAYLOAD..]);
                desc[8..16].copy_from_slice(&sector[..8]);
                desc[16..24].copy_from_slice(&offset.to_le_bytes());
                let s = &mut out[data_pos..data_pos + LOG_SECTOR as usize];
                s[0..4].copy_from_slice(&DATA_SIGNATURE);
                s[4..8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
                s[8..8 + DATA_PAYLOAD].copy_from_slice(&sector[8..8 + DATA_PAYLOAD]);
                s[8 + DATA_PAYLOAD..].copy_from_slice(&(seq as u32).to_le_bytes());
                data_pos += LOG_SECTOR as usize;
            }
        }
        desc[24..32].copy_from_slice(&seq.to_le_bytes());
        let d = ENTRY_HEADER_SIZE as usize + i * DESCRIPTOR_SIZE as usize;
        out[d..d + DESCRIPTOR_SIZE as usize].copy_from_slice(&desc);
    }
    let crc = crc32c_with_zeroed_field(&out, CHECKSUM_FIELD);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Appends entries to the circular log of a file opened for writing.
///
/// The caller keeps the write-ahead order: it flushes the data an entry
/// depends on, writes the entry, flushes, and only then applies the
/// entry's updates to the file. Every entry starts a new active sequence
/// (its tail is itself): the caller writes an entry only after a flush
/// that made the updates of all earlier entries durable.
#[derive(Debug, Clone)]
pub struct LogWriter {
    offset: u64,
    length: u64,
    guid: Uuid,
    next_sequence: u64,
    head: u64,
}

impl LogWriter {
    /// A writer for the log at file offset `offset` of `length` bytes whose
    /// entries carry `guid` (the LogGuid just written to the header).
    pub fn new(offset: u64, length: u64, guid: Uuid) -> LogWriter {
        LogWriter {
            offset,
            length,
            guid,
            next_sequence: 1,
            head: 0,
        }
    }

    /// Most data sectors one entry may carry.
    pub fn max_data_sectors(&self) -> u64 {
        max_data_sectors(self.length)
    }

    /// Write one entry holding `ops` at the head of the log (it does not
    /// flush). `flushed` and `last` are the durable and the needed file size.
    pub fn append(
        &mut self,
        storage: &dyn Storage,
        ops: &[Op],
        flushed: u64,
        last: u64,
    ) -> Result<()> {
        let len = entry_length(ops);
        if len > self.length / 2 {
            return Err(Error::new(
                crate::error::ErrorKind::InvalidArgument,
                format!(
                    "a log entry of {len} bytes does not fit in half the {}-byte log",
                    self.length
                ),
            ));
        }
        let params = EntryParams {
            sequence_number: self.next_sequence,
            tail: self.head as u32,
            log_guid: self.guid,
            flushed_file_offset: flushed,
            last_file_offset: last,
        };
        let bytes = encode_entry(&params, ops);
        // The entry may wrap around the end of the log.
        let first = (self.length - self.head).min(len) as usize;
        let at = self.offset + self.head;
        storage
            .write_at(&bytes[..first], at)
            .map_err(io_err("VHDX log entry", at))?;
        if first < bytes.len() {
            storage
                .write_at(&bytes[first..], self.offset)
                .map_err(io_err("VHDX log entry", self.offset))?;
        }
        self.head = (self.head + len) % self.length;
        self.next_sequence += 1;
        Ok(())
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;
    use crate::io::MemStorage;
    use crate::vhdx::log::{entry_problems, find_active};

    fn sector(fill: u8) -> Box<[u8]> {
        let mut s = vec![fill; LOG_SECTOR as usize];
        s[0] = fill ^ 1;
        s[LOG_SECTOR as usize - 1] = fill ^ 2;
        s.into_boxed_slice()
    }

    #[test]
    fn written_entries_are_found_in_order_and_across_the_wrap() {
        const LOG_AT: u64 = 1 << 20;
        const LOG_LEN: u64 = 1 << 20;
        let storage = MemStorage::from_vec(vec![0u8; (3 << 20) as usize]);
        let guid = Uuid::new_v4();
        let mut w = LogWriter::new(LOG_AT, LOG_LEN, guid);
        let max = w.max_data_sectors();
        assert!(max >= 100 && descriptor_area(max) / LOG_SECTOR + max <= LOG_LEN / LOG_SECTOR / 2);
        // Enough entries to wrap around the 1 MiB log several times.
        for round in 0..40u64 {
            let n = 1 + (round * 7) % max;
            let ops: Vec<Op> = (0..n)
                .map(|i| Op::Data {
                    offset: (2 << 20) + i * LOG_SECTOR,
                    sector: sector(round as u8),
                })
                .chain([Op::Zero {
                    offset: 5 << 20,
                    length: 8192,
                }])
                .collect();
            w.append(&storage, &ops, 3 << 20, 6 << 20).unwrap();
            let seq = find_active(&storage, LOG_AT, LOG_LEN, guid).unwrap();
            assert_eq!(
                seq.entries.len(),
                1,
                "round {round}: each entry is its own tail"
            );
            let e = &seq.entries[0];
            assert_eq!(e.header.sequence_number, round + 1);
            assert_eq!(e.ops, ops);
            assert_eq!(seq.last_file_offset(), 6 << 20);
        }
    }

    /// An entry of another log (an older LogGuid) is no defect; a damaged
    /// entry of this log is one.
    #[test]
    fn entry_problems_leave_out_entries_of_other_logs() {
        const LOG_LEN: u64 = 1 << 20;
        let guid = Uuid::new_v4();
        let params = |log_guid| EntryParams {
            sequence_number: 1,
            tail: 0,
            log_guid,
            flushed_file_offset: 4 << 20,
            last_file_offset: 4 << 20,
        };
        let ops = [Op::Zero {
            offset: 3 << 20,
            length: 4096,
        }];
        let mut log = vec![0u8; LOG_LEN as usize];
        let other = encode_entry(&params(Uuid::new_v4()), &ops);
        log[..other.len()].copy_from_slice(&other);
        let mut damaged = encode_entry(&params(guid), &ops);
        damaged[100] ^= 1;
        let at = 64 * LOG_SECTOR;
        log[at as usize..at as usize + damaged.len()].copy_from_slice(&damaged);
        let storage = MemStorage::from_vec(log);
        let problems = entry_problems(&storage, 0, LOG_LEN, guid).unwrap();
        let offsets: Vec<u64> = problems.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [at], "{problems:?}");
    }
}
