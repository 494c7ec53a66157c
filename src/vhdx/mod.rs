//! Virtual Hard Disk v2 (VHDX): fixed, dynamic and differencing disks with
//! 512 or 4096-byte logical sectors, as in [MS-VHDX] v1.0.
//!
//! Layout: a 1 MiB header area ([`file_identifier`], two [`header`]s, two
//! [`region_table`]s), then regions on 1 MiB boundaries: the [`log`], the
//! [`bat`] and the [`metadata`] region, and the payload and sector-bitmap
//! blocks the BAT points to. A pending log is replayed before anything else
//! is read (into memory when the file is opened read-only).

pub mod bat;
mod blocks;
pub mod check;
mod compact;
pub mod create;
pub mod file_identifier;
pub mod header;
mod info;
pub mod log;
pub mod metadata;
mod open;
pub mod parent_locator;
pub mod region_table;
mod reparent;
mod resize;
pub mod sector_bitmap;
mod structure;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::disk::{Discard, Extent, VirtualDisk, check_range};
use crate::error::Result;
use crate::io::Storage;
use crate::layer::{self, BitmapCache};
use crate::parent::Parent;
use crate::report::{ImageInfo, Warning};
use log::{LogView, Sequence};

pub use create::{VhdxBuilder, create};
pub use open::parent_spec_from_headers;
pub(crate) use open::{pending_log, replay_and_clear};
pub use structure::{Structure, read_file_identifier, read_region_tables};

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
    /// Sector bitmaps of partially present blocks read lately.
    bitmap_cache: BitmapCache,
    /// Keep the DataWriteGuid when a write session starts (see
    /// [`VhdxDisk::keep_data_write_id`]).
    keep_data_write_id: bool,
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

impl VhdxDisk {
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

    /// Let the writes from now on keep the DataWriteGuid, which a write
    /// session otherwise replaces before its first change. Only for writes
    /// that leave the content every child recording this image reads as it
    /// was: `merge` writes into a parent exactly the data its merged child
    /// holds over it, and the child must keep opening, also after an
    /// interruption, until the merge is complete.
    pub fn keep_data_write_id(&mut self) {
        self.keep_data_write_id = true;
    }

    /// Give the image a new DataWriteGuid now (through the two-copy header
    /// update), so that the children recording the old one no longer open;
    /// writes after it change it no further in this session.
    pub fn renew_data_write_id(&mut self) -> Result<()> {
        self.keep_data_write_id = false;
        self.renew_data_write_id_()
    }

    fn is_differencing(&self) -> bool {
        self.s.metadata.has_parent
    }
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
        layer::read(self, buf, offset)
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

    fn parent_disk(&self) -> Option<&dyn VirtualDisk> {
        self.parent().and_then(Parent::open_disk)
    }

    fn map(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let size = self.virtual_size();
        let end = offset.saturating_add(length).min(size);
        layer::map(self, offset, end)
    }

    fn info(&self) -> ImageInfo {
        self.image_info()
    }

    fn parent_link_id(&self) -> Option<Uuid> {
        Some(self.s.header().data_write_guid())
    }

    fn discarder(&mut self) -> Option<&mut dyn Discard> {
        Some(self)
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
