//! libFuzzer entry for `vhdkit_fuzz::open_vhdx` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhdkit_fuzz::open_vhdx(data));
