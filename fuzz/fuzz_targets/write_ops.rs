//! libFuzzer entry for `vhdkit_fuzz::write_ops` (see fuzz/README.md). The
//! input is decoded as a `Scenario`, so `cargo fuzz fmt write_ops FILE`
//! prints a failing input as Rust source.
#![no_main]

use vhdkit_fuzz::write_ops::{Scenario, run};

libfuzzer_sys::fuzz_target!(|s: Scenario| run(&s));
