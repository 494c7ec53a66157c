//! `vhdkit partitions --json` names the file systems that tests/partitions.rs
//! does not make (exFAT, XFS, Btrfs by their mkfs tools; LVM2 PV labels and
//! BitLocker boot sectors laid by hand, as pvcreate and Windows would) with
//! the type, label and UUID that blkid finds in the raw partition content.
//! Each image is a raw GPT disk by sgdisk, converted to VHDX.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// The first partition starts here (sgdisk's default alignment).
const FIRST: u64 = MIB;

/// Whether every tool is installed; skips (or fails under CI) otherwise.
fn tools(names: &[&str]) -> bool {
    names.iter().all(|n| require_tool(n))
}

/// Undo blkid's udev-style `\xNN` escapes (of bytes, so UTF-8 survives).
fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 2..i + 4)
            .and_then(|h| std::str::from_utf8(h).ok());
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(x) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(x);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// What blkid finds in `size` bytes at `offset` of `raw`, as vhdkit's
/// `{"type", "label", "uuid"}` (or null), from `blkid -p -o udev` (whose
/// `_ENC` values keep non-ASCII labels as they are).
fn blkid(raw: &Path, offset: u64, size: u64) -> Value {
    let out = Command::new("blkid")
        .args(["-p", "-o", "udev", "-O", &offset.to_string()])
        .args(["-S", &size.to_string()])
        .arg(raw)
        .output()
        .unwrap();
    if out.status.code() == Some(2) {
        return Value::Null;
    }
    assert!(out.status.success(), "blkid: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let kv: HashMap<&str, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, unescape(v)))
        .collect();
    let Some(t) = kv.get("ID_FS_TYPE") else {
        return Value::Null;
    };
    let kind = match t.as_str() {
        "LVM2_member" => "lvm2_pv".to_string(),
        "BitLocker" => "bitlocker".to_string(),
        "vfat" => kv["ID_FS_VERSION"].to_lowercase(),
        t => t.to_string(),
    };
    serde_json::json!({
        "type": kind,
        "label": kv.get("ID_FS_LABEL_ENC"),
        "uuid": kv.get("ID_FS_UUID_ENC"),
    })
}

/// A sparse raw disk of `size` bytes with a GPT by sgdisk: one partition
/// of each size in `parts` (type `8300`), one after another from 1 MiB.
/// Returns the disk and each partition's (start, size) in bytes.
fn gpt_disk(dir: &Path, name: &str, parts: &[u64]) -> (PathBuf, Vec<(u64, u64)>) {
    let raw = dir.join(format!("{name}.raw"));
    let total: u64 = FIRST + parts.iter().sum::<u64>() + MIB;
    std::fs::File::create(&raw).unwrap().set_len(total).unwrap();
    let mut cmd = Command::new("sgdisk");
    cmd.arg("-o");
    let mut at = FIRST;
    let mut out = Vec::new();
    for (i, &size) in parts.iter().enumerate() {
        let n = i + 1;
        cmd.args(["-n", &format!("{n}:{}:+{}K", at / 512, size / 1024)])
            .args(["-t", &format!("{n}:8300")]);
        out.push((at, size));
        at += size;
    }
    run(cmd.arg(&raw));
    (raw, out)
}

/// Copy `src` into `raw` at `offset`, skipping zero MiBs (both stay sparse).
fn put(raw: &Path, offset: u64, src: &Path) {
    let from = std::fs::File::open(src).unwrap();
    let to = std::fs::OpenOptions::new().write(true).open(raw).unwrap();
    let len = from.metadata().unwrap().len();
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(MIB) as usize;
        from.read_exact_at(&mut buf[..n], at).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            to.write_all_at(&buf[..n], offset + at).unwrap();
        }
        at += n as u64;
    }
}

/// Make a file system of `size` bytes with `mkfs` (its args; the file
/// goes last) in a sparse file and lay it into `raw` at `offset`.
fn make_fs(raw: &Path, offset: u64, size: u64, mkfs: &[&str], dir: &Path) {
    let fs = dir.join("fs.tmp");
    let _ = std::fs::remove_file(&fs);
    std::fs::File::create(&fs).unwrap().set_len(size).unwrap();
    run(Command::new(mkfs[0])
        .args(&mkfs[1..])
        .arg(&fs)
        .env("LC_ALL", "C.UTF-8"));
    put(raw, offset, &fs);
    std::fs::remove_file(&fs).unwrap();
}

/// `vhdkit partitions --json` of `raw` converted to VHDX: its partitions.
fn vhdx_partitions(raw: &Path) -> Vec<Value> {
    let vhdx = raw.with_extension("vhdx");
    vhdkit_ok(["convert", "-q", "-f", "raw", s(raw), "-O", "vhdx", s(&vhdx)]);
    let out = vhdkit_ok(["partitions", "--json", s(&vhdx)]);
    let json: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json["scheme"], "gpt", "{json:#}");
    json["partitions"].as_array().unwrap().clone()
}

/// One file system made by `mkfs` in a partition of `size` bytes: vhdkit
/// on the VHDX says what blkid says of the raw partition, and that is
/// `kind` with `label` and a UUID.
fn one_fs(kind: &str, size: u64, mkfs: &[&str], label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (raw, parts) = gpt_disk(dir.path(), kind, &[size]);
    let (start, size) = parts[0];
    make_fs(&raw, start, size, mkfs, dir.path());
    let theirs = blkid(&raw, start, size);
    let ours = &vhdx_partitions(&raw)[0];
    eprintln!("{kind}: blkid {theirs}, vhdkit {}", ours["filesystem"]);
    assert_eq!(ours["start"], start);
    assert_eq!(ours["filesystem"], theirs, "{kind}");
    assert_eq!(theirs["type"], kind);
    assert_eq!(theirs["label"], label);
    assert!(theirs["uuid"].is_string(), "{theirs}");
}

#[test]
fn exfat_matches_blkid() {
    if !tools(&["sgdisk", "blkid", "mkfs.exfat"]) {
        return;
    }
    // A UTF-16 label of the full 11 characters, not all ASCII.
    let label = "Données été";
    one_fs("exfat", 16 * MIB, &["mkfs.exfat", "-L", label], label);
}

#[test]
fn xfs_matches_blkid() {
    if !tools(&["sgdisk", "blkid", "mkfs.xfs"]) {
        return;
    }
    // mkfs.xfs 5.19 and later refuse less than 300 MB. The label fills
    // all 12 bytes (no NUL after it).
    let label = "xfs-label-12";
    one_fs("xfs", 304 * MIB, &["mkfs.xfs", "-q", "-L", label], label);
}

#[test]
fn btrfs_matches_blkid() {
    if !tools(&["sgdisk", "blkid", "mkfs.btrfs"]) {
        return;
    }
    // mkfs.btrfs needs 109 MiB for its default profiles.
    let label = "btrfs volume with spaces";
    one_fs(
        "btrfs",
        128 * MIB,
        &["mkfs.btrfs", "-q", "-L", label],
        label,
    );
}

/// LVM2's label CRC: CRC-32 (reflected) from its own seed, no final
/// inversion.
fn lvm_crc(data: &[u8]) -> u32 {
    data.iter().fold(0xf597_a6cf_u32, |mut crc, &b| {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
        crc
    })
}

/// An LVM2 PV label for sector `sector` (label_header, then pv_header's
/// 32-character id and device size), with `crc_ok` a right CRC.
fn lvm_label(sector: u64, id: &[u8; 32], crc_ok: bool) -> Vec<u8> {
    let mut l = vec![0u8; 512];
    l[..8].copy_from_slice(b"LABELONE");
    l[8..16].copy_from_slice(&sector.to_le_bytes());
    l[20..24].copy_from_slice(&32u32.to_le_bytes());
    l[24..32].copy_from_slice(b"LVM2 001");
    l[32..64].copy_from_slice(id);
    l[64..72].copy_from_slice(&(4 * MIB).to_le_bytes());
    let crc = lvm_crc(&l[20..]) ^ u32::from(!crc_ok);
    l[16..20].copy_from_slice(&crc.to_le_bytes());
    l
}

/// A BitLocker boot sector: `jump` and `oem`, the FVE metadata offset
/// `meta` in the u64 at `field`, and (when `signed`) a metadata block
/// signed "-FVE-FS-" there (version 2, a 48-byte metadata header).
fn bitlocker(jump: &[u8], oem: &[u8], field: usize, meta: u64, signed: bool) -> Vec<u8> {
    let mut b = vec![0u8; 2 * MIB as usize];
    b[..3].copy_from_slice(jump);
    b[3..11].copy_from_slice(oem);
    b[field..field + 8].copy_from_slice(&meta.to_le_bytes());
    b[510..512].copy_from_slice(&[0x55, 0xaa]);
    if signed {
        let m = meta as usize;
        b[m..m + 8].copy_from_slice(b"-FVE-FS-");
        b[m + 10..m + 12].copy_from_slice(&2u16.to_le_bytes());
        let h = m + 64;
        for (i, v) in [48u32, 1, 48, 48].into_iter().enumerate() {
            b[h + i * 4..h + i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[h + 16..h + 32].copy_from_slice(&[0x11; 16]);
    }
    b
}

/// LVM2 PV labels and BitLocker boot sectors laid by hand in 4 MiB
/// partitions (blkid takes no LVM label on a device under 1440 KiB): vhdkit
/// agrees with blkid on each, including the ones blkid does not take.
#[test]
fn hand_made_lvm_and_bitlocker_match_blkid() {
    if !tools(&["sgdisk", "blkid"]) {
        return;
    }
    let id = b"AbCdEf0123456789GhIjKlMnOpQrStUv";
    let vista = [0xeb, 0x52, 0x90];
    let win7 = [0xeb, 0x58, 0x90];
    let fve = b"-FVE-FS-";
    let togo = b"MSWIN4.1";
    let meta = 0x1_0000;
    // (what, bytes at the partition's start, sector, blkid's type or null)
    let cases: Vec<(&str, Vec<u8>, u64, Option<&str>)> = vec![
        (
            "LVM label in sector 0",
            lvm_label(0, id, true),
            0,
            Some("lvm2_pv"),
        ),
        (
            "LVM label in sector 1",
            lvm_label(1, id, true),
            1,
            Some("lvm2_pv"),
        ),
        (
            "LVM label in sector 3",
            lvm_label(3, id, true),
            3,
            Some("lvm2_pv"),
        ),
        ("LVM label, bad CRC", lvm_label(1, id, false), 1, None),
        (
            "LVM label, wrong sector_xl",
            lvm_label(0, id, true),
            2,
            None,
        ),
        (
            "BitLocker (Vista)",
            bitlocker(&vista, fve, 176, 0, false),
            0,
            Some("bitlocker"),
        ),
        (
            "BitLocker (Windows 7)",
            bitlocker(&win7, fve, 176, meta, true),
            0,
            Some("bitlocker"),
        ),
        (
            "BitLocker To Go",
            bitlocker(&win7, togo, 440, meta, true),
            0,
            Some("bitlocker"),
        ),
        (
            "BitLocker (Windows 7) without metadata",
            bitlocker(&win7, fve, 176, meta, false),
            0,
            None,
        ),
        (
            "BitLocker (Windows 7), unaligned metadata",
            bitlocker(&win7, fve, 176, meta + 8, false),
            0,
            None,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (raw, parts) = gpt_disk(dir.path(), "hand", &vec![4 * MIB; cases.len()]);
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    for ((_, bytes, sector, _), (start, _)) in cases.iter().zip(&parts) {
        f.write_all_at(bytes, start + sector * 512).unwrap();
    }
    drop(f);
    let ours = vhdx_partitions(&raw);
    assert_eq!(ours.len(), cases.len());
    for ((what, _, _, kind), (p, &(start, size))) in cases.iter().zip(ours.iter().zip(&parts)) {
        let theirs = blkid(&raw, start, size);
        eprintln!("{what}: blkid {theirs}, vhdkit {}", p["filesystem"]);
        assert_eq!(p["filesystem"], theirs, "{what}");
        assert_eq!(theirs["type"].as_str(), *kind, "{what}: {theirs}");
        if *kind == Some("lvm2_pv") {
            assert_eq!(theirs["uuid"], "AbCdEf-0123-4567-89Gh-IjKl-MnOp-QrStUv");
        }
    }
}
