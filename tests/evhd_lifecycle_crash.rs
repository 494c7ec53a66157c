//! Crash safety of `resize` and `compact` on EVHD, proven by brute force:
//! the operation runs on a [`FaultStorage`] that loses power at storage
//! operation N, for every N it reaches, in both fault models (in order with
//! the last write torn or not; a random subset of the writes since the last
//! flush, the last one torn). The cases cover each way a resize changes
//! the table (same pages, new pages in place, the table moved, table and
//! journal moved), a shrink that packs and cuts the file, and both compact
//! modes. After each crash:
//!
//! - the image opens with the key and its `check` (with the key: every
//!   header, table page and block tag) finds no error (a header copy
//!   torn by the commit the journal holds is information);
//! - it reads as the old size with the old content, or as the new size
//!   with the old content cut or followed by zeros;
//! - running the operation again completes it: `check` is clean and the
//!   content is what the uninterrupted run gives.

mod common;

use std::sync::{Arc, OnceLock};

use common::*;
use vhdkit::compact::{Mode, compact_storage};
use vhdkit::report::{CheckReport, Format, Severity};
use vhdkit::resize::{Target, resize_storage};
use vhdkit::unstable::chain::Chain;
use vhdkit::{EvhdBuilder, EvhdDisk, MemStorage, PrivateKey, Storage};
use vhdkit::{OpenOptions, VirtualDisk};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const BS: u64 = 4 * KIB;

fn key() -> &'static Arc<PrivateKey> {
    static K: OnceLock<Arc<PrivateKey>> = OnceLock::new();
    K.get_or_init(|| Arc::new(PrivateKey::generate(2048).expect("keygen")))
}

fn opts() -> OpenOptions {
    OpenOptions::new().key(key().clone())
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Resize(Target, bool),
    Compact(Mode),
}

struct Case {
    name: &'static str,
    base: Vec<u8>,
    /// What the image reads as before.
    old: Vec<u8>,
    op: Op,
}

fn no_crash(image: Vec<u8>) -> FaultStorage {
    FaultStorage::new(image, u64::MAX, CrashMode::Prefix { tear: false }, 0)
}

/// An EVHD of `size` with 4 KiB blocks, `pieces` written in order and
/// `zero_blocks` stored as encrypted zeros; its bytes and content.
fn build(size: u64, pieces: &[(u64, Vec<u8>)], zero_blocks: &[u64]) -> (Vec<u8>, Vec<u8>) {
    let probe = no_crash(Vec::new());
    let mut d = EvhdBuilder::new(size)
        .block_size(BS)
        .recipient(key().public().clone(), "lifecycle")
        .signer(key().clone())
        .create(Box::new(probe.clone()), None)
        .unwrap();
    let mut model = vec![0u8; size as usize];
    for (off, data) in pieces {
        d.write_at(data, *off).unwrap();
        model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    for &b in zero_blocks {
        d.store_block(b, &vec![0u8; BS as usize]).unwrap();
        model[(b * BS) as usize..((b + 1) * BS) as usize].fill(0);
    }
    d.close().unwrap();
    drop(d);
    (probe.durable(), model)
}

/// Pieces of random data in the first `span` bytes, block aligned or not.
fn pieces(span: u64, count: usize, seed: u64) -> Vec<(u64, Vec<u8>)> {
    let mut r = Rng::new(seed);
    (0..count)
        .map(|_| {
            let len = (1 + r.below(6)) * 1024;
            let off = r.below((span - len) / 512) * 512;
            (off, random_bytes(len as usize, r.next_u64()))
        })
        .collect()
}

/// An MBR with one partition from sector 1 to byte `end`.
fn mbr(end: u64) -> Vec<u8> {
    let mut s = vec![0u8; 512];
    s[510] = 0x55;
    s[511] = 0xaa;
    s[0x1be + 4] = 0x83;
    s[0x1be + 8..0x1be + 12].copy_from_slice(&1u32.to_le_bytes());
    s[0x1be + 12..0x1be + 16].copy_from_slice(&((end / 512 - 1) as u32).to_le_bytes());
    s
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let grows = [
        // 300 KiB: 75 blocks, the same single table page.
        ("grow, same table pages", 200 * KIB, 300 * KIB),
        // 4 to 7 pages: they fit before the data area.
        ("grow, table pages added in place", MIB, 2 * MIB),
        // 230 pages do not fit before the data area at 2 MiB, the journal
        // holds them: the table moves.
        ("grow, table moved", 4 * MIB, 230 * 84 * BS),
        // 305 pages: the journal of 1 MiB does not hold them either.
        ("grow, table and journal moved", 4 * MIB, 100 * MIB),
    ];
    for (i, (name, size, target)) in grows.into_iter().enumerate() {
        // An odd old size: the tail of the last block is zeroed.
        let size = size - 512;
        let mut p = pieces(size, 12, i as u64);
        p.push((size - 1024, random_bytes(1024, 99)));
        let (base, old) = build(size, &p, &[]);
        v.push(Case {
            name,
            base,
            old,
            op: Op::Resize(Target::Size(target), false),
        });
    }
    // A shrink to the end of the partition, in the middle of a block
    // whose rest holds data; the blocks past the end were written first,
    // so the ones that stay lie in the higher slots and move down.
    let size = 2 * MIB;
    let end = MIB + 1536;
    let mut p = vec![(MIB, random_bytes(MIB as usize, 5))];
    p.extend(pieces(MIB, 20, 6));
    p.push((0, mbr(end)));
    let (base, old) = build(size, &p, &[]);
    v.push(Case {
        name: "shrink to the partition end, packed",
        base,
        old,
        op: Op::Resize(Target::Minimum, true),
    });
    for (name, mode) in [("compact", Mode::Full), ("compact --quick", Mode::Quick)] {
        let size = MIB;
        let mut p = pieces(size, 16, 7);
        p.push((size - 8 * BS, random_bytes(8 * BS as usize, 8)));
        let (base, old) = build(size, &p, &[1, 3, 40, 41, 42, 100, 200, 201]);
        v.push(Case {
            name,
            base,
            old,
            op: Op::Compact(mode),
        });
    }
    v
}

/// Run the case's operation; the new virtual size.
fn run(case: &Case, fs: &FaultStorage) -> vhdkit::Result<u64> {
    match case.op {
        Op::Resize(target, shrink) => {
            let storage: Arc<dyn Storage> = Arc::new(fs.clone());
            resize_storage(storage, None, Format::Evhd, target, shrink, &opts()).map(|r| r.new_size)
        }
        Op::Compact(mode) => {
            compact_storage(Box::new(fs.clone()), None, &opts(), mode)?;
            Ok(case.old.len() as u64)
        }
    }
}

/// The errors of `check` with the key (information findings, such as a
/// header copy torn by the commit the journal holds, are allowed).
fn check_errors(image: &[u8]) -> Vec<String> {
    let mut report = CheckReport::default();
    let storage = MemStorage::read_only(image.to_vec());
    if let Err(e) = vhdkit::unstable::evhd::check::check(
        Box::new(storage),
        std::slice::from_ref(key()),
        &mut report,
    ) {
        return vec![e.to_string()];
    }
    report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| format!("{} at {:?}: {}", f.structure, f.offset, f.message))
        .collect()
}

/// Content is read in full up to this size, else its head and last MiB.
const HEAD: u64 = 8 * MIB;

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
        &opts(),
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

/// The old content cut or followed by zeros at `size`.
fn expected(old: &[u8], size: u64) -> Seen {
    let byte = |i: u64| {
        if i < size {
            old.get(i as usize).copied().unwrap_or(0)
        } else {
            0
        }
    };
    let head = (0..size.min(HEAD)).map(byte).collect();
    let t = size.min(MIB);
    let tail = (size - t..size).map(byte).collect();
    Seen { size, head, tail }
}

fn crash_everywhere(case: &Case) -> usize {
    let fs = no_crash(case.base.clone());
    let new_size = run(case, &fs).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let total = fs.count();
    let want_image = fs.durable();
    let errors = check_errors(&want_image);
    assert!(errors.is_empty(), "{}: uncrashed: {errors:?}", case.name);
    let want = read(&want_image).unwrap();
    let old_size = case.old.len() as u64;
    assert_eq!(
        want,
        expected(&case.old, new_size),
        "{}: uncrashed content",
        case.name
    );
    if let Op::Resize(..) = case.op {
        assert_ne!(new_size, old_size, "{}: the size did not change", case.name);
    }
    let mut failures = Vec::new();
    let mut points = 0;
    for crash_at in 0..total {
        for (mode, seed) in [
            (CrashMode::Prefix { tear: false }, 0),
            (CrashMode::Prefix { tear: true }, crash_at),
            (CrashMode::Subset, crash_at ^ 0x5eed),
            (CrashMode::Subset, crash_at ^ 0xbeef),
        ] {
            points += 1;
            let ctx = |m: String| format!("{} crash at {crash_at} ({mode:?}): {m}", case.name);
            let fs = FaultStorage::new(case.base.clone(), crash_at, mode, seed);
            let r = run(case, &fs);
            if !fs.crashed() {
                failures.push(ctx(format!("no crash; result {r:?}")));
                continue;
            }
            let image = fs.durable();
            let errors = check_errors(&image);
            if !errors.is_empty() {
                failures.push(ctx(format!("check: {errors:?}")));
                continue;
            }
            match read(&image) {
                Ok(got)
                    if got == expected(&case.old, old_size)
                        || got == expected(&case.old, new_size) => {}
                Ok(got) => {
                    failures.push(ctx(format!("content of {} bytes not allowed", got.size)));
                    continue;
                }
                Err(e) => {
                    failures.push(ctx(format!("open: {e}")));
                    continue;
                }
            }
            let again = no_crash(image);
            if let Err(e) = run(case, &again) {
                failures.push(ctx(format!("re-run: {e}")));
                continue;
            }
            let after = again.durable();
            let errors = check_errors(&after);
            if !errors.is_empty() {
                failures.push(ctx(format!("check after re-run: {errors:?}")));
            } else if read(&after).ok().as_ref() != Some(&want) {
                failures.push(ctx("content after re-run".into()));
            } else if matches!(case.op, Op::Compact(Mode::Full)) && after.len() > want_image.len() {
                failures.push(ctx(format!(
                    "{} bytes after re-run; the uninterrupted compact left {}",
                    after.len(),
                    want_image.len()
                )));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {points} crash states failed:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    points
}

#[test]
fn evhd_resize_survives_a_crash_at_every_storage_operation() {
    let only = std::env::var("EVHD_CASE").unwrap_or_default();
    let mut total = 0;
    for case in cases()
        .iter()
        .filter(|c| matches!(c.op, Op::Resize(..)) && c.name.contains(&only))
    {
        total += crash_everywhere(case);
    }
    assert!(only.is_empty() || total > 0);
    assert!(
        !only.is_empty() || total >= 300,
        "only {total} crash states"
    );
}

#[test]
fn evhd_compact_survives_a_crash_at_every_storage_operation() {
    let mut total = 0;
    for case in cases().iter().filter(|c| matches!(c.op, Op::Compact(..))) {
        total += crash_everywhere(case);
    }
    assert!(total >= 100, "only {total} crash states");
}

/// The layout cases really take the paths they are named after: the table
/// moves (and the journal with it), and a compact drops the zero blocks,
/// moves blocks down and cuts the file.
#[test]
fn the_cases_take_their_paths() {
    let cases = cases();
    let header = |image: &[u8]| {
        let d = EvhdDisk::open(
            Box::new(MemStorage::read_only(image.to_vec())),
            None,
            &opts(),
        )
        .unwrap();
        let h = d.header();
        (
            h.table_offset,
            h.journal_offset,
            h.data_offset,
            h.slot_count,
        )
    };
    for case in &cases {
        let fs = no_crash(case.base.clone());
        run(case, &fs).unwrap();
        let (before, after) = (header(&case.base), header(&fs.durable()));
        match case.name {
            "grow, same table pages" | "grow, table pages added in place" => {
                assert_eq!((before.0, before.1, before.2), (after.0, after.1, after.2))
            }
            "grow, table moved" => {
                assert_ne!(before.0, after.0, "{}", case.name);
                assert_eq!(before.1, after.1, "{}", case.name);
            }
            "grow, table and journal moved" => {
                assert_ne!(before.0, after.0, "{}", case.name);
                assert_ne!(before.1, after.1, "{}", case.name);
            }
            "compact --quick" => assert_eq!(before, after, "{}", case.name),
            _ => assert!(after.3 < before.3, "{}: {before:?} -> {after:?}", case.name),
        }
    }
    let full = cases.iter().find(|c| c.name == "compact").unwrap();
    let r = compact_storage(
        Box::new(no_crash(full.base.clone())),
        None,
        &opts(),
        Mode::Full,
    )
    .unwrap();
    assert_eq!(r.blocks_dropped, 8);
    assert!(r.blocks_moved > 0, "{r:?}");
    assert!(r.size_after < r.size_before, "{r:?}");
}
