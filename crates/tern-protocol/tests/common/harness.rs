//! Decoder harness shared by the no-panic test and the fuzz targets (the fuzz crate includes
//! this file by path): feeds arbitrary bytes to a decoder and checks its invariants.
#![allow(dead_code, unreachable_pub)]

use bytes::BytesMut;
use tern_protocol::{Decoder, Packet, ProtocolVersion, decode_packet, encode, encoded_len};

/// How the input is fed: which decoder, which limit, which chunking.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// `None` = server-side decoder, else a client-side decoder at that level.
    pub version: Option<ProtocolVersion>,
    /// Maximum packet size.
    pub max: u32,
    /// Chunk sizes are drawn from this seed (0 = feed everything at once).
    pub chunk_seed: u64,
}

impl Mode {
    /// Derives a mode from a selector byte and a seed.
    pub fn from_selector(sel: u8, chunk_seed: u64) -> Mode {
        let version = match sel & 0x03 {
            0 => None,
            1 => Some(ProtocolVersion::V3_1),
            2 => Some(ProtocolVersion::V3_1_1),
            _ => Some(ProtocolVersion::V5),
        };
        let max = if sel & 0x04 != 0 { 64 } else { 1 << 20 };
        Mode { version, max, chunk_seed: if sel & 0x08 != 0 { chunk_seed | 1 } else { 0 } }
    }
}

/// Counters reported by [`run`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Packets decoded (and round-tripped).
    pub packets: u64,
    /// Inputs that ended in a decode error.
    pub errors: u64,
}

/// Feeds `data` to a decoder in `mode`, asserting:
/// - `Ok(None)` never consumes bytes;
/// - `Ok(Some(p))` consumes at least 2 bytes, and `p` re-encodes (with `encoded_len` equal to
///   the bytes written) to bytes that decode back to `p`;
/// - nothing panics.
///
/// Decoding stops at the first error, like a connection would.
pub fn run(data: &[u8], mode: Mode, stats: &mut Stats) {
    let mut dec = match mode.version {
        None => Decoder::new_server(mode.max),
        Some(v) => Decoder::new_client(v, mode.max),
    };
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut seed = mode.chunk_seed;
    while at < data.len() {
        let n = if seed == 0 {
            data.len() - at
        } else {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (1 + (seed % 24) as usize).min(data.len() - at)
        };
        buf.extend_from_slice(&data[at..at + n]);
        at += n;
        loop {
            let before = buf.len();
            let version = dec.version();
            match dec.decode(&mut buf) {
                Ok(Some(p)) => {
                    assert!(before - buf.len() >= 2, "a packet is at least 2 bytes");
                    stats.packets += 1;
                    let v = match &p {
                        Packet::Connect(c) => c.protocol,
                        _ => version.unwrap_or(ProtocolVersion::V5),
                    };
                    round_trip(&p, v);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed input");
                    break;
                }
                Err(e) => {
                    let _ = (e.reason_code(), e.spec_rule(), e.to_string());
                    stats.errors += 1;
                    return;
                }
            }
        }
    }
}

/// A decoded packet must encode, with an exact `encoded_len`, to bytes that decode to itself.
pub fn round_trip(p: &Packet, v: ProtocolVersion) {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).unwrap_or_else(|e| panic!("decoded packet does not encode at {v:?}: {e}: {p:?}"));
    assert_eq!(encoded_len(p, v).ok(), Some(out.len()), "encoded_len mismatch: {p:?}");
    let back = decode_packet(&mut out, v, u32::MAX)
        .unwrap_or_else(|e| panic!("re-encoded packet does not decode at {v:?}: {e}: {p:?}"));
    assert_eq!(back.as_ref(), Some(p), "round trip changed the packet");
    assert!(out.is_empty(), "re-encoded packet has trailing bytes");
}

/// The fuzz entry point: the first byte selects the mode, the next 8 seed the chunking.
pub fn fuzz_one(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let (seed, body) = if rest.len() >= 8 {
        let (s, b) = rest.split_at(8);
        (u64::from_le_bytes(s.try_into().unwrap_or([0; 8])), b)
    } else {
        (0, rest)
    };
    run(body, Mode::from_selector(sel, seed), &mut Stats::default());
}
