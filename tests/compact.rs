//! `vhdkit compact` (Optimize-VHD) on dynamic and differencing VHD and
//! VHDX: after compacting, qemu-img (where it reads the format), libvhdi
//! and vhdkit read exactly the flat model, `check` is clean, the file is no
//! larger than a fresh `convert` of the same content (plus a block), and
//! differencing blocks are dropped only where the chain reads zeros.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vhdkit::compact::{CompactReport, Mode};
use vhdkit::report::Severity;
use vhdkit::{ExtentKind, OpenOptions, VhdBuilder, VhdxBuilder};

const MIB: u64 = 1 << 20;
const BS: u64 = MIB;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fmt {
    Vhd,
    Vhdx,
}

impl Fmt {
    fn ext(self) -> &'static str {
        match self {
            Fmt::Vhd => "vhd",
            Fmt::Vhdx => "vhdx",
        }
    }
    fn qemu(self) -> &'static str {
        match self {
            Fmt::Vhd => "vpc",
            Fmt::Vhdx => "vhdx",
        }
    }
    fn create(self, path: &Path, size: u64, parent: Option<&Path>) -> vhdkit::Disk {
        match self {
            Fmt::Vhd => {
                let mut b = VhdBuilder::new(size).block_size(BS as u32);
                if let Some(p) = parent {
                    b = b.differencing(p);
                }
                vhdkit::create_vhd(path, b).unwrap()
            }
            Fmt::Vhdx => {
                let mut b = VhdxBuilder::new(size).block_size(BS as u32);
                if let Some(p) = parent {
                    b = b.differencing(p);
                }
                vhdkit::create_vhdx(path, b).unwrap()
            }
        }
    }
}

fn compact(path: &Path, mode: Mode) -> CompactReport {
    vhdkit::compact::compact(path, &OpenOptions::new(), mode)
        .unwrap_or_else(|e| panic!("compact {}: {e}", path.display()))
}

fn assert_check_clean(path: &Path) {
    let r = vhdkit::check(path, &OpenOptions::new(), false).unwrap();
    assert!(
        r.worst() != Some(Severity::Error),
        "{}: {:?}",
        path.display(),
        r.findings
    );
}

/// What qemu-img reads (`convert -O raw`), after `qemu-img check` passes
/// (VHDX; qemu has no check for VHD).
fn qemu_content(fmt: Fmt, path: &Path) -> Vec<u8> {
    if fmt == Fmt::Vhdx {
        qemu_img([
            "check".as_ref(),
            "-f".as_ref(),
            "vhdx".as_ref(),
            path.as_os_str(),
        ]);
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("out.raw");
    qemu_img([
        "convert".as_ref(),
        "-f".as_ref(),
        fmt.qemu().as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        path.as_os_str(),
        raw.as_os_str(),
    ]);
    std::fs::read(raw).unwrap()
}

/// A 16-block dynamic image: every block written, then half of them
/// zeroed (VHDX: two of those discarded instead), one block zero but for
/// its first 4 KiB. Returns the model.
fn dynamic_image(fmt: Fmt, path: &Path) -> Vec<u8> {
    let size = 16 * BS;
    let mut model = random_bytes(size as usize, 21);
    let mut d = fmt.create(path, size, None);
    d.write_at(&model, 0).unwrap();
    for b in [1u64, 3, 5, 7, 9, 11] {
        let r = (b * BS) as usize..((b + 1) * BS) as usize;
        model[r.clone()].fill(0);
        d.write_at(&model[r], b * BS).unwrap();
    }
    model[(13 * BS + 4096) as usize..(14 * BS) as usize].fill(0);
    d.write_at(&vec![0u8; (BS - 4096) as usize], 13 * BS + 4096)
        .unwrap();
    model[(14 * BS) as usize..].fill(0);
    match fmt {
        Fmt::Vhd => d.write_at(&vec![0u8; 2 * BS as usize], 14 * BS).unwrap(),
        Fmt::Vhdx => {
            assert_eq!(d.discard(14 * BS, 2 * BS).unwrap(), 2 * BS);
        }
    }
    d.close().unwrap();
    model
}

fn fresh_convert_size(fmt: Fmt, src: &Path, dir: &Path) -> u64 {
    let dst = dir.join(format!("fresh.{}", fmt.ext()));
    vhdkit_ok([
        "convert".as_ref(),
        "-q".as_ref(),
        "--block-size".as_ref(),
        "1M".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    std::fs::metadata(&dst).unwrap().len()
}

fn compacts_dynamic(fmt: Fmt) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("d.{}", fmt.ext()));
    let model = dynamic_image(fmt, &path);
    let before = std::fs::metadata(&path).unwrap().len();
    let r = compact(&path, Mode::Full);
    let after = std::fs::metadata(&path).unwrap().len();
    assert_eq!((r.size_before, r.size_after), (before, after));
    // Six zeroed blocks (VHD: eight, the two it cannot discard included).
    let zeroed = if fmt == Fmt::Vhd { 8 } else { 6 };
    assert_eq!(r.blocks_dropped, zeroed, "{fmt:?}: {r:?}");
    assert!(r.blocks_moved > 0, "{fmt:?}: {r:?}");
    assert!(after < before, "{fmt:?}: {before} -> {after}");
    assert_check_clean(&path);
    assert!(
        read_image(&path) == model,
        "{fmt:?}: vhdkit reads other content"
    );
    let fresh = fresh_convert_size(fmt, &path, dir.path());
    assert!(
        after <= fresh + BS,
        "{fmt:?}: compacted to {after} bytes, a fresh convert is {fresh}"
    );
    if require_tool("qemu-img") {
        assert!(
            qemu_content(fmt, &path) == model,
            "{fmt:?}: qemu-img reads other content"
        );
    }
    if require_tool("pyvhdi") {
        let (n, got) = pyvhdi_read(&[&path]);
        assert_eq!(n, model.len() as u64);
        assert!(got == model, "{fmt:?}: libvhdi reads other content");
    }
    // A second run finds nothing to do.
    let again = compact(&path, Mode::Full);
    assert_eq!((again.blocks_dropped, again.blocks_moved), (0, 0));
    assert_eq!(again.size_after, after);
}

#[test]
fn dynamic_vhd_compacts_to_the_size_of_a_fresh_copy() {
    compacts_dynamic(Fmt::Vhd);
}

#[test]
fn dynamic_vhdx_compacts_to_the_size_of_a_fresh_copy() {
    compacts_dynamic(Fmt::Vhdx);
}

fn quick(fmt: Fmt) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("q.{}", fmt.ext()));
    let model = dynamic_image(fmt, &path);
    let before = std::fs::metadata(&path).unwrap().len();
    let allocated = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks() * 512
    };
    let alloc_before = allocated(&path);
    let r = compact(&path, Mode::Quick);
    assert_eq!(r.blocks_moved, 0);
    assert!(r.blocks_dropped >= 6, "{r:?}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), before);
    if !r.punch_refused {
        assert!(r.bytes_punched >= 6 * BS, "{r:?}");
        assert!(allocated(&path) + 6 * BS <= alloc_before);
    }
    assert_check_clean(&path);
    assert!(read_image(&path) == model);
    if require_tool("qemu-img") {
        assert!(qemu_content(fmt, &path) == model);
    }
    if require_tool("pyvhdi") {
        assert!(pyvhdi_read(&[&path]).1 == model);
    }
    // A full compaction afterwards still shrinks the file.
    let r = compact(&path, Mode::Full);
    assert!(r.size_after < before, "{r:?}");
    assert!(read_image(&path) == model);
}

#[test]
fn quick_compaction_unlinks_zero_blocks_and_punches_holes_vhd() {
    quick(Fmt::Vhd);
}

#[test]
fn quick_compaction_unlinks_zero_blocks_and_punches_holes_vhdx() {
    quick(Fmt::Vhdx);
}

/// Parent: blocks 0, 2 and 4 hold data, the rest zeros. Child: block 0
/// rewritten with the parent's data, block 1 zeros over parent zeros,
/// block 2 zeros over parent data, 4 KiB of data in block 3, 4 KiB of
/// zeros in block 5 (parent zeros).
fn differencing_chain(fmt: Fmt, dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let size = 8 * BS;
    let parent = dir.join(format!("p.{}", fmt.ext()));
    let child = dir.join(format!("c.{}", fmt.ext()));
    let mut model = vec![0u8; size as usize];
    for b in [0u64, 2, 4] {
        let r = (b * BS) as usize..((b + 1) * BS) as usize;
        model[r].copy_from_slice(&random_bytes(BS as usize, 100 + b));
    }
    let mut p = fmt.create(&parent, size, None);
    p.write_at(&model, 0).unwrap();
    p.close().unwrap();
    drop(p);
    let mut c = fmt.create(&child, size, Some(&parent));
    c.write_at(&model[..BS as usize], 0).unwrap();
    c.write_at(&vec![0u8; BS as usize], BS).unwrap();
    c.write_at(&vec![0u8; BS as usize], 2 * BS).unwrap();
    model[(2 * BS) as usize..(3 * BS) as usize].fill(0);
    let piece = random_bytes(4096, 7);
    c.write_at(&piece, 3 * BS + 65536).unwrap();
    model[(3 * BS + 65536) as usize..(3 * BS + 65536 + 4096) as usize].copy_from_slice(&piece);
    c.write_at(&[0u8; 4096], 5 * BS + 8192).unwrap();
    c.close().unwrap();
    (parent, child, model)
}

fn stored_blocks(path: &Path) -> Vec<u64> {
    let mut blocks: Vec<u64> = open(path)
        .allocation()
        .unwrap()
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .flat_map(|e| e.start / BS..e.end().div_ceil(BS))
        .collect();
    blocks.dedup();
    blocks
}

fn compacts_differencing(fmt: Fmt) {
    let dir = tempfile::tempdir().unwrap();
    let (parent, child, model) = differencing_chain(fmt, dir.path());
    let parent_hash = file_sha256(&parent);
    assert_eq!(stored_blocks(&child), [0, 1, 2, 3, 5]);
    let r = compact(&child, Mode::Full);
    assert_eq!(
        file_sha256(&parent),
        parent_hash,
        "the parent is not written"
    );
    // Block 0 equals the parent but stays; block 2 reads zeros over
    // parent data and stays too (VHD cannot say zeros otherwise; libvhdi
    // reads a VHDX ZERO block from the parent).
    assert_eq!(stored_blocks(&child), [0, 2, 3], "{fmt:?}");
    assert_eq!(r.blocks_dropped, 2, "{fmt:?}: {r:?}");
    assert!(r.size_after < r.size_before, "{fmt:?}: {r:?}");
    assert_check_clean(&child);
    assert!(
        read_image(&child) == model,
        "{fmt:?}: vhdkit reads other content"
    );
    if require_tool("pyvhdi") {
        let (_, got) = pyvhdi_read(&[&child, &parent]);
        assert!(got == model, "{fmt:?}: libvhdi reads other content");
    }
    // Compacting the parent leaves the child's view of it valid.
    compact(&parent, Mode::Full);
    assert!(
        read_image(&child) == model,
        "{fmt:?}: child after parent compaction"
    );
    assert_check_clean(&child);
}

#[test]
fn differencing_vhd_drops_only_blocks_that_read_zero_through_the_chain() {
    compacts_differencing(Fmt::Vhd);
}

#[test]
fn differencing_vhdx_drops_only_blocks_that_read_zero_through_the_chain() {
    compacts_differencing(Fmt::Vhdx);
}

#[test]
fn images_without_blocks_to_give_back_are_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(PathBuf, &str)> = Vec::new();
    let vhd = dir.path().join("f.vhd");
    vhdkit::create_vhd(&vhd, VhdBuilder::new(4 * MIB).fixed()).unwrap();
    cases.push((vhd, "fixed VHD"));
    let vhdx = dir.path().join("f.vhdx");
    vhdkit::create_vhdx(&vhdx, VhdxBuilder::new(4 * MIB).fixed()).unwrap();
    cases.push((vhdx, "fixed VHDX"));
    let raw = dir.path().join("r.img");
    write_raw(&raw, &vec![0u8; MIB as usize]);
    cases.push((raw, "raw image"));
    for (path, what) in cases {
        let hash = file_sha256(&path);
        let e = vhdkit::compact::compact(&path, &OpenOptions::new(), Mode::Full).unwrap_err();
        assert_eq!(e.kind(), vhdkit::ErrorKind::Unsupported, "{what}: {e}");
        assert!(e.to_string().contains(what), "{what}: {e}");
        assert_eq!(file_sha256(&path), hash, "{what} changed");
    }
}

#[test]
fn the_command_prints_the_file_size_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhdx");
    let model = dynamic_image(Fmt::Vhdx, &path);
    let before = std::fs::metadata(&path).unwrap().len();
    let out = String::from_utf8(vhdkit_ok(["compact".as_ref(), path.as_os_str()])).unwrap();
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(out.contains(&format!("({before} bytes)")), "{out}");
    assert!(out.contains(&format!("({after} bytes)")), "{out}");
    assert!(
        out.contains("6 block(s) that read as zeros dropped"),
        "{out}"
    );
    assert!(read_image(&path) == model);
    let json = vhdkit_ok([
        "compact".as_ref(),
        "--quick".as_ref(),
        "--json".as_ref(),
        path.as_os_str(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["blocks_dropped"], 0);
    assert_eq!(v["size_after"], after);
}
