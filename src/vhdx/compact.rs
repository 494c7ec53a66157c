//! Compacting a dynamic or differencing VHDX in place (see
//! [`crate::compact`]).
//!
//! Every BAT change goes through the log, as every write does
//! ([`super::write`]): a commit makes the copied blocks durable before the
//! log entry that switches the table to them, so after a crash the replayed
//! table points either at the old copy, still intact, or at the new one.
//! Space a block leaves is written to only after such a commit. Blocks
//! that read as zeros become ZERO (differencing, where the parent reads
//! zeros too: see [`VhdxDisk::fate`]) or UNMAPPED (dynamic), as a discard
//! makes them;
//! a partly present block with no sector present becomes NOT_PRESENT. The
//! session keeps the DataWriteGuid, since the content does not change, so
//! children of the image still open. The file is cut after the session is
//! closed (the LogGuid cleared), so no log entry names a longer file.

use super::region_table::REGION_ALIGNMENT;
use super::{VhdxDisk, bat};
use crate::compact::{
    CompactReport, Freed, Mode, Packer, copy_down, fixed_refused, punch, reads_zero,
};
use crate::disk::{ExtentKind, VirtualDisk};
use crate::error::Result;
use crate::io::{Storage, io_err};
use crate::layer::parent_read;

/// What becomes of a stored payload block.
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
        let reserved = self
            .s
            .reserved_ranges()
            .into_iter()
            .map(|(s, e, _)| (s, e))
            .collect();
        let mut packer = Packer::new(reserved, REGION_ALIGNMENT);
        let mut freed = Freed::default();
        let mut buf = Vec::new();
        for (src, idx, size) in live {
            let bitmap = l.is_bitmap_index(idx);
            if !bitmap && self.drop_block(idx, &mut buf)? {
                freed.add(src, size);
                report.blocks_dropped += 1;
                continue;
            }
            if mode == Mode::Quick {
                continue;
            }
            let dst = packer.place(src, size);
            if dst == src {
                continue;
            }
            // A bitmap's pages changed in this session reach the file at
            // its old place first, so that the copy holds them.
            if bitmap || freed.hits(dst, size) {
                self.commit()?;
                freed.clear();
            }
            // Writable opens replay the log onto the file: no overlay.
            copy_down(self.storage.inner(), "VHDX block", src, dst, size)?;
            self.reserve_pages(1)?;
            let e = self.s.bat[idx as usize];
            self.set_entry(idx, bat::entry(bat::state(e), dst));
            freed.add(src, size);
            report.blocks_moved += 1;
        }
        let dropped = freed.merged();
        self.close_session()?;
        if mode == Mode::Quick {
            (report.bytes_punched, report.punch_refused) = punch(self.storage.inner(), &dropped)?;
            return Ok(report);
        }
        let end = packer.end().div_ceil(REGION_ALIGNMENT) * REGION_ALIGNMENT;
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

    /// Stop storing the payload block of BAT entry `idx` if that changes
    /// nothing the disk reads; whether it was dropped.
    fn drop_block(&mut self, idx: u64, buf: &mut Vec<u8>) -> Result<bool> {
        let l = self.s.layout;
        let block = idx - idx / (l.chunk_ratio + 1);
        let pos = block * l.block_size;
        let len = l.block_size.min(self.virtual_size() - pos);
        match self.fate(idx, pos, len, buf)? {
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

    fn fate(&self, idx: u64, pos: u64, len: u64, buf: &mut Vec<u8>) -> Result<Fate> {
        let partial = bat::state(self.s.bat[idx as usize]) == bat::PAYLOAD_PARTIALLY_PRESENT;
        if partial
            && !self
                .map(pos, len)?
                .iter()
                .any(|e| e.kind == ExtentKind::Data)
        {
            return Ok(Fate::NotPresent);
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
        if reads_zero(|b, o| self.read_at(b, o), pos, len, buf)? {
            return Ok(Fate::Zero);
        }
        Ok(Fate::Keep)
    }
}
