//! File systems recognised by their signatures (superblock magic numbers),
//! with their label and UUID where they have them.

use serde::{Serialize, Serializer};

use crate::disk::VirtualDisk;
use crate::error::{Error, Result};

use super::Window;

/// A kind of file system (or volume) found by signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FsKind {
    /// ext2 (no journal).
    Ext2,
    /// ext3 (journal, no extents).
    Ext3,
    /// ext4.
    Ext4,
    /// NTFS.
    Ntfs,
    /// FAT12.
    Fat12,
    /// FAT16.
    Fat16,
    /// FAT32.
    Fat32,
    /// exFAT.
    Exfat,
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
    /// Linux swap space.
    Swap,
    /// LVM2 physical volume.
    LvmPv,
    /// BitLocker-encrypted volume.
    BitLocker,
}

impl FsKind {
    /// Lowercase name, as in the JSON output (blkid's names, except
    /// `fat12`/`fat16`/`fat32` for its `vfat` and `lvm2_pv` for
    /// `LVM2_member`).
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Ntfs => "ntfs",
            FsKind::Fat12 => "fat12",
            FsKind::Fat16 => "fat16",
            FsKind::Fat32 => "fat32",
            FsKind::Exfat => "exfat",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::Swap => "swap",
            FsKind::LvmPv => "lvm2_pv",
            FsKind::BitLocker => "bitlocker",
        }
    }
}

impl Serialize for FsKind {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A file system found in a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsInfo {
    /// What it is.
    #[serde(rename = "type")]
    pub kind: FsKind,
    /// Its volume label, if it has one.
    pub label: Option<String>,
    /// Its UUID or serial number, as blkid prints it.
    pub uuid: Option<String>,
}

/// Bytes read from the start of a partition to probe it: through the Btrfs
/// superblock at 64 KiB (its label ends at 0x1022b) and the largest swap
/// page size (64 KiB) signature.
const PROBE_BYTES: usize = 0x11000;
/// Offset of the ext2/3/4 superblock.
const EXT_SUPER: usize = 1024;
/// ext2/3/4 superblock magic (s_magic, at 0x38 of the superblock).
const EXT_MAGIC: u16 = 0xef53;
/// ext3 has a journal (s_feature_compat).
const EXT_COMPAT_JOURNAL: u32 = 0x4;
/// The incompatible features ext3 knows (filetype, recover, meta_bg);
/// any other makes the file system ext4.
const EXT3_INCOMPAT: u32 = 0x2 | 0x4 | 0x10;
/// The read-only compatible features ext3 knows (sparse_super,
/// large_file, btree_dir); any other makes the file system ext4.
const EXT3_RO_COMPAT: u32 = 0x1 | 0x2 | 0x4;
/// An external journal device (not a file system).
const EXT_INCOMPAT_JOURNAL_DEV: u32 = 0x8;
/// XFS superblock magic at byte 0, "XFSB".
const XFS_MAGIC: &[u8; 4] = b"XFSB";
/// Btrfs superblock offset and its magic at 0x40 of it.
const BTRFS_SUPER: usize = 0x10000;
/// Btrfs magic, "_BHRfS_M".
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";
/// Page sizes whose last 10 bytes may hold the swap signature.
const SWAP_PAGES: [usize; 4] = [4096, 8192, 16384, 65536];
/// LVM2 label signature (label_header id), at the start of one of the
/// first four 512-byte sectors.
const LVM_LABEL: &[u8; 8] = b"LABELONE";
/// Bytes of an LVM2 label sector (whatever the device's sector size).
const LVM_SECTOR: usize = 512;
/// The sectors that may hold the LVM2 label.
const LVM_SECTORS: usize = 4;
/// label_header sector_xl (u64): the number of the sector holding it.
const LVM_SECTOR_XL: usize = 8;
/// label_header crc_xl (u32): CRC of the bytes from offset_xl to the end
/// of the sector.
const LVM_CRC_XL: usize = 16;
/// label_header offset_xl, where the bytes the CRC covers begin.
const LVM_CRC_FROM: usize = 20;
/// label_header type, "LVM2 001".
const LVM_TYPE_AT: usize = 24;
/// LVM2 label type.
const LVM_TYPE: &[u8; 8] = b"LVM2 001";
/// The PV UUID (pv_header id), right after the 32-byte label header,
/// where blkid reads it: 32 characters.
const LVM_PV_UUID: usize = 32;
/// Characters of the PV UUID.
const LVM_ID_LEN: usize = 32;
/// How blkid groups the PV UUID's characters with dashes.
const LVM_UUID_GROUPS: [usize; 7] = [6, 4, 4, 4, 4, 4, 6];
/// LVM2's label CRC: the reflected CRC-32 polynomial from this seed, with
/// no final inversion.
const LVM_CRC_SEED: u32 = 0xf597_a6cf;
/// The reflected CRC-32 polynomial.
const CRC32_POLY_REFLECTED: u32 = 0xedb8_8320;
/// OEM names of boot-sector volumes at byte 3.
const NTFS_OEM: &[u8; 8] = b"NTFS    ";
/// exFAT OEM name.
const EXFAT_OEM: &[u8; 8] = b"EXFAT   ";
/// BitLocker OEM name (Vista, Windows 7 and later), and the signature of
/// its FVE metadata block.
const BITLOCKER_OEM: &[u8; 8] = b"-FVE-FS-";
/// The jump instruction before a Vista BitLocker volume's OEM name.
const BITLOCKER_JUMP_VISTA: &[u8; 3] = b"\xeb\x52\x90";
/// The jump instruction before a Windows 7 (and later) BitLocker or
/// BitLocker To Go volume's OEM name.
const BITLOCKER_JUMP_WIN7: &[u8; 3] = b"\xeb\x58\x90";
/// BitLocker To Go's OEM name (a FAT32 shell holding the encrypted volume).
const BITLOCKER_TOGO_OEM: &[u8; 8] = b"MSWIN4.1";
/// Offset (u64) of the first FVE metadata block in a Windows 7 BitLocker
/// boot sector.
const BITLOCKER_META_WIN7: usize = 176;
/// Offset (u64) of the first FVE metadata block in a BitLocker To Go boot
/// sector.
const BITLOCKER_META_TOGO: usize = 440;
/// FVE metadata blocks are aligned to this many bytes.
const BITLOCKER_META_ALIGN: u64 = 64;
/// Bytes of the FVE metadata block blkid reads: its block header (64)
/// and metadata header (48).
const BITLOCKER_META_LEN: usize = 64 + 48;
/// The boot signature at bytes 510-511 of a boot sector.
const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xaa];
/// FAT12 has fewer clusters than this (Microsoft FAT specification 3.5).
const FAT12_CLUSTERS: u64 = 4085;
/// Bytes of one NTFS MFT record read for the volume label, at most.
const NTFS_RECORD_MAX: usize = 64 << 10;
/// The update sequence protects the last two bytes of every 512 bytes of
/// a record, whatever the sector size.
const NTFS_FIXUP_STRIDE: usize = 512;
/// MFT record number of $Volume.
const NTFS_VOLUME_RECORD: u64 = 3;
/// Attribute type $VOLUME_NAME.
const NTFS_VOLUME_NAME: u32 = 0x60;
/// Attribute type marking the end of a record's attributes.
const NTFS_END: u32 = 0xffff_ffff;
/// exFAT directory entry of the volume label.
const EXFAT_LABEL_ENTRY: u8 = 0x83;
/// Bytes of the exFAT root directory scanned for the label: its first
/// cluster, at most this much.
const EXFAT_ROOT_MAX: usize = 64 << 10;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A label stored as NUL- or space-padded bytes.
fn text_label(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim_end().to_string();
    (!s.is_empty()).then_some(s)
}

/// A label stored as UTF-16LE code units.
fn utf16_label(b: &[u8]) -> Option<String> {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let s = String::from_utf16_lossy(&units);
    (!s.is_empty()).then_some(s)
}

fn uuid_at(b: &[u8], at: usize) -> Option<String> {
    let u = uuid::Uuid::from_bytes(b[at..at + 16].try_into().expect("16 bytes"));
    (!u.is_nil()).then(|| u.to_string())
}

/// A FAT or exFAT volume serial number as blkid prints it, `XXXX-XXXX`.
fn serial32(v: u32) -> String {
    format!("{:04X}-{:04X}", v >> 16, v & 0xffff)
}

/// Probe the `size` bytes at `start` of `disk` for a file system.
pub fn probe(disk: &dyn VirtualDisk, start: u64, size: u64) -> Result<Option<FsInfo>> {
    let win = Window::new(disk, start, size);
    let n = (PROBE_BYTES as u64).min(win.len()) as usize;
    let mut head = vec![0u8; PROBE_BYTES];
    win.read_exact_at(&mut head[..n], 0)
        .map_err(|e| Error::io(e, format!("probing the file system at {start:#x}")))?;
    if n < 512 {
        return Ok(None);
    }
    if let Some(fs) = boot_sector(&head, &win) {
        return Ok(Some(fs));
    }
    Ok(superblocks(&head, n))
}

/// The volumes that start with a boot sector: BitLocker, NTFS, exFAT, FAT.
fn boot_sector(b: &[u8], win: &Window<'_>) -> Option<FsInfo> {
    let oem = &b[3..11];
    if is_bitlocker(b, win) {
        return Some(FsInfo {
            kind: FsKind::BitLocker,
            label: None,
            uuid: None,
        });
    }
    if b[510..512] != BOOT_SIGNATURE {
        return None;
    }
    if oem == NTFS_OEM {
        return Some(FsInfo {
            kind: FsKind::Ntfs,
            label: ntfs_label(b, win),
            uuid: Some(format!("{:016X}", le64(b, 0x48))),
        });
    }
    if oem == EXFAT_OEM {
        return Some(FsInfo {
            kind: FsKind::Exfat,
            label: exfat_label(b, win),
            uuid: Some(serial32(le32(b, 0x64))),
        });
    }
    fat(b)
}

/// A BitLocker boot sector as blkid tells it: Vista's jump and OEM name;
/// or Windows 7's, or BitLocker To Go's (FAT32's "MSWIN4.1" with Windows
/// 7's jump), whose FVE metadata offset is non-zero, 64-byte aligned and
/// points at a block signed "-FVE-FS-" (so a plain FAT32 is not one).
fn is_bitlocker(b: &[u8], win: &Window<'_>) -> bool {
    let (jump, oem) = (&b[..3], &b[3..11]);
    let meta = if jump == BITLOCKER_JUMP_VISTA && oem == BITLOCKER_OEM {
        return true;
    } else if jump == BITLOCKER_JUMP_WIN7 && oem == BITLOCKER_OEM {
        BITLOCKER_META_WIN7
    } else if jump == BITLOCKER_JUMP_WIN7 && oem == BITLOCKER_TOGO_OEM {
        BITLOCKER_META_TOGO
    } else {
        return false;
    };
    let at = le64(b, meta);
    if at == 0 || !at.is_multiple_of(BITLOCKER_META_ALIGN) {
        return false;
    }
    let mut block = [0u8; BITLOCKER_META_LEN];
    win.read_exact_at(&mut block, at).is_ok() && &block[..8] == BITLOCKER_OEM
}

/// A FAT12/16/32 boot sector, told apart by its cluster count.
fn fat(b: &[u8]) -> Option<FsInfo> {
    if b[0] != 0xeb && b[0] != 0xe9 {
        return None;
    }
    let bytes_per_sector = u64::from(le16(b, 0x0b));
    let per_cluster = u64::from(b[0x0d]);
    let reserved = u64::from(le16(b, 0x0e));
    let fats = u64::from(b[0x10]);
    let root_entries = u64::from(le16(b, 0x11));
    let media = b[0x15];
    if !(512..=4096).contains(&bytes_per_sector)
        || !bytes_per_sector.is_power_of_two()
        || per_cluster == 0
        || !per_cluster.is_power_of_two()
        || reserved == 0
        || fats == 0
        || (media != 0xf0 && media < 0xf8)
    {
        return None;
    }
    let total = match le16(b, 0x13) {
        0 => u64::from(le32(b, 0x20)),
        n => u64::from(n),
    };
    let fat_sectors = match le16(b, 0x16) {
        0 => u64::from(le32(b, 0x24)),
        n => u64::from(n),
    };
    let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
    let meta = reserved + fats * fat_sectors + root_sectors;
    let clusters = total.checked_sub(meta)? / per_cluster;
    let (kind, ext) = if le16(b, 0x16) == 0 {
        (FsKind::Fat32, 0x40)
    } else if clusters < FAT12_CLUSTERS {
        (FsKind::Fat12, 0x24)
    } else {
        (FsKind::Fat16, 0x24)
    };
    // The extended boot signature says the serial and label are there.
    let (label, uuid) = if b[ext + 2] == 0x29 {
        let label = text_label(&b[ext + 7..ext + 18]).filter(|l| l != "NO NAME");
        (label, Some(serial32(le32(b, ext + 3))))
    } else {
        (None, None)
    };
    Some(FsInfo { kind, label, uuid })
}

/// The volume name of an NTFS: the $VOLUME_NAME attribute of MFT record 3.
fn ntfs_label(b: &[u8], win: &Window<'_>) -> Option<String> {
    let sector = u64::from(le16(b, 0x0b));
    let cluster = sector * u64::from(b[0x0d]);
    let per_record = b[0x40] as i8;
    let record = if per_record < 0 {
        1u64.checked_shl(u32::from(per_record.unsigned_abs()))
    } else {
        cluster.checked_mul(per_record as u64)
    };
    let record = record.filter(|&r| (512..=NTFS_RECORD_MAX as u64).contains(&r))?;
    let at = le64(b, 0x30)
        .checked_mul(cluster)?
        .checked_add(NTFS_VOLUME_RECORD * record)?;
    let mut rec = vec![0u8; record as usize];
    if win.read_exact_at(&mut rec, at).is_err() || &rec[..4] != b"FILE" {
        return None;
    }
    // Undo the update sequence: the last two bytes of each 512-byte block
    // (whatever the sector size) were replaced by the sequence number and
    // saved in the array.
    let usa = usize::from(le16(&rec, 4));
    let usa_count = usize::from(le16(&rec, 6));
    if usa_count == 0
        || usa + usa_count * 2 > rec.len()
        || (usa_count - 1) * NTFS_FIXUP_STRIDE > rec.len()
    {
        return None;
    }
    for i in 1..usa_count {
        let end = i * NTFS_FIXUP_STRIDE;
        let saved = [rec[usa + i * 2], rec[usa + i * 2 + 1]];
        rec[end - 2..end].copy_from_slice(&saved);
    }
    let mut pos = usize::from(le16(&rec, 0x14));
    while pos + 0x18 <= rec.len() {
        let kind = le32(&rec, pos);
        let len = le32(&rec, pos + 4) as usize;
        if kind == NTFS_END || len < 0x18 || pos + len > rec.len() {
            break;
        }
        // Resident (non-resident flag 0 at 8): value length at 0x10,
        // value offset at 0x14.
        if kind == NTFS_VOLUME_NAME && rec[pos + 8] == 0 {
            let vlen = le32(&rec, pos + 0x10) as usize;
            let voff = usize::from(le16(&rec, pos + 0x14));
            let v = rec.get(pos + voff..pos + voff + vlen);
            return v.and_then(utf16_label);
        }
        pos += len;
    }
    None
}

/// The exFAT volume label: its entry in the first cluster of the root
/// directory.
fn exfat_label(b: &[u8], win: &Window<'_>) -> Option<String> {
    let sector_shift = u32::from(b[0x6c]);
    let cluster_shift = u32::from(b[0x6d]);
    if !(9..=12).contains(&sector_shift) || sector_shift + cluster_shift > 25 {
        return None;
    }
    let heap = u64::from(le32(b, 0x58)) << sector_shift;
    let root = u64::from(le32(b, 0x60));
    let cluster = 1u64 << (sector_shift + cluster_shift);
    let at = root
        .checked_sub(2)?
        .checked_mul(cluster)?
        .checked_add(heap)?;
    let mut dir = vec![0u8; (cluster as usize).min(EXFAT_ROOT_MAX)];
    if win.read_exact_at(&mut dir, at).is_err() {
        return None;
    }
    for e in dir.chunks_exact(32) {
        if e[0] == 0 {
            break;
        }
        if e[0] == EXFAT_LABEL_ENTRY {
            let chars = usize::from(e[1]).min(11);
            return utf16_label(&e[2..2 + chars * 2]);
        }
    }
    None
}

/// The file systems found by a superblock magic: ext2/3/4, XFS, Btrfs,
/// swap, LVM2; `b` holds the first `n` bytes of the partition (zeros
/// after them).
fn superblocks(b: &[u8], n: usize) -> Option<FsInfo> {
    let sb = &b[EXT_SUPER..EXT_SUPER + 1024];
    if le16(sb, 0x38) == EXT_MAGIC {
        let compat = le32(sb, 0x5c);
        let incompat = le32(sb, 0x60);
        let ro_compat = le32(sb, 0x64);
        if incompat & EXT_INCOMPAT_JOURNAL_DEV == 0 {
            let kind = if incompat & !EXT3_INCOMPAT != 0 || ro_compat & !EXT3_RO_COMPAT != 0 {
                FsKind::Ext4
            } else if compat & EXT_COMPAT_JOURNAL != 0 {
                FsKind::Ext3
            } else {
                FsKind::Ext2
            };
            return Some(FsInfo {
                kind,
                label: text_label(&sb[0x78..0x88]),
                uuid: uuid_at(sb, 0x68),
            });
        }
    }
    if &b[..4] == XFS_MAGIC {
        return Some(FsInfo {
            kind: FsKind::Xfs,
            label: text_label(&b[108..120]),
            uuid: uuid_at(b, 32),
        });
    }
    let btrfs = &b[BTRFS_SUPER..];
    if &btrfs[0x40..0x48] == BTRFS_MAGIC {
        return Some(FsInfo {
            kind: FsKind::Btrfs,
            label: text_label(&btrfs[0x12b..0x22b]),
            uuid: uuid_at(btrfs, 0x20),
        });
    }
    for page in SWAP_PAGES {
        let sig = &b[page - 10..page];
        if sig == b"SWAPSPACE2" || sig == b"SWAP-SPACE" {
            return Some(FsInfo {
                kind: FsKind::Swap,
                label: text_label(&b[0x41c..0x42c]),
                uuid: uuid_at(b, 0x40c),
            });
        }
    }
    // A label sector cut by the partition's end is not one (its CRC might
    // still match over the zeros read after the end).
    (0..LVM_SECTORS.min(n / LVM_SECTOR))
        .find_map(|s| lvm_label(&b[s * LVM_SECTOR..(s + 1) * LVM_SECTOR], s))
}

/// LVM2's label CRC of `data`.
fn lvm_crc(data: &[u8]) -> u32 {
    data.iter().fold(LVM_CRC_SEED, |mut crc, &byte| {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (CRC32_POLY_REFLECTED & (crc & 1).wrapping_neg());
        }
        crc
    })
}

/// An LVM2 PV label in sector `s` (512 bytes `l`), as blkid takes it: the
/// id and type, sector_xl naming this sector and a matching crc_xl; its
/// PV UUID grouped 6-4-4-4-4-4-6 with dashes.
fn lvm_label(l: &[u8], s: usize) -> Option<FsInfo> {
    if &l[..8] != LVM_LABEL
        || &l[LVM_TYPE_AT..LVM_TYPE_AT + 8] != LVM_TYPE
        || le64(l, LVM_SECTOR_XL) != s as u64
        || le32(l, LVM_CRC_XL) != lvm_crc(&l[LVM_CRC_FROM..])
    {
        return None;
    }
    let id = &l[LVM_PV_UUID..LVM_PV_UUID + LVM_ID_LEN];
    let mut uuid = String::with_capacity(LVM_ID_LEN + LVM_UUID_GROUPS.len());
    let mut at = 0;
    for (i, n) in LVM_UUID_GROUPS.into_iter().enumerate() {
        if i > 0 {
            uuid.push('-');
        }
        uuid.push_str(&String::from_utf8_lossy(&id[at..at + n]));
        at += n;
    }
    Some(FsInfo {
        kind: FsKind::LvmPv,
        label: None,
        uuid: Some(uuid),
    })
}

/// Whether `fs` starts with a boot sector (so that sector 0 of a disk
/// holding it whole is not an MBR).
pub fn is_boot_sector_fs(fs: &FsInfo) -> bool {
    matches!(
        fs.kind,
        FsKind::Ntfs
            | FsKind::Exfat
            | FsKind::Fat12
            | FsKind::Fat16
            | FsKind::Fat32
            | FsKind::BitLocker
    )
}

#[cfg(test)]
mod tests;
