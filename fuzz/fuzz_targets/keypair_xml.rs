//! libFuzzer entry for `vhdkit_fuzz::keypair_xml` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhdkit_fuzz::keypair_xml(data));
