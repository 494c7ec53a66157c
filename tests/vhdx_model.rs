//! Model-based property test of VHDX writing: random writes (unaligned,
//! crossing blocks, all-zero, at the end of the disk), discards, flushes and
//! close-and-reopen on dynamic and differencing disks, checked against a
//! flat `Vec<u8>` after every step; at every reopen `check` must be clean.

mod common;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

use common::Rng;
use vhdkit::Discard;
use vhdkit::VhdxBuilder;
use vhdkit::unstable::chain::Chain;
use vhdkit::unstable::vhdx::VhdxDisk;
use vhdkit::{OpenOptions, VirtualDisk};

const MIB: u64 = 1 << 20;
/// Not a whole number of blocks: the last block is partial.
const SIZE: u64 = 5 * MIB + 12 * 1024;
const BLOCK: u64 = MIB;

#[derive(Debug, Clone)]
enum Op {
    Write {
        offset: u64,
        len: usize,
        fill: Option<u64>,
    },
    Discard {
        offset: u64,
        len: u64,
    },
    Flush,
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let blocks = SIZE.div_ceil(BLOCK);
    let offset = prop_oneof![
        0..SIZE,
        (0..blocks, 0u64..2048).prop_map(|(b, d)| (b * BLOCK).saturating_sub(1024) + d),
        (SIZE - 70_000)..SIZE,
    ];
    let fill = prop_oneof![3 => any::<u64>().prop_map(Some), 1 => Just(None)];
    prop_oneof![
        6 => (offset.clone(), 1usize..300_000, fill)
            .prop_map(|(o, l, f)| Op::Write { offset: o.min(SIZE - 1), len: l.min((SIZE - o.min(SIZE - 1)) as usize), fill: f }),
        1 => (0..blocks, 1u64..4, 0u64..4096).prop_map(|(b, n, d)| {
            let offset = (b * BLOCK).saturating_sub(d);
            Op::Discard { offset, len: (n * BLOCK).min(SIZE - offset) }
        }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

fn open(path: &Path, parent: Option<&PathBuf>) -> VhdxDisk {
    let storage = vhdkit::FileStorage::open(path, true).unwrap();
    VhdxDisk::open(
        Box::new(storage),
        Some(path.to_path_buf()),
        &OpenOptions::new()
            .writable(true)
            .parent_path(parent.cloned()),
        &Chain::default(),
    )
    .unwrap()
}

fn read_range(disk: &dyn VirtualDisk, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    disk.read_at(&mut v, offset).unwrap();
    v
}

fn run(ops: &[Op], differencing: bool, sector: u32) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vhdx");
    let mut model = vec![0u8; SIZE as usize];
    let parent = if differencing {
        let p = dir.path().join("p.vhdx");
        Rng::new(3).fill(&mut model);
        model[(2 * MIB) as usize..(3 * MIB) as usize].fill(0);
        let mut pd = vhdkit::unstable::vhdx::create(
            &p,
            VhdxBuilder::new(SIZE)
                .block_size(2 << 20)
                .logical_sector_size(sector),
        )
        .unwrap();
        pd.write_at(&model, 0).unwrap();
        pd.close().unwrap();
        drop(pd);
        vhdkit::unstable::vhdx::create(
            &path,
            VhdxBuilder::new(0)
                .differencing(&p)
                .block_size(BLOCK as u32),
        )
        .unwrap();
        Some(p)
    } else {
        vhdkit::unstable::vhdx::create(
            &path,
            VhdxBuilder::new(SIZE)
                .block_size(BLOCK as u32)
                .logical_sector_size(sector),
        )
        .unwrap();
        None
    };
    let mut disk = open(&path, parent.as_ref());
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Write { offset, len, fill } => {
                let mut data = vec![0u8; len];
                if let Some(seed) = fill {
                    Rng::new(seed).fill(&mut data);
                }
                disk.write_at(&data, offset).unwrap();
                model[offset as usize..offset as usize + len].copy_from_slice(&data);
                // The written range and its surroundings read as the model.
                let a = offset.saturating_sub(4096);
                let b = (offset + len as u64 + 4096).min(SIZE);
                prop_assert!(
                    read_range(&disk, a, (b - a) as usize) == model[a as usize..b as usize],
                    "step {step}: {op:?}"
                );
            }
            Op::Discard { offset, len } => {
                let n = disk.discard(offset, len).unwrap();
                let end = offset + len;
                let first = offset.div_ceil(BLOCK) * BLOCK;
                let last = if end == SIZE {
                    SIZE
                } else {
                    end / BLOCK * BLOCK
                };
                let expect = last.saturating_sub(first);
                prop_assert_eq!(n, expect, "step {}: {:?}", step, op);
                if first < last {
                    model[first as usize..last as usize].fill(0);
                }
            }
            Op::Flush => disk.flush().unwrap(),
            Op::Reopen => {
                disk.close().unwrap();
                drop(disk);
                let r = vhdkit::check(
                    &path,
                    &OpenOptions::new().parent_path(parent.clone()),
                    false,
                )
                .unwrap();
                prop_assert_eq!(r.exit_code(), 0, "step {}: {:?}", step, r.findings);
                disk = open(&path, parent.as_ref());
                prop_assert!(
                    common::read_disk(&disk) == model,
                    "step {step}: content after reopen"
                );
            }
        }
    }
    disk.close().unwrap();
    drop(disk);
    let disk = open(&path, parent.as_ref());
    prop_assert!(common::read_disk(&disk) == model, "final content");
    Ok(())
}

fn config() -> Config {
    Config {
        cases: 32,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn dynamic_vhdx_matches_a_flat_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run(&ops, false, 512)?;
    }

    #[test]
    fn dynamic_4k_vhdx_matches_a_flat_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run(&ops, false, 4096)?;
    }

    #[test]
    fn differencing_vhdx_matches_a_flat_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run(&ops, true, 512)?;
    }

    #[test]
    fn differencing_4k_vhdx_matches_a_flat_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run(&ops, true, 4096)?;
    }
}
