//! Bad input: garbage, truncated files and hostile header values. Every
//! case gives a clear error naming the structure and the byte offset (or
//! reads as raw when there is no VHD signature), and nothing panics, in the
//! library (byte-flipping property test) or in the CLI.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use common::*;
use vhdkit::VhdBuilder;
use vhdkit::unstable::vhd::create;
use vhdkit::{ErrorKind, OpenOptions, VirtualDisk};

/// A small dynamic VHD with some data, for damaging.
fn sample(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let mut d = create(&path, VhdBuilder::new(3 << 20).block_size(1 << 20)).unwrap();
    d.write_at(&mixed_content(1 << 20, 1), 1 << 20).unwrap();
    d.write_at(&[7u8; 1000], 100).unwrap();
    d.flush().unwrap();
    path
}

/// The CLI error for `info` on `path`: exit status 1, stderr names `needle`s.
fn assert_cli_error(path: &Path, needles: &[&str]) {
    for cmd in ["info", "map"] {
        let out = vhdkit([OsStr::new(cmd), path.as_os_str()]);
        let (code, _, stderr) = code_out_err(&out);
        assert_eq!(code, 1, "{cmd}: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{cmd}: {n:?} not in {stderr}");
        }
    }
    let out = vhdkit([OsStr::new("check"), path.as_os_str()]);
    assert!(matches!(out.status.code(), Some(1 | 2)), "{out:?}");
}

#[test]
fn garbage_named_vhd_is_a_raw_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.vhd");
    let data = mixed_content(100_000, 4);
    write_raw(&path, &data);
    let v = info_json(&path);
    assert_eq!(v["format"], "raw");
    assert_eq!(v["virtual_size"], 100_000);
    assert_eq!(read_image(&path), data);
    assert_eq!(
        vhdkit([OsStr::new("check"), path.as_os_str()])
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn truncated_vhd_names_the_structure_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path(), "t.vhd");
    // Keep the footer copy and half the dynamic header.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1024)
        .unwrap();
    let err = open_err(&path, &OpenOptions::new());
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(err.structure(), Some("VHD footer"));
    assert_eq!(
        err.offset(),
        Some(16),
        "the data_offset field of the copy at 0"
    );
    assert_cli_error(&path, &["VHD footer at offset 0x10", "dynamic header"]);
}

/// Patch a field of the dynamic header and fix its checksum, so that the
/// value itself is judged (not just the checksum).
fn with_header_field(dir: &Path, name: &str, field: u64, bytes: &[u8]) -> (PathBuf, u64) {
    let path = sample(dir, name);
    let lay = SparseLayout::read(&path);
    patch_file(&path, lay.header_offset + field, bytes);
    fix_header_checksum(&path, lay.header_offset);
    (path, lay.header_offset)
}

#[test]
fn hostile_max_table_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (path, hoff) = with_header_field(dir.path(), "m.vhd", 28, &0xffff_ffffu32.to_be_bytes());
    let err = open_err(&path, &OpenOptions::new());
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(err.structure(), Some("VHD dynamic header"));
    assert_eq!(err.offset(), Some(hoff + 28));
    let at = format!("VHD dynamic header at offset {:#x}", hoff + 28);
    assert_cli_error(&path, &[&at, "4294967295"]);
    let report = vhdkit::check(&path, &OpenOptions::new(), false).unwrap();
    assert_eq!(report.exit_code(), 2);
    assert!(report.findings.iter().any(|f| f.offset == Some(hoff + 28)));
}

#[test]
fn hostile_block_sizes() {
    let dir = tempfile::tempdir().unwrap();
    for (i, bs) in [0u32, 3, 256, 0x8000_0000, 0xffff_ffff]
        .into_iter()
        .enumerate()
    {
        let (path, hoff) =
            with_header_field(dir.path(), &format!("b{i}.vhd"), 32, &bs.to_be_bytes());
        let err = open_err(&path, &OpenOptions::new());
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{bs}");
        assert_eq!(err.structure(), Some("VHD dynamic header"), "{bs}");
        assert_eq!(err.offset(), Some(hoff + 32), "{bs}");
        let at = format!("VHD dynamic header at offset {:#x}", hoff + 32);
        assert_cli_error(&path, &[&at, "block size"]);
    }
}

#[test]
fn hostile_table_offset_and_header_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, hoff) = with_header_field(
        dir.path(),
        "t.vhd",
        16,
        &0xffff_ffff_ffff_fe00u64.to_be_bytes(),
    );
    let err = open_err(&path, &OpenOptions::new());
    assert_eq!(
        (err.structure(), err.offset()),
        (Some("VHD dynamic header"), Some(hoff + 16))
    );
    assert_cli_error(
        &path,
        &[&format!("VHD dynamic header at offset {:#x}", hoff + 16)],
    );

    // The footer's data_offset (both copies, checksums fixed) far outside.
    let path = sample(dir.path(), "h.vhd");
    let len = std::fs::metadata(&path).unwrap().len();
    for at in [0, len - 512] {
        patch_file(&path, at + 16, &0xffff_ffff_ffff_0000u64.to_be_bytes());
        fix_footer_checksum(&path, at);
    }
    let err = open_err(&path, &OpenOptions::new());
    assert_eq!(err.structure(), Some("VHD footer"));
    assert_eq!(err.offset(), Some(len - 512 + 16));
    assert_cli_error(
        &path,
        &[&format!("VHD footer at offset {:#x}", len - 512 + 16)],
    );
}

#[test]
fn hostile_footer_values() {
    let dir = tempfile::tempdir().unwrap();
    // (field offset, value, expected kind)
    let cases: &[(u64, Vec<u8>, ErrorKind)] = &[
        (60, 7u32.to_be_bytes().to_vec(), ErrorKind::Unsupported), // disk type
        (48, 1001u64.to_be_bytes().to_vec(), ErrorKind::Corrupt),  // size not sectors
        (
            48,
            0xffff_ffff_ffff_fe00u64.to_be_bytes().to_vec(),
            ErrorKind::Unsupported,
        ), // size too big
        (
            12,
            0x0002_0000u32.to_be_bytes().to_vec(),
            ErrorKind::Unsupported,
        ), // version
    ];
    for (i, (field, value, kind)) in cases.iter().enumerate() {
        let path = sample(dir.path(), &format!("f{i}.vhd"));
        let len = std::fs::metadata(&path).unwrap().len();
        for at in [0, len - 512] {
            patch_file(&path, at + field, value);
            fix_footer_checksum(&path, at);
        }
        let err = open_err(&path, &OpenOptions::new());
        assert_eq!(err.kind(), *kind, "field {field}: {err}");
        assert_eq!(err.structure(), Some("VHD footer"));
        assert_eq!(
            err.offset(),
            Some(len - 512 + field),
            "field {field}: {err}"
        );
        assert_cli_error(
            &path,
            &[&format!("VHD footer at offset {:#x}", len - 512 + field)],
        );
    }
}

#[test]
fn max_table_entries_too_small_for_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let (path, hoff) = with_header_field(dir.path(), "s.vhd", 28, &1u32.to_be_bytes());
    let err = open_err(&path, &OpenOptions::new());
    assert_eq!(
        (err.structure(), err.offset()),
        (Some("VHD dynamic header"), Some(hoff + 28))
    );
}

#[test]
fn hostile_parent_locators_do_not_hurt() {
    let dir = tempfile::tempdir().unwrap();
    let parent = sample(dir.path(), "p.vhd");
    let child = dir.path().join("c.vhd");
    create(&child, VhdBuilder::new(0).differencing(&parent)).unwrap();
    let lay = SparseLayout::read(&child);
    // Locator 0: absurd length and offset; locator 1: points at the child
    // itself, as a relative path.
    let l0 = lay.header_offset + 576;
    patch_file(&child, l0 + 8, &0xffff_fff0u32.to_be_bytes());
    patch_file(&child, l0 + 16, &0xffff_ffff_ffff_0000u64.to_be_bytes());
    fix_header_checksum(&child, lay.header_offset);
    // Still found by the absolute locator; the bad entry is shown, not used.
    let v = info_json(&child);
    assert_eq!(v["parent"]["found"], true, "{v:#}");
    // A child whose only way to its parent leads back to itself.
    let looped = dir.path().join("loop.vhd");
    std::fs::copy(&child, &looped).unwrap();
    let name: Vec<u8> = "loop.vhd"
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .chain([0, 0])
        .collect();
    patch_file(&looped, lay.header_offset + 64, &name);
    for i in 0..8 {
        patch_file(&looped, lay.header_offset + 576 + 24 * i, &[0u8; 24]);
    }
    fix_header_checksum(&looped, lay.header_offset);
    let err = open_err(&looped, &OpenOptions::new());
    assert!(
        matches!(err.kind(), ErrorKind::Corrupt | ErrorKind::ParentMismatch),
        "{err}"
    );
    let out = vhdkit([
        OsStr::new("read"),
        looped.as_os_str(),
        "--offset".as_ref(),
        "0".as_ref(),
        "--length".as_ref(),
        "512".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(1));
}

/// Exercise everything a reader does on a possibly damaged image.
fn poke(path: &Path) {
    let opts = OpenOptions::new().allow_missing_parent(true);
    if let Ok(disk) = vhdkit::open(path, &opts) {
        let info = disk.info();
        let _ = serde_json::to_string(&info).unwrap();
        let n = disk.virtual_size().min(4 << 20) as usize;
        let mut buf = vec![0u8; n];
        let _ = disk.read_at(&mut buf, 0);
        let mut tail = vec![0u8; 4096.min(disk.virtual_size() as usize)];
        let at = disk.virtual_size() - tail.len() as u64;
        let _ = disk.read_at(&mut tail, at);
        let _ = disk.map(0, disk.virtual_size());
    }
    let _ = vhdkit::check(path, &opts, false);
}

proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 256, failure_persistence: None, ..Default::default() })]

    /// Random damage to the metadata (footer copy, header, BAT, locators,
    /// end footer), with checksums made right half of the time so that the
    /// values themselves are exercised: no panic, no huge allocation.
    #[test]
    fn damaged_metadata_never_panics(
        edits in prop::collection::vec((any::<u16>(), any::<u32>(), 0usize..4), 1..8),
        fix in any::<bool>(),
        in_footer in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = fuzz_base(dir.path());
        let len = std::fs::metadata(&path).unwrap().len();
        for (pos, value, width) in edits {
            let off = if in_footer { len - 512 + u64::from(pos) % 512 } else { u64::from(pos) % 3072 };
            let bytes = value.to_be_bytes();
            let w = [1usize, 2, 4, 4][width].min((len - off) as usize);
            patch_file(&path, off, &bytes[..w]);
        }
        if fix {
            fix_footer_checksum(&path, 0);
            fix_footer_checksum(&path, len - 512);
            fix_header_checksum(&path, 512);
        }
        poke(&path);
    }
}

/// A copy of one prepared image (made once per process).
fn fuzz_base(dir: &Path) -> PathBuf {
    use std::sync::OnceLock;
    static BASE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, src) = BASE.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = sample(d.path(), "base.vhd");
        (d, p)
    });
    let dest = dir.join("f.vhd");
    std::fs::copy(src, &dest).unwrap();
    dest
}

/// Every command that takes an image, on a damaged `path` (compared with
/// the undamaged `orig`; `key` for EVHD), exits without a panic, and a
/// failure names the damaged file.
fn every_command_on(path: &Path, orig: &Path, key: Option<&Path>, out: &Path) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let o = |s: &'static str| OsStr::new(s);
    let commands: Vec<Vec<&OsStr>> = vec![
        vec![o("info"), o("--json"), path.as_os_str()],
        vec![o("info"), path.as_os_str()],
        vec![o("check"), path.as_os_str()],
        vec![o("check"), o("--json"), path.as_os_str()],
        vec![o("map"), o("--json"), path.as_os_str()],
        vec![
            o("read"),
            path.as_os_str(),
            o("--offset"),
            o("0"),
            o("--length"),
            o("1M"),
        ],
        vec![
            o("convert"),
            o("-q"),
            o("--force"),
            path.as_os_str(),
            out.as_os_str(),
        ],
        vec![o("compare"), path.as_os_str(), orig.as_os_str()],
        vec![o("compare"), orig.as_os_str(), path.as_os_str()],
    ];
    for mut args in commands {
        if let Some(k) = key {
            args.extend([o("--key"), k.as_os_str()]);
        }
        let out = vhdkit(&args); // asserts no panic
        let (code, stdout, stderr) = code_out_err(&out);
        // `check` reports damage on stdout (exit 2), and an EVHD it could
        // only partly check without a key (exit 1, listed as "not checked");
        // `compare` exits 1 when the images differ. Otherwise a failure is an
        // error naming the file.
        let reported = (args[0] == "check"
            && (code == 2
                || (code == 1
                    && (stdout.contains("not checked") || stdout.contains("\"incomplete\"")))))
            || (args[0] == "compare" && code == 1);
        // `compare` may fail on the undamaged image first (no key).
        let orig_name = orig.file_name().unwrap().to_string_lossy();
        let named =
            stderr.contains(&name) || (args[0] == "compare" && stderr.contains(&*orig_name));
        if code != 0 && !reported {
            assert!(named, "{args:?} exit {code}: {stderr}");
        }
    }
}

/// Damage `n` random bytes of `path` inside `[lo, hi)` ranges, one range
/// picked at random each time.
fn damage(path: &Path, rng: &mut common::Rng, ranges: &[(u64, u64)], n: usize) {
    for _ in 0..n {
        let (lo, hi) = ranges[rng.below(ranges.len() as u64) as usize];
        patch_file(path, lo + rng.below(hi - lo), &[rng.below(256) as u8]);
    }
}

#[test]
fn damaged_images_never_panic_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    let mut rng = common::Rng::new(99);
    let orig = sample(dir.path(), "orig.vhd");
    for i in 0..12 {
        let path = dir.path().join(format!("z{i}.vhd"));
        std::fs::copy(&orig, &path).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        damage(&path, &mut rng, &[(0, 3072), (len - 512, len)], 6);
        if i % 2 == 0 {
            fix_footer_checksum(&path, 0);
            fix_footer_checksum(&path, len - 512);
            fix_header_checksum(&path, 512);
        }
        every_command_on(&path, &orig, None, &out);
    }
}

/// Recompute the CRC-32C of the VHDX headers and region tables.
fn fix_vhdx_checksums(path: &Path) {
    for (at, size) in [
        (64u64 << 10, 4096),
        (128 << 10, 4096),
        (192 << 10, 64 << 10),
        (256 << 10, 64 << 10),
    ] {
        let mut b = file_bytes(path, at, size);
        let crc = vhdkit::unstable::checksum::crc32c_with_zeroed_field(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        patch_file(path, at, &b);
    }
}

#[test]
fn damaged_vhdx_never_panics_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    let mut rng = common::Rng::new(7);
    let orig = dir.path().join("orig.vhdx");
    let mut d = vhdkit::unstable::vhdx::create(
        &orig,
        vhdkit::VhdxBuilder::new(4 << 20).block_size(1 << 20),
    )
    .unwrap();
    d.write_at(&mixed_content(1 << 20, 5), 1 << 20).unwrap();
    d.flush().unwrap();
    drop(d);
    let len = std::fs::metadata(&orig).unwrap().len();
    // Headers, region tables, then the metadata region and BAT (past the
    // 1 MiB log that follows the header area).
    let ranges = [(64 << 10, 320 << 10), (2 << 20, (4 << 20).min(len))];
    for i in 0..12 {
        let path = dir.path().join(format!("z{i}.vhdx"));
        std::fs::copy(&orig, &path).unwrap();
        damage(&path, &mut rng, &ranges, 8);
        if i % 2 == 0 {
            fix_vhdx_checksums(&path);
        }
        every_command_on(&path, &orig, None, &out);
    }
}

/// Recompute the CRC-32C of both EVHD header copies (the MAC then fails).
fn fix_evhd_crcs(path: &Path) {
    use vhdkit::unstable::evhd::header::{COPY_OFFSETS, CRC_OFFSET, HEADER_SIZE, compute_crc};
    for at in COPY_OFFSETS {
        let mut h = file_bytes(path, at, HEADER_SIZE);
        let crc = compute_crc(&h);
        h[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        patch_file(path, at, &h);
    }
}

#[test]
fn damaged_evhd_never_panics_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    let mut rng = common::Rng::new(11);
    let raw = dir.path().join("src.raw");
    write_raw(&raw, &mixed_content(2 << 20, 6));
    let orig = dir.path().join("orig.evhd");
    make_evhd(&raw, &orig);
    let key = &test_key().1;
    let len = std::fs::metadata(&orig).unwrap().len();
    // The two header copies, then the journal, table and data.
    let ranges = [(0, 128 << 10), (128 << 10, len)];
    for i in 0..12 {
        let path = dir.path().join(format!("z{i}.evhd"));
        std::fs::copy(&orig, &path).unwrap();
        damage(&path, &mut rng, &ranges, 6);
        if i % 2 == 0 {
            fix_evhd_crcs(&path);
        }
        every_command_on(&path, &orig, None, &out);
        every_command_on(&path, &orig, Some(key), &out);
    }
}
