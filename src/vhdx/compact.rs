//! Compacting a dynamic or differencing VHDX in place (see
//! [`crate::compact`]).
//!
//! Every BAT change goes through the log, as every write does
//! ([`super::write`]). Blocks that read as zeros become ZERO
//! (differencing, where the parent reads zeros too: see
//! [`VhdxDisk::fate`]) or UNMAPPED (dynamic), as a discard makes them; a
//! partly present block with no sector present becomes NOT_PRESENT. These
//! changes are committed before any block is copied into the space they
//! give up. The blocks nearest the end of the file are then copied into
//! that space (never into space another copy leaves, see
//! [`crate::compact::plan_moves`]), and one commit makes the copies
//! durable before the log entry that switches the table to them: after a
//! crash the replayed table points either at the old copy, still intact,
//! or at the new one. The session keeps the DataWriteGuid, since the
//! content does not change, so children of the image still open. The file
//! is cut after the session is closed (the LogGuid cleared), so no log
//! entry names a longer file.

use super::region_table::REGION_ALIGNMENT;
use super::{VhdxDisk, bat};
use crate::compact::{
    CompactReport, Freed, Mode, copy_blocks, fixed_refused, in_holes, par_map, plan_moves, punch,
    reads_zero,
};
use crate::disk::{ExtentKind, VirtualDisk};
use crate::error::Result;
use crate::io::{Storage, io_err};
use crate::layer::parent_read;

/// What becomes of a stored payload block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// It stays stored.
    Keep,
    /// It reads as zeros: discarded (ZERO or UNMAPPED).
    Zero,
    /// No sector of it is present: it reads from the parent as it is.
    NotPresent,
}

impl VhdxDisk {
    /// Compact this image in place (opened writable with its parent).
    pub(crate) fn compact(mut self, mode: Mode) -> Result<CompactReport> {
        if self.s.metadata.leave_block_allocated {
            return Err(fixed_refused("VHDX"));
        }
        self.ensure_writable()?;
        const S: &str = "VHDX file";
        let size_before = self.storage.len().map_err(io_err(S, 0))?;
        let mut report = CompactReport {
            size_before,
            size_after: size_before,
            ..CompactReport::default()
        };
        self.begin_session_with(false)?;
        self.clear_stale_offsets()?;
        let l = self.s.layout;
        let mut live: Vec<(u64, u64, u64)> = Vec::new();
        for (i, &e) in self.s.bat.iter().enumerate() {
            let (i, st) = (i as u64, bat::state(e));
            let size = if l.is_bitmap_index(i) {
                (st == bat::BITMAP_PRESENT).then_some(bat::BITMAP_BLOCK_SIZE)
            } else {
                matches!(
                    st,
                    bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT
                )
                .then_some(l.block_size)
            };
            if let Some(size) = size {
                live.push((bat::file_offset(e), i, size));
            }
        }
        live.sort_unstable();
        let fates = self.fates(&live)?;
        let mut freed = Freed::default();
        let mut kept: Vec<(u64, u64, u64)> = Vec::new();
        for (&(src, idx, size), fate) in live.iter().zip(fates) {
            if self.drop_block(idx, fate)? {
                freed.add(src, size);
                report.blocks_dropped += 1;
            } else {
                kept.push((src, idx, size));
            }
        }
        if mode == Mode::Quick {
            self.close_session()?;
            (report.bytes_punched, report.punch_refused) =
                punch(self.storage.inner(), &freed.merged())?;
            return Ok(report);
        }
        // The dropped blocks and cleared offsets reach the table before
        // anything is copied into the space they gave up; so do the pages
        // of a bitmap block changed in this session, at its old place,
        // so that its copy holds them.
        self.commit()?;
        let reserved: Vec<(u64, u64)> = self
            .s
            .reserved_ranges()
            .into_iter()
            .map(|(s, e, _)| (s, e))
            .collect();
        let blocks: Vec<(u64, u64)> = kept.iter().map(|&(s, _, z)| (s, z)).collect();
        let plan = plan_moves(&blocks, &reserved, REGION_ALIGNMENT);
        let copies: Vec<(u64, u64, u64)> = plan
            .moves
            .iter()
            .map(|&(k, to)| (kept[k].0, to, kept[k].2))
            .collect();
        // Writable opens replay the log onto the file: no overlay. The
        // copies are made durable by the commit that first points the
        // table at them.
        copy_blocks(self.storage.inner(), "VHDX block", &copies)?;
        for &(k, to) in &plan.moves {
            let idx = kept[k].1;
            self.reserve_pages(1)?;
            let e = self.s.bat[idx as usize];
            self.set_entry(idx, bat::entry(bat::state(e), to));
            report.blocks_moved += 1;
        }
        self.close_session()?;
        let end = plan.end.div_ceil(REGION_ALIGNMENT) * REGION_ALIGNMENT;
        if end < size_before {
            self.storage.set_len(end).map_err(io_err(S, end))?;
            self.storage.flush().map_err(io_err(S, 0))?;
            self.s.file_len = end;
        }
        report.size_after = self.storage.len().map_err(io_err(S, 0))?;
        Ok(report)
    }

    /// Give every payload entry that stores nothing a file offset of 0, so
    /// that no entry keeps naming space that blocks may move into or that
    /// the file may no longer hold.
    fn clear_stale_offsets(&mut self) -> Result<()> {
        let l = self.s.layout;
        for i in 0..self.s.bat.len() as u64 {
            let e = self.s.bat[i as usize];
            let st = bat::state(e);
            let stores = if l.is_bitmap_index(i) {
                st == bat::BITMAP_PRESENT
            } else {
                matches!(
                    st,
                    bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT
                )
            };
            if !stores && bat::file_offset(e) != 0 {
                self.reserve_pages(1)?;
                self.set_entry(i, bat::entry(st, 0));
            }
        }
        Ok(())
    }

    /// The fate of each of the `live` blocks (`(offset, BAT index, size)`,
    /// in offset order), found on several threads: bitmap blocks stay.
    fn fates(&self, live: &[(u64, u64, u64)]) -> Result<Vec<Fate>> {
        let l = self.s.layout;
        let ranges: Vec<(u64, u64)> = live.iter().map(|&(s, _, z)| (s, z)).collect();
        let holes = in_holes(self.storage.inner(), &ranges)?;
        let file_len = self.storage.len().map_err(io_err("VHDX file", 0))?;
        par_map(live.len(), |k, buf| {
            let (src, idx, _) = live[k];
            if l.is_bitmap_index(idx) {
                return Ok(Fate::Keep);
            }
            self.fate(idx, src, file_len, holes[k], buf)
        })
    }

    /// Stop storing the payload block of BAT entry `idx` if its `fate`
    /// says so; whether it was dropped.
    fn drop_block(&mut self, idx: u64, fate: Fate) -> Result<bool> {
        let l = self.s.layout;
        let block = idx - idx / (l.chunk_ratio + 1);
        let pos = block * l.block_size;
        let len = l.block_size.min(self.virtual_size() - pos);
        match fate {
            Fate::Keep => Ok(false),
            Fate::Zero => {
                self.discard_impl(pos, len)?;
                Ok(true)
            }
            Fate::NotPresent => {
                self.reserve_pages(1)?;
                self.set_entry(idx, bat::entry(bat::PAYLOAD_NOT_PRESENT, 0));
                Ok(true)
            }
        }
    }

    /// What becomes of the payload block of BAT entry `idx`, stored at
    /// `src` in the file of `file_len` bytes; `in_holes`: the file system
    /// stores none of its bytes.
    fn fate(
        &self,
        idx: u64,
        src: u64,
        file_len: u64,
        in_holes: bool,
        buf: &mut Vec<u8>,
    ) -> Result<Fate> {
        let l = self.s.layout;
        let block = idx - idx / (l.chunk_ratio + 1);
        let pos = block * l.block_size;
        let len = l.block_size.min(self.virtual_size() - pos);
        let state = bat::state(self.s.bat[idx as usize]);
        if state == bat::PAYLOAD_PARTIALLY_PRESENT
            && !self
                .map(pos, len)?
                .iter()
                .any(|e| e.kind == ExtentKind::Data)
        {
            return Ok(Fate::NotPresent);
        }
        // A fully present block reads as the bytes its place in the file
        // holds: those are read directly, and not at all where the file
        // system holds none of them (holes read as zeros).
        let zero = if state == bat::PAYLOAD_FULLY_PRESENT && src.saturating_add(len) <= file_len {
            let storage = self.storage.inner();
            in_holes
                || reads_zero(
                    |b, o| {
                        storage
                            .read_at(b, o)
                            .map_err(io_err("VHDX payload block", o))
                    },
                    src,
                    len,
                    buf,
                )?
        } else {
            reads_zero(|b, o| self.read_at(b, o), pos, len, buf)?
        };
        if !zero {
            return Ok(Fate::Keep);
        }
        // Over parent data, libvhdi (20210425) reads a ZERO block of a
        // differencing disk from the parent, against [MS-VHDX] 2.5.1.1:
        // such a block stays stored, so that every reader sees zeros.
        if self.is_differencing() {
            let parent = |b: &mut [u8], o: u64| parent_read(self.parent.as_ref(), b, o);
            if !reads_zero(parent, pos, len, buf)? {
                return Ok(Fate::Keep);
            }
        }
        Ok(Fate::Zero)
    }
}
