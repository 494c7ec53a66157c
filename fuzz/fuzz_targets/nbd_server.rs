//! libFuzzer entry for `vhdkit_fuzz::nbd_server::run_bytes` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhdkit_fuzz::nbd_server::run_bytes(data));
