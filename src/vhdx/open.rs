//! Opening a VHDX: the headers, the log (replayed on the file or in
//! memory), the structures, and what the image records about its parent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::header::{self, HeaderSlot};
use super::log::{self, LogView, Overlay, Sequence};
use super::metadata::{self, Metadata};
use super::region_table::HEADER_AREA;
use super::{
    LogReplay, Structure, VhdxDisk, bat, parent_locator, read_file_identifier, read_region_tables,
};
use crate::chain::ChildLayer;
use crate::damage::PastEnd;
use crate::error::{Error, Result};
use crate::io::{Storage, io_err};
use crate::layer::BitmapCache;
use crate::parent::{Candidate, Parent, ParentSpec};
use crate::report::{Warning, WarningKind};

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
    /// Open the VHDX held in `storage` alone: a differencing disk comes
    /// without its parent, which [`crate::unstable::chain`] opens from
    /// what the image records about it and attaches
    /// ([`VhdxDisk::open`] does both).
    pub fn open_layer(
        storage: Box<dyn Storage>,
        path: Option<PathBuf>,
        opts: &crate::OpenOptions,
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
        let copy = 1 - s.region_table_used;
        if let Some(p) = &s.region_table_problems[copy] {
            warnings.push(
                Warning::new(
                    WarningKind::CopyUnusable,
                    format!(
                        "the {} region table is unusable: {p}; the {} is read",
                        super::region_table::ROLE[copy],
                        super::region_table::ROLE[1 - copy]
                    ),
                )
                .at(
                    "VHDX region table",
                    super::region_table::REGION_TABLE_OFFSETS[copy],
                ),
            );
        }

        let mut bad = 0usize;
        // Stored payload blocks the file does not hold (whole or in part):
        // one warning per run of consecutive blocks, as `check` lists them.
        let mut past = PastEnd::default();
        for i in 0..s.layout.total_entries {
            let st = bat::state(s.bat[i as usize]);
            if !s.layout.is_bitmap_index(i)
                && matches!(
                    st,
                    bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT
                )
            {
                let off = bat::file_offset(s.bat[i as usize]);
                if off.saturating_add(s.layout.block_size) > s.file_len {
                    past.add(i - i / (s.layout.chunk_ratio + 1), off);
                }
            }
        }
        warnings.extend(past.warnings("VHDX payload block", s.file_len));
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

        Ok(VhdxDisk {
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
            bitmap_cache: BitmapCache::default(),
            keep_data_write_id: false,
        })
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

impl ChildLayer for VhdxDisk {
    fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn parent_spec(&self) -> Result<Option<ParentSpec>> {
        if !self.s.metadata.has_parent {
            return Ok(None);
        }
        parent_spec_of(&self.s.metadata).map(Some)
    }

    fn attach_parent(&mut self, parent: Parent) {
        self.parent = Some(parent);
    }
}
