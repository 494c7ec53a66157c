//! Unknown regions and metadata items: optional ones are ignored, required
//! ones make the open fail with an "unsupported" error naming their GUID
//! ([MS-VHDX] 2.2.3.2 and 2.6.1.2; format-notes VHDX point 4).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use vhdkit::{ErrorKind, OpenOptions};

const UNKNOWN: &str = "0badc0de-1234-4567-89ab-cdef01234567";
const REGION_TABLES: [usize; 2] = [192 << 10, 256 << 10];
const MIB: usize = 1 << 20;

/// A small dynamic VHDX written by qemu-img, as bytes.
fn qemu_vhdx(dir: &Path) -> Option<Vec<u8>> {
    if !require_tool("qemu-img") {
        return None;
    }
    let p = dir.join("q.vhdx");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "vhdx", "-o", "subformat=dynamic"])
        .arg(&p)
        .arg("8M"));
    Some(std::fs::read(p).expect("read image"))
}

fn guid_bytes(s: &str) -> [u8; 16] {
    uuid::Uuid::parse_str(s).expect("guid").to_bytes_le()
}

/// Add a region entry to both region tables, for a fresh 1 MiB region
/// appended to the file, and fix the tables' checksums.
fn add_region(file: &mut Vec<u8>, required: bool) {
    let offset = file.len().div_ceil(MIB) * MIB;
    file.resize(offset + MIB, 0);
    for rt in REGION_TABLES {
        let n = le32(file, rt + 8) as usize;
        let e = rt + 16 + n * 32;
        file[e..e + 16].copy_from_slice(&guid_bytes(UNKNOWN));
        file[e + 16..e + 24].copy_from_slice(&(offset as u64).to_le_bytes());
        file[e + 24..e + 28].copy_from_slice(&(MIB as u32).to_le_bytes());
        file[e + 28..e + 32].copy_from_slice(&u32::from(required).to_le_bytes());
        file[rt + 8..rt + 12].copy_from_slice(&((n + 1) as u32).to_le_bytes());
        let crc = crc_without(&file[rt..rt + (64 << 10)], 4);
        file[rt + 4..rt + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Add a metadata entry with an 8-byte value placed after every other value.
fn add_metadata_item(file: &mut [u8], required: bool) {
    let m = VhdxLayout::parse(file).metadata_offset as usize;
    let n = u32::from(u16::from_le_bytes([file[m + 10], file[m + 11]])) as usize;
    let value_end = (0..n)
        .map(|i| {
            let e = m + 32 + i * 32;
            le32(file, e + 16) + le32(file, e + 20)
        })
        .max()
        .expect("items");
    let e = m + 32 + n * 32;
    file[e..e + 16].copy_from_slice(&guid_bytes(UNKNOWN));
    file[e + 16..e + 20].copy_from_slice(&value_end.to_le_bytes());
    file[e + 20..e + 24].copy_from_slice(&8u32.to_le_bytes());
    // IsVirtualDisk, and IsRequired when asked.
    let flags: u32 = 2 | if required { 4 } else { 0 };
    file[e + 24..e + 28].copy_from_slice(&flags.to_le_bytes());
    file[m + 10..m + 12].copy_from_slice(&((n + 1) as u16).to_le_bytes());
}

fn open_bytes(dir: &Path, name: &str, file: &[u8]) -> vhdkit::Result<Box<dyn vhdkit::VirtualDisk>> {
    let p = dir.join(name);
    std::fs::write(&p, file).expect("write patched image");
    vhdkit::open(&p, &OpenOptions::new()).map(Into::into)
}

#[test]
fn unknown_regions_optional_ignored_required_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(base) = qemu_vhdx(dir.path()) else {
        return;
    };

    let mut optional = base.clone();
    add_region(&mut optional, false);
    let disk =
        open_bytes(dir.path(), "optional.vhdx", &optional).expect("optional region is ignored");
    assert_eq!(read_disk(disk.as_ref()), vec![0u8; 8 << 20]);

    let mut required = base;
    add_region(&mut required, true);
    let err = open_bytes(dir.path(), "required.vhdx", &required)
        .err()
        .expect("required region refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains(UNKNOWN), "{err}");
    assert_eq!(err.structure(), Some("VHDX region table"), "{err}");
}

#[test]
fn unknown_metadata_items_optional_ignored_required_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(base) = qemu_vhdx(dir.path()) else {
        return;
    };

    let mut optional = base.clone();
    add_metadata_item(&mut optional, false);
    let disk =
        open_bytes(dir.path(), "optional.vhdx", &optional).expect("optional item is ignored");
    assert_eq!(disk.virtual_size(), 8 << 20);

    let mut required = base;
    add_metadata_item(&mut required, true);
    let err = open_bytes(dir.path(), "required.vhdx", &required)
        .err()
        .expect("required item refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains(UNKNOWN), "{err}");
    let m = VhdxLayout::parse(&required).metadata_offset;
    let n = u64::from(u16::from_le_bytes([
        required[m as usize + 10],
        required[m as usize + 11],
    ]));
    assert_eq!(err.offset(), Some(m + 32 + (n - 1) * 32), "{err}");

    // The CLI says the same, naming the GUID, without panicking.
    let p = dir.path().join("required.vhdx");
    let out = Command::new(vhdkit_bin())
        .arg("info")
        .arg(&p)
        .output()
        .expect("run vhdkit");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(UNKNOWN) && !stderr.contains("panicked"),
        "{stderr}"
    );
}
