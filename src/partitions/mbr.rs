//! The master boot record: four primary entries, the protective entry of a
//! GPT disk, and the chain of extended boot records (EBRs) that holds the
//! logical partitions inside an extended partition.
//!
//! Each EBR holds the logical partition (entry 0, relative to the EBR) and
//! the link to the next EBR (entry 1, relative to the extended partition's
//! start); sfdisk numbers the logical partitions from 5 in chain order.

use crate::disk::VirtualDisk;
use crate::error::{Error, Result};

use super::types;

/// Bytes of an MBR or EBR sector (its layout ends at byte 512 whatever the
/// logical sector size).
pub const SECTOR: usize = 512;
/// Offset of the first partition entry.
const TABLE: usize = 0x1be;
/// Bytes of one partition entry.
const ENTRY: usize = 16;
/// The boot signature at bytes 510-511.
const SIGNATURE: [u8; 2] = [0x55, 0xaa];
/// Boot indicator of an inactive entry.
const INACTIVE: u8 = 0x00;
/// Boot indicator of the active entry.
const ACTIVE: u8 = 0x80;
/// The most logical partitions followed in one extended partition: Linux
/// shows at most 256 partitions per disk (DISK_MAX_PARTS), so a longer
/// chain is damage, and the limit bounds the reads a hostile chain causes.
pub const MAX_LOGICAL: usize = 252;

/// One 16-byte partition entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Boot indicator (0x80 active, 0x00 not).
    pub boot: u8,
    /// Partition type byte.
    pub kind: u8,
    /// First sector (relative, in an EBR).
    pub start: u32,
    /// Number of sectors.
    pub sectors: u32,
}

impl Entry {
    fn parse(b: &[u8]) -> Entry {
        Entry {
            boot: b[0],
            kind: b[4],
            start: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            sectors: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Whether the entry describes a partition.
    pub fn is_used(&self) -> bool {
        self.kind != types::MBR_UNUSED && self.sectors != 0
    }
}

/// An MBR (or EBR) sector's four entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mbr {
    /// The entries, in slot order.
    pub entries: [Entry; 4],
}

impl Mbr {
    /// The MBR in `sector`, or `None` when it is not one: no boot
    /// signature, or a boot indicator other than 0x00 and 0x80.
    pub fn parse(sector: &[u8]) -> Option<Mbr> {
        if sector.len() < SECTOR || sector[510..512] != SIGNATURE {
            return None;
        }
        let entries = std::array::from_fn(|i| Entry::parse(&sector[TABLE + i * ENTRY..]));
        entries
            .iter()
            .all(|e| e.boot == INACTIVE || e.boot == ACTIVE)
            .then_some(Mbr { entries })
    }

    /// Whether it is the protective MBR of a GPT disk.
    pub fn is_protective(&self) -> bool {
        self.entries.iter().any(|e| e.kind == types::MBR_PROTECTIVE)
    }
}

/// A partition found in an MBR or EBR, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// sfdisk's number.
    pub number: u32,
    /// Type byte.
    pub kind: u8,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
}

/// The primary and logical partitions of `mbr` on `disk` with `sector`
/// bytes per logical sector. A damaged EBR chain ends the logical
/// partitions with a warning; a loop in it is an error.
pub fn partitions(
    disk: &dyn VirtualDisk,
    mbr: &Mbr,
    sector: u64,
    warnings: &mut Vec<String>,
) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut extended = None;
    for (i, e) in mbr.entries.iter().enumerate() {
        if !e.is_used() {
            continue;
        }
        out.push(Found {
            number: i as u32 + 1,
            kind: e.kind,
            start: u64::from(e.start) * sector,
            size: u64::from(e.sectors) * sector,
        });
        if types::is_extended(e.kind) {
            if extended.is_some() {
                warnings.push(format!(
                    "MBR entry {} is a second extended partition: its logical partitions are not read",
                    i + 1
                ));
            } else {
                extended = Some(*e);
            }
        }
    }
    if let Some(ext) = extended {
        logical(disk, &ext, sector, warnings, &mut out)?;
    }
    Ok(out)
}

/// Follow the EBR chain of the extended partition `ext`.
fn logical(
    disk: &dyn VirtualDisk,
    ext: &Entry,
    sector: u64,
    warnings: &mut Vec<String>,
    out: &mut Vec<Found>,
) -> Result<()> {
    let ext_start = u64::from(ext.start);
    let ext_end = ext_start + u64::from(ext.sectors);
    let disk_sectors = disk.virtual_size() / sector;
    let mut seen: Vec<u64> = Vec::new();
    let mut ebr = ext_start;
    let mut number = 5;
    loop {
        let offset = ebr * sector;
        if seen.contains(&ebr) {
            return Err(Error::corrupt(
                "EBR",
                offset,
                "the chain of extended boot records loops back to this EBR, which was already read",
            ));
        }
        if seen.len() >= MAX_LOGICAL {
            return Err(Error::corrupt(
                "EBR",
                offset,
                format!("the chain of extended boot records is longer than {MAX_LOGICAL}"),
            ));
        }
        seen.push(ebr);
        if ebr + 1 > disk_sectors {
            warnings.push(format!(
                "EBR at {offset:#x} is past the end of the disk: the logical partitions after it are not read"
            ));
            return Ok(());
        }
        let mut buf = [0u8; SECTOR];
        disk.read_at(&mut buf, offset)?;
        let Some(rec) = Mbr::parse(&buf) else {
            if seen.len() > 1 || buf[510..512] == SIGNATURE {
                warnings.push(format!(
                    "EBR at {offset:#x} has no boot signature 55aa or a bad boot indicator: \
                     the logical partitions from it on are not read"
                ));
            }
            return Ok(());
        };
        let [part, link, ..] = rec.entries;
        if part.is_used() {
            out.push(Found {
                number,
                kind: part.kind,
                start: (ebr + u64::from(part.start)) * sector,
                size: u64::from(part.sectors) * sector,
            });
            number += 1;
        }
        if !link.is_used() || !types::is_extended(link.kind) {
            return Ok(());
        }
        let next = ext_start + u64::from(link.start);
        if next >= ext_end {
            warnings.push(format!(
                "EBR at {offset:#x} links to sector {next}, outside the extended partition \
                 (sectors {ext_start}..{ext_end}): the chain ends there"
            ));
            return Ok(());
        }
        ebr = next;
    }
}
