//! Model-based property tests of VHD writing: random sequences of writes
//! (unaligned, block-crossing, all-zero, at the end of the disk) on dynamic
//! and differencing disks, checked after every step against a flat
//! `Vec<u8>`, across close and reopen, and across simulated crashes.
//!
//! Crashes: every write the disk makes to its storage is logged. A crash
//! state keeps everything written before the last flush and any subset of
//! what came after (the system may persist those in any order). In such a
//! state the image must open without warnings, `check` must find no damage
//! (leaked space is allowed), bytes outside the interrupted write must read
//! as before it, and bytes inside it as either before or after.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

use common::{Rng, random_bytes};
use vhdkit::VhdBuilder;
use vhdkit::report::CheckReport;
use vhdkit::unstable::chain::Chain;
use vhdkit::{MemStorage, Storage};
use vhdkit::{OpenOptions, VirtualDisk};

/// One storage operation the disk made.
#[derive(Debug, Clone)]
enum Event {
    Write(u64, Vec<u8>),
    SetLen(u64),
    Flush,
}

/// Memory storage that logs every change, shared with the test.
#[derive(Debug, Default)]
struct Recorder {
    mem: MemStorage,
    log: Mutex<Vec<Event>>,
}

#[derive(Debug, Clone)]
struct Rec(Arc<Recorder>);

impl Rec {
    fn new(bytes: Vec<u8>) -> Self {
        Rec(Arc::new(Recorder {
            mem: MemStorage::from_vec(bytes),
            log: Mutex::default(),
        }))
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.mem.to_vec()
    }
    fn take_log(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.log.lock().unwrap())
    }
}

impl Storage for Rec {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0
            .log
            .lock()
            .unwrap()
            .push(Event::Write(offset, buf.to_vec()));
        self.0.mem.write_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.0.mem.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.log.lock().unwrap().push(Event::SetLen(len));
        self.0.mem.set_len(len)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.log.lock().unwrap().push(Event::Flush);
        Ok(())
    }
    fn is_writable(&self) -> bool {
        true
    }
}

/// Where the bytes of a write come from.
#[derive(Debug, Clone, Copy)]
enum Fill {
    Random(u64),
    Zero,
    Byte(u8),
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        offset: u64,
        len: usize,
        fill: Fill,
        /// Seed of the simulated crashes during this write.
        crash: u64,
    },
    Reopen,
}

fn fill_strategy() -> impl Strategy<Value = Fill> {
    prop_oneof![
        3 => any::<u64>().prop_map(Fill::Random),
        2 => Just(Fill::Zero),
        1 => any::<u8>().prop_map(Fill::Byte),
    ]
}

/// Offsets: anywhere, close to a block edge, or close to the end.
fn offset_strategy(size: u64, bs: u64) -> impl Strategy<Value = u64> {
    let blocks = size.div_ceil(bs);
    prop_oneof![
        0..size,
        (0..=blocks, -1500i64..1500)
            .prop_map(move |(b, d)| { (b * bs).saturating_add_signed(d).min(size) }),
        (0..4000u64).prop_map(move |back| size.saturating_sub(back)),
    ]
}

fn op_strategy(size: u64, bs: u64) -> impl Strategy<Value = Op> {
    let max_len = (3 * bs).clamp(2048, 300_000) as usize;
    let write = (
        offset_strategy(size, bs),
        0..max_len,
        fill_strategy(),
        any::<u64>(),
    )
        .prop_map(move |(offset, len, fill, crash)| Op::Write {
            offset,
            len: len.min((size - offset) as usize),
            fill,
            crash,
        });
    prop_oneof![8 => write, 1 => Just(Op::Reopen)]
}

/// Disk size (sectors), block size, operations.
fn case_strategy() -> impl Strategy<Value = (u64, u64, Vec<Op>)> {
    (
        1u64..2048,
        prop::sample::select(vec![512u64, 4096, 65536, 1 << 20, 2 << 20]),
    )
        .prop_flat_map(|(sectors, bs)| {
            let size = sectors * 512;
            (
                Just(size),
                Just(bs),
                prop::collection::vec(op_strategy(size, bs), 1..20),
            )
        })
}

fn data_for(fill: Fill, len: usize) -> Vec<u8> {
    match fill {
        Fill::Random(seed) => random_bytes(len, seed),
        Fill::Zero => vec![0u8; len],
        Fill::Byte(b) => vec![b; len],
    }
}

/// What a test case needs to (re)open its disk.
struct Setup {
    /// Parent of differencing disks.
    parent: Option<PathBuf>,
}

impl Setup {
    fn opts(&self) -> OpenOptions {
        OpenOptions::new()
            .writable(true)
            .parent_path(self.parent.clone())
    }

    fn open(&self, storage: Rec) -> Result<Box<dyn VirtualDisk>, TestCaseError> {
        vhdkit::unstable::open_storage(Box::new(storage), None, &self.opts(), &Chain::default())
            .map_err(|e| TestCaseError::fail(format!("reopen: {e}")))
    }
}

fn check_storage(storage: &dyn Storage) -> CheckReport {
    let mut report = CheckReport::default();
    vhdkit::unstable::vhd::check::check(storage, &mut report, false).expect("check runs");
    report
}

fn assert_reads(disk: &dyn VirtualDisk, model: &[u8], rng: &mut Rng) -> Result<(), TestCaseError> {
    prop_assert_eq!(disk.virtual_size(), model.len() as u64);
    let mut all = vec![0u8; model.len()];
    disk.read_at(&mut all, 0)
        .map_err(|e| TestCaseError::fail(format!("read: {e}")))?;
    if all != model {
        let first = all.iter().zip(model).position(|(a, b)| a != b).unwrap();
        return Err(TestCaseError::fail(format!(
            "content differs from the model at {first:#x}"
        )));
    }
    // An unaligned piece read alone gives the same bytes.
    let off = rng.below(model.len() as u64) as usize;
    let len = rng.below((model.len() - off) as u64 + 1) as usize;
    let mut piece = vec![0u8; len];
    disk.read_at(&mut piece, off as u64)
        .map_err(|e| TestCaseError::fail(format!("read: {e}")))?;
    prop_assert!(
        piece == model[off..off + len],
        "piece {:#x}+{:#x}",
        off,
        len
    );
    // The map covers the disk in order; zero runs read as zeros.
    let map = disk
        .map(0, model.len() as u64)
        .map_err(|e| TestCaseError::fail(format!("map: {e}")))?;
    let mut pos = 0;
    for e in &map {
        prop_assert_eq!(e.start, pos);
        if e.kind == vhdkit::ExtentKind::Zero {
            prop_assert!(
                model[e.start as usize..e.end() as usize]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
        pos = e.end();
    }
    prop_assert_eq!(pos, model.len() as u64);
    Ok(())
}

/// Rebuild the storage as a crash could leave it: `before`, then the
/// events of `log` up to a random cut, of which the writes after the last
/// flush land only in part.
fn crash_state(before: &[u8], log: &[Event], rng: &mut Rng) -> Vec<u8> {
    let cut = rng.below(log.len() as u64 + 1) as usize;
    let last_flush = log[..cut]
        .iter()
        .rposition(|e| matches!(e, Event::Flush))
        .map_or(0, |i| i + 1);
    let mem = MemStorage::from_vec(before.to_vec());
    for (i, e) in log[..cut].iter().enumerate() {
        let lands = i < last_flush || rng.below(2) == 0;
        match e {
            Event::Write(off, data) if lands => mem.write_at(data, *off).unwrap(),
            Event::SetLen(len) if lands => mem.set_len(*len).unwrap(),
            _ => {}
        }
    }
    mem.to_vec()
}

fn assert_crash_states(
    setup: &Setup,
    before: &[u8],
    log: &[Event],
    old: &[u8],
    new: &[u8],
    range: (usize, usize),
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    for _ in 0..3 {
        let state = crash_state(before, log, &mut rng);
        let storage = Rec::new(state);
        let report = check_storage(&storage);
        prop_assert!(
            report.exit_code() != 2,
            "check after a crash finds damage: {:?}",
            report.findings
        );
        let disk = setup.open(storage)?;
        prop_assert!(
            disk.info().warnings.is_empty(),
            "warnings after a crash: {:?}",
            disk.info().warnings
        );
        let mut got = vec![0u8; old.len()];
        disk.read_at(&mut got, 0)
            .map_err(|e| TestCaseError::fail(format!("read after crash: {e}")))?;
        let (a, b) = range;
        prop_assert!(
            got[..a] == old[..a],
            "after a crash, bytes before the write changed"
        );
        prop_assert!(
            got[b..] == old[b..],
            "after a crash, bytes after the write changed"
        );
        if let Some(i) = (a..b).find(|&i| got[i] != old[i] && got[i] != new[i]) {
            return Err(TestCaseError::fail(format!(
                "after a crash, byte {i:#x} is {:#x} (old {:#x}, new {:#x}, write {a:#x}..{b:#x})",
                got[i], old[i], new[i]
            )));
        }
    }
    Ok(())
}

/// Run `ops` on a fresh disk made by `make`, against the model `model`.
fn run_ops(
    setup: &Setup,
    storage: Rec,
    mut disk: Box<dyn VirtualDisk>,
    mut model: Vec<u8>,
    ops: &[Op],
    crashes: bool,
) -> Result<(), TestCaseError> {
    let mut storage = storage;
    let mut rng = Rng::new(ops.len() as u64);
    assert_reads(disk.as_ref(), &model, &mut rng)?;
    for op in ops {
        match *op {
            Op::Write {
                offset,
                len,
                fill,
                crash,
            } => {
                let data = data_for(fill, len);
                let before = storage.bytes();
                storage.take_log();
                let old = model.clone();
                disk.write_at(&data, offset)
                    .map_err(|e| TestCaseError::fail(format!("write {offset:#x}+{len:#x}: {e}")))?;
                model[offset as usize..offset as usize + len].copy_from_slice(&data);
                let log = storage.take_log();
                if crashes {
                    let range = (offset as usize, offset as usize + len);
                    assert_crash_states(setup, &before, &log, &old, &model, range, crash)?;
                }
            }
            Op::Reopen => {
                disk.flush().unwrap();
                drop(disk);
                storage = Rec::new(storage.bytes());
                disk = setup.open(storage.clone())?;
            }
        }
        assert_reads(disk.as_ref(), &model, &mut rng)?;
        let report = check_storage(&storage);
        prop_assert_eq!(report.exit_code(), 0, "check: {:?}", report.findings);
    }
    // A last close and reopen from the same bytes.
    disk.flush().unwrap();
    drop(disk);
    let disk = setup.open(Rec::new(storage.bytes()))?;
    assert_reads(disk.as_ref(), &model, &mut rng)
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn dynamic_vhd_matches_flat_model((size, bs, ops) in case_strategy()) {
        let setup = Setup { parent: None };
        let storage = Rec::new(Vec::new());
        let disk = VhdBuilder::new(size)
            .block_size(bs as u32)
            .create(Box::new(storage.clone()), None)
            .unwrap();
        run_ops(&setup, storage, Box::new(disk), vec![0u8; size as usize], &ops, true)?;
    }

    #[test]
    fn differencing_vhd_matches_flat_model(
        (size, bs, ops) in case_strategy(),
        parent_bs in prop::sample::select(vec![512u32, 65536, 2 << 20]),
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let parent = make_parent(dir.path(), size, parent_bs, seed);
        let model = common::read_image(&parent);
        let setup = Setup { parent: Some(parent.clone()) };
        let storage = Rec::new(Vec::new());
        let disk = VhdBuilder::new(0)
            .differencing(&parent)
            .block_size(bs as u32)
            .create(Box::new(storage.clone()), None)
            .unwrap();
        run_ops(&setup, storage, Box::new(disk), model, &ops, true)?;
    }
}

/// A dynamic parent of `size` bytes with random content, some of it zero
/// and some blocks left unallocated.
fn make_parent(dir: &Path, size: u64, bs: u32, seed: u64) -> PathBuf {
    let path = dir.join("parent.vhd");
    let mut d = vhdkit::unstable::vhd::create(&path, VhdBuilder::new(size).block_size(bs)).unwrap();
    d.set_write_barriers(false);
    let mut rng = Rng::new(seed);
    let mut content = vec![0u8; size as usize];
    rng.fill(&mut content);
    // Zero out a few stretches.
    for _ in 0..3 {
        let a = rng.below(size) as usize;
        let b = (a + rng.below(size / 2 + 1) as usize).min(size as usize);
        content[a..b].fill(0);
    }
    d.write_at(&content, 0).unwrap();
    d.flush().unwrap();
    path
}

proptest! {
    #![proptest_config(config(12))]

    /// The same on real files, reopened by path (the differencing child
    /// finds its parent through its own locators).
    #[test]
    fn file_backed_vhds_match_flat_model(
        (size, bs, ops) in case_strategy(),
        differencing in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.vhd");
        let mut model = vec![0u8; size as usize];
        let builder = if differencing {
            let parent = make_parent(dir.path(), size, 4096, seed);
            model = common::read_image(&parent);
            VhdBuilder::new(0).differencing(parent)
        } else {
            VhdBuilder::new(size)
        };
        let mut disk: Box<dyn VirtualDisk> =
            Box::new(vhdkit::unstable::vhd::create(&path, builder.block_size(bs as u32)).unwrap());
        let opts = OpenOptions::new().writable(true);
        for op in &ops {
            match *op {
                Op::Write { offset, len, fill, .. } => {
                    let data = data_for(fill, len);
                    disk.write_at(&data, offset).unwrap();
                    model[offset as usize..offset as usize + len].copy_from_slice(&data);
                }
                Op::Reopen => {
                    disk.flush().unwrap();
                    drop(disk);
                    disk = vhdkit::open(&path, &opts).unwrap().into();
                }
            }
            prop_assert!(common::read_disk(disk.as_ref()) == model);
        }
        disk.flush().unwrap();
        drop(disk);
        prop_assert!(common::read_image(&path) == model);
        let report = vhdkit::check(&path, &OpenOptions::new(), false).unwrap();
        prop_assert_eq!(report.exit_code(), 0, "{:?}", report.findings);
    }
}
