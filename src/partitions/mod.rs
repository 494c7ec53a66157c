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
//! `gpt` needs a `Read + Write + Seek` device; `gptman` allocates one entry
//! per `number_of_partition_entries` of a header (up to 2^32) before
//! reading any, computes entry offsets without overflow checks, rejects
//! headers larger than 92 bytes, and does not say when it fell back to the
//! backup header; `mbrman` computes EBR offsets in unchecked `u32`
//! arithmetic (a hostile extended partition overflows it) and bounds an EBR
//! chain only by the disk's size. Every count and offset read here is
//! checked against a named limit and the disk's size first.

pub mod fs_probe;
pub mod gpt;
pub mod mbr;
pub mod types;
mod window;

use serde::Serialize;
use uuid::Uuid;

use crate::disk::VirtualDisk;
use crate::error::{Error, Result};

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

    /// One line for people: type, size, start, name and file system.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}, {} at {}",
            self.type_name,
            short_size(self.size),
            short_size(self.start)
        );
        if let Some(n) = &self.name {
            s.push_str(&format!(", name {n:?}"));
        }
        if let Some(fs) = &self.filesystem {
            s.push_str(&format!(", {}", fs.summary()));
        }
        s
    }
}

impl FsInfo {
    /// `ext4 "label" (uuid)` for people.
    pub fn summary(&self) -> String {
        let mut s = self.kind.as_str().to_string();
        if let Some(l) = &self.label {
            s.push_str(&format!(" {l:?}"));
        }
        if let Some(u) = &self.uuid {
            s.push_str(&format!(" ({u})"));
        }
        s
    }
}

/// `1048576` -> `1 MiB`, `1536` -> `1.50 KiB`.
fn short_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The table for people: a line for the scheme, then one per partition
/// (number, start and size in bytes, type, name, file system).
pub fn write_text(table: &PartitionTable, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    writeln!(out, "scheme: {}", table.scheme.as_str())?;
    if let Some(fs) = &table.filesystem {
        writeln!(out, "file system on the whole disk: {}", fs.summary())?;
    }
    if table.partitions.is_empty() {
        return Ok(());
    }
    let rows: Vec<[String; 6]> = table
        .partitions
        .iter()
        .map(|p| {
            [
                p.number.to_string(),
                p.start.to_string(),
                p.size.to_string(),
                p.type_name.clone(),
                p.name.clone().unwrap_or_default(),
                p.filesystem
                    .as_ref()
                    .map(FsInfo::summary)
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let head = ["#", "start", "size", "type", "name", "file system"];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(head.map(str::to_string)).chain(rows) {
        let line = format!(
            "{:>w0$}  {:>w1$}  {:>w2$}  {:<w3$}  {:<w4$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
            w4 = width[4],
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Read the partition table of `disk` and probe each partition for a file
/// system. A disk without a table reads as [`Scheme::None`], with the file
/// system of the whole disk (if any) in [`PartitionTable::filesystem`].
pub fn read(disk: &dyn VirtualDisk) -> Result<PartitionTable> {
    let mut table = PartitionTable {
        scheme: Scheme::None,
        partitions: Vec::new(),
        warnings: Vec::new(),
        filesystem: None,
    };
    let size = disk.virtual_size();
    let mut sector0 = [0u8; mbr::SECTOR];
    if size >= mbr::SECTOR as u64 {
        disk.read_at(&mut sector0, 0)?;
    }
    let mbr = mbr::Mbr::parse(&sector0);
    let protective = mbr.as_ref().is_some_and(mbr::Mbr::is_protective);
    if mbr.is_none() || protective {
        if let Some(g) = gpt::read(disk, &mut table.warnings)? {
            if !protective {
                table
                    .warnings
                    .push("the GPT has no protective MBR in front of it".to_string());
            }
            table.scheme = Scheme::Gpt;
            table.partitions = gpt_partitions(&g, &mut table.warnings);
        } else if protective {
            return Err(Error::corrupt(
                "GPT header",
                0x200,
                "the protective MBR announces a GPT, but there is no GPT header signature \
                 \"EFI PART\" at LBA 1 or at the last LBA (512- or 4096-byte sectors)",
            ));
        }
    }
    if table.scheme == Scheme::None {
        let whole = fs_probe::probe(disk, 0, size)?;
        match (mbr, whole) {
            // A volume boot record at sector 0 is not an MBR: the disk is
            // a bare file system.
            (Some(_), Some(fs)) if fs_probe::is_boot_sector_fs(&fs) => table.filesystem = Some(fs),
            (Some(m), _) => {
                let sector = u64::from(disk.logical_sector_size());
                let found = mbr::partitions(disk, &m, sector, &mut table.warnings)?;
                table.scheme = Scheme::Mbr;
                table.partitions = found
                    .into_iter()
                    .map(|f| Partition {
                        number: f.number,
                        start: f.start,
                        size: f.size,
                        type_name: types::mbr_type_name(f.kind),
                        type_guid: None,
                        mbr_type: Some(f.kind),
                        guid: None,
                        name: None,
                        filesystem: None,
                    })
                    .collect();
            }
            (None, fs) => table.filesystem = fs,
        }
    }
    for p in &mut table.partitions {
        if p.end() > size {
            table.warnings.push(format!(
                "partition {} ({:#x}..{:#x}) ends past the end of the {size}-byte disk",
                p.number,
                p.start,
                p.end()
            ));
        }
        if p.mbr_type.is_some_and(types::is_extended) || p.start >= size {
            continue;
        }
        match fs_probe::probe(disk, p.start, p.size) {
            Ok(fs) => p.filesystem = fs,
            Err(e) => table.warnings.push(format!(
                "partition {}: its file system could not be probed: {e}",
                p.number
            )),
        }
    }
    Ok(table)
}

/// The partitions of a GPT, in bytes; entries whose LBAs make no sense
/// are left out with a warning.
fn gpt_partitions(g: &gpt::Gpt, warnings: &mut Vec<String>) -> Vec<Partition> {
    let mut out = Vec::new();
    for e in &g.entries {
        let span = e
            .last_lba
            .checked_sub(e.first_lba)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(g.sector))
            .zip(e.first_lba.checked_mul(g.sector))
            .filter(|(len, start)| start.checked_add(*len).is_some());
        let Some((len, start)) = span else {
            warnings.push(format!(
                "GPT entry {}: LBAs {}..={} do not describe a partition; left out",
                e.number, e.first_lba, e.last_lba
            ));
            continue;
        };
        out.push(Partition {
            number: e.number,
            start,
            size: len,
            type_name: types::gpt_type_name(e.type_guid),
            type_guid: Some(e.type_guid),
            mbr_type: None,
            guid: Some(e.guid),
            name: (!e.name.is_empty()).then(|| e.name.clone()),
            filesystem: None,
        });
    }
    out
}

/// Probe the file system of one partition (or of the whole disk with
/// `start` 0 and `size` its size).
pub fn probe(disk: &dyn VirtualDisk, start: u64, size: u64) -> Result<Option<FsInfo>> {
    fs_probe::probe(disk, start, size)
}
