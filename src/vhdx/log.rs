//! The metadata log: a circular buffer of entries, each describing 4 KiB
//! sector writes and zeroed ranges of the file ([MS-VHDX] 2.3). A file whose
//! header carries a LogGuid may hold updates that were logged but not
//! applied; they are replayed before anything else is read, into memory
//! ([`Overlay`]) for a read-only open, onto the file ([`replay_on_disk`])
//! otherwise.

use std::collections::BTreeMap;
use std::io::{self, Cursor};

use binrw::{BinRead, binrw};
use uuid::Uuid;

use crate::checksum::crc32c_with_zeroed_field;
use crate::error::{Error, Result};
use crate::guid::from_ms_bytes;
use crate::io::{Storage, io_err, read_struct};
use crate::vhdx::region_table::HEADER_AREA;

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

/// The file as the log says it should be, kept in memory: replayed sectors
/// and zeroed ranges over the unchanged file.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    /// 4 KiB-aligned file offset -> the sector's replayed bytes.
    sectors: BTreeMap<u64, Box<[u8]>>,
    /// Zeroed ranges, start -> end, disjoint and disjoint from `sectors`.
    zeros: BTreeMap<u64, u64>,
    /// File length after the replay.
    len: u64,
}

impl Overlay {
    /// Replay `seq` over a file of `file_len` bytes.
    pub fn build(seq: &Sequence, file_len: u64) -> Overlay {
        let mut o = Overlay {
            len: file_len.max(seq.last_file_offset()),
            ..Overlay::default()
        };
        for e in &seq.entries {
            for op in &e.ops {
                o.apply(op);
            }
        }
        o
    }

    /// File length after the replay.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was replayed.
    pub fn is_empty(&self) -> bool {
        self.sectors.is_empty() && self.zeros.is_empty()
    }

    fn cut_zeros(&mut self, start: u64, end: u64) {
        let hits: Vec<(u64, u64)> = self
            .zeros
            .range(..end)
            .filter(|&(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hits {
            self.zeros.remove(&s);
            if s < start {
                self.zeros.insert(s, start);
            }
            if e > end {
                self.zeros.insert(end, e);
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Zero { offset, length } => {
                let end = offset + length;
                let keys: Vec<u64> = self.sectors.range(*offset..end).map(|(&k, _)| k).collect();
                for k in keys {
                    self.sectors.remove(&k);
                }
                self.cut_zeros(*offset, end);
                if *length > 0 {
                    self.zeros.insert(*offset, end);
                }
                self.len = self.len.max(end);
            }
            Op::Data { offset, sector } => {
                self.cut_zeros(*offset, offset + LOG_SECTOR);
                self.sectors.insert(*offset, sector.clone());
                self.len = self.len.max(offset + LOG_SECTOR);
            }
        }
    }

    /// Read through the overlay: `inner` holds the unreplayed file.
    pub fn read(&self, inner: &dyn Storage, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        inner.read_at_or_zero(buf, offset)?;
        for (&s, &e) in self.zeros.range(..end) {
            if e > offset {
                let a = s.max(offset);
                let b = e.min(end);
                buf[(a - offset) as usize..(b - offset) as usize].fill(0);
            }
        }
        let first = offset / LOG_SECTOR * LOG_SECTOR;
        for (&s, data) in self.sectors.range(first..end) {
            let a = s.max(offset);
            let b = (s + LOG_SECTOR).min(end);
            if a < b {
                buf[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&data[(a - s) as usize..(b - s) as usize]);
            }
        }
        Ok(())
    }
}

/// A storage seen through the replayed log: a read-only open reads every
/// structure through this view so that it sees what a replay would write.
pub struct LogView {
    inner: Box<dyn Storage>,
    overlay: Option<Overlay>,
}

impl LogView {
    /// A view of `inner` with `overlay` (if any) on top.
    pub fn new(inner: Box<dyn Storage>, overlay: Option<Overlay>) -> LogView {
        LogView { inner, overlay }
    }

    /// Whether a replayed log is held in memory.
    pub fn has_overlay(&self) -> bool {
        self.overlay.is_some()
    }

    /// The storage under the view.
    pub fn inner(&self) -> &dyn Storage {
        self.inner.as_ref()
    }
}

impl Storage for LogView {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.overlay {
            Some(o) => o.read(self.inner.as_ref(), buf, offset),
            None => self.inner.read_at(buf, offset),
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.overlay.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the log is replayed in memory only",
            ));
        }
        self.inner.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        match &self.overlay {
            Some(o) => Ok(o.len()),
            None => self.inner.len(),
        }
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.overlay.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the log is replayed in memory only",
            ));
        }
        self.inner.set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn is_writable(&self) -> bool {
        self.overlay.is_none() && self.inner.is_writable()
    }
}

/// Apply `seq` to the file itself and make it durable. The caller then
/// clears the LogGuid with a header update.
pub fn replay_on_disk(storage: &dyn Storage, seq: &Sequence) -> Result<()> {
    const S: &str = "VHDX log replay";
    let zeros = vec![0u8; 1 << 20];
    for e in &seq.entries {
        for op in &e.ops {
            match op {
                Op::Data { offset, sector } => storage
                    .write_at(sector, *offset)
                    .map_err(io_err(S, *offset))?,
                Op::Zero { offset, length } => {
                    let len = storage.len().map_err(io_err(S, *offset))?;
                    let end = offset + length;
                    let mut p = *offset;
                    while p < end.min(len) {
                        let n = (end.min(len) - p).min(zeros.len() as u64);
                        storage
                            .write_at(&zeros[..n as usize], p)
                            .map_err(io_err(S, p))?;
                        p += n;
                    }
                    if end > len {
                        storage.set_len(end).map_err(io_err(S, end))?;
                    }
                }
            }
        }
    }
    let len = storage.len().map_err(io_err(S, 0))?;
    let want = seq.last_file_offset();
    if want > len {
        storage.set_len(want).map_err(io_err(S, want))?;
    }
    storage.flush().map_err(io_err(S, 0))
}

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

    /// The LogGuid the entries carry.
    pub fn guid(&self) -> Uuid {
        self.guid
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
