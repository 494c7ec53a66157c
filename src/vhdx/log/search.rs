//! Finding the active sequence of the log ([MS-VHDX] 2.3.3).

use std::io::Cursor;

use binrw::BinRead;
use uuid::Uuid;

use super::{
    CHECKSUM_FIELD, DATA_PAYLOAD, DATA_SIGNATURE, DESC_SIGNATURE, DESCRIPTOR_SIZE, Descriptor,
    ENTRY_HEADER_SIZE, ENTRY_SIGNATURE, Entry, EntryHeader, LOG_SCAN_PASSES, LOG_SECTOR,
    MAX_FILE_OFFSET, MAX_LOG_LENGTH, Op, ZERO_SIGNATURE,
};
use crate::checksum::crc32c_with_zeroed_field;
use crate::error::{Error, Result};
use crate::guid::from_ms_bytes;
use crate::io::{Storage, read_struct};
use crate::vhdx::region_table::HEADER_AREA;

/// Why there is no entry of the log at a position.
struct NotAnEntry {
    /// The entry is well formed but belongs to another log (an older
    /// LogGuid): what a log reused after a clear holds, not a defect.
    other_log: bool,
    /// Why, for people.
    why: String,
}

/// The log region loaded for searching.
struct LogBuf<'a> {
    data: &'a [u8],
    guid: Uuid,
    /// File offset of the log region.
    offset: u64,
    /// Bytes of entries checksummed so far.
    checksummed: std::cell::Cell<u64>,
}

impl<'a> LogBuf<'a> {
    fn new(data: &'a [u8], guid: Uuid, offset: u64) -> Self {
        LogBuf {
            data,
            guid,
            offset,
            checksummed: std::cell::Cell::new(0),
        }
    }

    /// Bytes the search may checksum in all: [`LOG_SCAN_PASSES`] passes.
    fn budget(&self) -> u64 {
        LOG_SCAN_PASSES * self.len()
    }

    /// Whether the checksum budget is spent.
    fn exhausted(&self) -> bool {
        self.checksummed.get() > self.budget()
    }

    /// The error for a spent budget, the log being at file offset `offset`.
    fn exhausted_error(&self, offset: u64) -> Error {
        Error::corrupt(
            "VHDX log",
            offset,
            format!(
                "entry headers claim more than {} bytes of entries in the {}-byte log; expected at most {LOG_SCAN_PASSES} passes over it (entries overlap or repeat)",
                self.budget(),
                self.len()
            ),
        )
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// `n` bytes from `pos`, wrapping around the end of the buffer.
    fn read_wrapped(&self, pos: u64, n: u64) -> Vec<u8> {
        let len = self.len();
        let mut out = Vec::with_capacity(n as usize);
        let mut p = pos % len;
        while (out.len() as u64) < n {
            let take = (len - p).min(n - out.len() as u64);
            out.extend_from_slice(&self.data[p as usize..(p + take) as usize]);
            p = (p + take) % len;
        }
        out
    }

    /// Why an update of `len` bytes at file offset `start` may not be
    /// replayed: it would write into the header section or the log itself.
    fn protected(&self, start: u64, len: u64) -> Option<&'static str> {
        let end = start.saturating_add(len.max(1));
        // Writers update the header area (file identifier, headers, region
        // tables) in place, never through the log: replaying an entry that
        // writes there could destroy them.
        if start < HEADER_AREA {
            Some("the header area (first 1 MiB)")
        } else if start < self.offset + self.len() && self.offset < end {
            Some("the log region")
        } else {
            None
        }
    }

    /// The header of the entry at `pos` if it is one of this log, or why
    /// it is not.
    fn entry_header(&self, pos: u64) -> std::result::Result<EntryHeader, NotAnEntry> {
        let invalid = |why: String| NotAnEntry {
            other_log: false,
            why,
        };
        let head = self.read_wrapped(pos, ENTRY_HEADER_SIZE);
        let h =
            EntryHeader::read(&mut Cursor::new(&head[..])).map_err(|e| invalid(e.to_string()))?;
        if h.signature != ENTRY_SIGNATURE {
            return Err(invalid("no \"loge\" signature".into()));
        }
        let len = u64::from(h.entry_length);
        if len == 0 || !len.is_multiple_of(LOG_SECTOR) || len > self.len() {
            return Err(invalid(format!(
                "entry length {len:#x} is not a non-zero multiple of 4 KiB within the {:#x}-byte log",
                self.len()
            )));
        }
        if h.sequence_number == 0 {
            return Err(invalid("sequence number is 0".into()));
        }
        if from_ms_bytes(h.log_guid) != self.guid {
            return Err(NotAnEntry {
                other_log: true,
                why: format!(
                    "log GUID {} is not the header's {}",
                    from_ms_bytes(h.log_guid),
                    self.guid
                ),
            });
        }
        Ok(h)
    }

    /// The entry at `pos`, or why there is no valid entry there.
    fn entry_at(&self, pos: u64) -> std::result::Result<Entry, String> {
        let h = self.entry_header(pos).map_err(|e| e.why)?;
        let len = u64::from(h.entry_length);
        if !u64::from(h.tail).is_multiple_of(LOG_SECTOR) || u64::from(h.tail) >= self.len() {
            return Err(format!(
                "tail {:#x} is not a 4 KiB offset in the log",
                h.tail
            ));
        }
        let count = u64::from(h.descriptor_count);
        let desc_area =
            (ENTRY_HEADER_SIZE + count * DESCRIPTOR_SIZE).div_ceil(LOG_SECTOR) * LOG_SECTOR;
        if desc_area > len {
            return Err(format!(
                "{count} descriptors do not fit in the {len:#x}-byte entry"
            ));
        }
        if h.flushed_file_offset > MAX_FILE_OFFSET || h.last_file_offset > MAX_FILE_OFFSET {
            return Err("flushed or last file offset is implausibly large".into());
        }
        self.checksummed.set(self.checksummed.get() + len);
        if self.exhausted() {
            return Err("checksum budget of the log search is spent".into());
        }
        let bytes = self.read_wrapped(pos, len);
        let computed = crc32c_with_zeroed_field(&bytes, CHECKSUM_FIELD);
        if computed != h.checksum {
            return Err(format!(
                "bad CRC-32C: stored {:#010x}, computed {computed:#010x}",
                h.checksum
            ));
        }
        let mut c = Cursor::new(&bytes[ENTRY_HEADER_SIZE as usize..]);
        let mut data_pos = desc_area;
        let mut ops = Vec::with_capacity(count as usize);
        for i in 0..count {
            let d = Descriptor::read(&mut c).map_err(|e| e.to_string())?;
            if d.sequence_number != h.sequence_number {
                return Err(format!(
                    "descriptor {i} has sequence number {:#x}, the entry {:#x}",
                    d.sequence_number, h.sequence_number
                ));
            }
            if !d.file_offset.is_multiple_of(LOG_SECTOR) {
                return Err(format!(
                    "descriptor {i} targets file offset {:#x}, not a multiple of 4 KiB",
                    d.file_offset
                ));
            }
            let target_len = match d.signature {
                ZERO_SIGNATURE => d.leading_bytes,
                _ => LOG_SECTOR,
            };
            if let Some(what) = self.protected(d.file_offset, target_len) {
                return Err(format!(
                    "descriptor {i} writes {:#x}+{target_len:#x}, inside {what}",
                    d.file_offset
                ));
            }
            match d.signature {
                ZERO_SIGNATURE => {
                    let length = d.leading_bytes;
                    if !length.is_multiple_of(LOG_SECTOR)
                        || d.file_offset
                            .checked_add(length)
                            .is_none_or(|e| e > MAX_FILE_OFFSET)
                    {
                        return Err(format!(
                            "zero descriptor {i} covers {:#x}+{length:#x}, not whole 4 KiB sectors in range",
                            d.file_offset
                        ));
                    }
                    ops.push(Op::Zero {
                        offset: d.file_offset,
                        length,
                    });
                }
                DESC_SIGNATURE => {
                    if d.file_offset >= MAX_FILE_OFFSET {
                        return Err(format!("data descriptor {i} targets an implausible offset"));
                    }
                    if data_pos + LOG_SECTOR > len {
                        return Err(format!(
                            "data descriptor {i} has no data sector inside the entry"
                        ));
                    }
                    let s = &bytes[data_pos as usize..(data_pos + LOG_SECTOR) as usize];
                    let seq_high = u32::from_le_bytes(s[4..8].try_into().expect("4 bytes"));
                    let seq_low = u32::from_le_bytes(s[4092..].try_into().expect("4 bytes"));
                    let seq = (u64::from(seq_high) << 32) | u64::from(seq_low);
                    if s[..4] != DATA_SIGNATURE || seq != h.sequence_number {
                        return Err(format!(
                            "data sector at entry offset {data_pos:#x} has no \"data\" signature or a wrong sequence number"
                        ));
                    }
                    let mut sector = vec![0u8; LOG_SECTOR as usize].into_boxed_slice();
                    sector[..8].copy_from_slice(&d.leading_bytes.to_le_bytes());
                    sector[8..8 + DATA_PAYLOAD].copy_from_slice(&s[8..8 + DATA_PAYLOAD]);
                    sector[8 + DATA_PAYLOAD..].copy_from_slice(&d.trailing_bytes.to_le_bytes());
                    ops.push(Op::Data {
                        offset: d.file_offset,
                        sector,
                    });
                    data_pos += LOG_SECTOR;
                }
                other => {
                    return Err(format!(
                        "descriptor {i} has signature {:?}, expected \"zero\" or \"desc\"",
                        String::from_utf8_lossy(&other)
                    ));
                }
            }
        }
        Ok(Entry {
            position: pos,
            header: h,
            ops,
        })
    }
}

/// The active sequence: the entries to replay, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Sequence {
    /// Entries from the tail to the head.
    pub entries: Vec<Entry>,
}

impl Sequence {
    /// Whether there is nothing to replay.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Highest file size any entry needs.
    pub fn last_file_offset(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| e.header.last_file_offset)
            .max()
            .unwrap_or(0)
    }

    /// Refuse a log written against a longer file: the head entry's
    /// FlushedFileOffset lies past the end, so the file was truncated after
    /// the log was written ([MS-VHDX] 2.3.3).
    pub fn check_file_length(&self, file_len: u64, log_offset: u64) -> Result<()> {
        if let Some(e) = self.entries.last()
            && e.header.flushed_file_offset > file_len
        {
            return Err(Error::corrupt(
                "VHDX log entry",
                log_offset + e.position,
                format!(
                    "flushed file offset {:#x} lies past the end of the {file_len:#x}-byte file (truncated file)",
                    e.header.flushed_file_offset
                ),
            ));
        }
        Ok(())
    }
}

/// Load the log region at `offset` (`length` bytes) of a file whose header
/// names `guid`, and find its active sequence ([MS-VHDX] 2.3.3): the
/// consecutive valid entries ending at the newest head whose tail lies
/// within its run.
pub fn find_active(
    storage: &dyn Storage,
    offset: u64,
    length: u64,
    guid: Uuid,
) -> Result<Sequence> {
    if length == 0 {
        return Ok(Sequence::default());
    }
    if length > MAX_LOG_LENGTH {
        return Err(Error::unsupported(
            "VHDX log",
            offset,
            format!(
                "a pending log of {length} bytes is larger than the {MAX_LOG_LENGTH} bytes we replay"
            ),
        ));
    }
    let mut data = vec![0u8; length as usize];
    read_struct(storage, "VHDX log", &mut data, offset)?;
    let log = LogBuf::new(&data, guid, offset);
    let sectors = length / LOG_SECTOR;
    let mut best: Option<Vec<Entry>> = None;
    let mut pos_sector = 0u64;
    while pos_sector < sectors {
        if log.exhausted() {
            return Err(log.exhausted_error(offset));
        }
        let pos = pos_sector * LOG_SECTOR;
        let Ok(first) = log.entry_at(pos) else {
            pos_sector += 1;
            continue;
        };
        // Extend the run with consecutive sequence numbers, never covering
        // more than the whole buffer.
        let mut covered = u64::from(first.header.entry_length);
        let mut run = vec![first];
        loop {
            let last = run.last().expect("non-empty run");
            let next = (last.position + u64::from(last.header.entry_length)) % length;
            if covered >= length {
                break;
            }
            match log.entry_at(next) {
                Ok(e)
                    if Some(e.header.sequence_number)
                        == last.header.sequence_number.checked_add(1)
                        && covered + u64::from(e.header.entry_length) <= length =>
                {
                    covered += u64::from(e.header.entry_length);
                    run.push(e);
                }
                _ => break,
            }
        }
        let run_sectors = covered / LOG_SECTOR;
        // The run is a valid sequence from the head's tail when that tail is
        // the start of one of its entries.
        let head = run.last().expect("non-empty run");
        let tail = u64::from(head.header.tail);
        if let Some(start) = run.iter().position(|e| e.position == tail) {
            let better = best.as_ref().is_none_or(|b| {
                b.last().expect("non-empty").header.sequence_number < head.header.sequence_number
            });
            if better {
                best = Some(run.split_off(start));
            }
        }
        pos_sector += run_sectors.max(1);
    }
    if log.exhausted() {
        return Err(log.exhausted_error(offset));
    }
    Ok(Sequence {
        entries: best.unwrap_or_default(),
    })
}

/// Why the log at `offset` has no valid entry at each sector where one starts
/// with a "loge" signature, for `check`. Entries of another log (an older
/// LogGuid) are what a reused log holds, not defects: they are left out.
pub fn entry_problems(
    storage: &dyn Storage,
    offset: u64,
    length: u64,
    guid: Uuid,
) -> Result<Vec<(u64, String)>> {
    if length == 0 || length > MAX_LOG_LENGTH {
        return Ok(Vec::new());
    }
    let mut data = vec![0u8; length as usize];
    read_struct(storage, "VHDX log", &mut data, offset)?;
    let log = LogBuf::new(&data, guid, offset);
    let mut out = Vec::new();
    for s in 0..length / LOG_SECTOR {
        if log.exhausted() {
            out.push((offset, log.exhausted_error(offset).message().to_string()));
            break;
        }
        let pos = s * LOG_SECTOR;
        if data[pos as usize..pos as usize + 4] == ENTRY_SIGNATURE
            && let Err(why) = log.entry_at(pos)
            && !log.entry_header(pos).is_err_and(|e| e.other_log)
        {
            out.push((offset + pos, why));
        }
    }
    Ok(out)
}
