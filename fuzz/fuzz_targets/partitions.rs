//! libFuzzer entry for `vhdkit_fuzz::partitions` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhdkit_fuzz::partitions(data));
