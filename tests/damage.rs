//! Damaged sources: a VHDX or VHD truncated inside a data block. `check`
//! reports the block as an error (exit 2); `convert`, `read` and `compare`
//! fail naming the block and the range and leave no output; `--salvage`
//! reads the missing range as zeros, lists it and exits 3. A differencing
//! child whose parent is truncated behaves the same, naming the parent.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vhdkit::{ErrorKind, OpenOptions};

/// Block size of the images: small, so that a few MiB span several blocks.
const BLOCK: u64 = 1 << 20;
/// Virtual size of the images.
const SIZE: u64 = 8 << 20;
/// Bytes of data written from offset 0 (blocks 0 to 5).
const DATA: usize = 6 << 20;
/// The block the file is cut inside.
const CUT_BLOCK: u64 = 2;
/// How far into that block's data the file is cut.
const CUT_IN: u64 = 512 << 10;
/// The first virtual byte lost.
const LOST: u64 = CUT_BLOCK * BLOCK + CUT_IN;

/// Random data in every MiB (no whole block of zeros, so every block of
/// the first six is stored).
fn data() -> Vec<u8> {
    random_bytes(DATA, 12)
}

/// A dynamic image of `ext` (vhd or vhdx) holding [`data`] from offset 0.
fn image(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let input = dir.join(format!("{name}.in"));
    std::fs::write(&input, data()).unwrap();
    vhdkit_ok([
        "create",
        "-t",
        "dynamic",
        "--block-size",
        "1M",
        s(&path),
        "8M",
    ]);
    vhdkit_ok(["write", s(&path), "--offset", "0", "--input", s(&input)]);
    std::fs::remove_file(&input).unwrap();
    path
}

/// The file offset where the data of virtual byte `vpos` is stored.
fn file_offset_of(path: &Path, vpos: u64) -> u64 {
    let out = vhdkit_ok(["map", "--json", s(path)]);
    let map: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for e in map.as_array().unwrap() {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        if start <= vpos && vpos < start + len {
            return e["file_offset"].as_u64().unwrap() + (vpos - start);
        }
    }
    panic!("{vpos:#x} is not mapped in {}", path.display());
}

/// Cut `path` inside the data of block [`CUT_BLOCK`]; returns the file
/// offset of that block's data.
fn truncate_in_block(path: &Path) -> u64 {
    let data_at = file_offset_of(path, CUT_BLOCK * BLOCK);
    // The blocks were allocated in order, so the ones after lie wholly past the cut.
    assert!(file_offset_of(path, (CUT_BLOCK + 1) * BLOCK) > data_at);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(data_at + CUT_IN)
        .unwrap();
    data_at
}

/// A truncated image of `ext` and the file offset of the cut block (its
/// sector bitmap first, for VHD).
fn truncated(dir: &Path, ext: &str) -> (PathBuf, u64) {
    let path = image(dir, &format!("cut.{ext}"));
    let data_at = truncate_in_block(&path);
    let block_at = if ext == "vhd" { data_at - 512 } else { data_at };
    (path, block_at)
}

/// Both output streams of a command, for messages that may be on either.
fn all_output(args: &[&str]) -> (i32, String) {
    let (code, out, err) = code_out_err(&vhdkit(args));
    (code, format!("{out}{err}"))
}

fn check_reports_the_block(ext: &str, structure: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (path, block_at) = truncated(dir.path(), ext);
    let (code, text) = all_output(&["check", s(&path)]);
    assert_eq!(
        code, 2,
        "check of a truncated {ext} must find damage:\n{text}"
    );
    assert!(
        text.contains(&format!("{structure} at {block_at:#x}")),
        "the finding names the block's structure and offset {block_at:#x}:\n{text}"
    );
    assert!(
        text.contains(&format!("{LOST:#x}..{SIZE:#x}"))
            || text.contains(&format!("{LOST:#x}..{:#x}", 6 << 20)),
        "the finding names the virtual range lost from {LOST:#x}:\n{text}"
    );
    assert!(text.contains(&format!("blocks {CUT_BLOCK} to 5")), "{text}");
    // One finding for the run of damaged blocks, not one per block.
    assert_eq!(
        text.matches(structure).count(),
        1,
        "one finding for one truncation:\n{text}"
    );
    let (code, json) = all_output(&["check", "--json", s(&path)]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["severity"] == "error" && f["structure"] == structure),
        "{json}"
    );
}

#[test]
fn check_reports_a_truncated_vhdx_block_as_an_error() {
    check_reports_the_block("vhdx", "VHDX payload block");
}

#[test]
fn check_reports_a_truncated_vhd_block_as_an_error() {
    check_reports_the_block("vhd", "VHD block");
}

fn reads_fail_closed(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (path, block_at) = truncated(dir.path(), ext);
    let dst = dir.path().join("out.raw");

    let err = vhdkit_fails(Some(1), &["convert", "-q", s(&path), s(&dst)]);
    assert!(err.contains(s(&path)), "the error names the image: {err}");
    assert!(
        err.contains(&format!("block {CUT_BLOCK} ")) && err.contains(&format!("{block_at:#x}")),
        "the error names the block and its offset: {err}"
    );
    assert!(
        err.contains(&format!("{LOST:#x}..")),
        "and the range: {err}"
    );
    assert!(!dst.exists(), "no output is left behind");
    assert!(
        temp_debris(dir.path()).is_empty(),
        "{:?}",
        temp_debris(dir.path())
    );

    // Streaming to stdout fails the same way.
    let err = vhdkit_fails(Some(1), &["convert", s(&path), "-"]);
    assert!(err.contains(&format!("{LOST:#x}..")), "{err}");

    // A read of the cut block, and of a block wholly past the end.
    let err = vhdkit_fails(
        Some(1),
        &["read", s(&path), "--offset", "2M", "--length", "1M"],
    );
    assert!(err.contains(&format!("block {CUT_BLOCK} ")), "{err}");
    assert!(err.contains(&format!("{LOST:#x}..{:#x}", 3 << 20)), "{err}");
    let err = vhdkit_fails(
        Some(1),
        &["read", s(&path), "--offset", "4M", "--length", "4096"],
    );
    assert!(err.contains("block 4 "), "{err}");
    assert!(
        err.contains(&format!("{:#x}..{:#x}", 4 << 20, (4 << 20) + 4096)),
        "{err}"
    );
    // A read that starts past the cut names where the file ends, which is
    // where the block's bytes go missing, not where the read began.
    let file_len = std::fs::metadata(&path).unwrap().len();
    let err = vhdkit_fails(
        Some(1),
        &["read", s(&path), "--offset", "2816K", "--length", "4096"],
    );
    assert!(
        err.contains(&format!(
            "ends at {file_len:#x}, so its bytes from {file_len:#x} on are missing"
        )),
        "{err}"
    );
    // What the file holds still reads.
    let head = vhdkit_ok(["read", s(&path), "--offset", "0", "--length", "2M"]);
    assert_eq!(head, data()[..2 << 20]);

    // compare: its status for an error is 2.
    let copy = dir.path().join(format!("copy.{ext}"));
    std::fs::copy(&path, &copy).unwrap();
    let err = vhdkit_fails(Some(2), &["compare", s(&path), s(&copy)]);
    assert!(err.contains(&format!("block {CUT_BLOCK} ")), "{err}");
}

#[test]
fn reads_of_a_truncated_vhdx_fail_closed() {
    reads_fail_closed("vhdx");
}

#[test]
fn reads_of_a_truncated_vhd_fail_closed() {
    reads_fail_closed("vhd");
}

/// What a salvaged read of the truncated image must give: the data up to
/// the cut, zeros after.
fn salvaged_content() -> Vec<u8> {
    let mut want = data();
    want[LOST as usize..].fill(0);
    want.resize(SIZE as usize, 0);
    want
}

fn salvage(ext: &str, structure: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = truncated(dir.path(), ext);
    let dst = dir.path().join("out.raw");
    let (code, out, err) = code_out_err(&vhdkit(["convert", "-q", "--salvage", s(&path), s(&dst)]));
    assert_eq!(code, 3, "a salvaged convert exits 3: {out}{err}");
    let line = format!(
        "salvaged: {LOST:#x}..{:#x} ({} bytes) of {}: {structure}s {CUT_BLOCK} to 5",
        6 << 20,
        (6 << 20) - LOST,
        path.display()
    );
    assert!(
        err.contains(&line),
        "stderr lists the range as {line:?}:\n{err}"
    );
    assert_eq!(err.matches("salvaged:").count(), 1, "one run: {err}");
    let got = std::fs::read(&dst).unwrap();
    assert_eq!(got.len() as u64, SIZE);
    assert!(
        got == salvaged_content(),
        "data before the damage is the original's, the damaged range zeros"
    );
    assert!(temp_debris(dir.path()).is_empty());

    // read and compare salvage too, and say so in their status.
    let (code, out, err) = vhdkit_run(&[
        "read",
        "--salvage",
        s(&path),
        "--offset",
        "2M",
        "--length",
        "1M",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("salvaged: {LOST:#x}..{:#x}", 3 << 20)),
        "{err}"
    );
    assert!(
        out == salvaged_content()[2 << 20..3 << 20],
        "read writes the whole range"
    );
    let (code, out, err) = code_out_err(&vhdkit(["compare", "--salvage", s(&path), s(&dst)]));
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("identical"), "{out}");
    assert!(err.contains("salvaged: "), "{err}");

    // An undamaged image converts with --salvage as without: exit 0.
    let good = image(dir.path(), &format!("good.{ext}"));
    let dst2 = dir.path().join("good.raw");
    let (code, _, err) = code_out_err(&vhdkit(["convert", "-q", "--salvage", s(&good), s(&dst2)]));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("salvaged"), "{err}");
}

#[test]
fn salvage_converts_a_truncated_vhdx_and_lists_the_range() {
    salvage("vhdx", "VHDX payload block");
}

#[test]
fn salvage_converts_a_truncated_vhd_and_lists_the_range() {
    salvage("vhd", "VHD block");
}

/// The library: the error kind, and the salvage log read after the reads.
#[test]
fn library_reports_damage_as_corrupt_and_salvage_records_it() {
    let dir = tempfile::tempdir().unwrap();
    for ext in ["vhd", "vhdx"] {
        let (path, _) = truncated(dir.path(), ext);
        let disk = vhdkit::open(&path, &OpenOptions::new()).unwrap();
        let mut buf = vec![0u8; BLOCK as usize];
        let e = disk.read_at(&mut buf, 2 << 20).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert_eq!(e.path(), Some(path.as_path()), "{e}");

        let log = vhdkit::damage::SalvageLog::new();
        let disk = vhdkit::open(&path, &OpenOptions::new().salvage(Some(log.clone()))).unwrap();
        assert!(log.is_empty());
        let got = read_disk(disk.as_ref());
        assert!(got == salvaged_content(), "{ext}");
        let runs = log.runs();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!((runs[0].start, runs[0].end()), (LOST, 6 << 20), "{runs:?}");
        assert_eq!((runs[0].first_block, runs[0].last_block), (CUT_BLOCK, 5));
        assert_eq!(runs[0].image.as_deref(), Some(path.as_path()));
    }
}

fn child_of_truncated_parent(ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let parent = image(dir.path(), &format!("parent.{ext}"));
    let child = dir.path().join(format!("child.{ext}"));
    vhdkit_ok([
        "create",
        "-t",
        "differencing",
        "--parent",
        s(&parent),
        s(&child),
    ]);
    // The child holds its own bytes in block 0; the rest comes from the parent.
    vhdkit_ok([
        "write",
        s(&child),
        "--offset",
        "0",
        "--pattern",
        "0x5a",
        "--length",
        "64K",
    ]);
    let cut_at = truncate_in_block(&parent);

    // `check CHILD` checks the chain: the parent's damage makes it corrupt
    // (exit 2), named with the parent, in text and in JSON.
    let (code, text) = all_output(&["check", s(&child)]);
    assert_eq!(code, 2, "the damaged parent must be reported:\n{text}");
    assert!(
        text.contains(&format!("error: in parent {}: ", parent.display()))
            && text.contains(&format!("{LOST:#x}..")),
        "the finding names the parent and the range lost:\n{text}"
    );
    let (code, out, err) = code_out_err(&vhdkit(["check", "--json", s(&child)]));
    assert_eq!(code, 2, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["status"], "corrupt", "{r:#}");
    let block_at = if ext == "vhd" { cut_at - 512 } else { cut_at };
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["offset"] == block_at && f["severity"] == "error"),
        "a finding at the parent's block {block_at:#x}: {r:#}"
    );

    let dst = dir.path().join("out.raw");
    let err = vhdkit_fails(Some(1), &["convert", "-q", s(&child), s(&dst)]);
    assert!(
        err.contains(s(&parent)) && err.contains(&format!("block {CUT_BLOCK} ")),
        "the error names the parent and its damaged block: {err}"
    );
    assert!(err.contains(&format!("{LOST:#x}..")), "{err}");
    assert!(!dst.exists());
    assert!(temp_debris(dir.path()).is_empty());
    vhdkit_fails(
        Some(1),
        &["read", s(&child), "--offset", "2M", "--length", "1M"],
    );
    let err = vhdkit_fails(Some(2), &["compare", s(&child), s(&child)]);
    assert!(err.contains(s(&parent)), "{err}");

    let (code, _, err) = code_out_err(&vhdkit(["convert", "-q", "--salvage", s(&child), s(&dst)]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("salvaged: {LOST:#x}..{:#x}", 6 << 20)) && err.contains(s(&parent)),
        "the salvaged range is named with the parent: {err}"
    );
    let mut want = salvaged_content();
    want[..64 << 10].fill(0x5a);
    assert!(std::fs::read(&dst).unwrap() == want);
}

#[test]
fn child_of_a_truncated_vhdx_parent_fails_closed_and_salvages() {
    child_of_truncated_parent("vhdx");
}

#[test]
fn child_of_a_truncated_vhd_parent_fails_closed_and_salvages() {
    child_of_truncated_parent("vhd");
}

/// A differencing VHDX whose sector bitmap block lies past the end of the
/// file: what it describes cannot be read, from the child or the parent.
#[test]
fn vhdx_sector_bitmap_past_the_end_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let parent = image(dir.path(), "p.vhdx");
    let child = dir.path().join("c.vhdx");
    vhdkit_ok([
        "create",
        "-t",
        "differencing",
        "--block-size",
        "1M",
        "--parent",
        s(&parent),
        s(&child),
    ]);
    for (offset, length) in [("4096", "4096"), ("2M", "1M"), ("3149824", "4096")] {
        vhdkit_ok([
            "write",
            s(&child),
            "--offset",
            offset,
            "--pattern",
            "0x5a",
            "--length",
            length,
        ]);
    }
    // Point the chunk's sector bitmap entry (BAT index chunk_ratio: the
    // entry after the chunk's payload blocks) past the end of the file, so
    // that only the bitmap is missing.
    let info = info_json(&child);
    let bat_at = info["vhdx"]["bat"]["offset"].as_u64().unwrap();
    let chunk_ratio = info["vhdx"]["chunk_ratio"].as_u64().unwrap();
    let file_size = std::fs::metadata(&child).unwrap().len();
    const MIB: u64 = 1 << 20;
    const SB_BLOCK_PRESENT: u64 = 6;
    let past_end = (file_size.div_ceil(MIB) + 1) * MIB;
    let entry = past_end | SB_BLOCK_PRESENT;
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&child)
        .unwrap();
    f.seek(SeekFrom::Start(bat_at + chunk_ratio * 8)).unwrap();
    f.write_all(&entry.to_le_bytes()).unwrap();
    drop(f);
    let (code, text) = all_output(&["check", s(&child)]);
    assert_eq!(code, 2, "{text}\n{info}");
    assert!(text.contains("VHDX sector bitmap block at "), "{text}");
    assert!(!text.contains("VHDX payload block"), "{text}");
    // Only the partially present blocks of the chunk lose their sector
    // presence: block 0 (written in part), not block 2 (written whole, so
    // fully present) nor the unwritten blocks; block 3 (in part) too.
    let block = info["block_size"].as_u64().unwrap();
    assert_eq!(block, BLOCK, "{info}");
    let want = format!("virtual bytes 0x0..{BLOCK:#x} ");
    assert!(text.contains(&want), "{want}: {text}");
    let want = format!("virtual bytes {:#x}..{:#x} ", 3 * BLOCK, 4 * BLOCK);
    assert!(text.contains(&want), "{want}: {text}");
    assert!(!text.contains(&format!("..{SIZE:#x}")), "{text}");
    assert!(!text.contains(&format!("{:#x}..", 2 * BLOCK)), "{text}");
    let err = vhdkit_fails(
        Some(1),
        &["read", s(&child), "--offset", "0", "--length", "8192"],
    );
    assert!(err.contains("past the end"), "{err}");
    let (code, out, err) = vhdkit_run(&[
        "read",
        "--salvage",
        s(&child),
        "--offset",
        "0",
        "--length",
        "8192",
    ]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(out.len(), 8192);
    assert!(err.contains("salvaged: 0x0..0x2000"), "{err}");
}

/// `check --repair` of a truncated VHD does not put a new end footer
/// behind the missing blocks (which would make them read as zeros): the
/// damage stays reported and reads still fail.
#[test]
fn repair_does_not_hide_missing_vhd_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = truncated(dir.path(), "vhd");
    let len = std::fs::metadata(&path).unwrap().len();
    let (code, text) = all_output(&["check", "--repair", s(&path)]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("VHD block at "), "{text}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "{text}");
    vhdkit_fails(
        Some(1),
        &["read", s(&path), "--offset", "2M", "--length", "1M"],
    );
}
