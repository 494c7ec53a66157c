//! Virtual Hard Disk v2 (VHDX): fixed, dynamic and differencing disks with
//! 512 or 4096-byte logical sectors, as in [MS-VHDX] v1.0.
//!
//! Layout: a 1 MiB header area ([`file_identifier`], two [`header`]s, two
//! [`region_table`]s), then regions on 1 MiB boundaries: the [`log`], the
//! [`bat`] and the [`metadata`] region, and the payload and sector-bitmap
//! blocks the BAT points to. A pending log is replayed before anything else
//! is read (into memory when the file is opened read-only).

pub mod bat;
pub mod check;
pub mod create;
pub mod file_identifier;
pub mod header;
mod info;
pub mod log;
pub mod metadata;
pub mod parent_locator;
pub mod region_table;
pub mod sector_bitmap;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::damage::Stored;
use crate::disk::{
    Discard, Extent, ExtentKind, ExtentList, VirtualDisk, block_pieces, check_range, presence_runs,
};
use crate::error::{Error, Result};
use crate::io::{Storage, io_err, read_struct};
use crate::parent::{Candidate, Chain, Parent, ParentSpec};
use crate::report::{ImageInfo, Warning, WarningKind};
use bat::Layout;
use file_identifier::{DECODED_SIZE, FileIdentifier};
use header::HeaderSlot;
use log::{LogView, Overlay, Sequence};
use metadata::Metadata;
use region_table::{
    HEADER_AREA, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, RegionTable, RegionTableEntry,
};

pub use create::{VhdxBuilder, create};

/// Whether `storage` starts with the VHDX file identifier signature.
pub fn probe(storage: &dyn Storage) -> bool {
    let mut sig = [0u8; 8];
    storage.read_at(&mut sig, 0).is_ok() && sig == file_identifier::SIGNATURE
}

/// What happened to the log at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogReplay {
    /// The LogGuid was nil: nothing to replay.
    Empty,
    /// The LogGuid was set but no active sequence was found.
    NoActiveSequence,
    /// Replayed into memory; the file is unchanged.
    InMemory,
    /// Replayed onto the file and the LogGuid cleared.
    OnDisk,
}

/// The structures every VHDX reader needs, read through the replayed log.
#[derive(Debug)]
pub struct Structure {
    /// The creator recorded in the file identifier.
    pub creator: String,
    /// Both header slots.
    pub slots: [HeaderSlot; 2],
    /// Index of the current header.
    pub current: usize,
    /// The region table in use.
    pub region_table: RegionTable,
    /// Which copy (0 or 1) is in use.
    pub region_table_used: usize,
    /// Why each copy is unusable, if it is.
    pub region_table_problems: [Option<String>; 2],
    /// The BAT region.
    pub bat_region: RegionTableEntry,
    /// The metadata region.
    pub metadata_region: RegionTableEntry,
    /// The metadata items.
    pub metadata: Metadata,
    /// The BAT's shape.
    pub layout: Layout,
    /// The BAT.
    pub bat: Vec<u64>,
    /// File length (after the replay).
    pub file_len: u64,
}

/// Read the file identifier.
pub fn read_file_identifier(storage: &dyn Storage) -> Result<FileIdentifier> {
    let mut b = [0u8; DECODED_SIZE];
    read_struct(storage, "VHDX file identifier", &mut b, 0)?;
    FileIdentifier::parse(&b)
}

/// Read both region tables; the first valid one is used.
#[allow(clippy::type_complexity)]
pub fn read_region_tables(
    storage: &dyn Storage,
) -> Result<(RegionTable, usize, [Option<String>; 2])> {
    let mut tables: [Option<RegionTable>; 2] = [None, None];
    let mut problems: [Option<String>; 2] = [None, None];
    for (i, &off) in REGION_TABLE_OFFSETS.iter().enumerate() {
        let mut b = vec![0u8; REGION_TABLE_SIZE];
        match read_struct(storage, "VHDX region table", &mut b, off)
            .and_then(|_| RegionTable::parse(&b, off))
        {
            Ok(t) => tables[i] = Some(t),
            Err(e) => problems[i] = Some(e.to_string()),
        }
    }
    let [a, b] = tables;
    match (a, b) {
        (Some(t), _) => Ok((t, 0, problems)),
        (None, Some(t)) => Ok((t, 1, problems)),
        (None, None) => Err(Error::corrupt(
            "VHDX region table",
            REGION_TABLE_OFFSETS[0],
            format!(
                "neither region table is valid: {}; {}",
                problems[0].as_deref().unwrap_or("?"),
                problems[1].as_deref().unwrap_or("?")
            ),
        )),
    }
}

impl Structure {
    /// Read everything past the headers from `storage` (already showing the
    /// replayed log), given the header slots and the current one.
    /// `unlogged_len` is the file's length before the log extended it: the
    /// regions were made with the file and must lie within it, so a log
    /// that claims a huge file cannot make the BAT's memory grow with it.
    pub fn load(
        storage: &dyn Storage,
        creator: String,
        slots: [HeaderSlot; 2],
        current: usize,
        unlogged_len: u64,
    ) -> Result<Structure> {
        let file_len = storage.len().map_err(io_err("VHDX file", 0))?;
        let (region_table, region_table_used, region_table_problems) = read_region_tables(storage)?;
        let (bat_region, metadata_region) = region_table.validate(file_len.min(unlogged_len))?;
        let h = &slots[current].header;
        if h.log_length > 0 {
            let (ls, le) = (h.log_offset, h.log_offset + u64::from(h.log_length));
            for e in &region_table.entries {
                if e.file_offset < le && ls < e.end() {
                    return Err(Error::corrupt(
                        "VHDX region table",
                        region_table.offset,
                        format!(
                            "region {} at {:#x}+{:#x} overlaps the log at {ls:#x}+{:#x}",
                            e.guid(),
                            e.file_offset,
                            e.length,
                            h.log_length
                        ),
                    ));
                }
            }
        }
        let metadata =
            Metadata::load(storage, metadata_region.file_offset, metadata_region.length)?;
        let layout = Layout::new(
            metadata.virtual_size,
            metadata.block_size,
            metadata.logical_sector_size,
            metadata.has_parent,
        );
        let bat = bat::load(storage, bat_region.file_offset, bat_region.length, &layout)?;
        Ok(Structure {
            creator,
            slots,
            current,
            region_table,
            region_table_used,
            region_table_problems,
            bat_region,
            metadata_region,
            metadata,
            layout,
            bat,
            file_len,
        })
    }

    /// The current header.
    pub fn header(&self) -> &header::Header {
        &self.slots[self.current].header
    }

    /// File offset of BAT entry `index`.
    pub fn entry_offset(&self, index: u64) -> u64 {
        self.bat_region.file_offset + index * bat::ENTRY_SIZE
    }

    /// Fixed regions a block must not overlap: header area, log, BAT,
    /// metadata and any other region.
    pub fn reserved_ranges(&self) -> Vec<(u64, u64, String)> {
        let mut v = vec![(0, HEADER_AREA, "the header area".to_string())];
        let h = self.header();
        if h.log_length > 0 {
            v.push((
                h.log_offset,
                h.log_offset + u64::from(h.log_length),
                "the log".into(),
            ));
        }
        for e in &self.region_table.entries {
            let name = e
                .name()
                .map(|n| format!("the {n} region"))
                .unwrap_or_else(|| format!("region {}", e.guid()));
            v.push((e.file_offset, e.end(), name));
        }
        v
    }

    /// Why the block of BAT entry `index` (`size` bytes at its offset)
    /// cannot be used, if it cannot: it must lie past the header area,
    /// start inside the file and not overlap a region. A block the file
    /// ends inside is allowed here: reading its missing tail is an error
    /// or, salvaging, zeros ([`crate::damage`]).
    pub fn block_problem(&self, index: u64, size: u64) -> Option<String> {
        let off = bat::file_offset(self.bat[index as usize]);
        if off >= self.file_len {
            return Some(format!(
                "block offset {off:#x} lies past the end of the {:#x}-byte file",
                self.file_len
            ));
        }
        let end = off.saturating_add(size);
        // The common case without building the list and its names.
        let h = self.header();
        let log_end = h.log_offset + u64::from(h.log_length);
        let hits = off < HEADER_AREA
            || (h.log_length > 0 && off < log_end && h.log_offset < end)
            || self
                .region_table
                .entries
                .iter()
                .any(|e| off < e.end() && e.file_offset < end);
        if !hits {
            return None;
        }
        for (s, e, what) in self.reserved_ranges() {
            if off < e && s < end {
                return Some(format!(
                    "block at {off:#x}+{size:#x} overlaps {what} at {s:#x}..{e:#x}"
                ));
            }
        }
        None
    }

    fn corrupt_entry(&self, index: u64, msg: String) -> Error {
        Error::corrupt("VHDX BAT entry", self.entry_offset(index), msg)
    }
}

/// An open VHDX.
///
/// Call [`VirtualDisk::flush`] or [`VirtualDisk::close`] to learn whether
/// writes were committed; dropping the disk closes it best effort and
/// writes a failure to stderr (`vhdkit: warning: ...`).
pub struct VhdxDisk {
    storage: LogView,
    path: Option<PathBuf>,
    s: Structure,
    log_replay: LogReplay,
    log_sequence: Sequence,
    parent: Option<Parent>,
    warnings: Vec<Warning>,
    /// Sector bitmaps held in memory, by chunk: every bitmap a write
    /// changed (they reach the file through the log).
    bitmaps: HashMap<u64, Box<[u8]>>,
    /// The write session, from the first change until close.
    session: Option<write::Session>,
    /// Under `--salvage`: where blocks past the end of the file are
    /// recorded as read as zeros (otherwise reading them is an error).
    salvage: Option<std::sync::Arc<crate::damage::SalvageLog>>,
}

impl Drop for VhdxDisk {
    fn drop(&mut self) {
        // Best effort; `close` reports errors, here only stderr can.
        if let Err(e) = self.close_session() {
            let name = self
                .path
                .as_ref()
                .map_or_else(|| "VHDX image".to_string(), |p| p.display().to_string());
            eprintln!(
                "vhdkit: warning: {name}: closing the image when it was dropped failed (call flush or close to see such errors): {e}"
            );
        }
    }
}

impl std::fmt::Debug for VhdxDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxDisk")
            .field("path", &self.path)
            .field("size", &self.s.metadata.virtual_size)
            .field("log", &self.log_replay)
            .finish()
    }
}

/// Find the active log sequence of the current header, if the log is pending.
pub(crate) fn pending_log(
    storage: &dyn Storage,
    h: &header::Header,
    file_len: u64,
) -> Result<Option<Sequence>> {
    if h.log_guid().is_nil() || h.log_length == 0 {
        return Ok(None);
    }
    let seq = log::find_active(storage, h.log_offset, u64::from(h.log_length), h.log_guid())?;
    seq.check_file_length(file_len, h.log_offset)?;
    Ok(Some(seq))
}

/// Replay `seq` onto the file, then clear the LogGuid (and take a new
/// FileWriteGuid, the file having changed) with the two-header update.
pub(crate) fn replay_and_clear(
    storage: &dyn Storage,
    slots: &[HeaderSlot; 2],
    current: usize,
    seq: &Sequence,
) -> Result<([HeaderSlot; 2], usize)> {
    log::replay_on_disk(storage, seq)?;
    let mut h = slots[current].header.clone();
    h.set_log_guid(Uuid::nil());
    h.set_file_write_guid(Uuid::new_v4());
    let slots = header::update(storage, slots, current, &h)?;
    let cur = header::current(&slots)?;
    Ok((slots, cur))
}

impl VhdxDisk {
    /// Open a VHDX held in `storage`.
    pub fn open(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &crate::OpenOptions,
        chain: &Chain,
    ) -> Result<VhdxDisk> {
        let len = storage.len().map_err(io_err("VHDX file", 0))?;
        if len < HEADER_AREA {
            return Err(Error::corrupt(
                "VHDX file",
                0,
                format!("file of {len} bytes is smaller than the 1 MiB header area"),
            ));
        }
        let creator = read_file_identifier(storage.as_ref())?.creator();
        let mut warnings = Vec::new();
        let mut slots = header::read_slots(storage.as_ref())?;
        let mut current = header::current(&slots)?;
        for s in &slots {
            if let Some(p) = &s.problem {
                warnings.push(
                    Warning::new(
                        WarningKind::CopyUnusable,
                        format!(
                            "header at {:#x} is invalid ({p}); using the header at {:#x}",
                            s.offset, slots[current].offset
                        ),
                    )
                    .at("VHDX header", s.offset),
                );
            }
        }
        slots[current].header.validate(slots[current].offset, len)?;

        let mut log_replay = LogReplay::Empty;
        let mut overlay = None;
        let mut log_sequence = Sequence::default();
        if let Some(seq) = pending_log(storage.as_ref(), &slots[current].header, len)? {
            if seq.is_empty() {
                log_replay = LogReplay::NoActiveSequence;
            } else if opts.writable {
                (slots, current) = replay_and_clear(storage.as_ref(), &slots, current, &seq)?;
                log_replay = LogReplay::OnDisk;
            } else {
                overlay = Some(Overlay::build(&seq, len));
                log_replay = LogReplay::InMemory;
            }
            log_sequence = seq;
        }
        let storage = LogView::new(storage, overlay);
        let s = Structure::load(&storage, creator, slots, current, len)?;
        if let Some(p) = &s.region_table_problems[1 - s.region_table_used] {
            let copy = 1 - s.region_table_used;
            warnings.push(
                Warning::new(
                    WarningKind::CopyUnusable,
                    format!("region table copy is unusable: {p}"),
                )
                .at(
                    "VHDX region table",
                    region_table::REGION_TABLE_OFFSETS[copy],
                ),
            );
        }

        let mut bad = 0usize;
        for i in 0..s.layout.total_entries {
            let st = bat::state(s.bat[i as usize]);
            let ok = if s.layout.is_bitmap_index(i) {
                bat::bitmap_state_name(st).is_some()
            } else {
                bat::payload_state_name(st, s.metadata.has_parent).is_some()
            };
            if !ok {
                if bad < 4 {
                    warnings.push(
                        Warning::new(
                            WarningKind::InvalidBlockState,
                            format!(
                                "BAT entry {i} at {:#x} has invalid state {st}; reading its block fails",
                                s.entry_offset(i)
                            ),
                        )
                        .at("VHDX BAT entry", s.entry_offset(i)),
                    );
                }
                bad += 1;
            }
        }
        if bad > 4 {
            warnings.push(
                Warning::new(
                    WarningKind::InvalidBlockState,
                    format!("{} more BAT entries have invalid states", bad - 4),
                )
                .in_structure("VHDX BAT entry"),
            );
        }

        let mut disk = VhdxDisk {
            storage,
            path,
            s,
            log_replay,
            log_sequence,
            parent: None,
            warnings,
            bitmaps: HashMap::new(),
            session: None,
            salvage: opts.salvage.clone(),
        };
        if disk.s.metadata.has_parent {
            let spec = disk.parent_spec()?;
            disk.parent = Some(crate::parent::resolve(
                disk.path.as_deref(),
                &spec,
                opts,
                chain,
            )?);
        }
        Ok(disk)
    }

    /// Where the parent may be: relative path first, then the volume and
    /// absolute Windows paths.
    fn parent_spec(&self) -> Result<ParentSpec> {
        parent_spec_of(&self.s.metadata)
    }

    /// The structures read at open.
    pub fn structure(&self) -> &Structure {
        &self.s
    }

    /// What happened to the log at open.
    pub fn log_replay(&self) -> LogReplay {
        self.log_replay
    }

    /// Problems found at open.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The open parent of a differencing disk.
    pub fn parent(&self) -> Option<&Parent> {
        self.parent.as_ref()
    }

    /// Path the image was opened from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn is_differencing(&self) -> bool {
        self.s.metadata.has_parent
    }

    fn parent_read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.parent {
            Some(p) => p.read_at(buf, offset),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// File offset of the block of BAT entry `index`, checked.
    fn block_offset(&self, index: u64, size: u64) -> Result<u64> {
        match self.s.block_problem(index, size) {
            None => Ok(bat::file_offset(self.s.bat[index as usize])),
            Some(p) => Err(self.s.corrupt_entry(index, p)),
        }
    }

    /// File offset of the stored block of BAT entry `index` for reading
    /// it: checked like [`Self::block_offset`], except that a block past
    /// the end of the file is left to [`Stored::read`], which names it.
    fn stored_offset(&self, index: u64, size: u64) -> Result<u64> {
        let off = bat::file_offset(self.s.bat[index as usize]);
        if off >= self.s.file_len {
            return Ok(off);
        }
        self.block_offset(index, size)
    }

    /// What a read of the block of BAT entry `index` names when the file
    /// does not hold it: payload block `block`, or the sector bitmap block
    /// of chunk `block`.
    fn stored(&self, index: u64, block: u64, size: u64, bitmap: bool) -> Stored<'_> {
        Stored {
            structure: if bitmap {
                "VHDX sector bitmap block"
            } else {
                "VHDX payload block"
            },
            block,
            block_offset: bat::file_offset(self.s.bat[index as usize]),
            block_len: size,
            path: self.path.as_deref(),
            salvage: self.salvage.as_deref(),
            reserved_len: self.session.as_ref().map_or(0, |s| s.next_free),
        }
    }

    /// The sector-bitmap bits of payload block `block` for sectors
    /// `[first, last)` of the block, as (bytes, bit index of `first`), or
    /// `Err(Some(offset))` when the file ends before them (at `offset`).
    #[allow(clippy::type_complexity)]
    fn bitmap_bits(
        &self,
        block: u64,
        first: u64,
        last: u64,
    ) -> Result<std::result::Result<(Vec<u8>, u64), u64>> {
        let l = &self.s.layout;
        let chunk = block / l.chunk_ratio;
        let idx = l.bitmap_index(chunk);
        let entry = self.s.bat[idx as usize];
        if bat::state(entry) != bat::BITMAP_PRESENT {
            return Err(self.s.corrupt_entry(
                idx,
                format!(
                    "payload block {block} is partially present but its sector bitmap has state {}",
                    bat::state(entry)
                ),
            ));
        }
        let base = self.stored_offset(idx, bat::BITMAP_BLOCK_SIZE)?;
        let bit0 = (block % l.chunk_ratio) * l.sectors_per_block() + first;
        let bit1 = (block % l.chunk_ratio) * l.sectors_per_block() + last;
        let byte0 = bit0 / 8;
        let byte1 = bit1.div_ceil(8);
        let mut bits = vec![0u8; (byte1 - byte0) as usize];
        match self.bitmaps.get(&chunk) {
            Some(bm) => bits.copy_from_slice(&bm[byte0 as usize..byte1 as usize]),
            None => {
                let at = base.saturating_add(byte0);
                match self.storage.read_at(&mut bits, at) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        let reserved = self.session.as_ref().map_or(0, |s| s.next_free);
                        if at.saturating_add(bits.len() as u64) > reserved {
                            return Ok(Err(at));
                        }
                        // A bitmap block reserved by this write session.
                        self.storage
                            .read_at_or_zero(&mut bits, at)
                            .map_err(io_err("VHDX sector bitmap", at))?;
                    }
                    Err(e) => return Err(io_err("VHDX sector bitmap", at)(e)),
                }
            }
        }
        Ok(Ok((bits, bit0 - byte0 * 8)))
    }

    /// Runs of equal presence over `[in_off, in_off + len)` of a partially
    /// present block, as (start in block, length, present), or
    /// `Err(offset)` when the file ends (at `offset`) before the sector
    /// bitmap that says which sectors are present.
    #[allow(clippy::type_complexity)]
    fn sector_runs(
        &self,
        block: u64,
        in_off: u64,
        len: u64,
    ) -> Result<std::result::Result<Vec<(u64, u64, bool)>, u64>> {
        let ss = self.s.layout.sector_size;
        let first = in_off / ss;
        let last = (in_off + len).div_ceil(ss);
        let (bits, shift) = match self.bitmap_bits(block, first, last)? {
            Ok(b) => b,
            Err(at) => return Ok(Err(at)),
        };
        // Least-significant bit first: bit 0 of byte 0 is the first sector.
        let bit = |s: u64| {
            let b = s - first + shift;
            bits[(b / 8) as usize] & (1 << (b % 8)) != 0
        };
        Ok(Ok(presence_runs(in_off, len, ss, bit)))
    }

    fn read_block(&self, block: u64, in_off: u64, buf: &mut [u8], vpos: u64) -> Result<()> {
        let l = &self.s.layout;
        let idx = l.payload_index(block);
        let entry = self.s.bat[idx as usize];
        match bat::state(entry) {
            bat::PAYLOAD_FULLY_PRESENT => {
                let off = self
                    .stored_offset(idx, l.block_size)?
                    .saturating_add(in_off);
                self.stored(idx, block, l.block_size, false)
                    .read(&self.storage, buf, off, vpos)
            }
            bat::PAYLOAD_NOT_PRESENT if self.is_differencing() => self.parent_read(buf, vpos),
            bat::PAYLOAD_NOT_PRESENT
            | bat::PAYLOAD_UNDEFINED
            | bat::PAYLOAD_ZERO
            | bat::PAYLOAD_UNMAPPED => {
                buf.fill(0);
                Ok(())
            }
            bat::PAYLOAD_PARTIALLY_PRESENT if self.is_differencing() => {
                let data = self.stored_offset(idx, l.block_size)?;
                let runs = match self.sector_runs(block, in_off, buf.len() as u64)? {
                    Ok(runs) => runs,
                    Err(at) => {
                        // Which sectors are present is unknown: the range
                        // cannot be read, from this file or the parent.
                        buf.fill(0);
                        let chunk = block / l.chunk_ratio;
                        let bidx = l.bitmap_index(chunk);
                        let file_len = self.storage.len().map_err(io_err("VHDX file", 0))?;
                        return self
                            .stored(bidx, chunk, bat::BITMAP_BLOCK_SIZE, true)
                            .missing(at.max(file_len), file_len, vpos, buf.len() as u64);
                    }
                };
                let stored = self.stored(idx, block, l.block_size, false);
                for (start, len, present) in runs {
                    let piece =
                        &mut buf[(start - in_off) as usize..(start - in_off + len) as usize];
                    let at = vpos + (start - in_off);
                    if present {
                        stored.read(&self.storage, piece, data.saturating_add(start), at)?;
                    } else {
                        self.parent_read(piece, at)?;
                    }
                }
                Ok(())
            }
            st => Err(self
                .s
                .corrupt_entry(idx, format!("payload block {block} has invalid state {st}"))),
        }
    }
}

/// Where the parent of a differencing VHDX with metadata `m` may be:
/// relative path first, then the volume and absolute Windows paths.
fn parent_spec_of(m: &Metadata) -> Result<ParentSpec> {
    let loc = m.parent_locator.as_ref().ok_or_else(|| {
        Error::corrupt(
            "VHDX metadata table",
            m.region_offset,
            "HasParent is set but there is no parent locator",
        )
    })?;
    let expected_id = loc.parent_linkage().ok_or_else(|| {
        Error::corrupt(
            "VHDX parent locator",
            m.region_offset,
            format!(
                "parent_linkage {:?} is missing or not a GUID",
                loc.get(parent_locator::KEY_PARENT_LINKAGE)
            ),
        )
    })?;
    let mut candidates = Vec::new();
    for (key, relative) in [
        (parent_locator::KEY_RELATIVE_PATH, true),
        (parent_locator::KEY_VOLUME_PATH, false),
        (parent_locator::KEY_ABSOLUTE_WIN32_PATH, false),
    ] {
        if let Some(p) = loc.get(key).filter(|p| !p.is_empty()) {
            candidates.push(Candidate {
                recorded: p.to_string(),
                relative,
                structure: "VHDX parent locator",
                offset: m.item_file_offset(metadata::PARENT_LOCATOR),
            });
        }
    }
    Ok(ParentSpec {
        candidates,
        expected_id,
        id_name: crate::parent::DATA_WRITE_ID,
    })
}

/// The parent record of the VHDX in `storage`, read from its headers,
/// region table and metadata only (no BAT, no log replay): `None` when it
/// is not a differencing disk. For finding an image's children cheaply.
pub fn parent_spec_from_headers(storage: &dyn Storage) -> Result<Option<ParentSpec>> {
    let len = storage.len().map_err(io_err("VHDX file", 0))?;
    let slots = header::read_slots(storage)?;
    let current = header::current(&slots)?;
    slots[current].header.validate(slots[current].offset, len)?;
    let (table, _, _) = read_region_tables(storage)?;
    let (_, metadata_region) = table.validate(len)?;
    let m = Metadata::load(storage, metadata_region.file_offset, metadata_region.length)?;
    if !m.has_parent {
        return Ok(None);
    }
    parent_spec_of(&m).map(Some)
}

impl VirtualDisk for VhdxDisk {
    fn virtual_size(&self) -> u64 {
        self.s.metadata.virtual_size
    }

    fn logical_sector_size(&self) -> u32 {
        self.s.metadata.logical_sector_size
    }

    fn physical_sector_size(&self) -> u32 {
        self.s.metadata.physical_sector_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.virtual_size(), offset, buf.len())?;
        for p in block_pieces(offset, buf.len() as u64, self.s.layout.block_size) {
            let out = &mut buf[p.done..p.done + p.len];
            self.read_block(p.block, p.in_block, out, p.pos)?;
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_impl(buf, offset)
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_impl()
    }

    fn close(&mut self) -> Result<()> {
        self.close_session()
    }

    fn map(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let size = self.virtual_size();
        let end = offset.saturating_add(length).min(size);
        let l = &self.s.layout;
        let bs = l.block_size;
        let diff = self.is_differencing();
        let mut list = ExtentList::default();
        for p in block_pieces(offset, end.saturating_sub(offset), bs) {
            let (block, in_off, pos, n) = (p.block, p.in_block, p.pos, p.len as u64);
            let idx = l.payload_index(block);
            match bat::state(self.s.bat[idx as usize]) {
                bat::PAYLOAD_FULLY_PRESENT => {
                    let data = self.stored_offset(idx, bs)?;
                    list.push(pos, n, ExtentKind::Data, Some(data.saturating_add(in_off)));
                }
                bat::PAYLOAD_NOT_PRESENT if diff => list.push(pos, n, ExtentKind::Parent, None),
                bat::PAYLOAD_NOT_PRESENT
                | bat::PAYLOAD_UNDEFINED
                | bat::PAYLOAD_ZERO
                | bat::PAYLOAD_UNMAPPED => list.push(pos, n, ExtentKind::Zero, None),
                bat::PAYLOAD_PARTIALLY_PRESENT if diff => {
                    let data = self.stored_offset(idx, bs)?;
                    // A sector bitmap past the end of the file: the range
                    // is stored here as far as the table says (reading it
                    // reports the damage).
                    let runs = self
                        .sector_runs(block, in_off, n)?
                        .unwrap_or_else(|_| vec![(in_off, n, true)]);
                    for (s, len, present) in runs {
                        let vpos = pos - in_off + s;
                        if present {
                            list.push(vpos, len, ExtentKind::Data, Some(data.saturating_add(s)));
                        } else {
                            list.push(vpos, len, ExtentKind::Parent, None);
                        }
                    }
                }
                st => {
                    return Err(self.s.corrupt_entry(
                        idx,
                        format!("payload block {block} has invalid state {st}"),
                    ));
                }
            }
        }
        Ok(list.into_vec())
    }

    fn info(&self) -> ImageInfo {
        self.image_info()
    }

    fn parent_link_id(&self) -> Option<Uuid> {
        Some(self.s.header().data_write_guid())
    }
}

impl Discard for VhdxDisk {
    /// Whole blocks become UNMAPPED (dynamic) or ZERO (differencing, so
    /// that they do not fall through to the parent); fixed disks keep
    /// their blocks and discard nothing.
    fn discard(&mut self, offset: u64, len: u64) -> Result<u64> {
        self.discard_impl(offset, len)
    }
}
