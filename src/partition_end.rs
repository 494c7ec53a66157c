//! Where the partitions of a disk end: the MBR and GPT headers read through
//! a virtual disk, for resize's minimum size, and the GPT backup moved to
//! the last sectors after a resize.
//!
//! Only what resize needs is decoded: the four primary MBR entries (an
//! extended partition counts as a whole, so its logical partitions are
//! inside it) and the GPT header and entry array (UEFI 2.10, 5.3).

use crate::disk::VirtualDisk;
use crate::error::{Error, Result};

/// Bytes of the MBR sector.
const MBR_SIZE: usize = 512;
/// Offset of the first MBR partition entry.
const MBR_TABLE: usize = 0x1be;
/// Bytes of one MBR partition entry.
const MBR_ENTRY: usize = 16;
/// The boot signature at the end of an MBR.
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xaa];
/// MBR partition type of the protective entry in front of a GPT.
const MBR_PROTECTIVE: u8 = 0xee;
/// GPT header signature, "EFI PART".
const GPT_SIGNATURE: [u8; 8] = *b"EFI PART";
/// Smallest GPT header (revision 1.0): 92 bytes.
const GPT_HEADER_MIN: u32 = 92;
/// Offset of the header CRC32 in the GPT header.
const GPT_HEADER_CRC: usize = 16;
/// The largest partition entry array read: far beyond the 128 entries of
/// 128 bytes everyone writes, small enough to bound the allocation.
const GPT_MAX_ARRAY: u64 = 4 << 20;
/// Logical sector sizes a GPT is looked for at (LBA 1 at 512 or 4096).
const SECTOR_SIZES: [u64; 2] = [512, 4096];

/// Reads `buf.len()` bytes at a byte offset of the virtual disk.
pub type ReadFn<'a> = &'a dyn Fn(&mut [u8], u64) -> Result<()>;

/// The partition table found on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    /// An MBR whose partitions end at `end` (bytes).
    Mbr { end: u64 },
    /// A GPT.
    Gpt(Gpt),
}

/// A GPT's layout, as the primary header records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// Logical sector size the table was found with.
    pub sector: u64,
    /// The primary header (the first `header_size` bytes of LBA 1).
    pub header: Vec<u8>,
    /// The partition entry array.
    pub entries: Vec<u8>,
    /// End (bytes) of the last used partition, 0 without any.
    pub partitions_end: u64,
}

impl Gpt {
    /// Sectors of the entry array.
    fn array_sectors(&self) -> u64 {
        (self.entries.len() as u64).div_ceil(self.sector)
    }

    /// The smallest disk that holds every partition and the backup entry
    /// array and header after them.
    pub fn minimum_size(&self) -> u64 {
        let first_usable = le64(&self.header, 40) * self.sector;
        self.partitions_end.max(first_usable) + (self.array_sectors() + 1) * self.sector
    }
}

impl Table {
    /// The smallest disk size that holds the whole table and its partitions.
    pub fn minimum_size(&self) -> u64 {
        match self {
            Table::Mbr { end } => (*end).max(MBR_SIZE as u64),
            Table::Gpt(g) => g.minimum_size(),
        }
    }
}

/// The partition table of a disk of `size` bytes, if it has one.
pub fn read_table(read: ReadFn<'_>, size: u64) -> Result<Option<Table>> {
    if size < MBR_SIZE as u64 {
        return Ok(None);
    }
    let mut mbr = [0u8; MBR_SIZE];
    read(&mut mbr, 0)?;
    let mut protective = false;
    let mut mbr_end = 0u64;
    if mbr[510..512] == MBR_SIGNATURE {
        for i in 0..4 {
            let e = &mbr[MBR_TABLE + i * MBR_ENTRY..MBR_TABLE + (i + 1) * MBR_ENTRY];
            let kind = e[4];
            let start = u64::from(le32(e, 8));
            let count = u64::from(le32(e, 12));
            if kind == 0 || count == 0 {
                continue;
            }
            protective |= kind == MBR_PROTECTIVE;
            mbr_end = mbr_end.max((start + count) * 512);
        }
    }
    for sector in SECTOR_SIZES {
        if let Some(g) = read_gpt(read, size, sector)? {
            return Ok(Some(Table::Gpt(g)));
        }
    }
    if protective || mbr_end == 0 {
        // A protective MBR without a readable GPT: no partition layout we
        // can trust to shrink by.
        return Ok(None);
    }
    Ok(Some(Table::Mbr { end: mbr_end }))
}

/// The primary GPT at LBA 1 of a disk with `sector`-byte sectors.
fn read_gpt(read: ReadFn<'_>, size: u64, sector: u64) -> Result<Option<Gpt>> {
    if size < 2 * sector {
        return Ok(None);
    }
    let mut block = vec![0u8; sector as usize];
    read(&mut block, sector)?;
    if block[..8] != GPT_SIGNATURE {
        return Ok(None);
    }
    let at = sector;
    let header_size = le32(&block, 12);
    if !(GPT_HEADER_MIN..=sector as u32).contains(&header_size) {
        return Err(Error::corrupt(
            "GPT header",
            at + 12,
            format!("header size {header_size} is not between {GPT_HEADER_MIN} and {sector}"),
        ));
    }
    let header = block[..header_size as usize].to_vec();
    let stored = le32(&header, GPT_HEADER_CRC);
    let computed = header_crc(&header);
    if stored != computed {
        return Err(Error::corrupt(
            "GPT header",
            at + GPT_HEADER_CRC as u64,
            format!("bad CRC32: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    let array_lba = le64(&header, 72);
    let count = u64::from(le32(&header, 80));
    let entry_size = u64::from(le32(&header, 84));
    if entry_size < 128 || !entry_size.is_power_of_two() {
        return Err(Error::corrupt(
            "GPT header",
            at + 84,
            format!("partition entry size {entry_size} is not a power of two of at least 128"),
        ));
    }
    let bytes = count * entry_size;
    let array_at = array_lba.checked_mul(sector);
    let Some(array_at) = array_at.filter(|a| bytes <= GPT_MAX_ARRAY && a + bytes <= size) else {
        return Err(Error::corrupt(
            "GPT header",
            at + 72,
            format!(
                "partition entry array of {count} entries of {entry_size} bytes at LBA {array_lba} does not fit in the {size}-byte disk"
            ),
        ));
    };
    let mut entries = vec![0u8; bytes as usize];
    read(&mut entries, array_at)?;
    let crc = crc32(&entries);
    if crc != le32(&header, 88) {
        return Err(Error::corrupt(
            "GPT partition entry array",
            array_at,
            format!(
                "bad CRC32: the header records {:#010x}, computed {crc:#010x}",
                le32(&header, 88)
            ),
        ));
    }
    let mut partitions_end = 0u64;
    for (i, e) in entries.chunks_exact(entry_size as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let last = le64(e, 40);
        let end = last
            .checked_add(1)
            .and_then(|l| l.checked_mul(sector))
            .filter(|&end| end <= size)
            .ok_or_else(|| {
                Error::corrupt(
                    "GPT partition entry",
                    array_at + i as u64 * entry_size + 40,
                    format!(
                        "partition {} ends at LBA {last}, past the end of the {size}-byte disk",
                        i + 1
                    ),
                )
            })?;
        partitions_end = partitions_end.max(end);
    }
    Ok(Some(Gpt {
        sector,
        header,
        entries,
        partitions_end,
    }))
}

/// Write the backup entry array and header at the last sectors of a disk
/// of `size` bytes, clear the old backup header (when it lies inside the
/// disk's current size `now`, so that no tool takes it for the table),
/// then point the primary header at the new backup. The backup is written
/// first: until the primary changes, nothing refers to it; each step is
/// flushed before the next.
pub fn move_backup(gpt: &Gpt, size: u64, disk: &mut dyn VirtualDisk) -> Result<()> {
    let now = disk.virtual_size();
    let sector = gpt.sector;
    let last_lba = size / sector - 1;
    let array_lba = last_lba - gpt.array_sectors();
    let mut primary = gpt.header.clone();
    put64(&mut primary, 32, last_lba);
    put64(&mut primary, 48, array_lba - 1);
    let crc = header_crc(&primary);
    put32(&mut primary, GPT_HEADER_CRC, crc);

    let mut backup = primary.clone();
    put64(&mut backup, 24, last_lba);
    put64(&mut backup, 32, 1);
    put64(&mut backup, 72, array_lba);
    let crc = header_crc(&backup);
    put32(&mut backup, GPT_HEADER_CRC, crc);

    let mut array = gpt.entries.clone();
    array.resize((gpt.array_sectors() * sector) as usize, 0);
    disk.write_at(&array, array_lba * sector)?;
    let mut block = vec![0u8; sector as usize];
    block[..backup.len()].copy_from_slice(&backup);
    disk.write_at(&block, last_lba * sector)?;
    disk.flush()?;
    let old = le64(&gpt.header, 32);
    if old != last_lba
        && old > 1
        && old
            .checked_add(1)
            .and_then(|e| e.checked_mul(sector))
            .is_some_and(|e| e <= now)
        && old * sector >= gpt.partitions_end
    {
        disk.write_at(&vec![0u8; sector as usize], old * sector)?;
        disk.flush()?;
    }
    let mut block = vec![0u8; sector as usize];
    block[..primary.len()].copy_from_slice(&primary);
    disk.write_at(&block, sector)?;
    disk.flush()
}

/// Whether the GPT's backup is where [`move_backup`] puts it for `size`.
pub fn backup_in_place(gpt: &Gpt, size: u64) -> bool {
    let last_lba = size / gpt.sector - 1;
    le64(&gpt.header, 32) == last_lba && le64(&gpt.header, 48) == last_lba - gpt.array_sectors() - 1
}

fn header_crc(header: &[u8]) -> u32 {
    let mut h = header.to_vec();
    h[GPT_HEADER_CRC..GPT_HEADER_CRC + 4].fill(0);
    crc32(&h)
}

/// CRC-32 (IEEE 802.3, reflected, as UEFI uses).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn mbr_end_is_the_end_of_the_last_primary_entry() {
        let mut disk = vec![0u8; 1 << 20];
        disk[510] = 0x55;
        disk[511] = 0xaa;
        let e = MBR_TABLE + MBR_ENTRY;
        disk[e + 4] = 0x83;
        disk[e + 8..e + 12].copy_from_slice(&2048u32.to_le_bytes());
        disk[e + 12..e + 16].copy_from_slice(&100u32.to_le_bytes());
        let read = |b: &mut [u8], o: u64| {
            b.copy_from_slice(&disk[o as usize..o as usize + b.len()]);
            Ok(())
        };
        let t = read_table(&read, disk.len() as u64).unwrap();
        assert_eq!(t, Some(Table::Mbr { end: 2148 * 512 }));
        assert_eq!(t.unwrap().minimum_size(), 2148 * 512);
    }
}
