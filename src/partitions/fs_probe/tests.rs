//! Unit tests of the signature probes: the LVM2 label and BitLocker boot
//! sector rules as blkid applies them, and damaged or random input.
use super::*;
use crate::io::MemStorage;
use crate::raw::RawDisk;

/// A disk in memory holding `bytes`.
fn disk(bytes: Vec<u8>) -> RawDisk {
    RawDisk::open(Box::new(MemStorage::from_vec(bytes)), None).unwrap()
}

fn probe_bytes(bytes: Vec<u8>) -> Option<FsInfo> {
    let d = disk(bytes);
    let size = d.virtual_size();
    probe(&d, 0, size).unwrap()
}

const PV_ID: &[u8; 32] = b"AbCdEf0123456789GhIjKlMnOpQrStUv";
const PV_UUID: &str = "AbCdEf-0123-4567-89Gh-IjKl-MnOp-QrStUv";

/// An LVM2 label sector as pvcreate writes it (label header, then the
/// pv_header's UUID and device size), its CRC set.
fn lvm_sector(sector: u64) -> [u8; 512] {
    let mut l = [0u8; 512];
    l[..8].copy_from_slice(LVM_LABEL);
    l[8..16].copy_from_slice(&sector.to_le_bytes());
    l[20..24].copy_from_slice(&32u32.to_le_bytes());
    l[24..32].copy_from_slice(LVM_TYPE);
    l[32..64].copy_from_slice(PV_ID);
    l[64..72].copy_from_slice(&(1u64 << 20).to_le_bytes());
    let crc = lvm_crc(&l[20..]);
    l[16..20].copy_from_slice(&crc.to_le_bytes());
    l
}

fn with_lvm(sector: usize, label: &[u8; 512]) -> Vec<u8> {
    let mut img = vec![0u8; 4 << 20];
    img[sector * 512..(sector + 1) * 512].copy_from_slice(label);
    img
}

#[test]
fn lvm_crc_is_crc32_from_lvms_seed() {
    // The same register update gives the standard CRC-32 check value
    // for "123456789" from the seed 0xffffffff, inverted at the end.
    let standard = !"123456789".bytes().fold(0xffff_ffffu32, |mut crc, b| {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (CRC32_POLY_REFLECTED & (crc & 1).wrapping_neg());
        }
        crc
    });
    assert_eq!(standard, 0xcbf4_3926);
    assert_eq!(lvm_crc(&[]), LVM_CRC_SEED);
    // blkid 2.38.1 (`blkid -p`) takes this label in sector 1 of an
    // 8 MiB file for an LVM2_member with this CRC.
    assert_eq!(lvm_crc(&lvm_sector(1)[LVM_CRC_FROM..]), 0x4dab_53b2);
}

#[test]
fn lvm_pv_label_in_each_of_the_first_four_sectors() {
    for s in 0..4 {
        let fs = probe_bytes(with_lvm(s, &lvm_sector(s as u64))).expect("an LVM2 PV");
        assert_eq!(fs.kind, FsKind::LvmPv);
        assert_eq!(fs.kind.as_str(), "lvm2_pv");
        assert_eq!(fs.label, None);
        assert_eq!(fs.uuid.as_deref(), Some(PV_UUID), "sector {s}");
    }
    // Sector 4 is past where LVM (and blkid) look.
    assert_eq!(probe_bytes(with_lvm(4, &lvm_sector(4))), None);
}

#[test]
fn lvm_label_with_a_bad_crc_sector_or_type_is_not_a_pv() {
    let mut bad_crc = lvm_sector(1);
    bad_crc[100] ^= 1;
    let mut bad_crc_field = lvm_sector(1);
    bad_crc_field[16] ^= 1;
    // A label copied to another sector names the sector it was made for.
    let moved = lvm_sector(0);
    let mut bad_type = lvm_sector(1);
    bad_type[31] = b'2';
    let mut bad_id = lvm_sector(1);
    bad_id[0] = b'l';
    for (what, l) in [
        ("bad CRC", bad_crc),
        ("bad crc_xl", bad_crc_field),
        ("sector_xl 0 in sector 1", moved),
        ("LVM2 002", bad_type),
        ("labelone", bad_id),
    ] {
        assert_eq!(probe_bytes(with_lvm(1, &l)), None, "{what}");
    }
}

#[test]
fn lvm_uuid_is_read_where_blkid_reads_it() {
    // offset_xl (covered by the CRC) does not move the UUID for blkid.
    let mut l = lvm_sector(2);
    l[20..24].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let crc = lvm_crc(&l[20..]);
    l[16..20].copy_from_slice(&crc.to_le_bytes());
    let fs = probe_bytes(with_lvm(2, &l)).unwrap();
    assert_eq!(fs.uuid.as_deref(), Some(PV_UUID));
}

/// A BitLocker boot sector: `jump`, `oem`, and the FVE metadata offset
/// `meta` at `field`, with a metadata block signed `sig` there.
fn bitlocker(jump: &[u8; 3], oem: &[u8; 8], field: usize, meta: u64, sig: &[u8; 8]) -> Vec<u8> {
    let mut img = vec![0u8; 4 << 20];
    img[..3].copy_from_slice(jump);
    img[3..11].copy_from_slice(oem);
    img[510..512].copy_from_slice(&BOOT_SIGNATURE);
    img[field..field + 8].copy_from_slice(&meta.to_le_bytes());
    if let Some(block) = usize::try_from(meta)
        .ok()
        .filter(|&m| m != 0)
        .and_then(|m| img.get_mut(m..m.checked_add(8)?))
    {
        block.copy_from_slice(sig);
    }
    img
}

fn assert_bitlocker(img: Vec<u8>, what: &str) {
    let fs = probe_bytes(img).unwrap_or_else(|| panic!("{what}: nothing found"));
    assert_eq!(fs.kind, FsKind::BitLocker, "{what}");
    assert_eq!(fs.kind.as_str(), "bitlocker");
    assert_eq!((&fs.label, &fs.uuid), (&None, &None), "{what}");
    assert!(is_boot_sector_fs(&fs));
}

#[test]
fn bitlocker_vista_win7_and_to_go() {
    let meta = 0x2_0000;
    let w7 = BITLOCKER_JUMP_WIN7;
    // Vista: the jump and OEM name alone.
    assert_bitlocker(
        bitlocker(
            BITLOCKER_JUMP_VISTA,
            BITLOCKER_OEM,
            176,
            0,
            b"\0\0\0\0\0\0\0\0",
        ),
        "vista",
    );
    assert_bitlocker(
        bitlocker(w7, BITLOCKER_OEM, BITLOCKER_META_WIN7, meta, BITLOCKER_OEM),
        "windows 7",
    );
    assert_bitlocker(
        bitlocker(
            w7,
            BITLOCKER_TOGO_OEM,
            BITLOCKER_META_TOGO,
            meta,
            BITLOCKER_OEM,
        ),
        "to go",
    );
}

#[test]
fn bitlocker_without_its_metadata_block_is_not_bitlocker() {
    let w7 = BITLOCKER_JUMP_WIN7;
    let oem = BITLOCKER_OEM;
    let cases: [(&str, Vec<u8>); 8] = [
        ("no offset", bitlocker(w7, oem, BITLOCKER_META_WIN7, 0, oem)),
        (
            "unaligned",
            bitlocker(w7, oem, BITLOCKER_META_WIN7, 0x2_0010 + 8, oem),
        ),
        (
            "wrong signature",
            bitlocker(w7, oem, BITLOCKER_META_WIN7, 0x2_0000, b"-FVE-FS_"),
        ),
        (
            "past the end",
            bitlocker(w7, oem, BITLOCKER_META_WIN7, 4 << 20, oem),
        ),
        (
            "offset overflows",
            bitlocker(w7, oem, BITLOCKER_META_WIN7, u64::MAX - 63, oem),
        ),
        (
            "block cut by the end",
            bitlocker(w7, oem, BITLOCKER_META_WIN7, (4 << 20) - 64, oem),
        ),
        (
            "other jump",
            bitlocker(b"\xe9\x00\x00", oem, BITLOCKER_META_WIN7, 0x2_0000, oem),
        ),
        (
            "to go offset in the windows 7 field",
            bitlocker(w7, BITLOCKER_TOGO_OEM, BITLOCKER_META_WIN7, 0x2_0000, oem),
        ),
    ];
    for (what, img) in cases {
        let fs = probe_bytes(img);
        assert!(
            fs.as_ref().is_none_or(|f| f.kind != FsKind::BitLocker),
            "{what}: {fs:?}"
        );
    }
}

/// Every prefix of each signature, and the signatures with every byte
/// flipped in turn, neither panic nor read as what they are not.
#[test]
fn truncated_and_garbled_signatures_never_panic() {
    let lvm = with_lvm(1, &lvm_sector(1));
    let bl = bitlocker(
        BITLOCKER_JUMP_WIN7,
        BITLOCKER_OEM,
        BITLOCKER_META_WIN7,
        0x2_0000,
        BITLOCKER_OEM,
    );
    for (img, kind) in [(lvm, FsKind::LvmPv), (bl, FsKind::BitLocker)] {
        for len in [
            0, 1, 511, 512, 513, 1023, 1024, 2047, 2048, 0x1_0000, 0x2_0004,
        ] {
            let fs = probe_bytes(img[..len].to_vec());
            if kind == FsKind::LvmPv {
                // The label is sector 1.
                assert_eq!(fs.is_some(), len >= 1024, "LVM label cut at {len}");
            }
            if len < 0x2_0000 + BITLOCKER_META_LEN && kind == FsKind::BitLocker {
                assert_eq!(fs, None, "BitLocker cut at {len}");
            }
        }
        let sig_bytes: Vec<usize> = match kind {
            FsKind::LvmPv => (512..512 + 72).collect(),
            _ => (0..11).chain(0x2_0000..0x2_0008).collect(),
        };
        for at in sig_bytes {
            let mut g = img.clone();
            g[at] ^= 0x20;
            let fs = probe_bytes(g);
            assert!(
                fs.as_ref().is_none_or(|f| f.kind != kind),
                "{kind:?} with byte {at:#x} flipped: {fs:?}"
            );
        }
    }
    // Windows of every size over random bytes.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for len in (0..0x1_2000).step_by(0x7ff) {
        let img: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = probe_bytes(img);
    }
}
