//! AFL++ target (cargo-afl, stable Rust): decode arbitrary bytes with every decoder mode.

#[path = "../harness.rs"]
mod harness;

fn main() {
    afl::fuzz!(|data: &[u8]| harness::fuzz_one(data));
}
