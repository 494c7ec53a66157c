//! Crash safety of `resize`, proven by brute force: the resize runs on a
//! [`FaultStorage`] that loses power at storage operation N, for every N it
//! reaches, in both fault models (in-order with the last write torn; or a
//! random subset of the writes since the last flush, the last one torn).
//! After each crash:
//!
//! - `check` finds nothing worse than leaked space (a VHD's copy at
//!   offset 0 left older than the end footer between their two writes is
//!   reported as an interrupted update, not as damage);
//! - the image opens and reads as the old size with the old content, or
//!   as the new size with the old content then zeros (GPT disks: with the
//!   partitions and the MBR unchanged, the GPT backup anywhere on its way);
//! - running the resize again completes it: `check` is clean and the
//!   content is exactly what an uninterrupted resize gives.

mod common;

use std::sync::Arc;

use common::*;
use vhdkit::report::{CheckReport, Format, Severity};
use vhdkit::resize::{Target, resize_storage};
use vhdkit::unstable::chain::Chain;
use vhdkit::{MemStorage, Storage};
use vhdkit::{OpenOptions, VhdBuilder, VhdxBuilder, VirtualDisk};

const MIB: u64 = 1 << 20;

struct Case {
    name: &'static str,
    format: Format,
    /// The image before the resize.
    base: Vec<u8>,
    old: Vec<u8>,
    target: Target,
    shrink: bool,
    /// Only the MBR, the GPT entries and the partitions must stay intact
    /// in between (the GPT moves).
    gpt_end: Option<u64>,
    /// Crash at every `stride`th operation (1: all): a grow to 200 GiB
    /// commits its BAT pages in hundreds of log entries.
    stride: u64,
}

/// Build a VHD in memory and write `pieces`; returns its bytes and content.
fn build(builder: VhdBuilder, size: u64, pieces: &[(u64, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let probe = FaultStorage::new(Vec::new(), u64::MAX, CrashMode::Prefix { tear: false }, 0);
    let mut disk = builder.create(Box::new(probe.clone()), None).unwrap();
    let mut model = vec![0u8; size as usize];
    for (off, data) in pieces {
        disk.write_at(data, *off).unwrap();
        model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    disk.close().unwrap();
    drop(disk);
    (probe.durable(), model)
}

/// Build a VHDX in memory and write `pieces`; returns its bytes and content.
fn build_vhdx(builder: VhdxBuilder, size: u64, pieces: &[(u64, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let probe = FaultStorage::new(Vec::new(), u64::MAX, CrashMode::Prefix { tear: false }, 0);
    let mut disk = builder.create(Box::new(probe.clone()), None).unwrap();
    let mut model = vec![0u8; size as usize];
    for (off, data) in pieces {
        disk.write_at(data, *off).unwrap();
        model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    disk.close().unwrap();
    drop(disk);
    (probe.durable(), model)
}

fn content_pieces(size: u64, seed: u64) -> Vec<(u64, Vec<u8>)> {
    let mut r = Rng::new(seed);
    let mut v = Vec::new();
    for _ in 0..4 {
        let len = (1 + r.below(32)) * 4096;
        let off = r.below((size - len) / 512) * 512;
        v.push((off, random_bytes(len as usize, r.next_u64())));
    }
    v.push((size - 512, random_bytes(512, seed ^ 7)));
    v
}

fn mbr(end: u64) -> Vec<u8> {
    let mut s = vec![0u8; 512];
    s[510] = 0x55;
    s[511] = 0xaa;
    s[0x1be + 4] = 0x83;
    s[0x1be + 8..0x1be + 12].copy_from_slice(&2048u32.to_le_bytes());
    s[0x1be + 12..0x1be + 16].copy_from_slice(&((end / 512 - 2048) as u32).to_le_bytes());
    s
}

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

/// A GPT (protective MBR, header, 128-entry array, one partition from
/// LBA 2048 to `end`, backup at the last sectors) on a disk of `size`.
fn gpt(size: u64, end: u64) -> Vec<(u64, Vec<u8>)> {
    let last = size / 512 - 1;
    let mut pmbr = vec![0u8; 512];
    pmbr[510] = 0x55;
    pmbr[511] = 0xaa;
    pmbr[0x1be + 4] = 0xee;
    pmbr[0x1be + 8..0x1be + 12].copy_from_slice(&1u32.to_le_bytes());
    pmbr[0x1be + 12..0x1be + 16].copy_from_slice(&(last as u32).to_le_bytes());
    let mut entries = vec![0u8; 128 * 128];
    entries[..16].copy_from_slice(&[0x11; 16]);
    entries[16..32].copy_from_slice(&[0x22; 16]);
    entries[32..40].copy_from_slice(&2048u64.to_le_bytes());
    entries[40..48].copy_from_slice(&(end / 512 - 1).to_le_bytes());
    let header = |my: u64, alt: u64, array: u64| {
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(last - 33).to_le_bytes());
        h[56..72].copy_from_slice(&[0x33; 16]);
        h[72..80].copy_from_slice(&array.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
        let c = crc32(&h[..92]);
        h[16..20].copy_from_slice(&c.to_le_bytes());
        h
    };
    vec![
        (0, pmbr),
        (512, header(1, last, 2)),
        (1024, entries.clone()),
        ((last - 32) * 512, entries.clone()),
        (last * 512, header(last, 1, last - 32)),
        (2048 * 512, random_bytes(MIB as usize, 77)),
        (end - 4096, random_bytes(4096, 78)),
    ]
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let size = 8 * MIB;
    for (name, b, target) in [
        ("fixed grow", VhdBuilder::new(size).fixed(), 12 * MIB),
        (
            "dynamic grow in place",
            VhdBuilder::new(size).dynamic(),
            24 * MIB,
        ),
        (
            "dynamic grow, blocks moved out of the BAT's way",
            VhdBuilder::new(size).dynamic().block_size(512 << 10),
            96 * MIB,
        ),
    ] {
        let (base, old) = build(b, size, &content_pieces(size, target));
        v.push(Case {
            name,
            format: Format::Vhd,
            base,
            old,
            target: Target::Size(target),
            shrink: false,
            gpt_end: None,
            stride: 1,
        });
    }
    // No block: the BAT has only the footer after it and grows over it
    // (the footer moved past the new table first).
    let (base, old) = build(
        VhdBuilder::new(size).dynamic().block_size(512 << 10),
        size,
        &[],
    );
    v.push(Case {
        name: "dynamic grow, BAT at the end grown over the footer",
        format: Format::Vhd,
        base,
        old,
        target: Target::Size(96 * MIB),
        shrink: false,
        gpt_end: None,
        stride: 1,
    });
    // Odd size: the last block's tail is zeroed.
    let odd = 5 * MIB + 512;
    let (base, old) = build(VhdBuilder::new(odd).dynamic(), odd, &content_pieces(odd, 3));
    v.push(Case {
        name: "dynamic grow from part of a block",
        format: Format::Vhd,
        base,
        old,
        target: Target::Size(9 * MIB),
        shrink: false,
        gpt_end: None,
        stride: 1,
    });
    for (name, b) in [
        (
            "fixed shrink to the partition end",
            VhdBuilder::new(size).fixed(),
        ),
        (
            "dynamic shrink to the partition end",
            VhdBuilder::new(size).dynamic(),
        ),
    ] {
        let mut p = content_pieces(3 * MIB, 4);
        p.push((0, mbr(3 * MIB)));
        p.push((6 * MIB, random_bytes(MIB as usize, 5)));
        let (base, old) = build(b, size, &p);
        v.push(Case {
            name,
            format: Format::Vhd,
            base,
            old,
            target: Target::Minimum,
            shrink: true,
            gpt_end: None,
            stride: 1,
        });
    }
    for (name, b, target, shrink) in [
        (
            "GPT grow",
            VhdBuilder::new(size).dynamic(),
            Target::Size(12 * MIB),
            false,
        ),
        (
            "GPT shrink",
            VhdBuilder::new(size).dynamic(),
            Target::Minimum,
            true,
        ),
        (
            "GPT grow, fixed",
            VhdBuilder::new(size).fixed(),
            Target::Size(12 * MIB),
            false,
        ),
        (
            "GPT shrink, fixed",
            VhdBuilder::new(size).fixed(),
            Target::Minimum,
            true,
        ),
    ] {
        let (base, old) = build(b, size, &gpt(size, 4 * MIB));
        v.push(Case {
            name,
            format: Format::Vhd,
            base,
            old,
            target,
            shrink,
            gpt_end: Some(4 * MIB),
            stride: 1,
        });
    }
    for (name, b, target, shrink) in [
        (
            "VHDX fixed grow",
            VhdxBuilder::new(size).fixed(),
            Target::Size(12 * MIB),
            false,
        ),
        (
            "VHDX dynamic grow",
            VhdxBuilder::new(size),
            Target::Size(40 * MIB),
            false,
        ),
        (
            "VHDX dynamic grow, BAT region moved",
            VhdxBuilder::new(size).block_size(1 << 20),
            Target::Size(200 << 30),
            false,
        ),
        (
            "VHDX fixed shrink",
            VhdxBuilder::new(size).fixed(),
            Target::Minimum,
            true,
        ),
        (
            "VHDX dynamic shrink",
            VhdxBuilder::new(size),
            Target::Minimum,
            true,
        ),
    ] {
        let mut p = content_pieces(3 * MIB, 6);
        p.push((0, mbr(3 * MIB)));
        p.push((6 * MIB, random_bytes(MIB as usize, 7)));
        let (base, old) = build_vhdx(b, size, &p);
        v.push(Case {
            name,
            format: Format::Vhdx,
            base,
            old,
            target,
            shrink,
            gpt_end: None,
            stride: if name.contains("BAT region") { 16 } else { 1 },
        });
    }
    for (name, target, shrink) in [
        ("VHDX GPT grow", Target::Size(12 * MIB), false),
        ("VHDX GPT shrink", Target::Minimum, true),
    ] {
        let (base, old) = build_vhdx(VhdxBuilder::new(size), size, &gpt(size, 4 * MIB));
        v.push(Case {
            name,
            format: Format::Vhdx,
            base,
            old,
            target,
            shrink,
            gpt_end: Some(4 * MIB),
            stride: 1,
        });
    }
    v
}

fn run(case: &Case, fs: &FaultStorage) -> vhdkit::Result<vhdkit::resize::Resized> {
    let storage: Arc<dyn Storage> = Arc::new(fs.clone());
    resize_storage(
        storage,
        None,
        case.format,
        case.target,
        case.shrink,
        &OpenOptions::new(),
    )
}

/// `check`'s errors (leaked space is no error).
fn check_errors(format: Format, image: &[u8]) -> Vec<String> {
    let storage = MemStorage::read_only(image.to_vec());
    let mut report = CheckReport::default();
    let r = match format {
        Format::Vhd => vhdkit::unstable::vhd::check::check(&storage, &mut report, false),
        _ => vhdkit::unstable::vhdx::check::check(&storage, &mut report, false),
    };
    if let Err(e) = r {
        return vec![e.to_string()];
    }
    report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| format!("{} at {:?}: {}", f.structure, f.offset, f.message))
        .collect()
}

/// Most of a disk is read: the first [`HEAD`] bytes and the last MiB.
const HEAD: u64 = 32 * MIB;

/// What a disk reads as: its size, its first bytes and its last MiB.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    size: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

fn read(image: &[u8]) -> vhdkit::Result<Seen> {
    let disk = vhdkit::unstable::open_storage(
        Box::new(MemStorage::read_only(image.to_vec())),
        None,
        &OpenOptions::new(),
        &Chain::default(),
    )?;
    let size = disk.virtual_size();
    let mut head = vec![0u8; size.min(HEAD) as usize];
    disk.read_at(&mut head, 0)?;
    let mut tail = vec![0u8; size.min(MIB) as usize];
    let tail_at = size - tail.len() as u64;
    disk.read_at(&mut tail, tail_at)?;
    Ok(Seen { size, head, tail })
}

/// The old content cut or extended with zeros to `size`, at `[at, at + len)`.
fn expected(case: &Case, size: u64, at: u64, len: usize) -> Vec<u8> {
    (at..at + len as u64)
        .map(|i| {
            if i < size && (i as usize) < case.old.len() {
                case.old[i as usize]
            } else {
                0
            }
        })
        .collect()
}

/// Whether `got` is an allowed in-between content.
fn allowed(case: &Case, got: &Seen, old_size: u64, new_size: u64, fixed: bool) -> bool {
    let n = got.size;
    if n != old_size && n != new_size {
        return false;
    }
    if let Some(end) = case.gpt_end {
        let end = end as usize;
        return got.head[..512] == case.old[..512] && got.head[1024..end] == case.old[1024..end];
    }
    let tail_at = n - got.tail.len() as u64;
    if got.tail != expected(case, n, tail_at, got.tail.len()) {
        return false;
    }
    let want = expected(case, n, 0, got.head.len());
    if got.head == want {
        return true;
    }
    // A fixed VHD shrink writes the new footer over the first sector it
    // cuts before it truncates the file.
    let s = new_size as usize;
    fixed
        && case.format == Format::Vhd
        && n == old_size
        && new_size < old_size
        && got.head[..s] == want[..s]
        && got.head[s + 512..] == want[s + 512..]
}

fn crash_everywhere(case: &Case) -> usize {
    // The uncrashed run: its result and how many operations there are.
    let fs = FaultStorage::new(
        case.base.clone(),
        u64::MAX,
        CrashMode::Prefix { tear: false },
        0,
    );
    let done = run(case, &fs).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let total = fs.count();
    let want = fs.durable();
    let fixed = case.name.contains("fixed");
    let errors = check_errors(case.format, &want);
    assert!(errors.is_empty(), "{}: uncrashed: {errors:?}", case.name);
    let want_content = read(&want).unwrap();
    assert_eq!(want_content.size, done.new_size);
    let mut failures = Vec::new();
    let mut points = 0;
    // Each crash point in order with and without a torn write, and with
    // three different subsets of the unflushed writes.
    for crash_at in (0..total).step_by(case.stride as usize) {
        for (mode, seed) in [
            (CrashMode::Prefix { tear: false }, 0),
            (CrashMode::Prefix { tear: true }, crash_at),
            (CrashMode::Subset, crash_at ^ 0x5eed),
            (CrashMode::Subset, crash_at ^ 0xbeef),
            (CrashMode::Subset, crash_at ^ 0xf00d),
        ] {
            points += 1;
            let ctx = |m: String| {
                format!(
                    "{} crash at {crash_at} ({mode:?}, seed {seed}): {m}",
                    case.name
                )
            };
            let fs = FaultStorage::new(case.base.clone(), crash_at, mode, seed);
            let r = run(case, &fs);
            if !fs.crashed() {
                failures.push(ctx(format!("no crash; result {r:?}")));
                continue;
            }
            let image = fs.durable();
            let errors = check_errors(case.format, &image);
            if !errors.is_empty() {
                failures.push(ctx(format!("check: {errors:?}")));
                continue;
            }
            match read(&image) {
                Ok(got) if allowed(case, &got, done.old_size, done.new_size, fixed) => {}
                Ok(got) => {
                    failures.push(ctx(format!("content of {} bytes not allowed", got.size)));
                    continue;
                }
                Err(e) => {
                    failures.push(ctx(format!("open: {e}")));
                    continue;
                }
            }
            // Running it again completes it.
            let again = FaultStorage::new(image, u64::MAX, CrashMode::Prefix { tear: false }, 0);
            if let Err(e) = run(case, &again) {
                failures.push(ctx(format!("re-run: {e}")));
                continue;
            }
            let after = again.durable();
            let errors = check_errors(case.format, &after);
            if !errors.is_empty() {
                failures.push(ctx(format!("check after re-run: {errors:?}")));
            } else if read(&after).ok().as_ref() != Some(&want_content) {
                failures.push(ctx("content after re-run".into()));
            }
        }
    }
    println!("{}: {points} crash states", case.name);
    assert!(
        failures.is_empty(),
        "{} of {points} crash states failed:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    points
}

#[test]
fn vhd_resize_survives_a_crash_at_every_storage_operation() {
    let mut total = 0;
    for case in cases().iter().filter(|c| c.format == Format::Vhd) {
        total += crash_everywhere(case);
    }
    assert!(total >= 500, "only {total} crash states");
}

#[test]
fn vhdx_resize_survives_a_crash_at_every_storage_operation() {
    let mut total = 0;
    let only = std::env::var("RESIZE_CASE").unwrap_or_default();
    for case in cases()
        .iter()
        .filter(|c| c.format == Format::Vhdx && c.name.contains(&only))
    {
        total += crash_everywhere(case);
    }
    assert!(total >= 300, "only {total} crash states");
}
