//! cargo-fuzz (libFuzzer) target: decode arbitrary bytes with every decoder mode.
#![no_main]

#[path = "../src/harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzz_one(data));
