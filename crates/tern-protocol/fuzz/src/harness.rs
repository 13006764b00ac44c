//! The shared decoder harness, included from the test suite so fuzzing and `cargo test` check
//! the same invariants.

#[path = "../../tests/common/harness.rs"]
mod inner;

pub use inner::fuzz_one;
