//! Runs files (or every file in directories) through the fuzz harness without a fuzzer: for
//! reproducing crashes and replaying a corpus on stable Rust.

#[path = "../harness.rs"]
mod harness;

use std::path::Path;

fn visit(path: &Path, count: &mut usize) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            visit(&entry?.path(), count)?;
        }
    } else {
        let data = std::fs::read(path)?;
        harness::fuzz_one(&data);
        *count += 1;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let mut count = 0;
    for arg in std::env::args().skip(1) {
        visit(Path::new(&arg), &mut count)?;
    }
    eprintln!("replayed {count} inputs without a failure");
    Ok(())
}
