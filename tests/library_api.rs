//! The library API's promises (issue 13 review): a keyless EVHD says it
//! cannot read its data, and its errors keep their kind through the
//! `std::io` adapters; `close` ends the handle and releases the lock; `map`
//! refuses ranges past the end as reads do; chain errors say each thing
//! once.

mod common;

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use common::*;
use vhdkit::{ErrorKind, KeyFile, OpenOptions, VhdBuilder, VhdxBuilder};

const MIB: u64 = 1 << 20;

/// The vhdkit error inside an `io::Error` from the adapters.
fn inner_kind(e: &io::Error) -> ErrorKind {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<vhdkit::Error>())
        .map(vhdkit::Error::kind)
        .expect("the io::Error carries a vhdkit::Error")
}

#[test]
fn a_keyless_evhd_says_it_needs_a_key_and_its_reads_say_permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let evhd = dir.path().join("d.evhd");
    write_raw(&raw, &random_bytes(MIB as usize, 13));
    make_evhd(&raw, &evhd);

    let disk = vhdkit::open(&evhd, &OpenOptions::new()).unwrap();
    assert!(disk.needs_key());
    assert_eq!(disk.virtual_size(), MIB);
    let e = disk.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyRequired, "{e}");
    let e = disk.reader().read(&mut [0u8; 512]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert_eq!(inner_kind(&e), ErrorKind::KeyRequired);
    drop(disk);

    let key = KeyFile::read(&test_key().1)
        .unwrap()
        .into_private()
        .unwrap();
    let disk = vhdkit::open(&evhd, &OpenOptions::new().key(Arc::new(key))).unwrap();
    assert!(!disk.needs_key());
    let mut buf = vec![0u8; 4096];
    disk.reader().read_exact(&mut buf).unwrap();
    assert_eq!(buf, random_bytes(MIB as usize, 13)[..4096]);

    let vhdx = dir.path().join("p.vhdx");
    drop(vhdkit::create_vhdx(&vhdx, VhdxBuilder::new(8 * MIB)).unwrap());
    assert!(
        !vhdkit::open(&vhdx, &OpenOptions::new())
            .unwrap()
            .needs_key()
    );
}

#[test]
fn a_missing_parent_reads_as_not_found_through_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    let child = dir.path().join("child.vhd");
    drop(vhdkit::create_vhd(&base, VhdBuilder::new(4 * MIB)).unwrap());
    drop(vhdkit::create_vhd(&child, VhdBuilder::new(4 * MIB).differencing(&base)).unwrap());
    std::fs::remove_file(&base).unwrap();
    let disk = vhdkit::open(&child, &OpenOptions::new().allow_missing_parent(true)).unwrap();
    let e = disk.reader().read(&mut [0u8; 512]).unwrap_err();
    assert_eq!(inner_kind(&e), ErrorKind::ParentMissing, "{e}");
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
}

/// Close `disk` at `path`, then check every data operation is refused, the
/// file is not touched by them, and the image opens again at once.
fn check_close_ends_the_handle(mut disk: vhdkit::Disk, path: &Path) {
    disk.write_at(&[7u8; 4096], 0).unwrap();
    disk.close().unwrap();
    assert!(disk.is_closed());
    let closed_bytes = std::fs::read(path).unwrap();

    let e = disk.write_at(&[1u8; 4096], 4096).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("closed"), "{e}");
    assert_eq!(e.path(), Some(path), "{e}");
    let e = disk.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert!(e.to_string().contains("closed"), "{e}");
    assert!(disk.map(0, 4096).is_err());
    assert!(disk.allocation().is_err());
    assert!(
        disk.discard(0, 8 * MIB)
            .unwrap_err()
            .to_string()
            .contains("closed")
    );
    assert!(
        disk.write_zeroes(0, 4096)
            .unwrap_err()
            .to_string()
            .contains("closed")
    );
    assert!(disk.cursor().read(&mut [0u8; 512]).is_err());
    // info and the sizes still answer; flush and close again do nothing.
    assert_eq!(disk.virtual_size(), 8 * MIB);
    assert_eq!(disk.info().virtual_size, 8 * MIB);
    disk.flush().unwrap();
    disk.close().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), closed_bytes);

    // The lock went with close: the image opens for writing while the
    // closed disk is still alive, and again after it is dropped.
    let again = vhdkit::open(path, &OpenOptions::new().writable(true)).unwrap();
    let mut buf = [0u8; 4096];
    again.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [7u8; 4096]);
    drop(again);
    drop(disk);
    assert_eq!(std::fs::read(path).unwrap(), closed_bytes);
    drop(vhdkit::open(path, &OpenOptions::new().writable(true)).unwrap());
}

#[test]
fn close_ends_the_handle_and_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let vhdx = dir.path().join("d.vhdx");
    check_close_ends_the_handle(
        vhdkit::create_vhdx(&vhdx, VhdxBuilder::new(8 * MIB)).unwrap(),
        &vhdx,
    );
    let vhd = dir.path().join("d.vhd");
    drop(vhdkit::create_vhd(&vhd, VhdBuilder::new(8 * MIB)).unwrap());
    check_close_ends_the_handle(
        vhdkit::open(&vhd, &OpenOptions::new().writable(true)).unwrap(),
        &vhd,
    );
}

#[test]
fn a_disk_left_open_still_holds_its_lock() {
    // The other side of the test above: without close, a second writer is
    // refused, so that test's reopen shows close released the lock.
    let dir = tempfile::tempdir().unwrap();
    let vhdx = dir.path().join("d.vhdx");
    let disk = vhdkit::create_vhdx(&vhdx, VhdxBuilder::new(8 * MIB)).unwrap();
    let e = vhdkit::open(&vhdx, &OpenOptions::new().writable(true)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse, "{e}");
    drop(disk);
}

#[test]
fn map_refuses_ranges_past_the_end_as_reads_do() {
    let dir = tempfile::tempdir().unwrap();
    let vhdx = dir.path().join("d.vhdx");
    let size = 8 * MIB;
    let mut disk = vhdkit::create_vhdx(&vhdx, VhdxBuilder::new(size)).unwrap();
    for (offset, len) in [
        (0, u64::MAX),
        (size + 4096, 4096),
        (size - 512, 1024),
        (u64::MAX, 1),
    ] {
        let e = disk.map(offset, len).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::OutOfBounds,
            "map({offset:#x}, {len:#x}): {e}"
        );
        let e = disk.write_zeroes(offset, len).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfBounds, "{e}");
    }
    assert!(disk.map(size, 0).unwrap().is_empty());
    let all = disk.map(0, size).unwrap();
    assert_eq!(all.last().unwrap().end(), size);
    assert_eq!(disk.allocation().unwrap(), all);
}

#[test]
fn a_parent_loop_error_notes_the_detected_format_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    drop(vhdkit::create_vhd(p("base.vhd"), VhdBuilder::new(32 * MIB)).unwrap());
    for (child, parent) in [
        ("la.vhd", "base.vhd"),
        ("lb.vhd", "la.vhd"),
        ("lc.vhd", "lb.vhd"),
    ] {
        let b = VhdBuilder::new(32 * MIB).differencing(p(parent));
        drop(vhdkit::create_vhd(p(child), b).unwrap());
    }
    // la's parent is now lb, whose parent is la.
    std::fs::copy(p("lc.vhd"), p("la.vhd")).unwrap();
    let e = open_err(&p("la.vhd"), &OpenOptions::new());
    let text = e.to_string();
    assert!(text.contains("already in the parent chain"), "{text}");
    assert_eq!(text.matches("detected as VHD").count(), 1, "{text}");
}

#[test]
fn a_parent_size_error_writes_each_size_once() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    let child = dir.path().join("child.vhd");
    drop(vhdkit::create_vhd(&base, VhdBuilder::new(32 * MIB)).unwrap());
    drop(vhdkit::create_vhd(&child, VhdBuilder::new(32 * MIB).differencing(&base)).unwrap());
    let big = dir.path().join("big.vhd");
    drop(vhdkit::create_vhd(&big, VhdBuilder::new(64 * MIB)).unwrap());
    std::fs::rename(&big, &base).unwrap();
    let e = open_err(&child, &OpenOptions::new().ignore_parent_id(true));
    assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(
            "virtual size of 0x4000000 bytes (64 MiB), the child's is 0x2000000 bytes (32 MiB);"
        ),
        "{text}"
    );
}
