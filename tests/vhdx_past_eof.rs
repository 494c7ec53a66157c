//! A VHDX whose block allocation table points blocks past the end of the
//! file opens with one warning per run of such blocks, matched by kind
//! (as tests/vhd_check.rs does for VHD).

mod common;

use common::*;
use vhdkit::{OpenOptions, VhdxBuilder};

/// Block size of the test image: the smallest VHDX allows.
const BS: u64 = 1 << 20;
/// Payload block entry state "fully present" ([MS-VHDX] 2.5.1.1).
const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;

#[test]
fn info_merges_a_run_of_vhdx_blocks_past_the_end_into_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.vhdx");
    vhdkit::create_vhdx(&path, VhdxBuilder::new(16 << 20).block_size(BS as u32)).unwrap();
    let mut d = vhdkit::open(&path, &OpenOptions::new().writable(true)).unwrap();
    for block in 0..4u64 {
        d.write_at(&[7u8; 4096], block * BS).unwrap();
    }
    d.close().unwrap();
    drop(d);
    let file = std::fs::read(&path).unwrap();
    let lay = VhdxLayout::parse(&file);
    // With 1 MiB blocks and 512-byte sectors a chunk holds 4096 payload
    // blocks, so the first four entries are blocks 0 to 3.
    let offsets: Vec<u64> = (0..4)
        .map(|b| {
            let e = le64(&file, lay.bat_offset as usize + 8 * b);
            assert_eq!(e & 7, PAYLOAD_BLOCK_FULLY_PRESENT, "block {b}: {e:#x}");
            (e >> 20) << 20
        })
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "blocks allocated in order: {offsets:x?}"
    );
    // Cut inside block 1: blocks 1, 2 and 3 reach past the end.
    let past = past_eof_warnings_after_cut(&path, offsets[1] + 1000);
    assert_eq!(past.len(), 1, "{past:?}");
    assert_eq!(past[0].offset, Some(offsets[1]), "{past:?}");
    assert!(
        past[0].structure.is_some_and(|s| s.starts_with("VHDX")),
        "{past:?}"
    );
}
