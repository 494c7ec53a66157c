//! A partition crate reads a disk through the `Read + Seek` adapter of
//! [`vhdkit::Disk`]: the GPT that `sgdisk` wrote into a raw disk comes back
//! from a dynamic VHDX, a differencing VHD over its base and an EVHD made
//! from it, and a table written through the `Read + Write + Seek` cursor is
//! what `sgdisk` then reads from the raw disk converted back.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{s, vhdkit_ok};
use gptman::{GPT, GPTPartitionEntry};
use vhdkit::KeyFile;
use vhdkit::{Disk, OpenOptions};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

/// Run `sgdisk` with `args` on `disk`.
fn sgdisk(disk: &Path, args: &[&str]) {
    common::run(Command::new("sgdisk").args(args).arg(disk));
}

/// The table gptman reads from the raw file itself.
fn table_of_file(path: &Path) -> GPT {
    let mut f = std::fs::File::open(path).unwrap();
    GPT::find_from(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The table gptman reads through the disk's `Read + Seek` adapter.
fn table_of_disk(disk: &Disk) -> GPT {
    GPT::find_from(&mut disk.reader()).unwrap_or_else(|e| panic!("{:?}: {e}", disk.path().unwrap()))
}

/// `(first LBA, last LBA, name)` of each used entry.
fn layout(gpt: &GPT) -> Vec<(u64, u64, String)> {
    gpt.iter()
        .filter(|(_, e)| e.is_used())
        .map(|(_, e): (u32, &GPTPartitionEntry)| {
            (
                e.starting_lba,
                e.ending_lba,
                e.partition_name.as_str().to_string(),
            )
        })
        .collect()
}

#[test]
fn gpt_reads_through_the_adapter_on_vhdx_differencing_vhd_and_evhd() {
    if !common::require_tool("sgdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);

    // The base: two partitions, and some data in the first.
    common::write_raw(&p("base.raw"), &vec![0u8; SIZE as usize]);
    sgdisk(
        &p("base.raw"),
        &[
            "-o",
            "-U",
            "8a1c0f2e-55b1-4f63-9d0e-3c2b7a6f4e11",
            "-n",
            "1:2048:+8M",
            "-t",
            "1:8300",
            "-c",
            "1:alpha",
            "-n",
            "2:0:+16M",
            "-t",
            "2:ef00",
            "-c",
            "2:beta",
        ],
    );
    common::patch_file(
        &p("base.raw"),
        2048 * 512,
        &common::random_bytes(MIB as usize, 3),
    );
    let base_gpt = table_of_file(&p("base.raw"));
    assert_eq!(
        layout(&base_gpt),
        [
            (2048, 2048 + 16383, "alpha".to_string()),
            (18432, 18432 + 32767, "beta".to_string())
        ],
        "sgdisk wrote the table asked for"
    );

    // The child's content: a third partition and a renamed first one, so
    // the child stores the changed table sectors and reads the rest (the
    // partitions' data) from its parent.
    std::fs::copy(p("base.raw"), p("child.raw")).unwrap();
    sgdisk(
        &p("child.raw"),
        &[
            "-n",
            "3:0:+4M",
            "-t",
            "3:0700",
            "-c",
            "3:gamma",
            "-c",
            "1:renamed",
        ],
    );
    let child_gpt = table_of_file(&p("child.raw"));
    assert_eq!(layout(&child_gpt).len(), 3);
    assert_eq!(layout(&child_gpt)[0].2, "renamed");
    assert_eq!(layout(&child_gpt)[2].2, "gamma");

    let convert = |args: &[&str]| {
        vhdkit_ok([&["convert", "-q"], args].concat());
    };
    convert(&["-O", "vhdx", s(&p("base.raw")), s(&p("base.vhdx"))]);
    convert(&["-O", "vhd", s(&p("base.raw")), s(&p("base.vhd"))]);
    convert(&[
        "-O",
        "vhd",
        "-B",
        s(&p("base.vhd")),
        s(&p("child.raw")),
        s(&p("child.vhd")),
    ]);
    common::make_evhd(&p("base.raw"), &p("base.evhd"));

    let vhdx = vhdkit::open(p("base.vhdx"), &OpenOptions::new()).unwrap();
    assert!(table_of_disk(&vhdx) == base_gpt, "VHDX");

    let child = vhdkit::open(p("child.vhd"), &OpenOptions::new()).unwrap();
    assert_eq!(child.info().disk_type, vhdkit::DiskType::Differencing);
    assert!(table_of_disk(&child) == child_gpt, "differencing VHD");

    let key = KeyFile::read(&common::test_key().1)
        .unwrap()
        .into_private()
        .unwrap();
    let evhd = vhdkit::open(p("base.evhd"), &OpenOptions::new().key(Arc::new(key))).unwrap();
    assert!(table_of_disk(&evhd) == base_gpt, "EVHD");

    // Partition data reads through the adapter too, from the parent.
    use std::io::{Read, Seek, SeekFrom};
    let mut r = child.reader();
    r.seek(SeekFrom::Start(2048 * 512)).unwrap();
    let mut data = vec![0u8; MIB as usize];
    r.read_exact(&mut data).unwrap();
    assert!(data == common::random_bytes(MIB as usize, 3));
}

#[test]
fn a_table_written_through_the_cursor_is_what_sgdisk_reads() {
    if !common::require_tool("sgdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    vhdkit_ok(["create", s(&p("d.vhdx")), "64M"]);
    vhdkit_ok(["create", "--parent", s(&p("d.vhdx")), s(&p("c.vhdx"))]);
    {
        // A differencing VHDX: writes of partial sectors go through the
        // cursor's read-modify-write.
        let mut disk = vhdkit::open(p("c.vhdx"), &OpenOptions::new().writable(true)).unwrap();
        let mut cursor = disk.cursor();
        let mut gpt = GPT::new_from(&mut cursor, 512, [7; 16]).unwrap();
        gpt[1] = GPTPartitionEntry {
            partition_type_guid: [0x11; 16],
            unique_partition_guid: [0x22; 16],
            starting_lba: 2048,
            ending_lba: 2048 + 8191,
            attribute_bits: 0,
            partition_name: "written".into(),
        };
        gpt.write_into(&mut cursor).unwrap();
        GPT::write_protective_mbr_into(&mut cursor, 512).unwrap();
        disk.close().unwrap();
    }
    vhdkit_ok([
        "convert",
        "-q",
        "-O",
        "raw",
        s(&p("c.vhdx")),
        s(&p("c.raw")),
    ]);
    let out = common::run(Command::new("sgdisk").arg("-v").arg(p("c.raw")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No problems found"), "sgdisk -v: {text}");
    let out = common::run(Command::new("sgdisk").arg("-i").arg("1").arg(p("c.raw")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("First sector: 2048 "), "sgdisk -i 1: {text}");
    assert!(text.contains("Last sector: 10239 "), "sgdisk -i 1: {text}");
    assert!(
        text.contains("Partition name: 'written'"),
        "sgdisk -i 1: {text}"
    );
}
