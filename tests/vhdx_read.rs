//! VHDX reading: real images, qemu-img images, 4096-byte sectors, damage, CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use vhdkit::{ErrorKind, ExtentKind, OpenOptions};

fn bin() -> Command {
    Command::new(vhdkit_bin())
}

/// The decompressed real image `dissect/{name}` (read-only), or `None`
/// when the shared fixtures are absent.
fn real(name: &str) -> Option<PathBuf> {
    real_image(&format!("dissect/{name}"))
}

fn check_real(name: &str, sha: &str, disk_id: &str, chunk_ratio: u64) {
    let Some(path) = real(name) else {
        return;
    };
    let before = file_sha256(&path);
    let disk = open(&path);
    let info = disk.info();
    assert_eq!(info.format, vhdkit::Format::Vhdx);
    assert_eq!(info.disk_id.as_deref(), Some(disk_id));
    assert_eq!(info.details.vhdx().unwrap().chunk_ratio, chunk_ratio);
    assert_eq!(
        (info.logical_sector_size, info.physical_sector_size),
        (512, 4096)
    );
    let data = read_disk(disk.as_ref());
    assert_eq!(sha256_hex(&data), sha);
    // The source project's own expectations.
    assert!(data[0x200000..0x200200].iter().all(|&b| b == 0xff));
    assert_eq!(&data[510..512], &[0x55, 0xaa]);
    assert_eq!(
        file_sha256(&path),
        before,
        "a read-only open changed the file"
    );
}

#[test]
fn real_fixed_vhdx_matches_manifest() {
    check_real(
        "fixed.vhdx",
        "bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62",
        "4a49d245-db0a-4634-9818-9f93db5ba6c1",
        2048,
    );
}

#[test]
fn real_dynamic_vhdx_matches_manifest() {
    check_real(
        "dynamic.vhdx",
        "8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac",
        "788015f0-5e93-4bd2-a5de-b0cd8459db11",
        128,
    );
}

#[test]
fn real_differencing_avhdx_names_its_missing_parent() {
    let Some(path) = real("differencing.avhdx") else {
        return;
    };
    const REL: &str = r".\Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx";
    const LINK: &str = "ff34003b-11ed-4cf8-a166-b2be05e20b80";

    let Err(err) = vhdkit::open(&path, &OpenOptions::new()) else {
        panic!("opened without its parent");
    };
    assert_eq!(err.kind(), ErrorKind::ParentMissing);
    let msg = err.to_string();
    assert!(msg.contains(REL) && msg.contains(LINK), "{msg}");

    let disk = vhdkit::open(&path, &OpenOptions::new().allow_missing_parent(true)).unwrap();
    let info = disk.info();
    assert_eq!(info.disk_type, vhdkit::DiskType::Differencing);
    let p = info.parent.as_ref().unwrap();
    assert_eq!(p.path.as_deref(), Some(REL));
    assert_eq!(p.id.as_deref(), Some(LINK));
    assert!(!p.found);
    let v = info.details.vhdx().unwrap();
    let entries = &v.parent_locator.as_ref().unwrap().entries;
    assert_eq!(entries["relative_path"], REL);
    assert_eq!(entries["parent_linkage"], format!("{{{LINK}}}"));
    assert_eq!(v.bat.payload_states["partially_present"], 32);

    // map is sector-precise and works without the parent.
    let map = disk.map(0, disk.virtual_size()).unwrap();
    assert_eq!(
        map.iter().map(|e| e.length).sum::<u64>(),
        disk.virtual_size()
    );
    let data: Vec<_> = map.iter().filter(|e| e.kind == ExtentKind::Data).collect();
    assert!(!data.is_empty());
    assert!(
        data.iter()
            .all(|e| e.start % 512 == 0 && e.length % 512 == 0)
    );
    assert!(
        data.iter().any(|e| e.length < 2 << 20),
        "runs finer than a block"
    );
    // The child's own sectors read; anything else needs the parent.
    let mut buf = vec![0u8; data[0].length as usize];
    disk.read_at(&mut buf, data[0].start).unwrap();
    let parent_run = map.iter().find(|e| e.kind == ExtentKind::Parent).unwrap();
    let mut sector = [0u8; 512];
    let err = disk.read_at(&mut sector, parent_run.start).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ParentMissing);
    assert!(err.to_string().contains(REL) && err.to_string().contains(LINK));

    // CLI: info and map work, read fails naming the parent.
    let out = bin().args(["info", "--json"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["vhdx"]["parent_locator"]["entries"]["relative_path"], REL);
    let out = bin().args(["map", "--json"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    let out = bin()
        .args(["read", "--offset", "0", "--length", "512"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(LINK));
}

/// Convert `raw` with qemu-img into a VHDX with `opts`.
fn qemu_vhdx(raw: &Path, out: &Path, opts: &str) {
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx", "-o", opts])
        .arg(raw)
        .arg(out));
}

#[test]
fn qemu_images_read_identically() {
    if !require_tool("qemu-img") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut content = pattern(40, 7);
    // An odd-sized tail on the last block.
    content.truncate((40 << 20) - (3 << 20));
    let raw = tmp.path().join("src.raw");
    std::fs::write(&raw, &content).unwrap();
    for sub in ["fixed", "dynamic"] {
        for bs in ["1M", "8M", "32M"] {
            for zero in ["on", "off"] {
                let out = tmp.path().join(format!("{sub}-{bs}-{zero}.vhdx"));
                let opts =
                    format!("subformat={sub},block_size={bs},block_state_zero={zero},log_size=4M");
                qemu_vhdx(&raw, &out, &opts);
                let disk = open(&out);
                assert_eq!(disk.virtual_size(), content.len() as u64, "{opts}");
                let got = read_disk(disk.as_ref());
                assert!(got == content, "{opts}: content differs");
                let st = bin().arg("check").arg(&out).output().unwrap();
                assert_eq!(
                    st.status.code(),
                    Some(0),
                    "{opts}: {}",
                    String::from_utf8_lossy(&st.stdout)
                );
            }
        }
    }
    // An empty image made by qemu-img create reads as zeros.
    let empty = tmp.path().join("empty.vhdx");
    run(Command::new("qemu-img")
        .args(["create", "-f", "vhdx", "-o", "block_size=8M,log_size=4M"])
        .arg(&empty)
        .arg("24M"));
    let disk = open(&empty);
    assert!(read_disk(disk.as_ref()).iter().all(|&b| b == 0));
    assert_eq!(
        disk.map(0, disk.virtual_size()).unwrap()[0].kind,
        ExtentKind::Zero
    );
}

/// Patch the Logical Sector Size item of a qemu image to 4096.
fn set_logical_sector_size(path: &Path, size: u32) {
    let mut f = std::fs::read(path).unwrap();
    let l = VhdxLayout::parse(&f);
    let m = l.metadata_offset as usize;
    assert_eq!(&f[m..m + 8], b"metadata");
    let n = u16::from_le_bytes([f[m + 10], f[m + 11]]) as usize;
    let mut patched = false;
    for i in 0..n {
        let e = m + 32 + i * 32;
        let g = uuid::Uuid::from_bytes_le(f[e..e + 16].try_into().unwrap()).to_string();
        if g == "8141bf1d-a96f-4709-ba47-f233a8faab5f" {
            let at = m + le32(&f, e + 16) as usize;
            f[at..at + 4].copy_from_slice(&size.to_le_bytes());
            patched = true;
        }
    }
    assert!(patched);
    std::fs::write(path, f).unwrap();
}

#[test]
fn logical_4096_sectors_read_and_libvhdi_agrees() {
    if !require_tool("qemu-img") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let content = pattern(24, 11);
    let raw = tmp.path().join("src.raw");
    std::fs::write(&raw, &content).unwrap();
    let img = tmp.path().join("4k.vhdx");
    // 24 blocks of 1 MiB: fewer than one chunk at either sector size, so the
    // BAT layout does not move when the sector size changes.
    qemu_vhdx(&raw, &img, "subformat=dynamic,block_size=1M");
    set_logical_sector_size(&img, 4096);
    let disk = open(&img);
    assert_eq!(disk.logical_sector_size(), 4096);
    assert_eq!(disk.info().details.vhdx().unwrap().chunk_ratio, 32768);
    assert!(read_disk(disk.as_ref()) == content);

    if require_tool("vhdiinfo") {
        let out = run(Command::new("vhdiinfo").arg(&img));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Bytes per sector\t: 4096"), "{text}");
    }
    if require_tool("pyvhdi") {
        let script = "import sys, hashlib, pyvhdi\n\
            f = pyvhdi.file(); f.open(sys.argv[1])\n\
            print(f.get_bytes_per_sector(), f.get_media_size(), hashlib.sha256(f.read_buffer(f.get_media_size())).hexdigest())";
        let out = run(Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(&img));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            format!("4096 {} {}", content.len(), sha256_hex(&content))
        );
    }
}

/// A qemu-made dynamic image with data, for damage tests.
fn damage_base(tmp: &Path) -> Option<(PathBuf, Vec<u8>)> {
    if !require_tool("qemu-img") {
        return None;
    }
    let content = pattern(8, 3);
    let raw = tmp.join("src.raw");
    std::fs::write(&raw, &content).unwrap();
    let img = tmp.join("base.vhdx");
    qemu_vhdx(&raw, &img, "subformat=dynamic,block_size=1M");
    Some((img, content))
}

fn check_exit(path: &Path) -> (i32, String) {
    let out = bin().arg("check").arg(path).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn one_bad_header_falls_back_and_warns_both_bad_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((img, content)) = damage_base(tmp.path()) else {
        return;
    };
    let mut f = std::fs::read(&img).unwrap();
    let cur = VhdxLayout::parse(&f).header;
    // Damage the current header: the other one takes over.
    f[cur + 100] ^= 0xff;
    std::fs::write(&img, &f).unwrap();
    let disk = open(&img);
    let info = disk.info();
    assert!(
        info.warnings
            .iter()
            .any(|w| w.kind == vhdkit::report::WarningKind::CopyUnusable
                && w.structure == Some("VHDX header")
                && w.offset == Some(cur as u64)),
        "{:?}",
        info.warnings
    );
    assert!(read_disk(disk.as_ref()) == content);
    // Close it: an open image is locked, and --repair needs it to itself.
    drop(disk);
    let (code, text) = check_exit(&img);
    assert_eq!(code, 2, "{text}");
    // --repair rewrites it from the good one.
    let out = bin()
        .args(["check", "--repair"])
        .arg(&img)
        .output()
        .unwrap();
    // Its status is that of what remains: nothing.
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(check_exit(&img).0, 0);

    // Both damaged: a clear error.
    let mut f = std::fs::read(&img).unwrap();
    f[(64 << 10) + 100] ^= 0xff;
    f[(128 << 10) + 100] ^= 0xff;
    std::fs::write(&img, &f).unwrap();
    let Err(err) = vhdkit::open(&img, &OpenOptions::new()) else {
        panic!("opened with both headers damaged");
    };
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("neither header is valid"), "{err}");
    let (code, text) = check_exit(&img);
    assert_eq!(code, 2, "{text}");
}

/// Set BAT entry `index` to `value` in the file.
fn patch_bat(img: &Path, index: usize, value: u64) -> u64 {
    let mut f = std::fs::read(img).unwrap();
    let at = VhdxLayout::parse(&f).bat_offset as usize + index * 8;
    f[at..at + 8].copy_from_slice(&value.to_le_bytes());
    std::fs::write(img, f).unwrap();
    at as u64
}

#[test]
fn bat_entry_past_end_or_into_metadata_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((img, _)) = damage_base(tmp.path()) else {
        return;
    };
    assert_eq!(check_exit(&img).0, 0);
    let pristine = std::fs::read(&img).unwrap();
    let len = pristine.len() as u64;
    let meta = VhdxLayout::parse(&pristine).metadata_offset;

    let past = tmp.path().join("past.vhdx");
    std::fs::write(&past, &pristine).unwrap();
    let at = patch_bat(&past, 0, (len + (16 << 20)) | 6);
    let (code, text) = check_exit(&past);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("{at:#x}")) && text.contains("past the end"),
        "{text}"
    );
    // Reading that block fails with the block's offset; the rest reads.
    let disk = open(&past);
    let mut b = [0u8; 512];
    let err = disk.read_at(&mut b, 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(err.offset(), Some(len + (16 << 20)), "{err}");
    assert!(err.to_string().contains("past the end"), "{err}");
    disk.read_at(&mut b, 2 << 20).unwrap();

    let into = tmp.path().join("into.vhdx");
    std::fs::write(&into, &pristine).unwrap();
    let at = patch_bat(&into, 2, meta | 6);
    let (code, text) = check_exit(&into);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("{at:#x}")) && text.contains("metadata"),
        "{text}"
    );

    // An invalid state is reported, never a panic.
    let bad = tmp.path().join("state.vhdx");
    std::fs::write(&bad, &pristine).unwrap();
    let at = patch_bat(&bad, 3, 5);
    let (code, text) = check_exit(&bad);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains(&format!("{at:#x}")), "{text}");
}

#[test]
fn cli_info_map_check_on_vhdx() {
    if !require_tool("qemu-img") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let content = pattern(6, 5);
    let raw = tmp.path().join("src.raw");
    std::fs::write(&raw, &content).unwrap();
    let img = tmp.path().join("d.vhdx");
    qemu_vhdx(&raw, &img, "subformat=dynamic,block_size=1M,log_size=4M");

    let out = bin().args(["info", "--json"]).arg(&img).output().unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["format"], "vhdx");
    assert_eq!(j["type"], "dynamic");
    assert_eq!(j["virtual_size"], 6 << 20);
    assert_eq!(j["block_size"], 1 << 20);
    assert_eq!(j["logical_sector_size"], 512);
    let v = &j["vhdx"];
    assert_eq!(v["headers"].as_array().unwrap().len(), 2);
    assert_eq!(v["log"]["length"], 4 << 20);
    assert_eq!(v["chunk_ratio"], 4096);
    assert!(v["metadata"]["items"].as_array().unwrap().len() >= 5);
    assert_eq!(v["region_table"]["entries"].as_array().unwrap().len(), 2);
    // Every third MiB of the pattern is zero and qemu leaves it unallocated.
    assert_eq!(j["allocated_bytes"], 4 << 20);

    let out = bin().args(["map", "--json"]).arg(&img).output().unwrap();
    assert!(out.status.success());
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = m
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"data") && kinds.contains(&"zero"),
        "{kinds:?}"
    );

    let out = bin().arg("info").arg(&img).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("vhdx.chunk_ratio"));
    assert_eq!(check_exit(&img).0, 0);

    // convert to raw through the CLI matches.
    let back = tmp.path().join("back.raw");
    let out = bin()
        .args(["convert", "-q", "-O", "raw"])
        .arg(&img)
        .arg(&back)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&back).unwrap() == content);

    // Writing in place works and reads back.
    let out = bin()
        .args([
            "write",
            "--offset",
            "0",
            "--pattern",
            "0xaa",
            "--length",
            "512",
        ])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let disk = open(&img);
    let mut sector = [0u8; 512];
    disk.read_at(&mut sector, 0).unwrap();
    assert_eq!(sector, [0xaa; 512]);
}

#[test]
fn damaged_metadata_and_bat_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((img, _)) = damage_base(tmp.path()) else {
        return;
    };
    let pristine = std::fs::read(&img).unwrap();
    let l = VhdxLayout::parse(&pristine);
    let regions = [
        (l.metadata_offset as usize, 512usize),
        (l.metadata_offset as usize + (64 << 10), 128),
        (l.bat_offset as usize, 128),
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let path = tmp.path().join("fuzz.vhdx");
    for round in 0..150 {
        let mut f = pristine.clone();
        for _ in 0..1 + round % 4 {
            let (start, len) = regions[(next() % regions.len() as u64) as usize];
            let at = start + (next() % len as u64) as usize;
            f[at] = next() as u8;
        }
        std::fs::write(&path, &f).unwrap();
        if let Ok(disk) = vhdkit::open(&path, &OpenOptions::new().allow_missing_parent(true)) {
            let _ = disk.info();
            let _ = disk.map(0, disk.virtual_size());
            let size = disk.virtual_size().min(16 << 20) as usize;
            let mut buf = vec![0u8; size];
            let _ = disk.read_at(&mut buf, 0);
        }
        let _ = vhdkit::check(&path, &OpenOptions::new(), false);
    }
}
