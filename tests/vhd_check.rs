//! `check` (library and CLI) on images the tests damage themselves: each
//! finding must name the structure and the exact byte offset, and the exit
//! status must say corrupt (2) or leaked space only (3). Damaged images
//! still open for reading with warnings, refuse writes until repaired, and
//! `check --repair` makes them writable again.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vhdkit::VhdBuilder;
use vhdkit::report::{FindingKind, WarningKind};
use vhdkit::unstable::vhd::create;
use vhdkit::{ErrorKind, OpenOptions, VirtualDisk};

const SIZE: u64 = 4 << 20;
const BS: u32 = 512 << 10;

/// A dynamic image with data in blocks 0, 2 and 5 (in that file order), and
/// the content it holds.
fn dynamic_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("d.vhd");
    let mut model = vec![0u8; SIZE as usize];
    let mut d = create(&path, VhdBuilder::new(SIZE).block_size(BS)).unwrap();
    let mut rng = Rng::new(3);
    for block in [0u64, 2, 5] {
        let off = block * u64::from(BS) + 1000;
        let mut piece = vec![0u8; 100_000];
        rng.fill(&mut piece);
        d.write_at(&piece, off).unwrap();
        model[off as usize..off as usize + piece.len()].copy_from_slice(&piece);
    }
    d.flush().unwrap();
    (path, model)
}

fn fixed_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("f.vhd");
    let model = mixed_content(1 << 20, 8);
    let mut d = create(&path, VhdBuilder::new(1 << 20).fixed()).unwrap();
    d.write_at(&model, 0).unwrap();
    d.flush().unwrap();
    (path, model)
}

/// `vhdkit check --json`: exit status and the parsed report.
fn cli_check(path: &Path, repair: bool) -> (i32, serde_json::Value) {
    let mut args = vec!["check".as_ref(), "--json".as_ref(), path.as_os_str()];
    if repair {
        args.insert(1, "--repair".as_ref());
    }
    let out = vhdkit(&args);
    let (code, stdout, stderr) = code_out_err(&out);
    let v = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("check --json printed no JSON ({e}): {stdout} {stderr}"));
    (code, v)
}

/// The findings of a report with this structure and offset.
fn findings_at<'a>(
    report: &'a serde_json::Value,
    structure: &str,
    offset: u64,
) -> Vec<&'a serde_json::Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["structure"] == structure && f["offset"] == offset)
        .collect()
}

fn warnings(path: &Path) -> Vec<String> {
    info_json(path)["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

/// Whether the library's check of `path` has a finding of `kind` in
/// `structure` at `offset`.
fn lib_finding(path: &Path, kind: FindingKind, structure: &str, offset: Option<u64>) -> bool {
    let report = vhdkit::check(path, &OpenOptions::new(), false).unwrap();
    report
        .findings
        .iter()
        .any(|f| f.kind == kind && f.structure == structure && f.offset == offset)
}

/// Whether opening `path` warns with `kind` about `structure` at `offset`.
fn lib_warning(path: &Path, kind: WarningKind, structure: &str, offset: Option<u64>) -> bool {
    let disk = vhdkit::open(path, &OpenOptions::new()).unwrap();
    disk.info()
        .warnings
        .iter()
        .any(|w| w.kind == kind && w.structure == Some(structure) && w.offset == offset)
}

fn write_kind(path: &Path) -> Result<(), ErrorKind> {
    let mut d = vhdkit::open(path, &OpenOptions::new().writable(true)).map_err(|e| e.kind())?;
    d.write_at(&[1u8; 512], 512).map_err(|e| e.kind())?;
    d.flush().map_err(|e| e.kind())
}

#[test]
fn clean_images_check_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = dynamic_image(dir.path());
    let (f, _) = fixed_image(dir.path());
    for p in [&d, &f] {
        let (code, r) = cli_check(p, false);
        assert_eq!(code, 0, "{r:#}");
        assert_eq!(r["status"], "clean");
    }
}

#[test]
fn bad_end_footer_checksum_is_found_opens_with_warning_refuses_writes_and_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = dynamic_image(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    // Change the timestamp without fixing the checksum.
    patch_file(&path, len - 512 + 24, &[0x12, 0x34]);

    let (code, r) = cli_check(&path, false);
    assert_eq!(code, 2, "{r:#}");
    let f = findings_at(&r, "VHD footer", len - 512);
    assert_eq!(f.len(), 1, "{r:#}");
    let at = len - 512;
    assert!(lib_finding(
        &path,
        FindingKind::Checksum,
        "VHD footer",
        Some(at)
    ));

    // Readable (through the good copy at offset 0), with a warning.
    assert_eq!(read_image(&path), model);
    assert!(
        lib_warning(&path, WarningKind::CopyUnusable, "VHD footer", Some(at)),
        "{:?}",
        warnings(&path)
    );
    assert_eq!(write_kind(&path), Err(ErrorKind::NeedsRepair));
    // The CLI says so too, and changes nothing.
    let before = std::fs::read(&path).unwrap();
    let out = vhdkit([
        "write".as_ref(),
        path.as_os_str(),
        "--offset".as_ref(),
        "0".as_ref(),
        "--pattern".as_ref(),
        "1".as_ref(),
        "--length".as_ref(),
        "512".as_ref(),
    ] as [&std::ffi::OsStr; 8]);
    let (code, _, stderr) = code_out_err(&out);
    assert_eq!(code, 1);
    assert!(stderr.contains("repair"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let (code, r) = cli_check(&path, true);
    assert_eq!(code, 0, "the status is that of what remains: {r:#}");
    assert!(!r["repaired"].as_array().unwrap().is_empty(), "{r:#}");
    let (code, r) = cli_check(&path, false);
    assert_eq!(code, 0, "{r:#}");
    assert!(warnings(&path).is_empty());
    assert_eq!(read_image(&path), model);
    assert_eq!(write_kind(&path), Ok(()));
}

#[test]
fn real_image_with_both_footers_bad_repairs_and_qemu_then_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = real_image_copy("dfvfs/image.vhd", dir.path()) else {
        return;
    };
    let sha = "c6db12a7db548e193c29420c1b4533e4708b20c5033db5cc29ef075d48316d25";
    assert_eq!(write_kind(&path), Err(ErrorKind::NeedsRepair));
    let (code, r) = cli_check(&path, true);
    assert_eq!(code, 0, "the status is that of what remains: {r:#}");
    let (code, r) = cli_check(&path, false);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(sha256_hex(&read_image(&path)), sha);
    // Independent confirmation: the footer checksum is now right, which
    // qemu-img (that refused the file) accepts.
    let len = std::fs::metadata(&path).unwrap().len();
    let footer = file_bytes(&path, len - 512, 512);
    assert_eq!(be32(&footer, 64), vhd_checksum(&footer, 64));
    assert_eq!(file_bytes(&path, 0, 512), footer, "copy at 0 rewritten");
    if require_tool("qemu-img") {
        assert_eq!(sha256_hex(&qemu_read_vpc(&path)), sha);
    }
    assert_eq!(write_kind(&path), Ok(()));
}

#[test]
fn fixed_footer_bad_checksum_found_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = fixed_image(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    patch_file(&path, len - 512 + 100, &[0x55]);
    let (code, r) = cli_check(&path, false);
    assert_eq!(code, 2);
    assert_eq!(findings_at(&r, "VHD footer", len - 512).len(), 1, "{r:#}");
    assert_eq!(read_image(&path), model);
    assert_eq!(write_kind(&path), Err(ErrorKind::NeedsRepair));
    cli_check(&path, true);
    assert_eq!(cli_check(&path, false).0, 0);
    assert_eq!(write_kind(&path), Ok(()));
}

#[test]
fn bad_copy_and_bad_header_checksums_are_found_at_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = dynamic_image(dir.path());
    let lay = SparseLayout::read(&path);
    patch_file(&path, 30, &[0x77]); // footer copy, inside the timestamp
    patch_file(&path, lay.header_offset + 50, &[0x01]); // header, parent id
    let (code, r) = cli_check(&path, false);
    assert_eq!(code, 2);
    assert_eq!(findings_at(&r, "VHD footer copy", 0).len(), 1, "{r:#}");
    assert_eq!(
        findings_at(&r, "VHD dynamic header", lay.header_offset).len(),
        1,
        "{r:#}"
    );
    assert_eq!(read_image(&path), model);
    assert_eq!(write_kind(&path), Err(ErrorKind::NeedsRepair));
    cli_check(&path, true);
    assert_eq!(cli_check(&path, false).0, 0);
    assert_eq!(write_kind(&path), Ok(()));
}

#[test]
fn bat_entry_past_the_end_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut model) = dynamic_image(dir.path());
    let lay = SparseLayout::read(&path);
    // Block 3 (unallocated) now points 1 GiB into a ~1.5 MiB file.
    let entry = lay.entry_offset(3);
    patch_file(&path, entry, &((1u32 << 30) / 512).to_be_bytes());

    let (code, r) = cli_check(&path, false);
    assert_eq!(code, 2);
    let f = findings_at(&r, "VHD block", 1 << 30);
    assert_eq!(f.len(), 1, "{r:#}");
    assert_eq!(f[0]["offset"], 1u64 << 30, "{r:#}");
    assert!(lib_finding(
        &path,
        FindingKind::OutOfBounds,
        "VHD block",
        Some(1 << 30)
    ));
    assert_eq!(r["findings"].as_array().unwrap().len(), 1, "{r:#}");

    // Reading: the block cannot be read (tests/damage.rs); salvaging, its
    // missing bytes read as zeros, the rest as before.
    let bs = BS as usize;
    model[3 * bs..4 * bs].fill(0);
    let log = vhdkit::damage::SalvageLog::new();
    let opts = vhdkit::OpenOptions::new().salvage(Some(log.clone()));
    assert_eq!(
        read_disk(vhdkit::open(&path, &opts).unwrap().as_ref()),
        model
    );
    assert_eq!(log.runs().len(), 1);
    assert!(lib_warning(
        &path,
        WarningKind::BlockPastEof,
        "VHD block",
        Some(1 << 30)
    ));
    assert_eq!(write_kind(&path), Err(ErrorKind::NeedsRepair));
}

#[test]
fn two_bat_entries_sharing_a_block() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = dynamic_image(dir.path());
    let lay = SparseLayout::read(&path);
    assert_ne!(lay.bat[2], 0xffff_ffff);
    // Block 6 now points at block 2's data.
    let entry = lay.entry_offset(6);
    patch_file(&path, entry, &lay.bat[2].to_be_bytes());

    let (code, r) = cli_check(&path, false);
    assert_eq!(code, 2, "{r:#}");
    let f = findings_at(&r, "VHD block allocation table", entry);
    assert_eq!(f.len(), 1, "{r:#}");
    let msg = f[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("2") && msg.contains("6") && msg.contains("overlap"),
        "{msg}"
    );

    // Reading both shows the same bytes; writing through one would change
    // the other, so writes are refused.
    let disk = vhdkit::open(&path, &OpenOptions::new()).unwrap();
    let data = read_disk(disk.as_ref());
    let bs = BS as usize;
    assert_eq!(data[2 * bs..3 * bs], data[6 * bs..7 * bs]);
    assert!(
        disk.info()
            .warnings
            .iter()
            .any(|w| w.kind == vhdkit::report::WarningKind::Overlap),
        "{:?}",
        disk.info().warnings
    );
    drop(disk);
    assert_eq!(write_kind(&path), Err(ErrorKind::NeedsRepair));
}

#[test]
fn block_over_the_metadata_is_found_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = dynamic_image(dir.path());
    let lay = SparseLayout::read(&path);
    // Block 7 now points at the dynamic header.
    let entry = lay.entry_offset(7);
    patch_file(
        &path,
        entry,
        &((lay.header_offset / 512) as u32).to_be_bytes(),
    );
    let (code, r) = cli_check(&path, false);
    assert_eq!(code, 2);
    let f = findings_at(&r, "VHD block allocation table", entry);
    assert!(!f.is_empty(), "{r:#}");
    assert!(
        lib_finding(
            &path,
            FindingKind::Overlap,
            "VHD block allocation table",
            Some(entry)
        ) && f
            .iter()
            .any(|f| f["message"].as_str().unwrap().contains("dynamic header"))
    );
    let before = std::fs::read(&path).unwrap();
    assert_eq!(write_kind(&path), Err(ErrorKind::NeedsRepair));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the header is intact"
    );
}

#[test]
fn truncated_dynamic_file_is_reported_and_reads_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut model) = dynamic_image(dir.path());
    let lay = SparseLayout::read(&path);
    // Cut the file in the middle of the last block (block 5, the last in
    // the file): its footer is gone and so is part of its data.
    let start5 = u64::from(lay.bat[5]) * 512;
    let cut = start5 + lay.bitmap_size() + 50_000;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let (code, r) = cli_check(&path, false);
    assert_eq!(code, 2, "{r:#}");
    assert_eq!(findings_at(&r, "VHD footer", cut - 512).len(), 1, "{r:#}");
    assert_eq!(findings_at(&r, "VHD block", start5).len(), 1, "{r:#}");

    // Opens through the copy at offset 0; what was cut cannot be read
    // (tests/damage.rs), except as zeros when salvaging.
    let w = warnings(&path);
    assert!(w.iter().any(|w| w.contains("copy")), "{w:?}");
    let disk = vhdkit::open(&path, &vhdkit::OpenOptions::new()).unwrap();
    let mut buf = vec![0u8; BS as usize];
    let e = disk.read_at(&mut buf, 5 * u64::from(BS)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    drop(disk);
    let log = vhdkit::damage::SalvageLog::new();
    let opts = vhdkit::OpenOptions::new().salvage(Some(log.clone()));
    let data_off = (5 * u64::from(BS)) as usize + 50_000;
    model[data_off..6 * BS as usize].fill(0);
    assert_eq!(
        read_disk(vhdkit::open(&path, &opts).unwrap().as_ref()),
        model
    );
    assert_eq!(log.runs().len(), 1);
    assert_eq!(write_kind(&path), Err(ErrorKind::NeedsRepair));
}

#[test]
fn leaked_block_gives_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = dynamic_image(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let footer = file_bytes(&path, len - 512, 512);
    // A whole block appended where the footer was, never linked in the BAT
    // (what a crash between allocation and linking leaves).
    let lay = SparseLayout::read(&path);
    let leaked = len - 512;
    let span = lay.bitmap_size() + lay.block_size;
    patch_file(&path, leaked, &vec![0xffu8; lay.bitmap_size() as usize]);
    patch_file(&path, leaked + lay.bitmap_size(), &vec![0xabu8; 4096]);
    patch_file(&path, leaked + span, &footer);

    let (code, r) = cli_check(&path, false);
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(r["status"], "leaks");
    let f = findings_at(&r, "VHD file", leaked);
    assert_eq!(f.len(), 1, "{r:#}");
    assert!(
        f[0]["message"]
            .as_str()
            .unwrap()
            .contains(&span.to_string()),
        "{r:#}"
    );
    // Leaked space does not change the content, and writes stay allowed.
    assert_eq!(read_image(&path), model);
    assert_eq!(write_kind(&path), Ok(()));
}

#[test]
fn check_library_and_cli_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = dynamic_image(dir.path());
    let lay = SparseLayout::read(&path);
    patch_file(&path, lay.entry_offset(4), &lay.bat[0].to_be_bytes());
    let report = vhdkit::check(&path, &OpenOptions::new(), false).unwrap();
    assert_eq!(report.exit_code(), 2);
    let (code, r) = cli_check(&path, false);
    assert_eq!(code, report.exit_code());
    assert_eq!(
        r["findings"].as_array().unwrap().len(),
        report.findings.len()
    );
    // The text output names structure and offset as well.
    let out = vhdkit(["check".as_ref(), path.as_os_str()]);
    let (code, text, _) = code_out_err(&out);
    assert_eq!(code, 2);
    assert!(
        text.contains(&format!(
            "VHD block allocation table at {:#x}",
            lay.entry_offset(4)
        )),
        "{text}"
    );
}

#[test]
fn fixed_disk_with_short_data_reads_zeros_not_the_footer() {
    // The footer says 1 MiB but only 600 KiB of data precede it.
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = fixed_image(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let footer = file_bytes(&path, len - 512, 512);
    let short = 600 << 10;
    patch_file(&path, short, &footer);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(short + 512)
        .unwrap();
    let data = read_image(&path);
    assert_eq!(data.len(), 1 << 20);
    assert_eq!(data[..short as usize], model[..short as usize]);
    assert!(
        data[short as usize..].iter().all(|&b| b == 0),
        "bytes past the data read as zeros (not as the footer)"
    );
    let (code, r) = cli_check(&path, false);
    assert_eq!(code, 2);
    assert_eq!(findings_at(&r, "VHD data", short).len(), 1, "{r:#}");
    assert_eq!(write_kind(&path), Err(ErrorKind::NeedsRepair));
}

#[test]
fn differencing_child_checks_clean_and_a_missing_parent_is_could_not_check() {
    let dir = tempfile::tempdir().unwrap();
    let (parent, _) = dynamic_image(dir.path());
    let child = dir.path().join("child.vhd");
    let mut c = create(&child, VhdBuilder::new(0).differencing(&parent)).unwrap();
    c.write_at(&[9u8; 3000], 100).unwrap();
    c.flush().unwrap();
    drop(c);
    let (code, r) = cli_check(&child, false);
    assert_eq!(code, 0, "{r:#}");
    std::fs::rename(&parent, dir.path().join("moved.vhd")).unwrap();
    let (code, r) = cli_check(&child, false);
    assert_eq!(
        code, 1,
        "a missing parent is not damage, but the child could not be checked: {r:#}"
    );
    assert_eq!(r["status"], "incomplete", "{r:#}");
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["severity"] == "info" && f["message"].as_str().unwrap().contains("d.vhd")),
        "{r:#}"
    );
    assert!(lib_finding(
        &child,
        FindingKind::ParentMissing,
        "parent",
        None
    ));
}

#[test]
fn info_merges_a_run_of_blocks_past_the_end_into_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.vhd");
    let mut d = create(&path, VhdBuilder::new(SIZE).block_size(BS)).unwrap();
    for block in 0..4u64 {
        d.write_at(&[7u8; 4096], block * u64::from(BS)).unwrap();
    }
    d.flush().unwrap();
    drop(d);
    let lay = SparseLayout::read(&path);
    let start1 = u64::from(lay.bat[1]) * 512;
    // Cut inside block 1: blocks 1, 2 and 3 reach past the end.
    let past = past_eof_warnings_after_cut(&path, start1 + lay.bitmap_size() + 1000);
    assert_eq!(past.len(), 1, "{past:?}");
    assert_eq!(past[0].structure, Some("VHD block"));
    assert_eq!(past[0].offset, Some(start1));
    assert!(past[0].message.contains("blocks 1 to 3"), "{past:?}");
}
