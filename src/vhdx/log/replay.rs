//! Replaying the active sequence: into memory for a read-only open, onto
//! the file otherwise.

use std::collections::BTreeMap;
use std::io;

use super::{LOG_SECTOR, Op, Sequence};
use crate::error::Result;
use crate::io::{Storage, io_err};

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
