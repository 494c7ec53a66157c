//! `vhdkit partitions` and `vhdkit::partitions::read` against sfdisk,
//! sgdisk and blkid: GPT and MBR (extended and logical partitions) disks
//! laid out by sfdisk/sgdisk with ext4, FAT, NTFS and swap made by their
//! mkfs tools, as raw, VHD, VHDX (512- and 4096-byte sectors), a
//! differencing chain and EVHD; the real images; damaged tables.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{os, s, vhdkit_ok};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Whether every tool is installed (looked up on PATH: mkfs.fat and
/// mkfs.ext4 have no `--version` that exits 0); under CI a missing one
/// fails the test, otherwise it skips.
fn tools(names: &[&str]) -> bool {
    for n in names {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {n}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "{n} is not installed, and CI requires every oracle"
            );
            common::skip(&format!("{n} is not installed"));
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) -> Vec<u8> {
    common::run(cmd).stdout
}

/// One partition as sfdisk (or fdisk) reports it, in bytes.
#[derive(Debug)]
struct Row {
    number: u64,
    start: u64,
    size: u64,
    /// Type GUID (upper case) or MBR type code (hex, as sfdisk prints it).
    code: String,
    uuid: Option<String>,
    name: Option<String>,
}

/// The number at the end of a partition's device name (`disk.raw5`).
fn node_number(node: &str) -> u64 {
    node[node.trim_end_matches(|c: char| c.is_ascii_digit()).len()..]
        .parse()
        .unwrap()
}

/// The table of a raw disk as `sfdisk --json` (512-byte sectors) or
/// `fdisk -l -b 4096` (4096-byte sectors; sfdisk 2.38 has no sector size
/// option) report it: `("mbr" | "gpt", rows)`, or `None` without a table.
fn oracle(raw: &Path, sector: u64) -> Option<(String, Vec<Row>)> {
    if sector != 512 {
        return fdisk_4k(raw);
    }
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(raw)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("does not contain a recognized partition table"),
            "sfdisk: {err}"
        );
        return None;
    }
    let table = serde_json::from_slice::<Value>(&out.stdout).unwrap()["partitiontable"].clone();
    let scheme = match table["label"].as_str().unwrap() {
        "dos" => "mbr",
        "gpt" => "gpt",
        other => panic!("sfdisk label {other}"),
    };
    let rows = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| Row {
            number: node_number(t["node"].as_str().unwrap()),
            start: t["start"].as_u64().unwrap() * 512,
            size: t["size"].as_u64().unwrap() * 512,
            code: t["type"].as_str().unwrap().to_string(),
            uuid: t["uuid"].as_str().map(str::to_string),
            name: t["name"].as_str().map(str::to_string),
        })
        .collect();
    Some((scheme.to_string(), rows))
}

fn fdisk_4k(raw: &Path) -> Option<(String, Vec<Row>)> {
    let list = |cols: &str| {
        let out = run(Command::new("fdisk")
            .args(["-l", "-b", "4096", "-o", cols])
            .arg(raw));
        String::from_utf8(out).unwrap()
    };
    let label = list("Device,Start,Sectors")
        .lines()
        .find_map(|l| l.strip_prefix("Disklabel type: "))?
        .to_string();
    let gpt = label == "gpt";
    let text = if gpt {
        list("Device,Start,Sectors,Type-UUID,UUID,Name")
    } else {
        list("Device,Start,Sectors,Id")
    };
    let rows = text
        .lines()
        .skip_while(|l| !l.starts_with("Device"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Row {
                number: node_number(f[0]),
                start: f[1].parse::<u64>().unwrap() * 4096,
                size: f[2].parse::<u64>().unwrap() * 4096,
                code: f[3].to_string(),
                uuid: gpt.then(|| f[4].to_string()),
                name: f.get(5).filter(|_| gpt).map(|n| n.to_string()),
            }
        })
        .collect();
    Some((if gpt { "gpt" } else { "mbr" }.to_string(), rows))
}

/// What blkid finds in `size` bytes at `offset` of `raw`, as our
/// `{"type", "label", "uuid"}` (or null).
fn blkid(raw: &Path, offset: u64, size: u64) -> Value {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export", "-O", &offset.to_string()])
        .args(["-S", &size.to_string()])
        .arg(raw)
        .output()
        .unwrap();
    if out.status.code() == Some(2) {
        return Value::Null;
    }
    assert!(out.status.success(), "blkid: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut kv = HashMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            // export escapes spaces and other specials with a backslash.
            let mut val = String::new();
            let mut esc = false;
            for c in v.chars() {
                if c == '\\' && !esc {
                    esc = true;
                } else {
                    val.push(c);
                    esc = false;
                }
            }
            kv.insert(k.to_string(), val);
        }
    }
    let Some(t) = kv.get("TYPE") else {
        return Value::Null;
    };
    let kind = match (t.as_str(), kv.get("VERSION").map(String::as_str)) {
        ("vfat", Some(v)) => v.to_lowercase(),
        ("LVM2_member", _) => "lvm2_pv".into(),
        ("BitLocker", _) => "bitlocker".into(),
        (t, _) => t.to_string(),
    };
    serde_json::json!({
        "type": kind,
        "label": kv.get("LABEL"),
        "uuid": kv.get("UUID"),
    })
}

/// `vhdkit partitions --json IMAGE ARGS...`.
fn partitions_json(image: &Path, args: &[&str]) -> Value {
    let mut a = vec![
        os(Path::new("partitions")),
        os(Path::new("--json")),
        os(image),
    ];
    a.extend(args.iter().map(|x| os(Path::new(x))));
    serde_json::from_slice(&vhdkit_ok(a)).unwrap()
}

/// The MBR type names the test knows, by sfdisk's type code.
fn mbr_name(code: &str) -> &'static str {
    match code {
        "5" => "Extended",
        "7" => "HPFS/NTFS/exFAT",
        "c" => "W95 FAT32 (LBA)",
        "82" => "Linux swap",
        "83" => "Linux",
        other => panic!("the test has no name for MBR type {other}"),
    }
}

/// Compare `vhdkit partitions --json` of `image` with sfdisk and blkid on
/// `raw`, its content; returns our JSON.
fn compare(image: &Path, args: &[&str], raw: &Path, sector: u64) -> Value {
    let ours = partitions_json(image, args);
    let what = format!("{} {args:?}", image.display());
    let Some((scheme, theirs)) = oracle(raw, sector) else {
        assert_eq!(ours["scheme"], "none", "{what}");
        assert_eq!(ours["partitions"], serde_json::json!([]), "{what}");
        return ours;
    };
    assert_eq!(ours["scheme"], scheme.as_str(), "{what}");
    let mine = ours["partitions"].as_array().unwrap();
    assert_eq!(mine.len(), theirs.len(), "{what}: {ours:#} vs {theirs:#?}");
    for (m, t) in mine.iter().zip(&theirs) {
        assert_eq!(m["number"], t.number, "{what}: {m:#} vs {t:#?}");
        assert_eq!(m["start"], t.start, "{what}: {m:#} vs {t:#?}");
        assert_eq!(m["size"], t.size, "{what}: {m:#} vs {t:#?}");
        if scheme == "gpt" {
            assert_eq!(m["type_guid"], t.code.to_lowercase(), "{what}: {m:#}");
            assert_eq!(m["guid"], t.uuid.as_ref().unwrap().to_lowercase());
            assert_eq!(m["name"].as_str(), t.name.as_deref(), "{what}: {m:#}");
        } else {
            assert_eq!(m["type"], mbr_name(&t.code), "{what}: {m:#}");
            assert_eq!(m["type_guid"], Value::Null);
            assert_eq!(m["guid"], Value::Null);
        }
        if t.code == "5" {
            assert_eq!(m["filesystem"], Value::Null, "{what}: extended");
        } else {
            assert_eq!(
                m["filesystem"],
                blkid(raw, t.start, t.size),
                "{what}: partition {}",
                t.number
            );
        }
    }
    ours
}

/// Make a file system of `size` bytes with `mkfs` args (the file last)
/// and write it into `raw` at `offset`.
fn put_fs(raw: &Path, offset: u64, size: u64, mkfs: &[&str], dir: &Path) {
    let fs = dir.join("fs.tmp");
    let _ = std::fs::remove_file(&fs);
    std::fs::File::create(&fs).unwrap().set_len(size).unwrap();
    run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&fs));
    let data = std::fs::read(&fs).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(raw).unwrap();
    f.write_all_at(&data, offset).unwrap();
    std::fs::remove_file(&fs).unwrap();
}

/// The source tree put into the ext4 file systems.
fn tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    std::fs::create_dir_all(t.join("etc")).unwrap();
    std::fs::write(t.join("etc/fstab"), "UUID=x / ext4 defaults 0 1\n").unwrap();
    std::fs::write(t.join("hello.txt"), "hello\n").unwrap();
    t
}

/// Fill the partitions sfdisk reports for `raw` with file systems chosen
/// by type: FAT for EFI/basic-data-FAT/0xc, ext4 for Linux, NTFS for
/// basic data/0x7, swap for swap.
fn fill(raw: &Path, sector: u64, dir: &Path) {
    let (_, rows) = oracle(raw, sector).expect("sfdisk wrote a table");
    let src = tree(dir);
    for p in rows {
        let (start, size) = (p.start, p.size);
        let label = format!("part{}", p.number);
        let ss = sector.to_string();
        match p.code.as_str() {
            "c" | "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => put_fs(
                raw,
                start,
                size,
                &["mkfs.fat", "-F", "32", "-S", &ss, "-n", &label],
                dir,
            ),
            "83" | "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => put_fs(
                raw,
                start,
                size,
                &["mkfs.ext4", "-q", "-F", "-L", &label, "-d", s(&src)],
                dir,
            ),
            "7" | "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => put_fs(
                raw,
                start,
                size,
                &["mkntfs", "-F", "-q", "-Q", "-s", &ss, "-L", &label],
                dir,
            ),
            "82" | "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => {
                put_fs(raw, start, size, &["mkswap", "-q", "-L", &label], dir)
            }
            _ => {}
        }
    }
}

/// A 64 MiB GPT disk by sgdisk: EFI (FAT32), Linux (ext4), swap, basic
/// data (NTFS).
fn gpt_disk(dir: &Path) -> PathBuf {
    let raw = dir.join("gpt.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    run(Command::new("sgdisk")
        .args([
            "-o",
            "-n",
            "1:2048:+34M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI system",
        ])
        .args(["-n", "2:0:+12M", "-t", "2:8300", "-c", "2:root"])
        .args(["-n", "3:0:+4M", "-t", "3:8200"])
        .args(["-n", "4:0:0", "-t", "4:0700", "-c", "4:data"])
        .arg(&raw));
    fill(&raw, 512, dir);
    raw
}

/// A 96 MiB MBR disk by sfdisk: FAT32 primary, an extended partition with
/// ext4, NTFS and swap logical partitions.
fn mbr_disk(dir: &Path) -> PathBuf {
    let raw = dir.join("mbr.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(96 * MIB)
        .unwrap();
    scripted(
        "sfdisk",
        &["-q"],
        &raw,
        ",40M,c\n,,E\n,16M,L\n,16M,7\n,4M,S\n",
    );
    fill(&raw, 512, dir);
    raw
}

/// Run `tool ARGS RAW` with `script` on its standard input.
fn scripted(tool: &str, args: &[&str], raw: &Path, script: &str) {
    use std::io::Write;
    let mut child = Command::new(tool)
        .args(args)
        .arg(raw)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{tool}: {out:?}");
}

fn convert(args: &[&str]) {
    vhdkit_ok([&["convert", "-q"], args].concat());
}

const FS_TOOLS: [&str; 8] = [
    "sfdisk",
    "fdisk",
    "sgdisk",
    "blkid",
    "mkfs.fat",
    "mkfs.ext4",
    "mkntfs",
    "mkswap",
];

/// Every format and a differencing chain and EVHD of a GPT and an MBR disk
/// list what sfdisk and blkid find on the raw content.
#[test]
fn gpt_and_mbr_through_every_format_match_sfdisk_and_blkid() {
    if !tools(&FS_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    for raw in [gpt_disk(dir.path()), mbr_disk(dir.path())] {
        let stem = raw.file_stem().unwrap().to_str().unwrap().to_string();
        let q = |ext: &str| p(&format!("{stem}.{ext}"));
        let ours = compare(&raw, &[], &raw, 512);
        let n = ours["partitions"].as_array().unwrap().len();
        assert!(n >= 4, "{ours:#}");
        convert(&["-O", "vhd", s(&raw), s(&q("vhd"))]);
        convert(&["-O", "vhdx", s(&raw), s(&q("vhdx"))]);
        common::make_evhd(&raw, &q("evhd"));
        for image in [q("vhd"), q("vhdx")] {
            assert_eq!(compare(&image, &[], &raw, 512), ours);
        }
        let key = common::test_key().1.clone();
        assert_eq!(compare(&q("evhd"), &["--key", s(&key)], &raw, 512), ours);

        // A differencing child whose content changed the table (a renamed
        // or retyped first partition and a new file system label) reads
        // its own sectors and the rest from its parent.
        let child_raw = p(&format!("{stem}-child.raw"));
        std::fs::copy(&raw, &child_raw).unwrap();
        if stem == "gpt" {
            run(Command::new("sgdisk")
                .args(["-c", "1:renamed"])
                .arg(&child_raw));
        } else {
            run(Command::new("sfdisk")
                .args(["-q", "--part-type"])
                .arg(&child_raw)
                .args(["1", "b"]));
        }
        convert(&[
            "-O",
            "vhd",
            "-B",
            s(&q("vhd")),
            s(&child_raw),
            s(&q("child.vhd")),
        ]);
        if stem == "gpt" {
            let child = compare(&q("child.vhd"), &[], &child_raw, 512);
            assert_eq!(child["partitions"][0]["name"], "renamed");
        } else {
            let child = partitions_json(&q("child.vhd"), &[]);
            assert_eq!(child["partitions"][0]["type"], "W95 FAT32");
            assert_eq!(
                child["partitions"].as_array().unwrap()[1..],
                ours["partitions"].as_array().unwrap()[1..]
            );
        }

        // The library answer agrees, with the MBR type byte.
        let disk = vhdkit::open(q("vhdx"), &vhdkit::OpenOptions::new()).unwrap();
        let table = vhdkit::partitions::read(disk.as_ref()).unwrap();
        assert!(table.warnings.is_empty(), "{:?}", table.warnings);
        if stem == "mbr" {
            let types: Vec<_> = table.partitions.iter().map(|p| p.mbr_type).collect();
            let expect = [0x0c, 0x05, 0x83, 0x07, 0x82].map(Some);
            assert_eq!(types, expect);
            let numbers: Vec<_> = table.partitions.iter().map(|p| p.number).collect();
            assert_eq!(numbers, [1, 2, 5, 6, 7]);
        }
    }
}

/// sgdisk's own view of a GPT partition (`-i`) agrees too.
#[test]
fn sgdisk_info_agrees() {
    if !tools(&FS_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = gpt_disk(dir.path());
    let ours = partitions_json(&raw, &[]);
    for p in ours["partitions"].as_array().unwrap() {
        let n = p["number"].as_u64().unwrap();
        let text = String::from_utf8(run(Command::new("sgdisk")
            .args(["-i", &n.to_string()])
            .arg(&raw)))
        .unwrap();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("sgdisk -i {n}: no {name} in {text}"))
                .trim()
                .to_string()
        };
        let first: u64 = field("First sector:")
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let last: u64 = field("Last sector:")
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(p["start"], first * 512);
        assert_eq!(p["size"], (last - first + 1) * 512);
        let code = field("Partition GUID code:");
        assert_eq!(
            p["type_guid"],
            code.split(' ').next().unwrap().to_lowercase()
        );
        assert_eq!(p["guid"], field("Partition unique GUID:").to_lowercase());
        let name = field("Partition name:");
        let name = name.trim_matches('\'');
        assert_eq!(p["name"].as_str().unwrap_or(""), name);
    }
    // The text table names the types.
    let text = String::from_utf8(vhdkit_ok(["partitions", s(&raw)])).unwrap();
    assert!(text.starts_with("scheme: gpt\n"), "{text}");
    for t in [
        "EFI system",
        "Linux filesystem",
        "Linux swap",
        "Microsoft basic data",
    ] {
        assert!(text.contains(t), "{text}");
    }
    // info has one line per partition.
    let info = String::from_utf8(vhdkit_ok(["info", s(&raw)])).unwrap();
    let rows: Vec<Vec<&str>> = info
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.iter().any(|r| r[..] == ["partitions", "gpt,", "4"]),
        "{info}"
    );
    for n in 1..=4 {
        let key = ["partition", &n.to_string()];
        assert!(rows.iter().any(|r| r.len() > 2 && r[..2] == key), "{info}");
    }
}

/// Tables laid out with 4096-byte sectors (sfdisk --sector-size 4096) in a
/// VHDX with 4096-byte logical sectors.
#[test]
fn four_k_sector_vhdx_matches_sfdisk() {
    if !tools(&FS_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    // fdisk dialogues: GPT (EFI, Linux, basic data) and MBR (FAT32, an
    // extended partition with a Linux and an NTFS logical partition).
    for (name, script) in [
        (
            "gpt4k",
            "g\nn\n1\n\n+34M\nt\nC12A7328-F81F-11D2-BA4B-00A0C93EC93B\n\
             n\n2\n\n+12M\nt\n2\n0FC63DAF-8483-4772-8E79-3D69D8477DE4\n\
             n\n3\n\n\nt\n3\nEBD0A0A2-B9E5-4433-87C0-68B6B72699C7\nw\n",
        ),
        (
            "mbr4k",
            "o\nn\np\n1\n\n+34M\nt\nc\nn\ne\n2\n\n\nn\n\n+12M\nn\n\n+12M\nt\n6\n7\nw\n",
        ),
    ] {
        let raw = p(&format!("{name}.raw"));
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(80 * MIB)
            .unwrap();
        scripted("fdisk", &["-b", "4096"], &raw, script);
        fill(&raw, 4096, dir.path());
        let vhdx = p(&format!("{name}.vhdx"));
        convert(&["-O", "vhdx", "--sector-size", "4096", s(&raw), s(&vhdx)]);
        let ours = compare(&vhdx, &[], &raw, 4096);
        assert!(
            ours["partitions"].as_array().unwrap().len() >= 3,
            "{ours:#}"
        );
        // Raw has 512-byte sectors: a GPT of 4096-byte sectors is found
        // there too (its signature is looked for at both sizes).
        if name == "gpt4k" {
            assert_eq!(partitions_json(&raw, &[]), ours);
        }
    }
}

/// The real images: the table and file systems agree with sfdisk and
/// blkid on their raw content.
#[test]
fn real_images_match_sfdisk_and_blkid() {
    if !tools(&["sfdisk", "blkid"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for name in [
        "dissect/fixed.vhd",
        "dissect/dynamic.vhd",
        "dissect/fixed.vhdx",
        "dissect/dynamic.vhdx",
        "dfvfs/ext2.vhd",
        "dfvfs/image.vhd",
        "dfvfs/image_2013.vhd",
    ] {
        let Some(image) = common::real_image(name) else {
            return;
        };
        let raw = dir.path().join(name.replace('/', "-") + ".raw");
        convert(&["-O", "raw", s(&image), s(&raw)]);
        let ours = compare(&image, &[], &raw, 512);
        let kinds: Vec<String> = ours["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["filesystem"]["type"].as_str().unwrap_or("-").to_string())
            .collect();
        seen.push((name, ours["scheme"].as_str().unwrap().to_string(), kinds));
        if ours["scheme"] == "none" {
            // A bare file system: blkid on the whole disk.
            let disk = vhdkit::open(&image, &vhdkit::OpenOptions::new()).unwrap();
            let table = vhdkit::partitions::read(disk.as_ref()).unwrap();
            let size = disk.virtual_size();
            assert_eq!(
                serde_json::to_value(&table.filesystem).unwrap(),
                blkid(&raw, 0, size),
                "{name}"
            );
        }
    }
    // The differencing images whose parents are not shipped: a clear error
    // naming the missing parent.
    for name in ["dfvfs/fat-differential.vhd", "dissect/differencing.avhdx"] {
        let image = common::real_image(name).unwrap();
        let (code, out, err) = partitions_run(&image);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(
            err.contains("parent image") && err.contains("not found"),
            "{name}: {err}"
        );
    }
    // What the manifest says: Windows wrote one NTFS partition on the
    // dissect images; the dfvfs ones are bare ext2.
    for (name, scheme, kinds) in &seen {
        if name.starts_with("dissect") {
            assert_eq!(
                (scheme.as_str(), kinds.clone()),
                ("mbr", vec!["ntfs".to_string()]),
                "{name}"
            );
        } else {
            assert_eq!((scheme.as_str(), kinds.len()), ("none", 0), "{name}");
        }
    }
}

/// The CRC-32 GPT uses, to forge consistent but hostile headers.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `vhdkit partitions` on `image`: (exit code, stdout, stderr).
fn partitions_run(image: &Path) -> (i32, String, String) {
    let (code, out, err) = common::vhdkit_run(&["partitions", "--json", s(image)]);
    (code, String::from_utf8(out).unwrap(), err)
}

#[test]
fn damaged_gpt_primary_is_read_from_the_backup_and_both_damaged_is_an_error() {
    if !tools(&FS_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = gpt_disk(dir.path());
    let good = partitions_json(&raw, &[]);
    let size = std::fs::metadata(&raw).unwrap().len();

    // A flipped byte in the primary header: its CRC no longer matches.
    common::patch_file(&raw, 512 + 40, &[0x77]);
    let (code, out, err) = partitions_run(&raw);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), good);
    assert!(
        err.contains("GPT primary is damaged") && err.contains("bad header CRC32"),
        "{err}"
    );
    assert!(
        err.contains(&format!("backup header at {:#x}", size - 512)),
        "{err}"
    );

    // A primary whose CRCs are right but whose entry array is 2^32 entries:
    // refused by its limit before anything is allocated, backup used.
    let mut h = common::file_bytes(&raw, 512, 92);
    h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
    h[16..20].fill(0);
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    common::patch_file(&raw, 512, &h);
    let (code, out, err) = partitions_run(&raw);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), good);
    assert!(err.contains("exceed the 4194304-byte limit"), "{err}");

    // Both headers damaged: a clear error naming the primary's offset.
    common::patch_file(&raw, size - 512 + 8, &[0x99]);
    let (code, out, err) = partitions_run(&raw);
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty());
    assert!(
        err.contains("GPT header at offset 0x200") && err.contains("both GPT headers are damaged"),
        "{err}"
    );
    // The same through a VHDX.
    let vhdx = dir.path().join("bad.vhdx");
    convert(&["-O", "vhdx", s(&raw), s(&vhdx)]);
    let (code, _, err) = partitions_run(&vhdx);
    assert_eq!(code, 1);
    assert!(err.contains("both GPT headers are damaged"), "{err}");
    common::assert_no_panic(&common::vhdkit(["info", s(&vhdx)]));
}

#[test]
fn ebr_loop_is_an_error_and_a_truncated_disk_a_warning() {
    if !tools(&FS_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = mbr_disk(dir.path());
    let (_, rows) = oracle(&raw, 512).unwrap();
    let ext = rows[1].start;

    // The last EBR links back to the first: a loop.
    let copy = dir.path().join("loop.raw");
    std::fs::copy(&raw, &copy).unwrap();
    let last = rows[4].start;
    // The EBR of the last logical partition sits before it, 1 MiB-aligned
    // by sfdisk: find it by walking the chain as sfdisk wrote it.
    let mut ebr = ext;
    loop {
        let e = common::file_bytes(&copy, ebr + 0x1ce, 16);
        let next = u64::from(u32::from_le_bytes(e[8..12].try_into().unwrap()));
        if next == 0 {
            break;
        }
        ebr = ext + next * 512;
    }
    assert!(ebr < last);
    let mut link = [0u8; 16];
    link[4] = 0x05;
    link[12..16].copy_from_slice(&2048u32.to_le_bytes());
    common::patch_file(&copy, ebr + 0x1ce, &link);
    let (code, _, err) = partitions_run(&copy);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("EBR at offset {ext:#x}")) && err.contains("loops"),
        "{err}"
    );

    // The disk cut inside the last logical partition: listed as sfdisk
    // lists it, with a warning.
    let cut = dir.path().join("cut.raw");
    std::fs::copy(&raw, &cut).unwrap();
    let cut_at = last + 512 * 1024;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(cut_at)
        .unwrap();
    let (code, out, err) = partitions_run(&cut);
    assert_eq!(code, 0, "{err}");
    let ours: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ours["partitions"].as_array().unwrap().len(), 5);
    assert!(
        err.contains("partition 7") && err.contains("ends past the end"),
        "{err}"
    );
    // Cut before the last EBR: the chain stops there with a warning.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(ebr)
        .unwrap();
    let (code, out, err) = partitions_run(&cut);
    assert_eq!(code, 0, "{err}");
    let ours: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ours["partitions"].as_array().unwrap().len(), 4, "{out}");
    assert!(err.contains("past the end of the disk"), "{err}");
}

/// Random and zeroed disks: no table, no panic; a protective MBR without a
/// GPT is an error.
#[test]
fn no_table_and_protective_mbr_without_gpt() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("zero.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let ours = partitions_json(&raw, &[]);
    assert_eq!(
        ours,
        serde_json::json!({"scheme": "none", "partitions": []})
    );
    let mut mbr = [0u8; 512];
    mbr[0x1be + 4] = 0xee;
    mbr[0x1be + 8] = 1;
    mbr[0x1be + 12..0x1be + 16].copy_from_slice(&8191u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    common::patch_file(&raw, 0, &mbr);
    let (code, _, err) = partitions_run(&raw);
    assert_eq!(code, 1);
    assert!(
        err.contains("GPT header at offset 0x200") && err.contains("protective MBR"),
        "{err}"
    );
    for seed in 0..32 {
        let data = common::random_bytes(64 << 10, seed);
        let mem = vhdkit::MemStorage::read_only(data);
        let disk = vhdkit::unstable::open_storage(
            Box::new(mem),
            None,
            &vhdkit::OpenOptions::new().format(Some(vhdkit::Format::Raw)),
            &vhdkit::unstable::chain::Chain::default(),
        )
        .unwrap();
        let _ = vhdkit::partitions::read(disk.as_ref());
    }
}
