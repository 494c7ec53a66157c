//! libFuzzer entry for `vhdkit_fuzz::fs_list` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhdkit_fuzz::fs_list::run_bytes(data));
