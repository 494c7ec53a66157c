//! A locked container and an unlocked one are different types: an
//! `EvhdImage` (no key: header, recipients, signature; reads refused) and
//! an `EvhdDisk` (a key unlocked it: reads and writes). Checked on an image
//! an earlier build wrote (`tests/data/evhd/signed.evhd.sparse`, addressed
//! to and signed by `fuzz/test-key.xml`), so the on-disk format is also
//! checked not to have moved.

use std::sync::Arc;

use vhdkit::MemStorage;
use vhdkit::{ErrorKind, OpenOptions, VirtualDisk};
use vhdkit::{EvhdDisk, EvhdImage};
use vhdkit::{KeyFile, PrivateKey};

const SIGNED: &[u8] = include_bytes!("data/evhd/signed.evhd.sparse");

fn key() -> Arc<PrivateKey> {
    let text = include_str!("../fuzz/test-key.xml");
    Arc::new(KeyFile::parse(text).unwrap().into_private().unwrap())
}

/// The file the sparse form (see `fuzz/src/lib.rs`) describes.
fn unsparse(data: &[u8]) -> Vec<u8> {
    let mut rest = data.strip_prefix(b"vhdkSPRS".as_slice()).unwrap();
    let mut file = Vec::new();
    loop {
        let off = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let len = u16::from_le_bytes(rest[4..6].try_into().unwrap()) as usize;
        file.resize(file.len().max(off + len), 0);
        file[off..off + len].copy_from_slice(&rest[6..6 + len]);
        rest = &rest[6 + len..];
        if len == 0 {
            return file;
        }
    }
}

fn storage() -> Box<MemStorage> {
    Box::new(MemStorage::from_vec(unsparse(SIGNED)))
}

/// Block 2 of the content: written over by the pattern 0x5a.
fn block2() -> Vec<u8> {
    vec![0x5a; 4096]
}

#[test]
fn without_a_key_the_container_opens_locked() {
    let d = vhdkit::unstable::evhd::open(storage(), None, &OpenOptions::new()).unwrap();
    assert_eq!(d.virtual_size(), 64 << 10);
    let mut buf = vec![0u8; 4096];
    let e = d.read_at(&mut buf, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyRequired, "{e}");
    assert!(e.to_string().contains(&key().fingerprint().short()), "{e}");
    assert_eq!(d.map(0, 4096).unwrap_err().kind(), ErrorKind::KeyRequired);
    // Out of range is still out of range.
    assert_eq!(
        d.read_at(&mut buf, 64 << 10).unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );

    let image = EvhdImage::open(storage(), None, &OpenOptions::new()).unwrap();
    assert_eq!(image.recipients().len(), 1);
    assert_eq!(image.recipients()[0].key.fingerprint(), key().fingerprint());
    assert_eq!(image.header().sequence, 3);
    // Signed by a key this reader was not told to trust.
    assert!(!image.signature().is_trusted());
    let trusting = OpenOptions::new().trust(key().public().clone());
    let image = EvhdImage::open(storage(), None, &trusting).unwrap();
    assert!(image.signature().is_trusted());
}

#[test]
fn a_disk_needs_a_key() {
    for writable in [false, true] {
        let o = OpenOptions::new().writable(writable);
        let e = EvhdDisk::open(storage(), None, &o).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyRequired, "{e}");
    }
    // A locked image is never writable.
    let o = OpenOptions::new().writable(true).key(key());
    let e = EvhdImage::open(storage(), None, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyRequired, "{e}");
}

#[test]
fn a_key_unlocks_the_disk() {
    let o = OpenOptions::new().key(key());
    let d = vhdkit::unstable::evhd::open(storage(), None, &o).unwrap();
    let mut buf = vec![0u8; 4096];
    d.read_at(&mut buf, 2 * 4096).unwrap();
    assert_eq!(buf, block2());

    let mut d = EvhdDisk::open(storage(), None, &o).unwrap();
    assert!(d.signature().is_trusted());
    assert_eq!(d.image().recipients(), d.recipients());
    assert!(d.bad_pages().is_empty());
    d.read_at(&mut buf, 2 * 4096).unwrap();
    assert_eq!(buf, block2());
    // Opened read-only: writes are refused, the disk stays usable.
    let e = d.write_at(&buf, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
}

#[test]
fn an_unlocked_disk_writes_and_commits() {
    let mem = Arc::new(MemStorage::from_vec(unsparse(SIGNED)));
    let o = OpenOptions::new().writable(true).key(key());
    let mut d = EvhdDisk::open(Box::new(mem.clone()), None, &o).unwrap();
    d.write_at(&[0xc3; 4096], 0).unwrap();
    d.close().unwrap();
    drop(d);
    let d = EvhdDisk::open(Box::new(mem.clone()), None, &OpenOptions::new().key(key())).unwrap();
    assert_eq!(d.header().sequence, 4);
    let mut buf = vec![0u8; 2 * 4096];
    d.read_at(&mut buf, 0).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0xc3));
    // Block 1 kept the converted content: byte j is (7 + j) % 251.
    assert!(
        buf[4096..]
            .iter()
            .enumerate()
            .all(|(j, &b)| b == ((7 + j) % 251) as u8)
    );
}
