//! The GUID partition table (UEFI 2.10, 5.3): the primary header at LBA 1
//! with its entry array, and the backup header at the disk's last LBA with
//! its own copy of the array. Both CRC32s of a header are checked; a
//! damaged primary is read from the backup with a warning.

use uuid::Uuid;

use crate::disk::VirtualDisk;
use crate::error::{Error, Result};
use crate::partition_end::crc32;

/// Header signature, "EFI PART".
pub const SIGNATURE: [u8; 8] = *b"EFI PART";
/// The only revision defined, 1.0.
const REVISION: u32 = 0x0001_0000;
/// Smallest header (revision 1.0): 92 bytes.
const HEADER_MIN: u32 = 92;
/// Offset of the header's own CRC32.
const HEADER_CRC: usize = 16;
/// Bytes of the smallest entry; entry sizes are 128 * 2^n.
const ENTRY_MIN: u32 = 128;
/// The largest entry accepted: no writer uses more than 128 bytes, and the
/// limit keeps one entry's read small.
const ENTRY_MAX: u32 = 4096;
/// The largest entry array read: far beyond the 128 entries of 128 bytes
/// everyone writes, small enough to bound the allocation.
pub const MAX_ARRAY: u64 = 4 << 20;
/// Bytes of the UTF-16LE partition name in an entry.
const NAME_BYTES: usize = 72;
/// Logical sector sizes a GPT is looked for at.
pub const SECTOR_SIZES: [u64; 2] = [512, 4096];

/// One used entry of the array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index in the array + 1 (sgdisk's number).
    pub number: u32,
    /// Partition type GUID.
    pub type_guid: Uuid,
    /// Unique partition GUID.
    pub guid: Uuid,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Name (empty when none).
    pub name: String,
}

/// A GPT read from one of its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// Logical sector size it was found with.
    pub sector: u64,
    /// Disk GUID.
    pub disk_guid: Uuid,
    /// First and last usable LBA.
    pub usable: (u64, u64),
    /// The used entries.
    pub entries: Vec<Entry>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn guid(b: &[u8], at: usize) -> Uuid {
    Uuid::from_bytes_le(b[at..at + 16].try_into().expect("16 bytes"))
}

/// Whether the GPT signature is at `lba`.
fn signature_at(disk: &dyn VirtualDisk, lba: u64, sector: u64) -> Result<bool> {
    let Some(offset) = lba.checked_mul(sector) else {
        return Ok(false);
    };
    if offset.saturating_add(sector) > disk.virtual_size() {
        return Ok(false);
    }
    let mut sig = [0u8; 8];
    disk.read_at(&mut sig, offset)?;
    Ok(sig == SIGNATURE)
}

/// Read the GPT of `disk`, if it has a header signature at LBA 1 or at its
/// last LBA (512- or 4096-byte sectors, the disk's own size first). A
/// header that fails a check is damage: the primary is read from the
/// backup with a warning, and both damaged is an error.
pub fn read(disk: &dyn VirtualDisk, warnings: &mut Vec<String>) -> Result<Option<Gpt>> {
    let own = u64::from(disk.logical_sector_size());
    let mut sizes = vec![own];
    sizes.extend(SECTOR_SIZES.iter().filter(|&&s| s != own));
    let size = disk.virtual_size();
    let mut found = None;
    for &s in &sizes {
        if signature_at(disk, 1, s)? {
            found = Some(s);
            break;
        }
    }
    if found.is_none() {
        for &s in &sizes {
            if size >= 2 * s && signature_at(disk, size / s - 1, s)? {
                found = Some(s);
                break;
            }
        }
    }
    let Some(sector) = found else {
        return Ok(None);
    };
    let last = size / sector - 1;
    match header(disk, 1, sector) {
        Ok((gpt, alternate)) => {
            // The backup is only checked, for a warning: the primary is good.
            let at = if alternate > 1 && alternate <= last {
                alternate
            } else {
                last
            };
            if let Err(e) = header(disk, at, sector) {
                warnings.push(format!("the GPT backup is damaged: {e}"));
            }
            Ok(Some(gpt))
        }
        Err(primary) => match header(disk, last, sector) {
            Ok((gpt, _)) => {
                warnings.push(format!(
                    "the GPT primary is damaged ({primary}); read from the backup header at {:#x}",
                    last * sector
                ));
                Ok(Some(gpt))
            }
            Err(backup) => Err(Error::corrupt(
                "GPT header",
                sector,
                format!(
                    "both GPT headers are damaged: primary: {}; backup: {backup}",
                    primary.message()
                ),
            )),
        },
    }
}

/// Read and check the header at `lba` and its entry array; returns the
/// table and the header's alternate LBA.
fn header(disk: &dyn VirtualDisk, lba: u64, sector: u64) -> Result<(Gpt, u64)> {
    let size = disk.virtual_size();
    let offset = lba * sector;
    let bad = |m: String| Error::corrupt("GPT header", offset, m);
    let mut h = vec![0u8; sector as usize];
    if offset + sector > size {
        return Err(bad(format!("past the end of the {size}-byte disk")));
    }
    disk.read_at(&mut h, offset)?;
    if h[..8] != SIGNATURE {
        return Err(bad(format!(
            "expected the signature \"EFI PART\", found {:02x?}",
            &h[..8]
        )));
    }
    let revision = le32(&h, 8);
    if revision != REVISION {
        return Err(bad(format!(
            "expected revision {REVISION:#010x}, found {revision:#010x}"
        )));
    }
    let header_size = le32(&h, 12);
    if header_size < HEADER_MIN || u64::from(header_size) > sector {
        return Err(bad(format!(
            "header size {header_size} is outside {HEADER_MIN}..={sector}"
        )));
    }
    let stored = le32(&h, HEADER_CRC);
    let mut zeroed = h[..header_size as usize].to_vec();
    zeroed[HEADER_CRC..HEADER_CRC + 4].fill(0);
    let computed = crc32(&zeroed);
    if stored != computed {
        return Err(bad(format!(
            "bad header CRC32: recorded {stored:#010x}, computed {computed:#010x}"
        )));
    }
    let my_lba = le64(&h, 24);
    if my_lba != lba {
        return Err(bad(format!(
            "the header says it is at LBA {my_lba}, but it was read at LBA {lba}"
        )));
    }
    let alternate = le64(&h, 32);
    let usable = (le64(&h, 40), le64(&h, 48));
    let array_lba = le64(&h, 72);
    let count = le32(&h, 80);
    let entry_size = le32(&h, 84);
    if !(ENTRY_MIN..=ENTRY_MAX).contains(&entry_size) || !entry_size.is_power_of_two() {
        return Err(bad(format!(
            "entry size {entry_size} is not a power of two in {ENTRY_MIN}..={ENTRY_MAX}"
        )));
    }
    let array_len = u64::from(count) * u64::from(entry_size);
    if array_len > MAX_ARRAY {
        return Err(bad(format!(
            "{count} entries of {entry_size} bytes exceed the {MAX_ARRAY}-byte limit"
        )));
    }
    let array_at = array_lba
        .checked_mul(sector)
        .filter(|a| a.checked_add(array_len).is_some_and(|e| e <= size))
        .ok_or_else(|| {
            bad(format!(
                "the entry array at LBA {array_lba} ({array_len} bytes) is past the end of the {size}-byte disk"
            ))
        })?;
    let mut array = vec![0u8; array_len as usize];
    disk.read_at(&mut array, array_at)?;
    let stored = le32(&h, 88);
    let computed = crc32(&array);
    if stored != computed {
        return Err(Error::corrupt(
            "GPT entry array",
            array_at,
            format!(
                "bad CRC32 (header at {offset:#x}): recorded {stored:#010x}, computed {computed:#010x}"
            ),
        ));
    }
    let entries = array
        .chunks_exact(entry_size as usize)
        .enumerate()
        .filter_map(|(i, e)| {
            let type_guid = guid(e, 0);
            (!type_guid.is_nil()).then(|| Entry {
                number: i as u32 + 1,
                type_guid,
                guid: guid(e, 16),
                first_lba: le64(e, 32),
                last_lba: le64(e, 40),
                attributes: le64(e, 48),
                name: name(&e[56..56 + NAME_BYTES]),
            })
        })
        .collect();
    let gpt = Gpt {
        sector,
        disk_guid: guid(&h, 56),
        usable,
        entries,
    };
    Ok((gpt, alternate))
}

/// The UTF-16LE name up to its first NUL.
fn name(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}
