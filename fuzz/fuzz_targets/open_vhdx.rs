//! Arbitrary bytes as a VHDX file: check, open (replaying any log into
//! memory), info, map and read the virtual disk (bounded). Nothing may
//! panic, hang or allocate beyond what the input justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhdkit::io::MemStorage;
use vhdkit::parent::Chain;
use vhdkit::OpenOptions;

/// Read at most this much of the virtual disk per input.
const READ_LIMIT: u64 = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let mut report = vhdkit::CheckReport::default();
    let storage = MemStorage::read_only(data.to_vec());
    let _ = vhdkit::vhdx::check::check(&storage, &mut report, false);

    let opts = OpenOptions::new().allow_missing_parent(true);
    let storage = Box::new(MemStorage::read_only(data.to_vec()));
    let Ok(disk) = vhdkit::open_storage(storage, None, &opts, &Chain::default()) else {
        return;
    };
    let _ = disk.info();
    let size = disk.virtual_size();
    let _ = disk.map(0, size);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size.min(READ_LIMIT) {
        let n = (size - pos).min(buf.len() as u64) as usize;
        let _ = disk.read_at(&mut buf[..n], pos);
        pos += n as u64;
    }
});
