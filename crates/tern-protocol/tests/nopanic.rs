//! Robustness: hundreds of thousands of random and mutated frames through server- and
//! client-side decoders at every level, whole and in random chunks. Nothing may panic,
//! `Ok(None)` may never consume input, and every packet accepted must round-trip (see
//! `common::harness`). Deterministic: a fixed-seed xorshift generator, no extra dependency.

#![allow(clippy::default_trait_access, clippy::many_single_char_names)]

mod common;

use common::harness::{Mode, Stats, run};
use common::{VERSIONS, enc, samples};
use std::time::Instant;

/// xorshift64* — small, fast, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Values that tend to hit edge cases in lengths, flags and property identifiers.
const INTERESTING: [u8; 16] =
    [0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xFF, 0xFE, 0x0B, 0x23, 0x26, 0x10, 0x20, 0x30, 0x62, 0x82];

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(9) {
            // Bit flip.
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            // Truncate.
            1 if !d.is_empty() => d.truncate(rng.below(d.len())),
            // Change a length byte: the remaining length or a field length.
            2 if d.len() > 1 => {
                let i = if rng.below(2) == 0 { 1 } else { rng.below(d.len()) };
                d[i] = match rng.below(3) {
                    0 => d[i].wrapping_add(1),
                    1 => d[i].wrapping_sub(1),
                    _ => INTERESTING[rng.below(INTERESTING.len())],
                };
            }
            // Splice with another frame.
            3 => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(d.len() + 1);
                let from = rng.below(other.len() + 1);
                d.truncate(cut);
                d.extend_from_slice(&other[from..]);
            }
            // Overwrite with an interesting byte.
            4 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            // Insert random bytes.
            5 => {
                let i = rng.below(d.len() + 1);
                for _ in 0..=rng.below(4) {
                    d.insert(i, rng.byte());
                }
            }
            // Delete a range.
            6 if !d.is_empty() => {
                let i = rng.below(d.len());
                let n = 1 + rng.below(4);
                d.drain(i..(i + n).min(d.len()));
            }
            // Change the packet type / flags nibble.
            7 if !d.is_empty() => d[0] = rng.byte(),
            // Append another whole frame (pipelining).
            _ => d.extend_from_slice(&corpus[rng.below(corpus.len())]),
        }
    }
    d
}

#[test]
fn decoder_survives_random_and_mutated_frames() {
    let started = Instant::now();
    // Seed corpus: every sample packet at every level; a v5 CONNECT first so the server-side
    // decoder gets past the CONNECT-first rule in many inputs.
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for v in VERSIONS {
        let connect = enc(&samples(v)[0], v).to_vec();
        for p in samples(v) {
            let frame = enc(&p, v).to_vec();
            let mut with_connect = connect.clone();
            with_connect.extend_from_slice(&frame);
            corpus.push(frame);
            corpus.push(with_connect);
        }
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut stats = Stats::default();
    const MUTATED: usize = 800_000;
    const RANDOM: usize = 200_000;
    for i in 0..MUTATED + RANDOM {
        let data = if i < MUTATED {
            let base = &corpus[rng.below(corpus.len())];
            mutate(&mut rng, base, &corpus)
        } else {
            // Pure noise, with a plausible first byte half of the time.
            let mut d: Vec<u8> = (0..rng.below(48)).map(|_| rng.byte()).collect();
            if !d.is_empty() && rng.below(2) == 0 {
                d[0] = INTERESTING[rng.below(INTERESTING.len())];
            }
            d
        };
        let sel = rng.byte();
        run(&data, Mode::from_selector(sel, rng.next()), &mut stats);
        // Every fourth input also goes through the other chunking of the same decoder.
        if i % 4 == 0 {
            run(&data, Mode::from_selector(sel ^ 0x08, rng.next()), &mut stats);
        }
    }
    // Unmutated corpus through every decoder kind, whole and chunked.
    for frame in &corpus {
        for sel in 0..16 {
            run(frame, Mode::from_selector(sel, 0x1234_5678), &mut stats);
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "no-panic: {} inputs, {} packets decoded and round-tripped, {} decode errors, {:.1?}",
        MUTATED + RANDOM,
        stats.packets,
        stats.errors,
        elapsed
    );
    assert!(stats.packets > 10_000, "mutations too destructive: only {} packets decoded", stats.packets);
    assert!(stats.errors > 10_000, "mutations too gentle: only {} errors", stats.errors);
}

/// Writes the seed corpus for the fuzz targets (`fuzz/corpus/decode`): every sample packet at
/// every level, behind a mode selector byte and 8 chunking-seed bytes (see `harness::fuzz_one`).
/// Run with `cargo test -p tern-protocol --test nopanic -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes files; run explicitly to refresh the fuzz seed corpus"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    std::fs::create_dir_all(&dir).unwrap();
    let mut n = 0;
    for (vi, v) in VERSIONS.into_iter().enumerate() {
        let client_sel = 1 + vi as u8;
        let connect = enc(&samples(v)[0], v).to_vec();
        for p in samples(v) {
            let frame = enc(&p, v).to_vec();
            for (sel, body) in [(client_sel, frame.clone()), (0, [connect.clone(), frame].concat())] {
                for chunked in [0u8, 0x08] {
                    let mut data = vec![sel | chunked];
                    data.extend_from_slice(&0x0123_4567_89AB_CDEFu64.to_le_bytes());
                    data.extend_from_slice(&body);
                    std::fs::write(dir.join(format!("seed-{n:04}")), data).unwrap();
                    n += 1;
                }
            }
        }
    }
    eprintln!("wrote {n} seeds to {}", dir.display());
}
