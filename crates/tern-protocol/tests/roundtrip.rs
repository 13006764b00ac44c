//! Round trips: decode(encode(p)) == p and `encoded_len` == bytes written, for hand-written
//! samples of every packet at every level and for proptest-generated packets.

mod common;

use common::{VERSIONS, dec, enc, samples};

#[test]
fn samples_round_trip_at_every_level() {
    for v in VERSIONS {
        for p in samples(v) {
            let bytes = enc(&p, v);
            let back = dec(&bytes, v).unwrap_or_else(|e| panic!("decode {p:?} at {v:?}: {e}\n{bytes:02x?}"));
            assert_eq!(back, p, "at {v:?}");
        }
    }
}
