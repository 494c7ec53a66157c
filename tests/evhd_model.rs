//! Model test: random writes, flushes, reopens and unflushed drops on an
//! EVHD against a flat `Vec<u8>`, for both ciphers.

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use vhdkit::CipherId;
use vhdkit::FastPaths;
use vhdkit::MemStorage;
use vhdkit::PrivateKey;
use vhdkit::{EvhdBuilder, EvhdDisk};
use vhdkit::{OpenOptions, VirtualDisk};

fn key() -> &'static Arc<PrivateKey> {
    static K: OnceLock<Arc<PrivateKey>> = OnceLock::new();
    K.get_or_init(|| Arc::new(PrivateKey::generate(2048).expect("keygen")))
}

/// A memory image shared between the test and the disk.
type Shared = Arc<MemStorage>;

const BS: u64 = 4096;
const SIZE: u64 = 40 * BS;

#[derive(Debug, Clone)]
enum Op {
    /// Write `len` bytes of a pattern seeded by `seed` at `offset`.
    Write {
        offset: u64,
        len: u64,
        seed: u8,
    },
    /// Write whole blocks `block..block + count` through
    /// `write_in_place` (sealed in the caller's buffer), a pattern seeded by
    /// `seed`.
    WriteBlocks {
        block: u64,
        count: u64,
        seed: u8,
    },
    /// Write zeros.
    Zero {
        offset: u64,
        len: u64,
    },
    Flush,
    /// Flush, close and open again.
    Reopen,
    /// Drop without flushing: drop commits, nothing is lost.
    Drop,
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE).prop_flat_map(|o| (Just(o), 1..=(SIZE - o).min(6 * BS)));
    prop_oneof![
        6 => (range.clone(), any::<u8>()).prop_map(|((offset, len), seed)| Op::Write { offset, len, seed }),
        2 => (0..SIZE / BS)
            .prop_flat_map(|b| (Just(b), 1..=(SIZE / BS - b).min(12), any::<u8>()))
            .prop_map(|(block, count, seed)| Op::WriteBlocks { block, count, seed }),
        1 => range.prop_map(|(offset, len)| Op::Zero { offset, len }),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Drop),
    ]
}

fn open(mem: &Shared) -> EvhdDisk {
    let opts = OpenOptions::new().writable(true).key(key().clone());
    EvhdDisk::open(Box::new(mem.clone()), None, &opts).expect("open")
}

fn run(cipher: CipherId, ops: &[Op]) {
    let mem = Arc::new(MemStorage::new());
    let mut disk = EvhdBuilder::new(SIZE)
        .block_size(BS)
        .cipher(cipher)
        .recipient(key().public().clone(), "model")
        .signer(key().clone())
        .create(Box::new(mem.clone()), None)
        .unwrap();
    // A low epoch limit makes the model cross key epochs too.
    disk.set_epoch_write_limit(50);
    let mut model = vec![0u8; SIZE as usize];
    for op in ops {
        match op {
            Op::Write { offset, len, seed } => {
                let buf: Vec<u8> = (0..*len)
                    .map(|i| seed.wrapping_add((i % 253) as u8) | 1)
                    .collect();
                disk.write_at(&buf, *offset).unwrap();
                model[*offset as usize..(*offset + *len) as usize].copy_from_slice(&buf);
            }
            Op::WriteBlocks { block, count, seed } => {
                let (offset, len) = ((block * BS) as usize, (count * BS) as usize);
                let data: Vec<u8> = (0..len)
                    .map(|i| seed.wrapping_add((i % 251) as u8) | 1)
                    .collect();
                let mut buf = data.clone();
                disk.write_in_place(&mut buf, offset as u64).unwrap();
                model[offset..offset + len].copy_from_slice(&data);
            }
            Op::Zero { offset, len } => {
                disk.write_at(&vec![0u8; *len as usize], *offset).unwrap();
                model[*offset as usize..(*offset + *len) as usize].fill(0);
            }
            Op::Flush => {
                disk.flush().unwrap();
            }
            Op::Reopen => {
                disk.flush().unwrap();
                drop(disk);
                disk = open(&mem);
                disk.set_epoch_write_limit(50);
            }
            Op::Drop => {
                drop(disk);
                disk = open(&mem);
                disk.set_epoch_write_limit(50);
            }
        }
        let mut buf = vec![0u8; SIZE as usize];
        disk.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, model, "after {op:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_writes_gcm(ops in prop::collection::vec(op(), 1..40)) {
        run(CipherId::Aes256Gcm, &ops);
    }

    #[test]
    fn random_writes_gcm_siv(ops in prop::collection::vec(op(), 1..40)) {
        run(CipherId::Aes256GcmSiv, &ops);
    }
}
