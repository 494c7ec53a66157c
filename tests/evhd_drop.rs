//! An `EvhdDisk` dropped without `flush` keeps its writes, as a VHDX does:
//! drop commits best effort (errors go to stderr; `flush`/`close` return
//! them).

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use common::torn::Failing;
use vhdkit::PrivateKey;
use vhdkit::{EvhdBuilder, EvhdDisk};
use vhdkit::{FileStorage, MemStorage};
use vhdkit::{OpenOptions, VirtualDisk};

fn key() -> &'static Arc<PrivateKey> {
    static K: OnceLock<Arc<PrivateKey>> = OnceLock::new();
    K.get_or_init(|| Arc::new(PrivateKey::generate(2048).expect("keygen")))
}

const BS: u64 = 4096;
const SIZE: u64 = 64 * BS;

fn content() -> Vec<u8> {
    (0..3 * BS + 700).map(|i| (i % 253) as u8 | 1).collect()
}

#[test]
fn dropped_disk_keeps_writes_in_memory_storage() {
    let mem = Arc::new(MemStorage::new());
    let mut d = EvhdBuilder::new(SIZE)
        .block_size(BS)
        .recipient(key().public().clone(), "drop")
        .create(Box::new(mem.clone()), None)
        .unwrap();
    let data = content();
    d.write_at(&data, 5 * BS + 100).unwrap();
    drop(d);
    let d = EvhdDisk::open(
        Box::new(MemStorage::from_vec(mem.to_vec())),
        None,
        &OpenOptions::new().key(key().clone()),
    )
    .unwrap();
    let mut buf = vec![0u8; data.len()];
    d.read_at(&mut buf, 5 * BS + 100).unwrap();
    assert!(buf == data, "the writes before drop were lost");
}

#[test]
fn dropped_disk_keeps_writes_through_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.evhd");
    let storage = FileStorage::create_new(&path).unwrap();
    let d = EvhdBuilder::new(SIZE)
        .block_size(BS)
        .recipient(key().public().clone(), "drop")
        .signer(key().clone())
        .create(Box::new(storage), Some(path.clone()))
        .unwrap();
    drop(d);
    let data = content();
    {
        let mut d =
            vhdkit::open(&path, &OpenOptions::new().writable(true).key(key().clone())).unwrap();
        d.write_at(&data, 0).unwrap();
        // Dropped here without flush.
    }
    let d = vhdkit::open(&path, &OpenOptions::new().key(key().clone())).unwrap();
    let mut buf = vec![0u8; data.len()];
    d.read_at(&mut buf, 0).unwrap();
    assert!(buf == data, "the writes before drop were lost");
}

/// A drop whose commit fails does not panic and leaves the last committed
/// state; `flush` reports the same failure as an error.
#[test]
fn failed_commit_at_drop_keeps_the_committed_state() {
    // Fails every write and flush once `failing` is set.
    let st = Failing::new(MemStorage::new(), "device gone (injected)", true);
    let mut d = EvhdBuilder::new(SIZE)
        .block_size(BS)
        .recipient(key().public().clone(), "drop")
        .create(Box::new(st.clone()), None)
        .unwrap();
    let first = vec![0x5au8; BS as usize];
    d.write_at(&first, 0).unwrap();
    d.flush().unwrap();
    d.write_at(&vec![0x77u8; BS as usize], BS).unwrap();
    st.failing.store(true, Ordering::SeqCst);
    let err = d.flush().unwrap_err().to_string();
    assert!(err.contains("device gone"), "{err}");
    drop(d);
    let d = EvhdDisk::open(
        Box::new(MemStorage::from_vec(st.mem.to_vec())),
        None,
        &OpenOptions::new().key(key().clone()),
    )
    .unwrap();
    let mut buf = vec![0u8; 2 * BS as usize];
    d.read_at(&mut buf, 0).unwrap();
    assert!(buf[..BS as usize] == first[..]);
    assert!(buf[BS as usize..].iter().all(|&b| b == 0));
}
