//! Arbitrary bytes as an EVHD container opened with the fixed test key
//! `fuzz/test-key.xml` (seeds are made for it): check, open, info, map and
//! read (bounded). Damage must give errors, never panics.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vhdkit::OpenOptions;
use vhdkit::evhd::keys::{KeyFile, PrivateKey};
use vhdkit::io::MemStorage;

/// Read at most this much of the virtual disk per input.
const READ_LIMIT: u64 = 4 << 20;

fn key() -> Arc<PrivateKey> {
    static KEY: OnceLock<Arc<PrivateKey>> = OnceLock::new();
    KEY.get_or_init(|| {
        let text = include_str!("../test-key.xml");
        let k = KeyFile::parse(text).expect("the test key parses");
        Arc::new(k.into_private().expect("the test key is private"))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let keys = [key()];
    let mut report = vhdkit::CheckReport::default();
    let storage = Box::new(MemStorage::read_only(data.to_vec()));
    let _ = vhdkit::evhd::check::check(storage, &keys, &mut report);

    let opts = OpenOptions::new().key(key());
    vhdkit_fuzz::exercise(data, &opts, READ_LIMIT);
});
