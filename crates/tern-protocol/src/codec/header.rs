//! The fixed header: packet type, flag rules per type, and variable byte integers.

use bytes::{BufMut, BytesMut};

use crate::error::DecodeError;
use crate::reason::PacketKind;

/// A parsed fixed header; the body may not be buffered yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct FixedHeader {
    /// Packet type.
    pub(super) kind: PacketKind,
    /// Low nibble of the first byte.
    pub(super) flags: u8,
    /// Bytes taken by the fixed header (2..=5).
    pub(super) header_len: usize,
    /// The remaining length (body size).
    pub(super) remaining: usize,
}

/// Reads the fixed header at the front of `buf` without consuming anything.
///
/// `Ok(None)` when the remaining length is not complete yet. A fifth length byte or a
/// non-minimal encoding is rejected as soon as it is seen.
#[inline]
pub(super) fn parse(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(DecodeError::NonMinimalVariableInteger);
            }
            let kind = PacketKind::from_type_id(first >> 4).ok_or(DecodeError::ReservedPacketType)?;
            return Ok(Some(FixedHeader { kind, flags: first & 0x0F, header_len: 2 + i, remaining }));
        }
    }
    Err(DecodeError::MalformedVariableInteger)
}

/// Enforces the fixed-header flag bits of each packet type (MQTT-2.1.3-1, MQTT-3.3.1-2,
/// MQTT-3.3.1-4).
#[inline]
pub(super) fn check_flags(kind: PacketKind, flags: u8) -> Result<(), DecodeError> {
    match kind {
        PacketKind::Publish => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS);
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(DecodeError::DupOnQoS0);
            }
            Ok(())
        }
        PacketKind::PubRel | PacketKind::Subscribe | PacketKind::Unsubscribe if flags == 0b0010 => Ok(()),
        PacketKind::PubRel | PacketKind::Subscribe | PacketKind::Unsubscribe => {
            Err(DecodeError::InvalidHeaderFlags { kind, flags })
        }
        _ if flags == 0 => Ok(()),
        _ => Err(DecodeError::InvalidHeaderFlags { kind, flags }),
    }
}

/// The fixed-header flag nibble for a packet kind other than PUBLISH.
pub(super) const fn fixed_flags(kind: PacketKind) -> u8 {
    match kind {
        PacketKind::PubRel | PacketKind::Subscribe | PacketKind::Unsubscribe => 0b0010,
        _ => 0,
    }
}

/// Bytes needed to encode `v` as a variable byte integer (values up to 268,435,455).
#[inline]
pub(super) const fn vbi_len(v: usize) -> usize {
    if v < 128 {
        1
    } else if v < 16_384 {
        2
    } else if v < 2_097_152 {
        3
    } else {
        4
    }
}

/// Writes `v` (at most 268,435,455, checked by the caller) as a variable byte integer.
#[inline]
pub(super) fn put_vbi(buf: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if v == 0 {
            return;
        }
    }
}
