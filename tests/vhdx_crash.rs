//! Crash safety of VHDX writing, proven by brute force.
//!
//! A mixed workload (allocating writes, overwrites, writes crossing blocks,
//! partial-block writes to a differencing disk, all-zero writes, discards,
//! flushes) runs on a [`FaultStorage`] that loses power at storage operation
//! N, for every N the workload reaches, in two fault models: operations
//! persist in order and the one at N is torn between 512-byte sectors; or
//! everything up to the last flush persists plus any subset of the writes
//! since (with the one at N torn). After each crash:
//!
//! - the image opens read-only (replaying the log in memory) without warnings;
//! - `check` finds no errors;
//! - every 512-byte sector reads as the value it had at the last flush the
//!   workload completed, or as the value some later write gave it: data
//!   flushed before the crash reads back, and everything else is entirely
//!   old or entirely new per sector (the device's atomic unit; nothing the
//!   format adds can tear it further);
//! - every 16th state is also opened read-write (replaying the log onto the
//!   file), written to, closed, and read back clean.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;
use vhdkit::Discard;
use vhdkit::VhdxBuilder;
use vhdkit::report::{CheckReport, Severity};
use vhdkit::unstable::chain::Chain;
use vhdkit::unstable::vhdx::VhdxDisk;
use vhdkit::{MemStorage, Storage};
use vhdkit::{OpenOptions, VirtualDisk};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 6 * MIB;
const BLOCK: u32 = 1 << 20;
const SECTOR: usize = 512;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: usize, seed: u64 },
    Zero { offset: u64, len: usize },
    Discard { offset: u64, len: u64 },
    Flush,
}

fn workload(seed: u64, n: usize) -> Vec<Op> {
    let mut r = Rng::new(seed);
    let sectors = SIZE / SECTOR as u64;
    let mut ops = Vec::new();
    for _ in 0..n {
        let op = match r.below(20) {
            // Small writes anywhere: partial blocks, overwrites.
            0..=6 => {
                let len = (1 + r.below(32) as usize) * SECTOR;
                let offset = r.below(sectors - len as u64 / 512) * 512;
                Op::Write {
                    offset,
                    len,
                    seed: r.next_u64(),
                }
            }
            // Writes crossing a block boundary.
            7..=9 => {
                let b = 1 + r.below(SIZE / u64::from(BLOCK) - 1);
                let before = (1 + r.below(64)) * 4096;
                let len = (before + (1 + r.below(64)) * 4096) as usize;
                Op::Write {
                    offset: b * u64::from(BLOCK) - before,
                    len,
                    seed: r.next_u64(),
                }
            }
            // A whole block.
            10 | 11 => Op::Write {
                offset: r.below(SIZE / u64::from(BLOCK)) * u64::from(BLOCK),
                len: BLOCK as usize,
                seed: r.next_u64(),
            },
            12 => {
                let len = (1 + r.below(16) as usize) * 4096;
                Op::Zero {
                    offset: r.below(SIZE / 4096 - 16) * 4096,
                    len,
                }
            }
            13 => Op::Discard {
                offset: r.below(SIZE / 4096) * 4096,
                len: (1 + r.below(3)) * u64::from(BLOCK),
            },
            _ => Op::Flush,
        };
        ops.push(op);
    }
    ops.push(Op::Flush);
    ops
}

fn data_of(op: &Op) -> Option<(u64, Vec<u8>)> {
    match *op {
        Op::Write { offset, len, seed } => Some((offset, random_bytes(len, seed))),
        Op::Zero { offset, len } => Some((offset, vec![0u8; len])),
        _ => None,
    }
}

/// Apply `op` to the flat model; returns the sectors it changed.
fn model_apply(model: &mut [u8], op: &Op) -> std::ops::Range<usize> {
    if let Some((off, data)) = data_of(op) {
        let s = off as usize;
        model[s..s + data.len()].copy_from_slice(&data);
        return s / SECTOR..(s + data.len()).div_ceil(SECTOR);
    }
    if let Op::Discard { offset, len } = *op {
        let bs = u64::from(BLOCK);
        let end = (offset + len).min(SIZE);
        let first = offset.div_ceil(bs) * bs;
        let last = if end == SIZE { SIZE } else { end / bs * bs };
        if first < last {
            model[first as usize..last as usize].fill(0);
            return first as usize / SECTOR..last as usize / SECTOR;
        }
    }
    0..0
}

fn run_op(disk: &mut VhdxDisk, op: &Op) -> vhdkit::Result<()> {
    if let Some((off, data)) = data_of(op) {
        return disk.write_at(&data, off);
    }
    match *op {
        Op::Discard { offset, len } => disk.discard(offset, len.min(SIZE - offset)).map(|_| ()),
        Op::Flush => disk.flush(),
        _ => unreachable!(),
    }
}

/// A disk kind under test: how to open it and the model's starting content.
struct Setup {
    name: &'static str,
    /// The image after creation (and initial content), closed.
    base: Vec<u8>,
    /// What it reads as.
    content: Vec<u8>,
    parent: Option<PathBuf>,
    child_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn opts(&self, writable: bool) -> OpenOptions {
        OpenOptions::new()
            .writable(writable)
            .parent_path(self.parent.clone())
    }
    fn open(&self, storage: Box<dyn Storage>, writable: bool) -> vhdkit::Result<VhdxDisk> {
        VhdxDisk::open(
            storage,
            Some(self.child_path.clone()),
            &self.opts(writable),
            &Chain::default(),
        )
    }
}

/// Build an image in memory with `builder`, write `prefill` (offset, data)
/// pieces into it and close it.
fn build(builder: VhdxBuilder, path: &Path, prefill: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let probe = FaultStorage::new(Vec::new(), u64::MAX, CrashMode::Prefix { tear: false }, 0);
    let mut disk = builder.create(Box::new(probe.clone()), Some(path)).unwrap();
    for (off, data) in prefill {
        disk.write_at(data, *off).unwrap();
    }
    disk.close().unwrap();
    drop(disk);
    probe.durable()
}

fn dynamic_setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let child_path = dir.path().join("d.vhdx");
    let mut content = vec![0u8; SIZE as usize];
    let mut r = Rng::new(7);
    r.fill(&mut content[MIB as usize..(2 * MIB) as usize]);
    r.fill(&mut content[(4 * MIB + 4096) as usize..(4 * MIB + 65536) as usize]);
    let prefill = vec![
        (MIB, content[MIB as usize..(2 * MIB) as usize].to_vec()),
        (
            4 * MIB + 4096,
            content[(4 * MIB + 4096) as usize..(4 * MIB + 65536) as usize].to_vec(),
        ),
    ];
    let base = build(
        VhdxBuilder::new(SIZE).block_size(BLOCK),
        &child_path,
        &prefill,
    );
    Setup {
        name: "dynamic",
        base,
        content,
        parent: None,
        child_path,
        _dir: dir,
    }
}

fn differencing_setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("p.vhdx");
    let mut content = vec![0u8; SIZE as usize];
    Rng::new(11).fill(&mut content);
    content[(3 * MIB) as usize..(4 * MIB) as usize].fill(0);
    {
        let mut p =
            vhdkit::unstable::vhdx::create(&parent, VhdxBuilder::new(SIZE).block_size(2 << 20))
                .unwrap();
        p.write_at(&content, 0).unwrap();
        p.close().unwrap();
    }
    let child_path = dir.path().join("c.vhdx");
    // The child already holds part of a block (partially present) and a
    // whole block of its own.
    let mut r = Rng::new(13);
    let mut a = vec![0u8; 8192];
    r.fill(&mut a);
    let mut b = vec![0u8; BLOCK as usize];
    r.fill(&mut b);
    content[(2 * MIB + 4096) as usize..(2 * MIB + 4096 + 8192) as usize].copy_from_slice(&a);
    content[(5 * MIB) as usize..(6 * MIB) as usize].copy_from_slice(&b);
    let base = build(
        VhdxBuilder::new(0).differencing(&parent).block_size(BLOCK),
        &child_path,
        &[(2 * MIB + 4096, a), (5 * MIB, b)],
    );
    Setup {
        name: "differencing",
        base,
        content,
        parent: Some(parent),
        child_path,
        _dir: dir,
    }
}

/// Run the workload until the power fails at operation `crash_at`;
/// returns the storage and, per op, the operation counts before and after it.
fn crash_run(
    s: &Setup,
    ops: &[Op],
    crash_at: u64,
    mode: CrashMode,
) -> (FaultStorage, Vec<(u64, u64)>) {
    let fs = FaultStorage::new(s.base.clone(), crash_at, mode, crash_at ^ 0x5eed);
    let mut marks = Vec::new();
    let mut disk = s.open(Box::new(fs.clone()), true).unwrap();
    for op in ops {
        let before = fs.count();
        let r = run_op(&mut disk, op);
        marks.push((before, fs.count()));
        if fs.crashed() {
            assert!(
                r.is_err() || !matches!(op, Op::Flush),
                "a flush succeeded across the power failure"
            );
            break;
        }
        r.unwrap_or_else(|e| panic!("{}: {op:?} failed: {e}", s.name));
    }
    drop(disk);
    (fs, marks)
}

/// The allowed values of each sector after a crash at `crash_at`.
fn candidates(
    s: &Setup,
    ops: &[Op],
    marks: &[(u64, u64)],
    crash_at: u64,
) -> (Vec<u8>, HashMap<usize, Vec<Vec<u8>>>) {
    // The model at the last flush that completed before the crash.
    let mut model = s.content.clone();
    let mut since = 0;
    for (i, op) in ops.iter().enumerate().take(marks.len()) {
        if matches!(op, Op::Flush) && marks[i].1 <= crash_at {
            for o in &ops[since..i] {
                model_apply(&mut model, o);
            }
            since = i + 1;
        }
    }
    let base = model.clone();
    let mut alt: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
    for (i, op) in ops.iter().enumerate().take(marks.len()).skip(since) {
        if marks[i].0 > crash_at {
            break;
        }
        for sec in model_apply(&mut model, op) {
            alt.entry(sec)
                .or_default()
                .push(model[sec * SECTOR..(sec + 1) * SECTOR].to_vec());
        }
    }
    (base, alt)
}

fn check_clean(image: &[u8]) -> Result<(), String> {
    let storage = MemStorage::read_only(image.to_vec());
    let mut report = CheckReport::default();
    vhdkit::unstable::vhdx::check::check(&storage, &mut report, false)
        .map_err(|e| e.to_string())?;
    if report.worst() == Some(Severity::Error) {
        return Err(format!("{:?}", report.findings));
    }
    Ok(())
}

fn verify(s: &Setup, ops: &[Op], crash_at: u64, mode: CrashMode, seed: u64) -> Result<u64, String> {
    let ctx = |m: String| format!("{} seed {seed} crash at {crash_at} ({mode:?}): {m}", s.name);
    let (fs, marks) = crash_run(s, ops, crash_at, mode);
    let crashed = fs.crashed();
    let image = fs.durable();
    check_clean(&image).map_err(|m| ctx(format!("check: {m}")))?;
    let disk = s
        .open(Box::new(MemStorage::read_only(image.clone())), false)
        .map_err(|e| ctx(format!("open: {e}")))?;
    if !disk.warnings().is_empty() {
        return Err(ctx(format!("warnings: {:?}", disk.warnings())));
    }
    let got = read_disk(&disk);
    let (base, alt) = candidates(s, ops, &marks, if crashed { crash_at } else { u64::MAX });
    for sec in 0..(SIZE as usize / SECTOR) {
        let r = sec * SECTOR..(sec + 1) * SECTOR;
        if got[r.clone()] == base[r.clone()] {
            continue;
        }
        if alt
            .get(&sec)
            .is_some_and(|v| v.iter().any(|c| c[..] == got[r.clone()]))
        {
            continue;
        }
        return Err(ctx(format!(
            "sector {sec} (offset {:#x}) reads as neither its flushed value nor a later write",
            sec * SECTOR
        )));
    }
    if crash_at.is_multiple_of(16) {
        // Replay onto the file, keep writing, close: clean and as expected.
        let mem = MemStorage::from_vec(image);
        let shared = std::sync::Arc::new(mem);
        let mut disk = s
            .open(Box::new(shared.clone()), true)
            .map_err(|e| ctx(format!("read-write open: {e}")))?;
        let mut expect = read_disk(&disk);
        let data = vec![0xa5u8; 8192];
        let at = (crash_at * 4096) % (SIZE - 8192);
        disk.write_at(&data, at)
            .map_err(|e| ctx(format!("write after replay: {e}")))?;
        disk.close().map_err(|e| ctx(format!("close: {e}")))?;
        drop(disk);
        expect[at as usize..at as usize + 8192].copy_from_slice(&data);
        let after = shared.to_vec();
        check_clean(&after).map_err(|m| ctx(format!("check after replay and write: {m}")))?;
        let disk = s
            .open(Box::new(MemStorage::read_only(after)), false)
            .map_err(|e| ctx(e.to_string()))?;
        if read_disk(&disk) != expect {
            return Err(ctx("content after replay and write".into()));
        }
    }
    Ok(fs.count())
}

/// Crash at every operation of the workload in both fault models.
fn crash_everywhere(s: &Setup, seed: u64, n: usize) -> usize {
    let ops = workload(seed, n);
    // The uncrashed run: its final state is checked too, and it counts the
    // operations there are to crash at.
    let total = verify(s, &ops, u64::MAX, CrashMode::Prefix { tear: false }, seed).unwrap();
    let mut points = 0;
    let mut failures = Vec::new();
    for crash_at in 0..total {
        for mode in [
            CrashMode::Prefix {
                tear: crash_at % 2 == 1,
            },
            CrashMode::Subset,
        ] {
            points += 1;
            if let Err(e) = verify(s, &ops, crash_at, mode, seed) {
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {points} crash states failed:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    println!(
        "{}: seed {seed}: {total} storage operations, {points} crash states, all clean",
        s.name
    );
    points
}

#[test]
fn dynamic_vhdx_survives_a_crash_at_every_storage_operation() {
    let s = dynamic_setup();
    let points = crash_everywhere(&s, 1, 110);
    assert!(points >= 300, "only {points} crash states");
}

#[test]
fn differencing_vhdx_survives_a_crash_at_every_storage_operation() {
    let s = differencing_setup();
    let points = crash_everywhere(&s, 2, 110);
    assert!(points >= 300, "only {points} crash states");
}
