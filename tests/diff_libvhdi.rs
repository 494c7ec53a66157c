//! libvhdi (Debian's 20210425: `pyvhdi`, `vhdiinfo`) reads vhdkit's
//! differencing VHDX children exactly as vhdkit does (issue 12, point 6).
//!
//! libvhdi reads the sector bitmap of every payload block that is not fully
//! present, even where [MS-VHDX] says the block comes from the parent
//! whatever the bitmap holds; for a chunk without a sector-bitmap block it
//! takes "bits" from the start of the file and returns zeros or header bytes
//! after the first sector. vhdkit therefore gives every chunk of a
//! differencing disk its (all-clear) sector-bitmap block at creation, and
//! adds missing ones on the first write to an older child.
//!
//! Chunks hold 2^23 sectors (4 GiB with 512-byte sectors), so the
//! multi-chunk tests use a 9 GiB sparse disk and compare the ranges that
//! matter; the one-chunk tests compare whole disks. Parents hold non-zero
//! data everywhere that is compared, so a fall-through to zeros shows.

mod common;

use std::path::Path;
use std::process::Command;

use common::{random_bytes, read_disk, require_tool};
use vhdkit::VhdxBuilder;
use vhdkit::{OpenOptions, VirtualDisk};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Reads `[offset, offset + length)` pieces of a child with its parent
/// through pyvhdi; arguments: child, parent, then offset,length pairs.
const PYVHDI_RANGES: &str = r#"
import sys, pyvhdi
c = pyvhdi.file(); c.open(sys.argv[1])
p = pyvhdi.file(); p.open(sys.argv[2])
c.set_parent(p)
out = sys.stdout.buffer
args = sys.argv[3:]
for i in range(0, len(args), 2):
    off, n = int(args[i]), int(args[i + 1])
    out.write(c.read_buffer_at_offset(n, off))
out.flush()
"#;

/// The ranges of `child` (over `parent`) as pyvhdi reads them, one after the other.
fn pyvhdi_ranges(child: &Path, parent: &Path, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(PYVHDI_RANGES).arg(child).arg(parent);
    for (o, n) in ranges {
        cmd.arg(o.to_string()).arg(n.to_string());
    }
    let out = cmd.output().expect("run python3");
    assert!(
        out.status.success(),
        "pyvhdi failed on {}: {}",
        child.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The same ranges as vhdkit reads them.
fn vhdkit_ranges(child: &Path, ranges: &[(u64, u64)]) -> Vec<u8> {
    let d = common::open(child);
    let mut v = Vec::new();
    for &(o, n) in ranges {
        let mut b = vec![0u8; n as usize];
        d.read_at(&mut b, o).unwrap();
        v.extend_from_slice(&b);
    }
    v
}

/// Where two equal-length byte strings first differ, as a message.
fn first_difference(a: &[u8], b: &[u8]) -> Option<String> {
    assert_eq!(a.len(), b.len(), "lengths");
    let i = a.iter().zip(b).position(|(x, y)| x != y)?;
    Some(format!(
        "first difference at byte {i:#x}: libvhdi {:#04x}, vhdkit {:#04x}",
        a[i], b[i]
    ))
}

fn open_rw(path: &Path) -> Box<dyn VirtualDisk> {
    vhdkit::open(path, &OpenOptions::new().writable(true))
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .into()
}

/// A dynamic VHDX parent of `size` bytes with `sector`-byte sectors and
/// non-zero pseudo-random data in each of `ranges` (the whole disk when
/// `ranges` is empty).
fn make_parent(path: &Path, size: u64, sector: u32, ranges: &[(u64, u64)]) {
    let mut p = vhdkit::unstable::vhdx::create(
        path,
        VhdxBuilder::new(size)
            .block_size(MIB as u32)
            .logical_sector_size(sector),
    )
    .unwrap();
    let whole = [(0, size)];
    let ranges = if ranges.is_empty() {
        &whole[..]
    } else {
        ranges
    };
    for (i, &(o, n)) in ranges.iter().enumerate() {
        let mut data = random_bytes(n as usize, 100 + i as u64);
        for b in &mut data {
            *b |= 1;
        }
        p.write_at(&data, o).unwrap();
    }
    p.close().unwrap();
}

fn make_child(child: &Path, parent: &Path) -> Box<dyn VirtualDisk> {
    Box::new(
        vhdkit::unstable::vhdx::create(
            child,
            VhdxBuilder::new(0)
                .differencing(parent)
                .block_size(MIB as u32),
        )
        .unwrap(),
    )
}

/// Whole-disk comparison on a one-chunk disk: a child with nothing written,
/// then one with only fully present blocks (neither has a partially
/// present block, which is what made older vhdkit leave the chunk without
/// a bitmap), then one with partially present blocks too.
#[test]
fn one_chunk_children_read_the_same_in_libvhdi() {
    if !require_tool("pyvhdi") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for sector in [512u32, 4096] {
        let s = u64::from(sector);
        let parent = tmp.path().join(format!("p{sector}.vhdx"));
        make_parent(&parent, 16 * MIB, sector, &[]);
        let child = tmp.path().join(format!("c{sector}.vhdx"));
        let chain = [child.as_path(), parent.as_path()];
        let mut d = make_child(&child, &parent);
        d.close().unwrap();
        drop(d);
        let check = |what: &str| {
            let want = read_disk(common::open(&child).as_ref());
            let (n, got) = common::pyvhdi_read(&chain);
            assert_eq!(n, 16 * MIB);
            if let Some(m) = first_difference(&got, &want) {
                panic!("{sector}-byte sectors, {what}: {m}");
            }
        };
        check("nothing written");
        let mut d = open_rw(&child);
        d.write_at(&random_bytes(MIB as usize, 1), 2 * MIB).unwrap();
        d.close().unwrap();
        drop(d);
        check("one fully present block");
        let mut d = open_rw(&child);
        d.write_at(&random_bytes(3 * s as usize, 2), 5 * MIB + s)
            .unwrap();
        d.write_at(&random_bytes(700, 3), 9 * MIB - 350).unwrap();
        d.write_at(&vec![0u8; 2 * s as usize], 12 * MIB).unwrap();
        d.close().unwrap();
        drop(d);
        check("partially present blocks");
    }
}

/// A 9 GiB disk of three chunks: the first with fully and partially present
/// blocks and blocks not present, the second with nothing written, the
/// third with one fully present block only.
#[test]
fn chunks_without_partial_blocks_read_the_same_in_libvhdi() {
    if !require_tool("pyvhdi") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let size = 9 * GIB;
    // Every range compared holds parent data.
    let ranges: Vec<(u64, u64)> = [0, 4 * GIB - 2 * MIB, 4 * GIB, 6 * GIB, 8 * GIB]
        .iter()
        .map(|&o| (o, 4 * MIB))
        .chain([(size - 2 * MIB, 2 * MIB)])
        .collect();
    let parent = tmp.path().join("p.vhdx");
    make_parent(&parent, size, 512, &ranges);
    let child = tmp.path().join("c.vhdx");
    let mut d = make_child(&child, &parent);
    // Chunk 0: block 0 fully present, block 1 partially, 2 and 3 not present.
    d.write_at(&random_bytes(MIB as usize, 1), 0).unwrap();
    d.write_at(&random_bytes(1024, 2), MIB + 512).unwrap();
    // Chunk 2: one fully present block.
    d.write_at(&random_bytes(MIB as usize, 3), 8 * GIB + MIB)
        .unwrap();
    d.close().unwrap();
    drop(d);
    let got = pyvhdi_ranges(&child, &parent, &ranges);
    let want = vhdkit_ranges(&child, &ranges);
    if let Some(m) = first_difference(&got, &want) {
        panic!("{m}");
    }
    // vhdkit reads the parent's bytes where the child has none.
    let p = vhdkit_ranges(&parent, &[(4 * GIB, MIB)]);
    assert_eq!(vhdkit_ranges(&child, &[(4 * GIB, MIB)]), p);
    assert_eq!(common::vhdiinfo_media_size(&child), size);
}

/// BAT offset and sector-bitmap entry offsets of a differencing VHDX.
fn bitmap_entries(path: &Path) -> Vec<u64> {
    let file = std::fs::read(path).unwrap();
    let l = common::VhdxLayout::parse(&file);
    let v = common::info_json(path);
    let ratio = v["vhdx"]["chunk_ratio"].as_u64().unwrap();
    let chunks = v["vhdx"]["bat"]["sector_bitmap_blocks"].as_u64().unwrap();
    (0..chunks)
        .map(|c| l.bat_offset + (c * (ratio + 1) + ratio) * 8)
        .collect()
}

/// A child without sector-bitmap blocks (as older vhdkit made them) is
/// misread by libvhdi; the first write gives every chunk that needs one its
/// bitmap block, and libvhdi then reads it as vhdkit does.
#[test]
fn first_write_adds_missing_bitmap_blocks() {
    if !require_tool("pyvhdi") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let size = 5 * GIB;
    let ranges = [(0, 3 * MIB), (4 * GIB, 3 * MIB), (size - MIB, MIB)];
    let parent = tmp.path().join("p.vhdx");
    make_parent(&parent, size, 512, &ranges);
    let child = tmp.path().join("c.vhdx");
    make_child(&child, &parent).close().unwrap();
    // Take the bitmap blocks away, as a child made without them.
    let entries = bitmap_entries(&child);
    assert_eq!(entries.len(), 2);
    for &e in &entries {
        assert_eq!(common::file_bytes(&child, e, 8)[0] & 7, 6, "present");
        common::patch_file(&child, e, &[0u8; 8]);
    }
    common::vhdkit_ok(["check", common::s(&child)]);
    let got = pyvhdi_ranges(&child, &parent, &ranges);
    let want = vhdkit_ranges(&child, &ranges);
    assert!(
        first_difference(&got, &want).is_some(),
        "libvhdi should misread a chunk without a bitmap block (the case this test is about)"
    );
    // One fully present block in chunk 0: no bitmap was needed for it, yet
    // both chunks get one.
    let mut d = open_rw(&child);
    d.write_at(&random_bytes(MIB as usize, 9), MIB).unwrap();
    d.close().unwrap();
    drop(d);
    for &e in &entries {
        assert_eq!(common::file_bytes(&child, e, 8)[0] & 7, 6, "present again");
    }
    let got = pyvhdi_ranges(&child, &parent, &ranges);
    let want = vhdkit_ranges(&child, &ranges);
    if let Some(m) = first_difference(&got, &want) {
        panic!("after the write: {m}");
    }
    common::vhdkit_ok(["check", common::s(&child)]);
}

/// `convert -B BASE` makes a differencing VHDX that libvhdi reads as vhdkit does.
#[test]
fn convert_with_base_reads_the_same_in_libvhdi() {
    if !require_tool("pyvhdi") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.vhdx");
    make_parent(&base, 8 * MIB, 512, &[]);
    // SRC: the base's content with a few changes.
    let mut content = read_disk(common::open(&base).as_ref());
    content[3 * MIB as usize..3 * MIB as usize + 4096].fill(0x5a);
    content[6 * MIB as usize + 512..6 * MIB as usize + 1024].fill(0);
    let src = tmp.path().join("src.raw");
    common::write_raw(&src, &content);
    let dst = tmp.path().join("delta.vhdx");
    common::vhdkit_ok([
        "convert",
        "-q",
        "-B",
        common::s(&base),
        common::s(&src),
        common::s(&dst),
    ]);
    let (n, got) = common::pyvhdi_read(&[&dst, &base]);
    assert_eq!(n, content.len() as u64);
    if let Some(m) = first_difference(&got, &content) {
        panic!("{m}");
    }
    assert!(read_disk(common::open(&dst).as_ref()) == content);
}
