//! Crash safety of EVHD: a storage that stops persisting after its N-th
//! write or flush (tearing that write in half), a mixed workload, a crash
//! at every N. After each crash the image opens with the key and every
//! block reads as its last flushed version or a later one, never with an
//! authentication error. Also: a rekey interrupted at every commit resumes,
//! and a write that fails (a full disk) leaves a disk that works on.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use common::torn::{Failing, Faulty, Handle};
use vhdkit::PrivateKey;
use vhdkit::{EvhdBuilder, EvhdDisk};
use vhdkit::{MemStorage, Storage};
use vhdkit::{OpenOptions, VirtualDisk};

fn key() -> &'static Arc<PrivateKey> {
    static K: OnceLock<Arc<PrivateKey>> = OnceLock::new();
    K.get_or_init(|| Arc::new(PrivateKey::generate(2048).expect("keygen")))
}

const BS: u64 = 4096;
const BLOCKS: u64 = 24;
const SIZE: u64 = BLOCKS * BS;

fn opts(writable: bool) -> OpenOptions {
    OpenOptions::new().writable(writable).key(key().clone())
}

/// A fresh, flushed, empty image.
fn base_image() -> Vec<u8> {
    let mem = Arc::new(MemStorage::new());
    let d = EvhdBuilder::new(SIZE)
        .block_size(BS)
        .recipient(key().public().clone(), "crash")
        .signer(key().clone())
        .create(Box::new(mem.clone()), None)
        .unwrap();
    drop(d);
    mem.to_vec()
}

/// One step of the workload.
#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: u64, byte: u8 },
    Flush,
}

/// A deterministic mixed workload: partial, whole and multi-block writes,
/// zero writes and flushes.
fn workload() -> Vec<Op> {
    let mut ops = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    for i in 0..70u64 {
        let kind = next(6);
        let (offset, len) = match kind {
            0 => (next(SIZE - 512) / 512 * 512, 512),
            1 => (next(BLOCKS) * BS, BS),
            2 => {
                let b = next(BLOCKS - 4);
                (b * BS + 1024, 3 * BS)
            }
            3 => (next(BLOCKS - 8) * BS, 8 * BS),
            _ => (next(BLOCKS) * BS + 100, 300),
        };
        let byte = if next(8) == 0 { 0 } else { (i % 250 + 1) as u8 };
        ops.push(Op::Write { offset, len, byte });
        if next(4) == 0 {
            ops.push(Op::Flush);
        }
    }
    ops.push(Op::Flush);
    ops
}

/// Run the workload on `limit`-faulty storage; returns the storage and,
/// per block, the content at the last completed flush and every later one.
fn run(base: &[u8], ops: &[Op], limit: u64) -> (Arc<Faulty>, Vec<Vec<Vec<u8>>>, bool) {
    let faulty = Faulty::new(base.to_vec(), limit);
    let mut model = vec![0u8; SIZE as usize];
    let mut allowed: Vec<Vec<Vec<u8>>> =
        (0..BLOCKS).map(|_| vec![vec![0u8; BS as usize]]).collect();
    let disk = EvhdDisk::open(Box::new(Handle(faulty.clone())), None, &opts(true));
    let mut disk = match disk {
        Ok(d) => d,
        Err(_) => return (faulty, allowed, false),
    };
    let blk = |m: &[u8], b: u64| m[(b * BS) as usize..((b + 1) * BS) as usize].to_vec();
    for op in ops {
        match op {
            Op::Write { offset, len, byte } => {
                let buf = vec![*byte; *len as usize];
                model[*offset as usize..(*offset + *len) as usize].copy_from_slice(&buf);
                for b in offset / BS..(offset + len).div_ceil(BS) {
                    allowed[b as usize].push(blk(&model, b));
                }
                if disk.write_at(&buf, *offset).is_err() {
                    return (faulty, allowed, false);
                }
            }
            Op::Flush => {
                if disk.flush().is_err() {
                    return (faulty, allowed, false);
                }
                for b in 0..BLOCKS {
                    allowed[b as usize] = vec![blk(&model, b)];
                }
            }
        }
    }
    (faulty, allowed, true)
}

fn verify(image: Vec<u8>, allowed: &[Vec<Vec<u8>>], n: u64) {
    let d = EvhdDisk::open(Box::new(MemStorage::from_vec(image)), None, &opts(true))
        .unwrap_or_else(|e| panic!("crash at op {n}: open failed: {e}"));
    let mut buf = vec![0u8; BS as usize];
    for b in 0..BLOCKS {
        d.read_at(&mut buf, b * BS)
            .unwrap_or_else(|e| panic!("crash at op {n}: block {b}: {e}"));
        assert!(
            allowed[b as usize].contains(&buf),
            "crash at op {n}: block {b} holds neither its last flushed version nor a later one"
        );
    }
}

#[test]
fn crash_at_every_operation() {
    let base = base_image();
    let ops = workload();
    let (f, _, finished) = run(&base, &ops, u64::MAX);
    assert!(finished);
    let total = f.ops.load(Ordering::SeqCst);
    assert!(total > 200, "the workload makes {total} storage operations");
    for n in 1..=total {
        let (f, allowed, finished) = run(&base, &ops, n);
        assert!(!finished || n == total, "op {n} of {total}");
        verify(f.snapshot(), &allowed, n);
    }
    eprintln!("{total} crash points verified");
}

#[test]
fn interrupted_rekey_resumes() {
    let content: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8 | 1).collect();
    let f = Faulty::new(base_image(), u64::MAX);
    {
        let mut d = EvhdDisk::open(Box::new(Handle(f.clone())), None, &opts(true)).unwrap();
        d.write_at(&content, 0).unwrap();
        d.flush().unwrap();
    }
    let image = f.snapshot();
    // Operations of a whole rekey that commits every 4 blocks (opening an
    // image with no pending journal writes nothing).
    let count = Faulty::new(image.clone(), u64::MAX);
    let mut d = EvhdDisk::open(Box::new(Handle(count.clone())), None, &opts(true)).unwrap();
    d.set_rekey_batch(4);
    d.rekey(&mut |_, _| {}).unwrap();
    let total = count.ops.load(Ordering::SeqCst);
    let mut resumed = 0;
    for n in 1..=total {
        let crash = Faulty::new(image.clone(), n);
        let mut d = EvhdDisk::open(Box::new(Handle(crash.clone())), None, &opts(true)).unwrap();
        d.set_rekey_batch(4);
        let _ = d.rekey(&mut |_, _| {});
        drop(d);
        let mut d = EvhdDisk::open(
            Box::new(MemStorage::from_vec(crash.snapshot())),
            None,
            &opts(true),
        )
        .unwrap_or_else(|e| panic!("rekey crash at op {n}: {e}"));
        let mut buf = vec![0u8; SIZE as usize];
        d.read_at(&mut buf, 0)
            .unwrap_or_else(|e| panic!("rekey crash at op {n}: {e}"));
        assert_eq!(buf, content, "rekey crash at op {n}: content changed");
        if d.rekey_in_progress() {
            resumed += 1;
        }
        d.rekey(&mut |_, _| {}).unwrap();
        assert!(!d.rekey_in_progress());
        d.read_at(&mut buf, 0).unwrap();
        assert_eq!(
            buf, content,
            "after resuming the rekey interrupted at op {n}"
        );
        assert_eq!(d.header().epoch_keys.len(), 1, "old epoch keys dropped");
    }
    assert!(resumed > 0, "some crash points left a rekey in progress");
    eprintln!("{total} rekey crash points, {resumed} resumed");
}

/// A write that fails part-way (new slots past the end of the file cannot
/// be stored) reports the error and changes nothing: the disk still reads
/// as before, takes later writes, and what it flushes opens again.
#[test]
fn failed_write_leaves_a_usable_disk() {
    let base = base_image();
    // A full disk that gets space back: writes past `fail_from` fail.
    let flaky = Failing::new(
        MemStorage::from_vec(base),
        "no space left (injected)",
        false,
    );
    let mut d = EvhdDisk::open(Box::new(flaky.clone()), None, &opts(true)).unwrap();
    let first = vec![0x11u8; 2 * BS as usize];
    d.write_at(&first, 0).unwrap();
    d.flush().unwrap();
    let mut model = vec![0u8; SIZE as usize];
    model[..first.len()].copy_from_slice(&first);

    // Blocks 4..20 need 16 new slots; the first few fit, the rest fail.
    let end = flaky.mem.len().unwrap();
    flaky.fail_from.store(end + 3 * BS, Ordering::SeqCst);
    flaky.failing.store(true, Ordering::SeqCst);
    let big = vec![0x22u8; 16 * BS as usize];
    let err = d.write_at(&big, 4 * BS).unwrap_err().to_string();
    assert!(err.contains("no space left"), "{err}");
    let mut now = vec![0u8; SIZE as usize];
    d.read_at(&mut now, 0).unwrap();
    assert!(now == model, "a failed write changed the disk");

    flaky.failing.store(false, Ordering::SeqCst);
    let later = vec![0x33u8; BS as usize];
    d.write_at(&later, 6 * BS).unwrap();
    model[6 * BS as usize..7 * BS as usize].copy_from_slice(&later);
    d.flush().unwrap();
    drop(d);
    let d = EvhdDisk::open(Box::new(flaky.clone()), None, &opts(false)).unwrap();
    d.read_at(&mut now, 0).unwrap();
    assert!(now == model, "the reopened disk differs");
}
