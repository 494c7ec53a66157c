//! The conversion matrix through the CLI: every pair of raw, VHD fixed,
//! VHD dynamic, VHDX fixed, VHDX dynamic and VHDX with 4096-byte sectors
//! gives identical content and the exact virtual size; `-B` replica deltas
//! over a VHD and a VHDX base are much smaller than a full copy and read
//! back (through their parent) as the source.

mod common;

use std::path::{Path, PathBuf};

use common::read_disk;
use vhdkit::{DiskType, Format};

/// Output settings of each kind: name, CLI flags, and what must result.
const KINDS: [(&str, &[&str], Format, DiskType, u32); 6] = [
    ("raw", &["-O", "raw"], Format::Raw, DiskType::Fixed, 512),
    (
        "vhd-fixed",
        &["-O", "vhd", "-t", "fixed"],
        Format::Vhd,
        DiskType::Fixed,
        512,
    ),
    (
        "vhd-dynamic",
        &["-O", "vhd", "-t", "dynamic"],
        Format::Vhd,
        DiskType::Dynamic,
        512,
    ),
    (
        "vhdx-fixed",
        &[
            "-O",
            "vhdx",
            "-t",
            "fixed",
            "--sector-size",
            "512",
            "--block-size",
            "1M",
        ],
        Format::Vhdx,
        DiskType::Fixed,
        512,
    ),
    (
        "vhdx-dynamic",
        &["-O", "vhdx", "--sector-size", "512"],
        Format::Vhdx,
        DiskType::Dynamic,
        512,
    ),
    (
        "vhdx-4k",
        &["-O", "vhdx", "--sector-size", "4096", "--block-size", "4M"],
        Format::Vhdx,
        DiskType::Dynamic,
        4096,
    ),
];

fn convert(args: &[&str], src: &Path, dst: &Path) {
    let mut all = vec!["convert", "-q"];
    all.extend_from_slice(args);
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    all.push(s);
    all.push(d);
    common::vhdkit_ok(&all);
}

#[test]
fn every_pair_of_formats_converts_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    // A multiple of 4096, but of no block size or MiB.
    let size = 11 * (1 << 20) + 20 * 1024;
    let content = common::mixed_content(size, 41);
    let raw = tmp.path().join("src.raw");
    std::fs::write(&raw, &content).unwrap();
    let sources: Vec<(&str, PathBuf)> = KINDS
        .iter()
        .map(|(name, args, ..)| {
            let p = tmp.path().join(format!("src-{name}.img"));
            convert(args, &raw, &p);
            (*name, p)
        })
        .collect();
    let mut done = 0;
    for (from, src) in &sources {
        for (to, args, format, kind, sector) in KINDS {
            let dst = tmp.path().join(format!("{from}-to-{to}.img"));
            convert(args, src, &dst);
            let disk = common::open(&dst);
            let info = disk.info();
            let ctx = format!("{from} -> {to}");
            assert_eq!(info.format, format, "{ctx}");
            assert_eq!(info.disk_type, kind, "{ctx}");
            assert_eq!(disk.logical_sector_size(), sector, "{ctx}");
            assert_eq!(disk.virtual_size(), size as u64, "{ctx}: size");
            assert!(read_disk(disk.as_ref()) == content, "{ctx}: content");
            done += 1;
        }
    }
    assert_eq!(done, 36);
}

/// Allocated bytes of a file on disk (sparse files count their holes out).
fn on_disk(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn replica_deltas_hold_only_what_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 48 << 20;
    let mut base_content = vec![0u8; size];
    common::Rng::new(5).fill(&mut base_content);
    let raw = tmp.path().join("base.raw");
    std::fs::write(&raw, &base_content).unwrap();
    // A few changed sectors, one unaligned byte, one whole MiB.
    let mut changed = base_content.clone();
    changed[4096..4096 + 512].fill(0x11);
    changed[(20 << 20) + 7] ^= 0xff;
    changed[30 << 20..31 << 20].fill(0);
    changed[size - 512..].fill(0x22);
    let src = tmp.path().join("changed.raw");
    std::fs::write(&src, &changed).unwrap();
    for (fmt, ext) in [("vhd", "vhd"), ("vhdx", "vhdx")] {
        let base = tmp.path().join(format!("base.{ext}"));
        convert(&["-O", fmt], &raw, &base);
        let full = tmp.path().join(format!("full.{ext}"));
        convert(&["-O", fmt], &src, &full);
        let delta = tmp.path().join(format!("delta.{ext}"));
        let b = base.to_str().unwrap();
        convert(&["-O", fmt, "-B", b], &src, &delta);
        let disk = common::open(&delta);
        let info = disk.info();
        assert_eq!(info.disk_type, DiskType::Differencing, "{fmt}");
        assert_eq!(disk.virtual_size(), size as u64);
        assert!(
            read_disk(disk.as_ref()) == changed,
            "{fmt}: delta reads as the source"
        );
        let (d, f) = (
            std::fs::metadata(&delta).unwrap().len(),
            std::fs::metadata(&full).unwrap().len(),
        );
        let (dd, fd) = (on_disk(&delta), on_disk(&full));
        println!("{fmt}: delta {d} bytes ({dd} on disk), full copy {f} bytes ({fd} on disk)");
        assert!(
            d * 4 < f,
            "{fmt}: delta of {d} bytes is not much smaller than the full {f}"
        );
        assert!(
            dd * 4 < fd,
            "{fmt}: delta uses {dd} bytes on disk, the full copy {fd}"
        );
        // Stored data: only the changed blocks.
        assert!(
            info.allocated_bytes <= 8 << 20,
            "{fmt}: {} bytes allocated",
            info.allocated_bytes
        );
        common::vhdkit_ok(["check", delta.to_str().unwrap()]);
    }
}
