//! VHDX log replay: files with pending logs built by a small log writer
//! here, read back by vhdkit (in memory, file unchanged) and compared with
//! qemu-img's own replay (`qemu-img check -r all`).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use uuid::Uuid;
use vhdkit::report::VhdxLogState;
use vhdkit::{ErrorKind, OpenOptions, VirtualDisk};

/// What opening `disk` did with its log, per `info`.
fn log_state(disk: &dyn VirtualDisk) -> VhdxLogState {
    disk.info().details.vhdx().expect("a VHDX").log.state
}

const SECTOR: usize = 4096;
const MIB: u64 = 1 << 20;

/// One update a log entry describes.
enum Desc {
    Data { offset: u64, sector: Vec<u8> },
    Zero { offset: u64, length: u64 },
}

/// Serialize one log entry ([MS-VHDX] 2.3.1): header and descriptors, padded
/// to 4 KiB, then one data sector per data descriptor.
fn entry(seq: u64, tail: u64, guid: Uuid, descs: &[Desc], flushed: u64, last: u64) -> Vec<u8> {
    let desc_area = (64 + 32 * descs.len()).div_ceil(SECTOR) * SECTOR;
    let ndata = descs
        .iter()
        .filter(|d| matches!(d, Desc::Data { .. }))
        .count();
    let mut b = vec![0u8; desc_area + ndata * SECTOR];
    let len = b.len() as u32;
    b[0..4].copy_from_slice(b"loge");
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..16].copy_from_slice(&(tail as u32).to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..28].copy_from_slice(&(descs.len() as u32).to_le_bytes());
    b[32..48].copy_from_slice(&guid.to_bytes_le());
    b[48..56].copy_from_slice(&flushed.to_le_bytes());
    b[56..64].copy_from_slice(&last.to_le_bytes());
    let mut data = desc_area;
    for (i, d) in descs.iter().enumerate() {
        let at = 64 + 32 * i;
        let dsc = &mut b[at..at + 32];
        match d {
            Desc::Zero { offset, length } => {
                dsc[0..4].copy_from_slice(b"zero");
                dsc[8..16].copy_from_slice(&length.to_le_bytes());
                dsc[16..24].copy_from_slice(&offset.to_le_bytes());
            }
            Desc::Data { offset, sector } => {
                dsc[0..4].copy_from_slice(b"desc");
                dsc[4..8].copy_from_slice(&sector[4092..4096]);
                dsc[8..16].copy_from_slice(&sector[0..8]);
                dsc[16..24].copy_from_slice(&offset.to_le_bytes());
            }
        }
        dsc[24..32].copy_from_slice(&seq.to_le_bytes());
        if let Desc::Data { sector, .. } = d {
            let s = &mut b[data..data + SECTOR];
            s[0..4].copy_from_slice(b"data");
            s[4..8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
            s[8..4092].copy_from_slice(&sector[8..4092]);
            s[4092..4096].copy_from_slice(&(seq as u32).to_le_bytes());
            data += SECTOR;
        }
    }
    let crc = crc_without(&b, 4);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Write `e` into the circular log at `pos`, wrapping at its end.
fn place(file: &mut [u8], l: &VhdxLayout, pos: u64, e: &[u8]) {
    for (i, s) in e.chunks(SECTOR).enumerate() {
        let p = (pos + (i * SECTOR) as u64) % l.log_length;
        let at = (l.log_offset + p) as usize;
        file[at..at + SECTOR].copy_from_slice(s);
    }
}

/// Set the current header's LogGuid and fix its checksum.
fn set_log_guid(file: &mut [u8], l: &VhdxLayout, guid: Uuid) {
    let h = l.header;
    file[h + 48..h + 64].copy_from_slice(&guid.to_bytes_le());
    let crc = crc_without(&file[h..h + 4096], 4);
    file[h + 4..h + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The file's 4 KiB sector at `off` with `f` applied.
fn sector_with(file: &[u8], off: u64, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut s = if (off as usize) < file.len() {
        file[off as usize..off as usize + SECTOR].to_vec()
    } else {
        vec![0; SECTOR]
    };
    f(&mut s);
    s
}

fn bat_entry(file: &[u8], l: &VhdxLayout, i: usize) -> u64 {
    le64(file, l.bat_offset as usize + 8 * i)
}

/// A BAT sector update setting entry `i` to `value`.
fn bat_update(file: &[u8], l: &VhdxLayout, i: usize, value: u64) -> Desc {
    let byte = l.bat_offset + 8 * i as u64;
    let off = byte / SECTOR as u64 * SECTOR as u64;
    let within = (byte - off) as usize;
    Desc::Data {
        offset: off,
        sector: sector_with(file, off, |s| {
            s[within..within + 8].copy_from_slice(&value.to_le_bytes())
        }),
    }
}

/// A qemu-made dynamic image (1 MiB blocks) of `content`.
fn base_image(dir: &Path, content: &[u8], log_size: &str) -> std::path::PathBuf {
    let raw = dir.join("src.raw");
    std::fs::write(&raw, content).unwrap();
    let img = dir.join("base.vhdx");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx", "-o"])
        .arg(format!(
            "subformat=dynamic,block_size=1M,log_size={log_size}"
        ))
        .arg(&raw)
        .arg(&img));
    img
}

/// vhdkit's read-only view: content equals `expected`, file unchanged.
fn assert_replayed_in_memory(img: &Path, expected: &[u8]) -> Vec<u8> {
    let before = file_sha256(img);
    let disk = open(img);
    assert_eq!(log_state(disk.as_ref()), VhdxLogState::ReplayedInMemory);
    let got = read_disk(disk.as_ref());
    drop(disk);
    assert_eq!(file_sha256(img), before, "read-only open changed the file");
    let first_diff = got.iter().zip(expected).position(|(a, b)| a != b);
    assert!(first_diff.is_none(), "content differs at {first_diff:?}");
    got
}

/// qemu-img's replay of a copy, converted to raw.
fn qemu_replay(img: &Path, dir: &Path) -> Vec<u8> {
    let copy = dir.join("qemu-copy.vhdx");
    std::fs::copy(img, &copy).unwrap();
    run(Command::new("qemu-img")
        .args(["check", "-r", "all"])
        .arg(&copy));
    let raw = dir.join("qemu-out.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "vhdx", "-O", "raw"])
        .arg(&copy)
        .arg(&raw));
    std::fs::read(raw).unwrap()
}

/// A qemu-made image with a pending log that allocates block 1 past the end
/// of the file, fills it and links it in the BAT, zeroes and rewrites parts
/// of blocks 0 and 2, with a stale older entry behind the active ones.
/// Entries hold at most `per_entry` descriptors. Returns the image and the
/// content the replay must produce.
fn pending_image(dir: &Path, per_entry: usize) -> (std::path::PathBuf, Vec<u8>) {
    let content = pattern(16, 21);
    let img = base_image(dir, &content, "4M");
    let mut f = std::fs::read(&img).unwrap();
    let l = VhdxLayout::parse(&f);
    let len = f.len() as u64;
    let guid = Uuid::new_v4();
    let mut expected = content.clone();

    assert_ne!(bat_entry(&f, &l, 1) & 7, 6, "block 1 starts unallocated");
    let new_off = len.div_ceil(MIB) * MIB;
    let fresh = pattern(2, 99)[..MIB as usize].to_vec();
    let mut descs: Vec<Desc> = fresh
        .chunks(SECTOR)
        .enumerate()
        .map(|(i, s)| Desc::Data {
            offset: new_off + (i * SECTOR) as u64,
            sector: s.to_vec(),
        })
        .collect();
    expected[MIB as usize..2 * MIB as usize].copy_from_slice(&fresh);
    descs.push(bat_update(&f, &l, 1, new_off | 6));
    let b0 = bat_entry(&f, &l, 0) & !0xFFFFF;
    let b2 = bat_entry(&f, &l, 2) & !0xFFFFF;
    descs.push(Desc::Zero {
        offset: b0 + 8192,
        length: 8192,
    });
    expected[8192..16384].fill(0);
    descs.push(Desc::Data {
        offset: b0 + 65536,
        sector: vec![0x5a; SECTOR],
    });
    descs.push(Desc::Data {
        offset: b0 + 69632,
        sector: vec![0x5b; SECTOR],
    });
    expected[65536..69632].fill(0x5a);
    expected[69632..73728].fill(0x5b);
    // A later entry changes what an earlier one wrote: order matters.
    descs.push(Desc::Zero {
        offset: b0,
        length: 8192,
    });
    descs.push(Desc::Data {
        offset: b2,
        sector: vec![0xab; SECTOR],
    });
    descs.push(Desc::Data {
        offset: b0 + 65536,
        sector: vec![0x77; SECTOR],
    });
    expected[..8192].fill(0);
    expected[2 * MIB as usize..2 * MIB as usize + SECTOR].fill(0xab);
    expected[65536..69632].fill(0x77);

    let mut pos = 0u64;
    let mut seq = 10u64;
    let mut rest = &descs[..];
    while !rest.is_empty() {
        let n = rest.len().min(per_entry);
        let e = entry(seq, 0, guid, &rest[..n], len, new_off + MIB);
        place(&mut f, &l, pos, &e);
        pos += e.len() as u64;
        seq += 1;
        rest = &rest[n..];
    }
    // A stale entry of an older session after them: never replayed.
    let stale = entry(
        3,
        pos,
        guid,
        &[Desc::Data {
            offset: b0,
            sector: vec![0xee; SECTOR],
        }],
        len,
        len,
    );
    place(&mut f, &l, pos, &stale);
    set_log_guid(&mut f, &l, guid);
    std::fs::write(&img, &f).unwrap();
    (img, expected)
}

#[test]
fn pending_log_with_bat_and_data_changes_replays_like_qemu() {
    if !require_tool("qemu-img") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // qemu-img refuses entries of more than 126 descriptors (see the next
    // test), so its entries stay within one descriptor sector here.
    let (img, expected) = pending_image(tmp.path(), 100);
    let got = assert_replayed_in_memory(&img, &expected);
    let out = Command::new(vhdkit_bin())
        .arg("check")
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("pending"), "{text}");
    assert!(
        qemu_replay(&img, tmp.path()) == got,
        "qemu-img replays differently"
    );
}

#[test]
fn entry_with_more_than_126_descriptors_replays_and_repairs() {
    if !require_tool("qemu-img") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // All updates in one entry: 263 descriptors over three descriptor sectors.
    let (img, expected) = pending_image(tmp.path(), usize::MAX);
    assert_replayed_in_memory(&img, &expected);

    // check --repair replays on disk: the log is gone, the content stays,
    // and qemu-img (which cannot replay such an entry itself) reads the
    // repaired file the same way.
    let rep = tmp.path().join("repaired.vhdx");
    std::fs::copy(&img, &rep).unwrap();
    let out = Command::new(vhdkit_bin())
        .args(["check", "--repair"])
        .arg(&rep)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("replayed"), "{text}");
    let disk = open(&rep);
    assert_eq!(log_state(disk.as_ref()), VhdxLogState::Empty);
    assert!(read_disk(disk.as_ref()) == expected);
    let raw = tmp.path().join("rep.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "vhdx", "-O", "raw"])
        .arg(&rep)
        .arg(&raw));
    assert!(std::fs::read(&raw).unwrap() == expected);
    let out = Command::new(vhdkit_bin())
        .arg("check")
        .arg(&rep)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn log_wrapping_around_its_buffer_replays_like_qemu() {
    if !require_tool("qemu-img") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let content = pattern(6, 5);
    let img = base_image(tmp.path(), &content, "1M");
    let mut f = std::fs::read(&img).unwrap();
    let l = VhdxLayout::parse(&f);
    assert_eq!(l.log_length, MIB);
    let len = f.len() as u64;
    let guid = Uuid::new_v4();
    let mut expected = content.clone();
    let b0 = bat_entry(&f, &l, 0) & !0xFFFFF;
    let b3 = bat_entry(&f, &l, 3) & !0xFFFFF;

    // Entry A at sector 250 (2 sectors), entry B at 252 with 10 data
    // sectors: 11 sectors, the last 7 wrapped to the start of the log.
    let tail = 250 * SECTOR as u64;
    let ea = entry(
        41,
        tail,
        guid,
        &[Desc::Data {
            offset: b0,
            sector: vec![1; SECTOR],
        }],
        len,
        len,
    );
    expected[..SECTOR].fill(1);
    let db: Vec<Desc> = (0..10u8)
        .map(|i| Desc::Data {
            offset: b3 + u64::from(i) * SECTOR as u64,
            sector: vec![0x80 + i; SECTOR],
        })
        .collect();
    for i in 0..10usize {
        let at = 3 * MIB as usize + i * SECTOR;
        expected[at..at + SECTOR].fill(0x80 + i as u8);
    }
    let eb = entry(42, tail, guid, &db, len, len);
    assert_eq!(eb.len(), 11 * SECTOR);
    // A stale, older entry in the middle of the log.
    let stale = entry(
        7,
        100 * SECTOR as u64,
        guid,
        &[Desc::Data {
            offset: b0,
            sector: vec![0xee; SECTOR],
        }],
        len,
        len,
    );
    place(&mut f, &l, 100 * SECTOR as u64, &stale);
    place(&mut f, &l, tail, &ea);
    place(&mut f, &l, 252 * SECTOR as u64, &eb);
    set_log_guid(&mut f, &l, guid);
    std::fs::write(&img, &f).unwrap();

    let got = assert_replayed_in_memory(&img, &expected);
    assert!(
        qemu_replay(&img, tmp.path()) == got,
        "qemu-img replays differently"
    );
}

#[test]
fn sequence_continuing_at_log_start_is_replayed_from_its_tail() {
    if !require_tool("qemu-img") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let content = pattern(4, 9);
    let img = base_image(tmp.path(), &content, "1M");
    let mut f = std::fs::read(&img).unwrap();
    let l = VhdxLayout::parse(&f);
    let len = f.len() as u64;
    let guid = Uuid::new_v4();
    let mut expected = content.clone();
    let b0 = bat_entry(&f, &l, 0) & !0xFFFFF;

    // Entry 5 in the last two sectors, entry 6 at the start; entry 6's tail
    // points back at entry 5, so both are replayed, in order.
    let tail = 254 * SECTOR as u64;
    let e5 = entry(
        5,
        tail,
        guid,
        &[Desc::Data {
            offset: b0,
            sector: vec![5; SECTOR],
        }],
        len,
        len,
    );
    let e6 = entry(
        6,
        tail,
        guid,
        &[Desc::Data {
            offset: b0 + SECTOR as u64,
            sector: vec![6; SECTOR],
        }],
        len,
        len,
    );
    expected[..SECTOR].fill(5);
    expected[SECTOR..2 * SECTOR].fill(6);
    place(&mut f, &l, tail, &e5);
    place(&mut f, &l, 0, &e6);
    set_log_guid(&mut f, &l, guid);
    std::fs::write(&img, &f).unwrap();
    assert_replayed_in_memory(&img, &expected);

    // A writable open replays onto the file and clears the LogGuid with
    // the two-header update.
    let before = VhdxLayout::parse(&f);
    let seq_before = le64(&f, before.header + 8);
    let disk = vhdkit::open(&img, &OpenOptions::new().writable(true)).unwrap();
    assert_eq!(log_state(disk.as_ref()), VhdxLogState::ReplayedOnDisk);
    assert!(read_disk(disk.as_ref()) == expected);
    drop(disk);
    let g = std::fs::read(&img).unwrap();
    for h in [64usize << 10, 128 << 10] {
        assert_eq!(crc_without(&g[h..h + 4096], 4), le32(&g, h + 4));
        assert!(
            g[h + 48..h + 64].iter().all(|&b| b == 0),
            "LogGuid not cleared"
        );
        assert!(le64(&g, h + 8) > seq_before);
    }
    assert!(read_disk(open(&img).as_ref()) == expected);
}

#[test]
fn damaged_logs_are_refused_or_ignored_safely() {
    if !require_tool("qemu-img") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let content = pattern(4, 13);
    let img = base_image(tmp.path(), &content, "1M");
    let pristine = std::fs::read(&img).unwrap();
    let l = VhdxLayout::parse(&pristine);
    let len = pristine.len() as u64;
    let guid = Uuid::new_v4();
    let b0 = bat_entry(&pristine, &l, 0) & !0xFFFFF;
    let desc = [Desc::Data {
        offset: b0,
        sector: vec![7; SECTOR],
    }];

    // Written against a longer file: the file was truncated; refuse.
    let mut f = pristine.clone();
    place(
        &mut f,
        &l,
        0,
        &entry(1, 0, guid, &desc, len + 16 * MIB, len + 16 * MIB),
    );
    set_log_guid(&mut f, &l, guid);
    std::fs::write(&img, &f).unwrap();
    let Err(e) = vhdkit::open(&img, &OpenOptions::new()) else {
        panic!("opened a truncated file with a pending log");
    };
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("flushed file offset"), "{e}");
    let out = Command::new(vhdkit_bin())
        .arg("check")
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // A torn entry (bad CRC) is not part of any sequence: nothing replays.
    let mut f = pristine.clone();
    let mut e = entry(1, 0, guid, &desc, len, len);
    e[5000] ^= 1;
    place(&mut f, &l, 0, &e);
    set_log_guid(&mut f, &l, guid);
    std::fs::write(&img, &f).unwrap();
    let disk = open(&img);
    assert_eq!(log_state(disk.as_ref()), VhdxLogState::NoActiveSequence);
    assert!(read_disk(disk.as_ref()) == content);

    // Hostile counts and lengths never panic.
    for (field, value) in [(8usize, u32::MAX), (24, u32::MAX), (12, 12345), (8, 0)] {
        let mut f = pristine.clone();
        let mut e = entry(1, 0, guid, &desc, len, len);
        e[field..field + 4].copy_from_slice(&value.to_le_bytes());
        let crc = crc_without(&e, 4);
        e[4..8].copy_from_slice(&crc.to_le_bytes());
        place(&mut f, &l, 0, &e);
        set_log_guid(&mut f, &l, guid);
        std::fs::write(&img, &f).unwrap();
        let disk = open(&img);
        assert!(read_disk(disk.as_ref()) == content);
    }
}
