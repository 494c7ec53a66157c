//! Arbitrary bytes as a VHD file: open, info, map, check, and read the
//! whole virtual disk (bounded). Nothing may panic, hang or allocate beyond
//! what the input justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhdkit::OpenOptions;
use vhdkit::io::MemStorage;

/// Read at most this much of the virtual disk per input.
const READ_LIMIT: u64 = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let mut report = vhdkit::CheckReport::default();
    let storage = MemStorage::read_only(data.to_vec());
    let _ = vhdkit::vhd::check::check(&storage, &mut report, false);
    let opts = OpenOptions::new().allow_missing_parent(true);
    vhdkit_fuzz::exercise(data, &opts, READ_LIMIT);
});
