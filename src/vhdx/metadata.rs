//! The metadata region: a 64 KiB table of items followed by their values
//! ([MS-VHDX] 2.6). Five items are required in every file, the parent
//! locator in differencing files.

use std::io::Cursor;

use binrw::{BinRead, BinWrite, binrw};
use uuid::Uuid;

use super::parent_locator::ParentLocator;
use crate::error::{Error, Result};
use crate::guid::{from_ms_bytes, to_ms_bytes};
use crate::io::{Storage, read_struct};

/// Size of the table at the start of the region; item values lie after it.
pub const TABLE_SIZE: usize = 64 * 1024;
/// Table signature, "metadata".
pub const SIGNATURE: [u8; 8] = *b"metadata";
/// Size of the table header.
pub const HEADER_SIZE: usize = 32;
/// Size of one table entry.
pub const ENTRY_SIZE: usize = 32;
/// Most entries the table may hold ([MS-VHDX] 2.6.1.1: at most 2047).
pub const MAX_ENTRIES: u16 = 2047;
/// Longest item value ([MS-VHDX] 2.6.1.2: at most 1 MiB).
pub const MAX_ITEM_LENGTH: u32 = 1 << 20;
/// Entry flag: a user item (not one of the system items below).
pub const FLAG_IS_USER: u32 = 1;
/// Entry flag: the item describes the virtual disk (not the file).
pub const FLAG_IS_VIRTUAL_DISK: u32 = 2;
/// Entry flag: readers must understand the item.
pub const FLAG_IS_REQUIRED: u32 = 4;

/// File Parameters: block size and flags.
pub const FILE_PARAMETERS: Uuid = Uuid::from_u128(0xCAA16737_FA36_4D43_B3B6_33F0AA44E76B);
/// Virtual Disk Size in bytes.
pub const VIRTUAL_DISK_SIZE: Uuid = Uuid::from_u128(0x2FA54224_CD1B_4876_B211_5DBED83BF4B8);
/// Page 83 Data: the disk's unique id (SCSI VPD page 0x83).
pub const PAGE_83_DATA: Uuid = Uuid::from_u128(0xBECA12AB_B2E6_4523_93EF_C309E000C746);
/// Logical Sector Size.
pub const LOGICAL_SECTOR_SIZE: Uuid = Uuid::from_u128(0x8141BF1D_A96F_4709_BA47_F233A8FAAB5F);
/// Physical Sector Size.
pub const PHYSICAL_SECTOR_SIZE: Uuid = Uuid::from_u128(0xCDA348C7_445D_4471_9CC9_E9885251C556);
/// Parent Locator of a differencing disk.
pub const PARENT_LOCATOR: Uuid = Uuid::from_u128(0xA8D35F2D_B30B_454D_ABF7_D3D84834AB0C);

/// Smallest block size ([MS-VHDX] 2.6.2.1).
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// Largest block size ([MS-VHDX] 2.6.2.1).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Largest virtual disk ([MS-VHDX] 2.6.2.2: 64 TiB).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// File Parameters flag: blocks stay allocated (fixed disks).
pub const LEAVE_BLOCK_ALLOCATED: u32 = 1;
/// File Parameters flag: the disk is a differencing disk.
pub const HAS_PARENT: u32 = 2;

const S: &str = "VHDX metadata table";

/// The table header as stored.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableHeader {
    /// "metadata".
    pub signature: [u8; 8],
    /// Reserved.
    pub reserved: u16,
    /// Number of entries.
    pub entry_count: u16,
    /// Reserved.
    pub reserved2: [u8; 20],
}

/// One table entry as stored.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableEntry {
    /// Which item.
    pub item_id: [u8; 16],
    /// Offset of the value from the start of the region (0 when empty).
    pub offset: u32,
    /// Length of the value.
    pub length: u32,
    /// IsUser, IsVirtualDisk, IsRequired bits.
    pub flags: u32,
    /// Reserved.
    pub reserved: u32,
}

impl TableEntry {
    /// The item's GUID.
    pub fn item_id(&self) -> Uuid {
        from_ms_bytes(self.item_id)
    }

    /// Whether readers must understand the item.
    pub fn is_required(&self) -> bool {
        self.flags & FLAG_IS_REQUIRED != 0
    }

    /// Whether this is a user item.
    pub fn is_user(&self) -> bool {
        self.flags & FLAG_IS_USER != 0
    }

    /// The item's name, if it is a known system item.
    pub fn name(&self) -> Option<&'static str> {
        if self.is_user() {
            return None;
        }
        Some(match self.item_id() {
            g if g == FILE_PARAMETERS => "file_parameters",
            g if g == VIRTUAL_DISK_SIZE => "virtual_disk_size",
            g if g == PAGE_83_DATA => "page_83_data",
            g if g == LOGICAL_SECTOR_SIZE => "logical_sector_size",
            g if g == PHYSICAL_SECTOR_SIZE => "physical_sector_size",
            g if g == PARENT_LOCATOR => "parent_locator",
            _ => return None,
        })
    }
}

/// The decoded metadata region.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// File offset of the region.
    pub region_offset: u64,
    /// Every table entry, known or not.
    pub entries: Vec<TableEntry>,
    /// Payload block size in bytes.
    pub block_size: u32,
    /// File Parameters: LeaveBlockAllocated.
    pub leave_block_allocated: bool,
    /// File Parameters: HasParent.
    pub has_parent: bool,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// The Page 83 disk id.
    pub page_83: Uuid,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size (512 or 4096).
    pub physical_sector_size: u32,
    /// The parent locator, in differencing disks.
    pub parent_locator: Option<ParentLocator>,
}

impl Metadata {
    /// Read and check the metadata region at `region_offset` of `region_length` bytes.
    pub fn load(storage: &dyn Storage, region_offset: u64, region_length: u32) -> Result<Metadata> {
        if (region_length as usize) < TABLE_SIZE {
            return Err(Error::corrupt(
                S,
                region_offset,
                format!("metadata region of {region_length} bytes cannot hold the 64 KiB table"),
            ));
        }
        let mut table = vec![0u8; TABLE_SIZE];
        read_struct(storage, S, &mut table, region_offset)?;
        let mut c = Cursor::new(&table[..]);
        let header = TableHeader::read(&mut c)
            .map_err(|e| Error::corrupt(S, region_offset, format!("cannot decode: {e}")))?;
        if header.signature != SIGNATURE {
            return Err(Error::corrupt(
                S,
                region_offset,
                format!(
                    "signature is {:?}, expected \"metadata\"",
                    String::from_utf8_lossy(&header.signature)
                ),
            ));
        }
        if header.entry_count > MAX_ENTRIES {
            return Err(Error::corrupt(
                S,
                region_offset + 10,
                format!(
                    "entry count {} exceeds the maximum of {MAX_ENTRIES}",
                    header.entry_count
                ),
            ));
        }
        let mut entries = Vec::with_capacity(header.entry_count as usize);
        for _ in 0..header.entry_count {
            entries
                .push(TableEntry::read(&mut c).map_err(|e| {
                    Error::corrupt(S, region_offset, format!("cannot decode: {e}"))
                })?);
        }
        let entry_at = |i: usize| region_offset + (HEADER_SIZE + i * ENTRY_SIZE) as u64;
        // Bounds and uniqueness first, so that values can be read safely.
        for (i, e) in entries.iter().enumerate() {
            let at = entry_at(i);
            if e.length > MAX_ITEM_LENGTH {
                return Err(Error::corrupt(
                    S,
                    at,
                    format!(
                        "item {} is {} bytes long, more than the maximum of {MAX_ITEM_LENGTH}",
                        e.item_id(),
                        e.length
                    ),
                ));
            }
            let end = u64::from(e.offset) + u64::from(e.length);
            if e.length > 0 && ((e.offset as usize) < TABLE_SIZE || end > u64::from(region_length))
            {
                return Err(Error::corrupt(
                    S,
                    at,
                    format!(
                        "item {} at {:#x}+{:#x} lies outside the value area {:#x}..{region_length:#x} of the region",
                        e.item_id(),
                        e.offset,
                        e.length,
                        TABLE_SIZE
                    ),
                ));
            }
            if entries[..i]
                .iter()
                .any(|o| o.item_id == e.item_id && o.is_user() == e.is_user())
            {
                return Err(Error::corrupt(
                    S,
                    at,
                    format!("item {} is listed twice", e.item_id()),
                ));
            }
            if e.is_required() && e.name().is_none() {
                return Err(Error::unsupported(
                    S,
                    at,
                    format!("unknown metadata item {} is marked required", e.item_id()),
                ));
            }
        }
        let find = |id: Uuid| {
            entries
                .iter()
                .enumerate()
                .find(|(_, e)| !e.is_user() && e.item_id() == id)
        };
        let value = |id: Uuid, name: &str, min: u32| -> Result<Vec<u8>> {
            let (i, e) = find(id).ok_or_else(|| {
                Error::corrupt(
                    S,
                    region_offset,
                    format!("required item {name} ({id}) is missing"),
                )
            })?;
            if e.length < min {
                return Err(Error::corrupt(
                    S,
                    entry_at(i),
                    format!(
                        "item {name} is {} bytes long, expected at least {min}",
                        e.length
                    ),
                ));
            }
            let mut v = vec![0u8; e.length as usize];
            read_struct(
                storage,
                "VHDX metadata item",
                &mut v,
                region_offset + u64::from(e.offset),
            )?;
            Ok(v)
        };
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let item_offset = |id: Uuid| {
            find(id)
                .map(|(_, e)| region_offset + u64::from(e.offset))
                .unwrap_or(region_offset)
        };

        let fp = value(FILE_PARAMETERS, "File Parameters", 8)?;
        let block_size = u32_at(&fp, 0);
        let flags = u32_at(&fp, 4);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(Error::corrupt(
                "VHDX file parameters",
                item_offset(FILE_PARAMETERS),
                format!("block size {block_size} is not a power of two from 1 MiB to 256 MiB"),
            ));
        }
        let vs = value(VIRTUAL_DISK_SIZE, "Virtual Disk Size", 8)?;
        let virtual_size = u64::from_le_bytes(vs[..8].try_into().expect("8 bytes"));
        let p83 = value(PAGE_83_DATA, "Page 83 Data", 16)?;
        let page_83 = from_ms_bytes(p83[..16].try_into().expect("16 bytes"));
        let lss = u32_at(&value(LOGICAL_SECTOR_SIZE, "Logical Sector Size", 4)?, 0);
        let pss = u32_at(&value(PHYSICAL_SECTOR_SIZE, "Physical Sector Size", 4)?, 0);
        for (v, id, name) in [
            (lss, LOGICAL_SECTOR_SIZE, "logical"),
            (pss, PHYSICAL_SECTOR_SIZE, "physical"),
        ] {
            if v != 512 && v != 4096 {
                return Err(Error::corrupt(
                    "VHDX sector size",
                    item_offset(id),
                    format!("{name} sector size {v} is not 512 or 4096"),
                ));
            }
        }
        if virtual_size == 0
            || virtual_size > MAX_VIRTUAL_SIZE
            || !virtual_size.is_multiple_of(u64::from(lss))
        {
            return Err(Error::corrupt(
                "VHDX virtual disk size",
                item_offset(VIRTUAL_DISK_SIZE),
                format!(
                    "virtual size {virtual_size} is not a non-zero multiple of the {lss}-byte sector up to 64 TiB"
                ),
            ));
        }
        let has_parent = flags & HAS_PARENT != 0;
        let parent_locator = if has_parent {
            let v = value(PARENT_LOCATOR, "Parent Locator", 20)?;
            Some(ParentLocator::parse(&v, item_offset(PARENT_LOCATOR))?)
        } else {
            None
        };
        Ok(Metadata {
            region_offset,
            entries,
            block_size,
            leave_block_allocated: flags & LEAVE_BLOCK_ALLOCATED != 0,
            has_parent,
            virtual_size,
            page_83,
            logical_sector_size: lss,
            physical_sector_size: pss,
            parent_locator,
        })
    }

    /// File offset of system item `id`'s value, or of the region when the
    /// item is absent.
    pub fn item_file_offset(&self, id: Uuid) -> u64 {
        self.entries
            .iter()
            .find(|e| !e.is_user() && e.item_id() == id)
            .map_or(self.region_offset, |e| {
                self.region_offset + u64::from(e.offset)
            })
    }
}

/// The items of a new file's metadata region.
#[derive(Debug, Clone)]
pub struct NewMetadata {
    /// Payload block size.
    pub block_size: u32,
    /// Fixed disks keep every block allocated.
    pub leave_block_allocated: bool,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// The disk's Page 83 id.
    pub page_83: Uuid,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// The encoded parent locator of a differencing disk.
    pub parent_locator: Option<Vec<u8>>,
}

impl NewMetadata {
    /// Encode the region of `region_length` bytes: the table, then each
    /// value in turn after it ([MS-VHDX] 2.6.1). File Parameters and the
    /// parent locator describe the file; the other items the virtual disk.
    pub fn encode(&self, region_length: usize) -> Vec<u8> {
        let mut flags = 0;
        if self.leave_block_allocated {
            flags |= LEAVE_BLOCK_ALLOCATED;
        }
        if self.parent_locator.is_some() {
            flags |= HAS_PARENT;
        }
        let mut fp = self.block_size.to_le_bytes().to_vec();
        fp.extend_from_slice(&flags.to_le_bytes());
        let disk = FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK;
        let mut items: Vec<(Uuid, u32, Vec<u8>)> = vec![
            (FILE_PARAMETERS, FLAG_IS_REQUIRED, fp),
            (
                VIRTUAL_DISK_SIZE,
                disk,
                self.virtual_size.to_le_bytes().to_vec(),
            ),
            (PAGE_83_DATA, disk, to_ms_bytes(self.page_83).to_vec()),
            (
                LOGICAL_SECTOR_SIZE,
                disk,
                self.logical_sector_size.to_le_bytes().to_vec(),
            ),
            (
                PHYSICAL_SECTOR_SIZE,
                disk,
                self.physical_sector_size.to_le_bytes().to_vec(),
            ),
        ];
        if let Some(p) = &self.parent_locator {
            items.push((PARENT_LOCATOR, FLAG_IS_REQUIRED, p.clone()));
        }
        let mut out = vec![0u8; region_length];
        let mut c = Cursor::new(Vec::with_capacity(TABLE_SIZE));
        TableHeader {
            signature: SIGNATURE,
            reserved: 0,
            entry_count: items.len() as u16,
            reserved2: [0; 20],
        }
        .write(&mut c)
        .expect("writing to memory cannot fail");
        let mut next = TABLE_SIZE;
        for (id, flags, value) in &items {
            TableEntry {
                item_id: to_ms_bytes(*id),
                offset: next as u32,
                length: value.len() as u32,
                flags: *flags,
                reserved: 0,
            }
            .write(&mut c)
            .expect("writing to memory cannot fail");
            out[next..next + value.len()].copy_from_slice(value);
            next += value.len();
        }
        let table = c.into_inner();
        out[..table.len()].copy_from_slice(&table);
        out
    }
}
