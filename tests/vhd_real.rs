//! Real VHDs written by Windows, Hyper-V, diskpart and qemu
//! (`../shared/fixtures/real/`), checked against the raw SHA-256 of
//! MANIFEST.md (agreed by qemu-img, dissect and libvhdi), against libvhdi
//! itself, and against the source projects' own expectations.

mod common;

use common::*;
use vhdkit::{ErrorKind, OpenOptions};

/// MANIFEST.md rows: image and raw SHA-256 of its whole virtual disk.
const MANIFEST: &[(&str, u64, &str)] = &[
    (
        "dissect/fixed.vhd",
        10_485_760,
        "459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463",
    ),
    (
        "dissect/dynamic.vhd",
        10_485_760,
        "ecff2ef6615a3cddc6a6885f1c6d9cf13a232697e1dc6575f2c2f01f57247784",
    ),
    (
        "dfvfs/ext2.vhd",
        4_212_736,
        "870be7ae16c1fa8faab05c6eb9205dc9a7ae35c5f552c5cf8a267c0bc6a5cb99",
    ),
    (
        "dfvfs/image_2013.vhd",
        104_448,
        "c6db12a7db548e193c29420c1b4533e4708b20c5033db5cc29ef075d48316d25",
    ),
    (
        "dfvfs/image.vhd",
        104_448,
        "c6db12a7db548e193c29420c1b4533e4708b20c5033db5cc29ef075d48316d25",
    ),
];

const IMAGE_SHA: &str = "c6db12a7db548e193c29420c1b4533e4708b20c5033db5cc29ef075d48316d25";
const FAT_PARENT_ID: &str = "5fa21a55-f394-aa4d-9958-1951a67d5540";

#[test]
fn every_manifest_vhd_reads_with_its_raw_sha256() {
    for &(name, size, sha) in MANIFEST {
        let Some(path) = real_image(name) else { return };
        let disk =
            vhdkit::open(&path, &OpenOptions::new()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(disk.virtual_size(), size, "{name}: virtual size");
        let data = read_disk(disk.as_ref());
        assert_eq!(sha256_hex(&data), sha, "{name}: content");
    }
}

#[test]
fn every_manifest_vhd_streams_with_its_raw_sha256_through_the_cli() {
    for &(name, _, sha) in MANIFEST {
        let Some(path) = real_image(name) else { return };
        let out = vhdkit_ok([
            "convert".as_ref(),
            "-q".as_ref(),
            path.as_os_str(),
            "-".as_ref(),
        ]);
        assert_eq!(sha256_hex(&out), sha, "{name}: convert to stdout");
    }
}

#[test]
fn reads_in_odd_pieces_match_the_whole() {
    // Unaligned reads crossing block and sector edges return the same bytes
    // as one big read.
    for name in ["dissect/dynamic.vhd", "dfvfs/ext2.vhd", "dissect/fixed.vhd"] {
        let Some(path) = real_image(name) else { return };
        let disk = vhdkit::open(&path, &OpenOptions::new()).unwrap();
        let whole = read_disk(disk.as_ref());
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let off = rng.below(whole.len() as u64) as usize;
            let len = (rng.below(3 << 20) as usize).min(whole.len() - off);
            let mut buf = vec![0u8; len];
            disk.read_at(&mut buf, off as u64).unwrap();
            assert!(buf == whole[off..off + len], "{name}: {off:#x}+{len:#x}");
        }
    }
}

#[test]
fn dissect_extra_expectations() {
    for name in ["dissect/fixed.vhd", "dissect/dynamic.vhd"] {
        let Some(path) = real_image(name) else { return };
        let disk = vhdkit::open(&path, &OpenOptions::new()).unwrap();
        let mut s = [0u8; 512];
        disk.read_at(&mut s, 0x20_0000).unwrap();
        assert!(s.iter().all(|&b| b == 0xff), "{name}: 0x200000 is all 0xff");
        disk.read_at(&mut s, 0).unwrap();
        assert_eq!(&s[510..], &[0x55, 0xaa], "{name}: MBR signature");
    }
    let Some(path) = real_image("dissect/dynamic.vhd") else {
        return;
    };
    let disk = vhdkit::open(&path, &OpenOptions::new()).unwrap();
    let mut z = vec![0xeeu8; 16 * 512];
    disk.read_at(&mut z, 0x3fff * 512).unwrap();
    assert!(z.iter().all(|&b| b == 0), "16 sectors from 0x3fff are zero");
}

#[test]
fn fixed_vhd_size_comes_from_current_size_not_chs() {
    let Some(path) = real_image("dissect/fixed.vhd") else {
        return;
    };
    let v = info_json(&path);
    assert_eq!(v["virtual_size"], 10_485_760);
    assert_eq!(v["format"], "vhd");
    assert_eq!(v["type"], "fixed");
    // The stored geometry addresses less; the size must not come from it.
    let g = &v["vhd"]["footer"]["geometry"];
    let chs = g["cylinders"].as_u64().unwrap()
        * g["heads"].as_u64().unwrap()
        * g["sectors_per_track"].as_u64().unwrap()
        * 512;
    assert_eq!(chs, 10_479_616);
    assert_eq!(
        v["creator"].as_str().unwrap().split(' ').next(),
        Some("win")
    );
}

#[test]
fn bad_footer_checksum_reads_with_a_warning_and_check_reports_it() {
    let Some(path) = real_image("dfvfs/image.vhd") else {
        return;
    };
    let len = std::fs::metadata(&path).unwrap().len();
    let footer = file_bytes(&path, len - 512, 512);
    // The MANIFEST's values, recomputed here independently.
    assert_eq!(be32(&footer, 64), 0xfffff683);
    assert_eq!(vhd_checksum(&footer, 64), 0xffffef25);

    let v = info_json(&path);
    let warnings: Vec<String> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("checksum") && w.contains("0xffffef25")),
        "{warnings:?}"
    );
    assert_eq!(v["vhd"]["footer"]["checksum_ok"], false);

    let out = vhdkit(["check".as_ref(), "--json".as_ref(), path.as_os_str()]);
    let (code, stdout, _) = code_out_err(&out);
    assert_eq!(code, 2, "{stdout}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["status"], "corrupt");
    let findings = r["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["structure"] == "VHD footer"
            && f["offset"] == len - 512
            && f["message"].as_str().unwrap().contains("0xfffff683")),
        "{findings:#?}"
    );
}

#[test]
fn image_differential_reads_as_libvhdi_reads_it() {
    let Some(child) = real_image("dfvfs/image-differential.vhd") else {
        return;
    };
    let parent = real_image("dfvfs/image.vhd").unwrap();
    assert_eq!(child.parent(), parent.parent(), "parent beside the child");
    let disk = vhdkit::open(&child, &OpenOptions::new()).unwrap();
    let info = disk.info();
    assert_eq!(info.disk_type, vhdkit::DiskType::Differencing);
    let p = info.parent.unwrap();
    assert!(p.found);
    assert!(p.path.unwrap().ends_with("image.vhd"));
    let ours = read_disk(disk.as_ref());
    assert_eq!(sha256_hex(&ours), IMAGE_SHA);
    if !require_tool("pyvhdi") {
        return;
    }
    let (size, theirs) = pyvhdi_read(&[&child, &parent]);
    assert_eq!(size, ours.len() as u64);
    assert!(theirs == ours, "libvhdi reads the chain differently");
}

#[test]
fn differencing_with_missing_parent_fails_naming_path_and_id() {
    let Some(path) = real_image("dfvfs/fat-differential.vhd") else {
        return;
    };
    let err = open_err(&path, &OpenOptions::new());
    assert_eq!(err.kind(), ErrorKind::ParentMissing);
    let msg = err.to_string();
    assert!(msg.contains("fat-parent.vhd"), "{msg}");
    assert!(msg.contains(FAT_PARENT_ID), "{msg}");

    // The CLI says the same on stderr, for reading commands.
    for args in [
        vec!["read", "--offset", "0", "--length", "512"],
        vec!["convert", "-q"],
        vec!["compare"],
    ] {
        let mut a: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        a.push(path.clone().into());
        match args[0] {
            "convert" => a.push("-".into()),
            "compare" => a.push(path.clone().into()),
            _ => {}
        }
        let (code, stdout, stderr) = code_out_err(&vhdkit(&a));
        assert_ne!(code, 0, "{args:?}");
        assert!(stdout.is_empty() || args[0] != "convert");
        assert!(stderr.contains("fat-parent.vhd"), "{args:?}: {stderr}");
        assert!(stderr.contains(FAT_PARENT_ID), "{args:?}: {stderr}");
    }

    // Inspection still works and shows the parent as not found.
    let v = info_json(&path);
    assert_eq!(v["type"], "differencing");
    assert_eq!(v["virtual_size"], 4_194_304);
    assert_eq!(v["parent"]["found"], false);
    assert_eq!(v["parent"]["id"], FAT_PARENT_ID);
    let locs = v["vhd"]["dynamic_header"]["parent_locators"]
        .as_array()
        .unwrap();
    let paths: Vec<&str> = locs.iter().filter_map(|l| l["path"].as_str()).collect();
    assert!(
        paths.contains(&"C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd"),
        "{paths:?}"
    );
    assert!(paths.contains(&".\\fat-parent.vhd"), "{paths:?}");

    // Explicitly accepting the missing parent: ranges that need it fail
    // with the same kind; nothing reads as zeros in its place.
    let disk = vhdkit::open(&path, &OpenOptions::new().allow_missing_parent(true)).unwrap();
    let map = disk.map(0, disk.virtual_size()).unwrap();
    let need_parent = map
        .iter()
        .find(|e| e.kind == vhdkit::ExtentKind::Parent)
        .expect("some range comes from the parent");
    let mut b = vec![0u8; 512];
    let err = disk.read_at(&mut b, need_parent.start).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ParentMissing);
    if let Some(d) = map.iter().find(|e| e.kind == vhdkit::ExtentKind::Data) {
        disk.read_at(&mut b, d.start).unwrap();
    }
}

/// Read file `inode` of the ext2 file system held in `disk` (single-block
/// files only, which is all the test needs).
fn ext2_small_file(fs: &[u8], inode: u32) -> Vec<u8> {
    let le32 = |o: usize| u32::from_le_bytes(fs[o..o + 4].try_into().unwrap());
    let le16 = |o: usize| u16::from_le_bytes(fs[o..o + 2].try_into().unwrap());
    let sb = 1024;
    assert_eq!(le16(sb + 56), 0xef53, "ext2 magic");
    let block = 1024usize << le32(sb + 24);
    let inodes_per_group = le32(sb + 40);
    let first_data_block = le32(sb + 20) as usize;
    let inode_size = if le32(sb + 76) >= 1 {
        le16(sb + 88) as usize
    } else {
        128
    };
    let group = ((inode - 1) / inodes_per_group) as usize;
    let index = ((inode - 1) % inodes_per_group) as usize;
    let gdt = (first_data_block + 1) * block;
    let inode_table = le32(gdt + group * 32 + 8) as usize;
    let ino = inode_table * block + index * inode_size;
    let size = le32(ino + 4) as usize;
    let b0 = le32(ino + 40) as usize;
    assert!(size <= block);
    fs[b0 * block..b0 * block + size].to_vec()
}

#[test]
fn ext2_vhd_holds_passwords_txt() {
    let Some(path) = real_image("dfvfs/ext2.vhd") else {
        return;
    };
    let data = read_image(&path);
    let file = ext2_small_file(&data, 14);
    assert_eq!(file.len(), 116);
    assert_eq!(
        sha256_hex(&file),
        "02a2a6af2f1ecf4720d7d49d640f0d0a269a7ec733e41973bdd34f09dad0e252"
    );
}

#[test]
fn real_images_agree_with_libvhdi_and_qemu() {
    // The independent readers, run here too, so that the MANIFEST hashes are
    // not the only thing the readers are compared with.
    let names = ["dissect/fixed.vhd", "dissect/dynamic.vhd", "dfvfs/ext2.vhd"];
    for name in names {
        let Some(path) = real_image(name) else { return };
        let ours = read_image(&path);
        if require_tool("pyvhdi") {
            let (size, theirs) = pyvhdi_read(&[&path]);
            assert_eq!(size, ours.len() as u64, "{name}");
            assert!(theirs == ours, "{name}: libvhdi differs");
        }
        if require_tool("vhdiinfo") {
            assert_eq!(vhdiinfo_media_size(&path), ours.len() as u64, "{name}");
        }
        if require_tool("qemu-img") {
            let theirs = qemu_read_vpc(&path);
            assert!(theirs == ours, "{name}: qemu differs");
        }
    }
}

#[test]
fn real_images_check_clean_and_map_covers_the_disk() {
    for name in [
        "dissect/fixed.vhd",
        "dissect/dynamic.vhd",
        "dfvfs/ext2.vhd",
        "dfvfs/image_2013.vhd",
    ] {
        let Some(path) = real_image(name) else { return };
        let out = vhdkit(["check".as_ref(), path.as_os_str()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {:?}",
            code_out_err(&out)
        );
        let disk = vhdkit::open(&path, &OpenOptions::new()).unwrap();
        let map = disk.map(0, disk.virtual_size()).unwrap();
        let mut pos = 0;
        for e in &map {
            assert_eq!(e.start, pos, "{name}: runs are contiguous");
            pos = e.end();
        }
        assert_eq!(pos, disk.virtual_size(), "{name}");
        // Zero runs read as zeros.
        let data = read_disk(disk.as_ref());
        for e in map.iter().filter(|e| e.kind == vhdkit::ExtentKind::Zero) {
            assert!(
                data[e.start as usize..e.end() as usize]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
    }
}
