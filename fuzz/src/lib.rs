//! The fuzz targets' bodies, shared by the libFuzzer binaries in
//! `fuzz_targets/` and by the corpus replay test of the main test suite
//! (`tests/fuzz_replay.rs` includes this file), plus the sparse input form
//! that lets the fuzzer reach structures far into a file (VHDX and EVHD put
//! theirs at 1 MiB and beyond).

use std::sync::{Arc, OnceLock};

use vhdkit::OpenOptions;
use vhdkit::unstable::chain::Chain;
use vhdkit::{KeyFile, PrivateKey};
use vhdkit::{MemStorage, Storage};

#[path = "evhd_seal.rs"]
pub mod evhd_seal;
#[path = "fs_list.rs"]
pub mod fs_list;
#[path = "nbd_server.rs"]
pub mod nbd_server;
#[path = "vhdx_log.rs"]
pub mod vhdx_log;
#[path = "write_ops.rs"]
pub mod write_ops;

/// Read at most this much of a virtual disk per input.
pub const READ_LIMIT: u64 = 16 << 20;

/// A fuzz target's body: it takes the fuzzer's bytes.
pub type Target = fn(&[u8]);

/// The fuzz targets by name.
pub const TARGETS: [(&str, Target); 9] = [
    ("open_vhd", open_vhd),
    ("open_vhdx", open_vhdx),
    ("open_evhd", open_evhd),
    ("keypair_xml", keypair_xml),
    ("vhdx_log", vhdx_log::run_bytes),
    ("write_ops", write_ops::run_bytes),
    ("nbd_server", nbd_server::run_bytes),
    ("partitions", partitions),
    ("fs_list", fs_list::run_bytes),
];

/// The throw-away key the EVHD seeds are addressed to (`test-key.xml`,
/// made for fuzzing; it protects nothing).
pub fn test_key() -> Arc<PrivateKey> {
    static KEY: OnceLock<Arc<PrivateKey>> = OnceLock::new();
    KEY.get_or_init(|| {
        let k = KeyFile::parse(include_str!("../test-key.xml")).expect("the test key parses");
        Arc::new(k.into_private().expect("the test key is private"))
    })
    .clone()
}

/// The signature of the VHD and VHDX checkers.
type Checker = fn(&dyn Storage, &mut vhdkit::CheckReport, bool) -> vhdkit::Result<()>;

/// Run `check` over the image `data` stands for, then [`exercise`] it.
fn check_and_exercise(data: &[u8], check: Checker) {
    let file = Arc::new(MemStorage::read_only(image_bytes(data)));
    let _ = check(file.as_ref(), &mut vhdkit::CheckReport::default(), false);
    exercise(
        file,
        &OpenOptions::new().allow_missing_parent(true),
        READ_LIMIT,
    );
}

/// Arbitrary bytes (or the sparse form) as a VHD file: check, open, info,
/// map and read.
pub fn open_vhd(data: &[u8]) {
    check_and_exercise(data, vhdkit::unstable::vhd::check::check);
}

/// Arbitrary bytes (or the sparse form) as a VHDX file: check, open
/// (replaying any log into memory), info, map and read.
pub fn open_vhdx(data: &[u8]) {
    check_and_exercise(data, vhdkit::unstable::vhdx::check::check);
}

/// Arbitrary bytes (or the sparse form) as a raw disk: read its partition
/// table, probe each partition's file system, print the table and read
/// the first bytes of each partition through its window.
pub fn partitions(data: &[u8]) {
    use std::io::{Read, Seek, SeekFrom};
    let file = Arc::new(MemStorage::read_only(image_bytes(data)));
    let opts = OpenOptions::new().format(Some(vhdkit::Format::Raw));
    let Ok(disk) = vhdkit::unstable::open_storage(Box::new(file), None, &opts, &Chain::default())
    else {
        return;
    };
    let Ok(table) = vhdkit::partitions::read(disk.as_ref()) else {
        return;
    };
    let _ = vhdkit::partitions::write_text(&table, &mut std::io::sink());
    let mut buf = [0u8; 4096];
    for p in &table.partitions {
        let _ = vhdkit::partitions::probe(disk.as_ref(), p.start, p.size);
        let mut w = vhdkit::partitions::Window::partition(disk.as_ref(), p);
        let _ = w.read(&mut buf);
        let _ = w.seek(SeekFrom::End(-512)).and_then(|_| w.read(&mut buf));
    }
}

/// First bytes of a sealed EVHD input: the rest is the sparse form's
/// records, and the file they describe is re-sealed with the test key
/// ([`evhd_seal::reseal`]) before it is opened.
pub const SEAL_MAGIC: &[u8; 8] = b"vhdkSEAL";

/// The EVHD file an `open_evhd` input stands for: an input in the sealed
/// form ([`SEAL_MAGIC`] and sparse records) re-sealed with the test key,
/// anything else as [`image_bytes`] makes it.
pub fn evhd_bytes(data: &[u8]) -> Vec<u8> {
    let Some(records) = data.strip_prefix(SEAL_MAGIC.as_slice()) else {
        return image_bytes(data);
    };
    let mut sparse = SPARSE_MAGIC.to_vec();
    sparse.extend_from_slice(records);
    let mut file = image_bytes(&sparse);
    evhd_seal::reseal(&mut file, &test_key());
    file
}

/// Arbitrary bytes, the sparse form, or the sealed form (whose mutations
/// get valid CRCs and MACs, so they reach the table, header and journal
/// parsers) as an EVHD opened with the test key: check, open, info, map
/// and read.
pub fn open_evhd(data: &[u8]) {
    let file = Arc::new(MemStorage::read_only(evhd_bytes(data)));
    let mut report = vhdkit::CheckReport::default();
    let _ =
        vhdkit::unstable::evhd::check::check(Box::new(file.clone()), &[test_key()], &mut report);
    exercise(file, &OpenOptions::new().key(test_key()), READ_LIMIT);
}

/// Arbitrary bytes as a key file (KeyPair.xml or PEM). A key that parses
/// must write back in the .NET form and parse again to the same key.
pub fn keypair_xml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(key) = KeyFile::parse(text) else {
        return;
    };
    let fp = key.public().fingerprint().hex();
    let again = match &key {
        KeyFile::Private(k) => KeyFile::parse(&k.to_xml()),
        KeyFile::Public(k) => KeyFile::parse(&k.to_xml()),
    }
    .expect("a key vhdkit wrote parses");
    assert_eq!(again.public().fingerprint().hex(), fp);
}

/// First bytes of an input in the sparse form.
pub const SPARSE_MAGIC: &[u8; 8] = b"vhdkSPRS";

/// Largest file a sparse input may describe. Zero pages cost nothing to
/// describe, so this bounds the memory one input takes.
pub const MAX_SPARSE_LEN: u64 = 64 << 20;

/// The image file an input stands for.
///
/// An input that starts with [`SPARSE_MAGIC`] is a list of records
/// `[u32 LE offset][u16 LE length][length bytes]`: the file is zeros with
/// each record's bytes at its offset, and as long as the furthest record
/// reaches (a record of length 0 only sets the length). Records past
/// [`MAX_SPARSE_LEN`] and a truncated last record are ignored. Any other
/// input is the file itself.
pub fn image_bytes(data: &[u8]) -> Vec<u8> {
    let Some(mut rest) = data.strip_prefix(SPARSE_MAGIC.as_slice()) else {
        return data.to_vec();
    };
    let mut pieces = Vec::new();
    let mut len = 0u64;
    while rest.len() >= 6 {
        let offset = u64::from(u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")));
        let n = usize::from(u16::from_le_bytes(rest[4..6].try_into().expect("2 bytes")));
        rest = &rest[6..];
        let n = n.min(rest.len());
        let (bytes, tail) = rest.split_at(n);
        rest = tail;
        let end = offset + n as u64;
        if end > MAX_SPARSE_LEN {
            continue;
        }
        len = len.max(end);
        pieces.push((offset as usize, bytes));
    }
    let mut file = vec![0u8; len as usize];
    for (offset, bytes) in pieces {
        file[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    file
}

/// Open `file` (read-only) as an image with `opts`; if it opens, run info, map and read
/// up to `read_limit` bytes of the virtual disk. Errors are fine; panics,
/// hangs and runaway allocations are what the fuzzer looks for.
pub fn exercise(file: Arc<MemStorage>, opts: &OpenOptions, read_limit: u64) {
    let Ok(disk) = vhdkit::unstable::open_storage(Box::new(file), None, opts, &Chain::default())
    else {
        return;
    };
    let _ = disk.info();
    let size = disk.virtual_size();
    let _ = disk.map(0, size);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size.min(read_limit) {
        let n = (size - pos).min(buf.len() as u64) as usize;
        let _ = disk.read_at(&mut buf[..n], pos);
        pos += n as u64;
    }
}
