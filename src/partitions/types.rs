//! Names of partition types: GPT type GUIDs (UEFI 2.10 5.3.3 and the
//! operating systems' own registrations) and MBR type bytes, named as
//! sgdisk and sfdisk list them.

use uuid::{Uuid, uuid};

/// The GPT type of an unused entry.
pub const GPT_UNUSED: Uuid = Uuid::nil();
/// EFI system partition.
pub const EFI_SYSTEM: Uuid = uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
/// Microsoft basic data (FAT, NTFS, exFAT and BitLocker volumes).
pub const MICROSOFT_BASIC_DATA: Uuid = uuid!("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7");
/// Microsoft reserved (MSR), no file system.
pub const MICROSOFT_RESERVED: Uuid = uuid!("e3c9e316-0b5c-4db8-817d-f92df00215ae");
/// Windows recovery environment.
pub const WINDOWS_RECOVERY: Uuid = uuid!("de94bba4-06d1-4d40-a16a-bfd50179d6ac");
/// Linux file system data.
pub const LINUX_FILESYSTEM: Uuid = uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4");
/// Linux swap.
pub const LINUX_SWAP: Uuid = uuid!("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f");
/// Linux LVM physical volume.
pub const LINUX_LVM: Uuid = uuid!("e6d6d379-f507-44c2-a23c-238f2a3df928");

/// Known GPT partition types and their names.
const GPT_TYPES: &[(Uuid, &str)] = &[
    (EFI_SYSTEM, "EFI system"),
    (MICROSOFT_BASIC_DATA, "Microsoft basic data"),
    (MICROSOFT_RESERVED, "Microsoft reserved"),
    (WINDOWS_RECOVERY, "Windows recovery"),
    (LINUX_FILESYSTEM, "Linux filesystem"),
    (LINUX_SWAP, "Linux swap"),
    (LINUX_LVM, "Linux LVM"),
    (uuid!("21686148-6449-6e6f-744e-656564454649"), "BIOS boot"),
    (
        uuid!("5808c8aa-7e8f-42e0-85d2-e1e90434cfb3"),
        "Microsoft LDM metadata",
    ),
    (
        uuid!("af9b60a0-1431-4f62-bc68-3311714a69ad"),
        "Microsoft LDM data",
    ),
    (
        uuid!("e75caf8f-f680-4cee-afa3-b001e56efc2d"),
        "Microsoft Storage Spaces",
    ),
    (uuid!("a19d880f-05fc-4d3b-a006-743f0f84911e"), "Linux RAID"),
    (
        uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
        "Linux root (x86-64)",
    ),
    (
        uuid!("44479540-f297-41b2-9af7-d131d5f0458a"),
        "Linux root (x86)",
    ),
    (
        uuid!("b921b045-1df0-41c3-af44-4c6f280d3fae"),
        "Linux root (ARM64)",
    ),
    (
        uuid!("8484680c-9521-48c6-9c11-b0720656f69e"),
        "Linux /usr (x86-64)",
    ),
    (uuid!("933ac7e1-2eb4-4f13-b844-0e14e2aef915"), "Linux /home"),
    (uuid!("3b8f8425-20e0-4f3b-907f-1a25a76f98e8"), "Linux /srv"),
    (uuid!("4d21b016-b534-45c2-a9fb-5c16e091fd2d"), "Linux /var"),
    (
        uuid!("bc13c2ff-59e6-4262-a352-b275fd6f7172"),
        "Linux extended boot",
    ),
    (
        uuid!("8da63339-0007-60c0-c436-083ac8230908"),
        "Linux reserved",
    ),
    (uuid!("ca7d7ccb-63ed-4c53-861c-1742536059cc"), "Linux LUKS"),
    (
        uuid!("7ffec5c9-2d00-49b7-8941-3ea10a5586b7"),
        "Linux dm-crypt",
    ),
    (
        uuid!("516e7cb4-6ecf-11d6-8ff8-00022d09712b"),
        "FreeBSD disklabel",
    ),
    (uuid!("516e7cba-6ecf-11d6-8ff8-00022d09712b"), "FreeBSD ZFS"),
    (
        uuid!("48465300-0000-11aa-aa11-00306543ecac"),
        "Apple HFS/HFS+",
    ),
    (uuid!("7c3457ef-0000-11aa-aa11-00306543ecac"), "Apple APFS"),
];

/// MBR type byte of an unused entry.
pub const MBR_UNUSED: u8 = 0x00;
/// MBR type of the protective entry in front of a GPT.
pub const MBR_PROTECTIVE: u8 = 0xee;
/// MBR types of extended partitions (CHS, LBA and Linux's), whose logical
/// partitions are chained through EBRs.
pub const MBR_EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];

/// Known MBR partition types and their names (as fdisk lists them).
const MBR_TYPES: &[(u8, &str)] = &[
    (0x01, "FAT12"),
    (0x04, "FAT16 <32M"),
    (0x05, "Extended"),
    (0x06, "FAT16"),
    (0x07, "HPFS/NTFS/exFAT"),
    (0x0b, "W95 FAT32"),
    (0x0c, "W95 FAT32 (LBA)"),
    (0x0e, "W95 FAT16 (LBA)"),
    (0x0f, "W95 Extended (LBA)"),
    (0x11, "Hidden FAT12"),
    (0x12, "Compaq diagnostics"),
    (0x14, "Hidden FAT16 <32M"),
    (0x16, "Hidden FAT16"),
    (0x17, "Hidden HPFS/NTFS"),
    (0x1b, "Hidden W95 FAT32"),
    (0x1c, "Hidden W95 FAT32 (LBA)"),
    (0x1e, "Hidden W95 FAT16 (LBA)"),
    (0x27, "Windows recovery"),
    (0x42, "Microsoft LDM"),
    (0x82, "Linux swap"),
    (0x83, "Linux"),
    (0x85, "Linux extended"),
    (0x8e, "Linux LVM"),
    (0xa5, "FreeBSD"),
    (0xa6, "OpenBSD"),
    (0xa9, "NetBSD"),
    (0xaf, "Apple HFS/HFS+"),
    (0xee, "GPT protective"),
    (0xef, "EFI system"),
    (0xfd, "Linux RAID autodetect"),
];

/// The name of a GPT partition type, or its GUID when unknown.
pub fn gpt_type_name(guid: Uuid) -> String {
    GPT_TYPES
        .iter()
        .find(|(g, _)| *g == guid)
        .map_or_else(|| guid.to_string(), |(_, n)| (*n).to_string())
}

/// The name of an MBR partition type byte, or `0xNN` when unknown.
pub fn mbr_type_name(kind: u8) -> String {
    MBR_TYPES
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or_else(|| format!("{kind:#04x}"), |(_, n)| (*n).to_string())
}

/// Whether an MBR type byte is an extended partition.
pub fn is_extended(kind: u8) -> bool {
    MBR_EXTENDED.contains(&kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(gpt_type_name(EFI_SYSTEM), "EFI system");
        assert_eq!(
            gpt_type_name(uuid!("01234567-89ab-cdef-0123-456789abcdef")),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        assert_eq!(mbr_type_name(0x83), "Linux");
        assert_eq!(mbr_type_name(0x99), "0x99");
        assert!(is_extended(0x0f) && !is_extended(0x83));
    }
}
