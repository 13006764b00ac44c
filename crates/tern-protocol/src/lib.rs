//! MQTT 3.1, 3.1.1 and 5.0 wire format: packets, properties, reason codes and topic rules.
//!
//! Pure and synchronous: no I/O, no broker policy. [`Decoder`] turns a `BytesMut` read buffer
//! into [`Packet`]s (payloads are zero-copy `Bytes` slices of that buffer); [`encode`] writes
//! a packet into a `BytesMut`, and [`encoded_len`] sizes it first.

mod codec;
mod error;
mod reason;
pub mod topic;
mod types;

pub use codec::{Decoder, MAX_REMAINING_LENGTH, PropertyLimits, decode_packet, encode, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use reason::{PacketKind, ReasonCode};
pub use types::*;
