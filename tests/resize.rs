//! `vhdkit resize`: every supported kind grown and shrunk, then read by
//! tools nobody here wrote (qemu-img, libvhdi) and by vhdkit, against a
//! flat model (the old content, then zeros); a GPT disk keeps its
//! partitions and a clean `sgdisk -v`; what is refused leaves the file as
//! it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use vhdkit::{OpenOptions, VhdBuilder, VhdxBuilder};

const MIB: u64 = 1 << 20;

/// Pieces of content written at creation: (offset, bytes).
fn pieces(size: u64, seed: u64) -> Vec<(u64, Vec<u8>)> {
    let mut r = Rng::new(seed);
    let mut v = Vec::new();
    for _ in 0..6 {
        let len = (1 + r.below(64)) * 4096;
        let off = r.below((size - len) / 512) * 512;
        v.push((off, random_bytes(len as usize, r.next_u64())));
    }
    // The last sector, so a tail past the old size would show.
    v.push((size - 512, random_bytes(512, seed ^ 1)));
    v
}

/// An image kind under test.
#[derive(Clone, Copy, Debug)]
enum Kind {
    VhdFixed,
    VhdDynamic,
    VhdxFixed,
    VhdxDynamic,
}

const KINDS: [Kind; 4] = [
    Kind::VhdFixed,
    Kind::VhdDynamic,
    Kind::VhdxFixed,
    Kind::VhdxDynamic,
];

impl Kind {
    fn ext(self) -> &'static str {
        match self {
            Kind::VhdFixed | Kind::VhdDynamic => "vhd",
            _ => "vhdx",
        }
    }
    fn create(self, path: &Path, size: u64) -> vhdkit::Disk {
        match self {
            Kind::VhdFixed => vhdkit::create_vhd(path, VhdBuilder::new(size).fixed()),
            Kind::VhdDynamic => vhdkit::create_vhd(path, VhdBuilder::new(size).dynamic()),
            Kind::VhdxFixed => vhdkit::create_vhdx(path, VhdxBuilder::new(size).fixed()),
            Kind::VhdxDynamic => vhdkit::create_vhdx(path, VhdxBuilder::new(size)),
        }
        .unwrap()
    }
    fn path(self, dir: &Path) -> PathBuf {
        dir.join(format!("{self:?}.{}", self.ext()))
    }
}

/// An image of `kind` and `size` bytes holding `pieces`; returns its flat model.
fn make(kind: Kind, path: &Path, size: u64, pieces: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut model = vec![0u8; size as usize];
    let mut disk = kind.create(path, size);
    for (off, data) in pieces {
        disk.write_at(data, *off).unwrap();
        model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    disk.close().unwrap();
    model
}

/// A VHD of `size` bytes holding `pieces`; returns its flat model.
fn make_vhd(path: &Path, builder: VhdBuilder, size: u64, pieces: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut model = vec![0u8; size as usize];
    let mut disk = vhdkit::create_vhd(path, builder).unwrap();
    for (off, data) in pieces {
        disk.write_at(data, *off).unwrap();
        model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    disk.close().unwrap();
    model
}

/// The content as qemu-img reads it; a VHD's size from the footer's
/// current size (qemu otherwise takes the CHS geometry for our creator).
fn qemu_read(path: &Path) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("q.raw");
    let spec = if path.extension().is_some_and(|e| e == "vhdx") {
        format!("driver=vhdx,file.filename={}", path.display())
    } else {
        format!(
            "driver=vpc,force_size_calc=current_size,file.filename={}",
            path.display()
        )
    };
    qemu_img([
        "convert".as_ref(),
        "--image-opts".as_ref(),
        spec.as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        raw.as_os_str(),
    ]);
    std::fs::read(raw).unwrap()
}

/// `qemu-img check` of a VHDX (qemu cannot check VHD) finds nothing.
fn qemu_check(path: &Path) {
    if path.extension().is_some_and(|e| e == "vhdx") {
        let out = String::from_utf8_lossy(&qemu_img([
            "check".as_ref(),
            "-f".as_ref(),
            "vhdx".as_ref(),
            path.as_os_str(),
        ]))
        .into_owned();
        assert!(
            out.contains("No errors were found"),
            "qemu-img check: {out}"
        );
    }
}

/// vhdkit's check is clean (exit 0) and every reader sees `model`.
fn assert_reads_as(path: &Path, model: &[u8]) {
    let out = vhdkit([OsArg::from("check"), path.into()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check of {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mine = read_image(path);
    assert_eq!(mine.len(), model.len(), "vhdkit size");
    assert!(mine == model, "vhdkit content differs from the model");
    if require_tool("qemu-img") {
        qemu_check(path);
        let q = qemu_read(path);
        assert_eq!(q.len(), model.len(), "qemu-img size");
        assert!(q == model, "qemu-img content differs from the model");
    }
    if require_tool("pyvhdi") {
        let (n, p) = pyvhdi_read(&[path]);
        assert_eq!(n, model.len() as u64, "libvhdi media size");
        assert!(p == model, "libvhdi content differs from the model");
    }
}

type OsArg = std::ffi::OsString;

fn resize_cli(path: &Path, args: &[&str]) -> std::process::Output {
    let mut v: Vec<OsArg> = vec!["resize".into(), path.into()];
    v.extend(args.iter().map(OsArg::from));
    vhdkit(v)
}

fn resize_ok(path: &Path, args: &[&str]) {
    let out = resize_cli(path, args);
    assert!(
        out.status.success(),
        "resize {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn images_grow_with_the_old_content_then_zeros() {
    // 300 MiB needs 150 entries of 2 MiB blocks: more than the one sector
    // of BAT a new 8 MiB VHD has, so its BAT is moved; 40 MiB fits in it.
    for kind in KINDS {
        for to in [40 * MIB, 300 * MIB] {
            let dir = tempfile::tempdir().unwrap();
            let path = kind.path(dir.path());
            let size = 8 * MIB;
            let mut model = make(kind, &path, size, &pieces(size, to));
            resize_ok(&path, &[&to.to_string()]);
            model.resize(to as usize, 0);
            assert_reads_as(&path, &model);
            // The grown disk keeps working: a write past the old end.
            let mut disk = vhdkit::open(&path, &OpenOptions::new().writable(true)).unwrap();
            let data = random_bytes(3 * MIB as usize, 5);
            let at = to - 4 * MIB;
            disk.write_at(&data, at).unwrap();
            disk.close().unwrap();
            drop(disk);
            model[at as usize..(at + 3 * MIB) as usize].copy_from_slice(&data);
            assert_reads_as(&path, &model);
        }
    }
}

#[test]
fn vhdx_bat_region_moves_when_it_must_grow() {
    // 1 MiB of BAT holds 131072 entries: with 1 MiB blocks, 128 GiB.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.vhdx");
    let data = random_bytes(3 * MIB as usize, 31);
    let mut disk =
        vhdkit::create_vhdx(&path, VhdxBuilder::new(8 * MIB).block_size(1 << 20)).unwrap();
    disk.write_at(&data, MIB).unwrap();
    disk.close().unwrap();
    drop(disk);
    let to = 200u64 << 30;
    resize_ok(&path, &["200G"]);
    let out = vhdkit([OsArg::from("check"), path.clone().into()]);
    assert_eq!(out.status.code(), Some(0));
    if require_tool("qemu-img") {
        qemu_check(&path);
        assert_eq!(qemu_virtual_size_vhdx(&path), to);
    }
    let late = random_bytes(2 * MIB as usize, 32);
    let mut disk = vhdkit::open(&path, &OpenOptions::new().writable(true)).unwrap();
    assert_eq!(disk.virtual_size(), to);
    disk.write_at(&late, 150 << 30).unwrap();
    disk.close().unwrap();
    drop(disk);
    if require_tool("qemu-img") {
        qemu_check(&path);
    }
    let disk = open(&path);
    let mut got = vec![0u8; 3 * MIB as usize];
    disk.read_at(&mut got, MIB).unwrap();
    assert!(got == data);
    let mut got = vec![0u8; 2 * MIB as usize];
    disk.read_at(&mut got, 150 << 30).unwrap();
    assert!(got == late);
    disk.read_at(&mut got, 100 << 30).unwrap();
    assert!(got.iter().all(|&b| b == 0));
    if require_tool("pyvhdi") {
        let out = Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import sys, pyvhdi, hashlib\nf = pyvhdi.file()\nf.open(sys.argv[1])\nprint(f.get_media_size(), hashlib.sha256(f.read_buffer_at_offset(2 << 20, 150 << 30)).hexdigest())",
            ])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(text.trim(), format!("{to} {}", sha256_hex(&late)));
    }
}

fn qemu_virtual_size_vhdx(path: &Path) -> u64 {
    let out = qemu_img([
        "info".as_ref(),
        "-f".as_ref(),
        "vhdx".as_ref(),
        "--output=json".as_ref(),
        path.as_os_str(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

#[test]
fn vhd_grows_from_a_size_that_is_not_whole_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.vhd");
    let size = 5 * MIB + 512;
    let mut model = make_vhd(
        &path,
        VhdBuilder::new(size).dynamic(),
        size,
        &pieces(size, 3),
    );
    resize_ok(&path, &["12M"]);
    model.resize(12 * MIB as usize, 0);
    assert_reads_as(&path, &model);
}

/// An MBR with one partition from 1 MiB to `end`.
fn mbr(end: u64) -> Vec<u8> {
    let mut s = vec![0u8; 512];
    s[510] = 0x55;
    s[511] = 0xaa;
    let e = 0x1be;
    s[e + 4] = 0x83;
    s[e + 8..e + 12].copy_from_slice(&2048u32.to_le_bytes());
    s[e + 12..e + 16].copy_from_slice(&((end / 512 - 2048) as u32).to_le_bytes());
    s
}

#[test]
fn images_shrink_past_the_last_partition_and_grow_back_to_zeros() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let path = kind.path(dir.path());
        let size = 16 * MIB;
        let mut p = vec![(0, mbr(5 * MIB))];
        p.push((2 * MIB, random_bytes(MIB as usize, 9)));
        // Stored data past the partition: it may be cut off.
        p.push((11 * MIB, random_bytes(MIB as usize, 10)));
        let mut model = make(kind, &path, size, &p);
        // Without --shrink, a smaller size is refused.
        let before = file_sha256(&path);
        let out = resize_cli(&path, &["6M"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--shrink"));
        assert_eq!(file_sha256(&path), before);
        // Into the partition: refused, named.
        let out = resize_cli(&path, &["4M", "--shrink"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("partition ends at byte 5242880"), "{err}");
        assert_eq!(file_sha256(&path), before);

        assert_eq!(info_json(&path)["minimum_size"].as_u64(), Some(5 * MIB));
        let text = String::from_utf8_lossy(&vhdkit_ok([OsArg::from("info"), path.clone().into()]))
            .into_owned();
        assert!(text.contains("minimum size"), "{text}");
        resize_ok(&path, &["--to-minimum"]);
        model.truncate(5 * MIB as usize);
        assert_reads_as(&path, &model);
        resize_ok(&path, &["16M"]);
        model.resize(16 * MIB as usize, 0);
        assert_reads_as(&path, &model);
    }
}

#[test]
fn shrinking_over_stored_data_without_a_partition_table_is_refused() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let path = kind.path(dir.path());
        let size = 16 * MIB;
        let mut model = make(
            kind,
            &path,
            size,
            &[(9 * MIB + 4096, random_bytes(8192, 4))],
        );
        let before = file_sha256(&path);
        let out = resize_cli(&path, &["8M", "--shrink"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("stored data in the range 0x901000..0x903000"),
            "{err}"
        );
        assert_eq!(
            file_sha256(&path),
            before,
            "a refused shrink changed the file"
        );
        // Above the data, the cut holds nothing stored but zeros: allowed.
        resize_ok(&path, &["10M", "--shrink"]);
        model.truncate(10 * MIB as usize);
        assert_reads_as(&path, &model);
        // Without a partition table there is no minimum to report.
        assert!(info_json(&path).get("minimum_size").is_none());
        // --to-minimum needs a partition table.
        let before = file_sha256(&path);
        let out = resize_cli(&path, &["--to-minimum"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("no partition table"));
        assert_eq!(file_sha256(&path), before);
    }
}

fn sgdisk(args: &[&str], disk: &Path) -> String {
    let out = Command::new("sgdisk")
        .args(args)
        .arg(disk)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sgdisk {args:?}: {text}");
    text
}

/// `sgdisk -v` on the raw content of `image` is clean; returns the raw
/// content and its partition listing (without the lines about the disk's
/// size and free space, which change).
fn gpt_state(image: &Path, dir: &Path) -> (Vec<u8>, String) {
    let raw = dir.join("content.raw");
    let _ = std::fs::remove_file(&raw);
    vhdkit_ok([
        OsArg::from("convert"),
        "-q".into(),
        "-O".into(),
        "raw".into(),
        image.into(),
        raw.as_os_str().into(),
    ]);
    let v = sgdisk(&["-v"], &raw);
    assert!(
        v.contains("No problems found"),
        "sgdisk -v after resize:\n{v}"
    );
    let listing = sgdisk(&["-p"], &raw)
        .lines()
        .skip_while(|l| !l.starts_with("Number"))
        .collect::<Vec<_>>()
        .join("\n");
    (std::fs::read(&raw).unwrap(), listing)
}

/// The MBR, the primary entry array and everything from the first usable
/// sector to the end of the last partition are unchanged (the primary
/// header at LBA 1 changes: it points at the moved backup).
fn same_partitions(content: &[u8], orig: &[u8], part_end: u64) -> bool {
    content[..512] == orig[..512]
        && content[1024..part_end as usize] == orig[1024..part_end as usize]
}

#[test]
fn gpt_backup_moves_to_the_new_end_on_grow_and_shrink() {
    if !require_tool("sgdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let size = 64 * MIB;
    write_raw(&raw, &vec![0u8; size as usize]);
    sgdisk(
        &["-n", "1:2048:+20M", "-n", "2:0:+10M", "-t", "2:8300"],
        &raw,
    );
    // Data in each partition.
    let mut bytes = std::fs::read(&raw).unwrap();
    let p1 = random_bytes(MIB as usize, 21);
    let p2 = random_bytes(MIB as usize, 22);
    bytes[2 * MIB as usize..3 * MIB as usize].copy_from_slice(&p1);
    bytes[30 * MIB as usize..31 * MIB as usize].copy_from_slice(&p2);
    write_raw(&raw, &bytes);
    let (_, listing) = gpt_state(&raw, dir.path());
    let part_end = (2048 + 20 * 2048 + 10 * 2048) * 512u64;

    for (fmt, kind) in [
        ("vhdx", "dynamic"),
        ("vhdx", "fixed"),
        ("vhd", "dynamic"),
        ("vhd", "fixed"),
    ] {
        let image: PathBuf = dir.path().join(format!("{kind}.{fmt}"));
        vhdkit_ok([
            OsArg::from("convert"),
            "-q".into(),
            "-O".into(),
            fmt.into(),
            "-t".into(),
            kind.into(),
            raw.as_os_str().into(),
            image.as_os_str().into(),
        ]);
        resize_ok(&image, &["100M"]);
        let (content, l) = gpt_state(&image, dir.path());
        assert_eq!(l, listing, "partitions changed by the grow");
        assert_eq!(content.len() as u64, 100 * MIB);
        assert!(same_partitions(&content, &bytes, part_end));
        let mut model = bytes.clone();
        model.resize(100 * MIB as usize, 0);
        // The backup header and table are the last 33 sectors, and the old
        // backup header is gone.
        let old_last = (size - 512) as usize;
        assert!(content[old_last..old_last + 512] == [0u8; 512]);
        assert_eq!(&content[(100 * MIB - 512) as usize..][..8], b"EFI PART");

        // `info` reports the size --to-minimum shrinks to.
        assert_eq!(
            info_json(&image)["minimum_size"].as_u64(),
            Some(part_end + 33 * 512)
        );
        resize_ok(&image, &["--to-minimum"]);
        let (content, l) = gpt_state(&image, dir.path());
        assert_eq!(l, listing, "partitions changed by the shrink");
        assert_eq!(content.len() as u64, part_end + 33 * 512);
        assert!(same_partitions(&content, &bytes, part_end));
        let out = vhdkit([OsArg::from("check"), image.as_os_str().into()]);
        assert_eq!(out.status.code(), Some(0));
        model.truncate(content.len());
    }
}

#[test]
fn unsupported_images_are_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = dir.path().join("d.vhd");
    make_vhd(
        &vhd,
        VhdBuilder::new(8 * MIB).dynamic(),
        8 * MIB,
        &pieces(8 * MIB, 1),
    );
    // A differencing VHD.
    let child = dir.path().join("c.vhd");
    vhdkit::create_vhd(&child, VhdBuilder::new(0).differencing(&vhd))
        .unwrap()
        .close()
        .unwrap();
    // An EVHD, without its key (refused for the key, not as unsupported).
    let evhd = dir.path().join("e.evhd");
    make_evhd(&vhd, &evhd);
    let vhdx = dir.path().join("x.vhdx");
    vhdkit_ok([
        OsArg::from("convert"),
        "-q".into(),
        vhd.as_os_str().into(),
        vhdx.as_os_str().into(),
    ]);
    let xchild = dir.path().join("xc.vhdx");
    vhdkit::create_vhdx(&xchild, VhdxBuilder::new(0).differencing(&vhdx))
        .unwrap()
        .close()
        .unwrap();
    // The children hide their parents' data past 4 MiB with zeros and are
    // shrunk to 4 MiB: growing them again would show that data.
    for c in [&child, &xchild] {
        let mut d = vhdkit::open(c, &OpenOptions::new().writable(true)).unwrap();
        d.write_at(&vec![0u8; 4 * MIB as usize], 4 * MIB).unwrap();
        d.close().unwrap();
        drop(d);
        vhdkit::resize::resize(
            c,
            vhdkit::resize::Target::Size(4 * MIB),
            true,
            &OpenOptions::new(),
        )
        .unwrap();
    }
    for (path, want) in [
        (&child, "..0x800000, which the grown range would show"),
        (&evhd, "needs the private key of one of its recipients"),
        (&xchild, "..0x800000, which the grown range would show"),
    ] {
        let before = file_sha256(path);
        let out = resize_cli(path, &["16M"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "{}: {err}", path.display());
        assert_no_panic(&out);
        assert_eq!(&file_sha256(path), &before);
    }
}

#[test]
fn the_library_call_resizes_and_reports_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhd");
    make_vhd(&path, VhdBuilder::new(8 * MIB).dynamic(), 8 * MIB, &[]);
    let done = vhdkit::resize::resize(
        &path,
        vhdkit::resize::Target::Size(24 * MIB),
        false,
        &OpenOptions::new(),
    )
    .unwrap();
    assert_eq!((done.old_size, done.new_size), (8 * MIB, 24 * MIB));
    assert!(!done.gpt_moved);
    assert_eq!(open(&path).virtual_size(), 24 * MIB);
    // While another open holds the image, resize waits for nobody: it fails.
    let held = vhdkit::open(&path, &OpenOptions::new().writable(true)).unwrap();
    let e = vhdkit::resize::resize(
        &path,
        vhdkit::resize::Target::Size(32 * MIB),
        false,
        &OpenOptions::new(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), vhdkit::ErrorKind::InUse);
    drop(held);
}

#[test]
fn a_parent_with_children_beside_it_is_resized_only_with_force() {
    for ext in ["vhd", "vhdx"] {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join(format!("p.{ext}"));
        let child = dir.path().join(format!("c.{ext}"));
        vhdkit_ok(["create", s(&parent), "8M"]);
        vhdkit_ok(["create", "--parent", s(&parent), s(&child)]);
        let before = (file_sha256(&parent), file_sha256(&child));
        let err = vhdkit_fails(Some(1), &["resize", s(&parent), "16M"]);
        assert!(
            err.contains("recorded parent of") && err.contains("c."),
            "{ext}: {err}"
        );
        assert!(err.contains("nothing was changed"), "{ext}: {err}");
        assert_eq!(before, (file_sha256(&parent), file_sha256(&child)), "{ext}");
        vhdkit_ok(["resize", "--force", s(&parent), "16M"]);
        assert_eq!(open(&parent).virtual_size(), 16 << 20, "{ext}");
        // The child itself has no children: it resizes without --force.
        let lone = dir.path().join(format!("lone.{ext}"));
        vhdkit_ok(["create", s(&lone), "8M"]);
        vhdkit_ok(["resize", s(&lone), "12M"]);
    }
}
