//! Streaming decoder and encoder for all packets at all protocol levels.
//!
//! Layout: [`header`] reads the fixed header and enforces the per-type flag rules and the size
//! limit, [`reader`] is the bounds-checked cursor over one frame, [`properties`] is the single
//! MQTT 5 property table with its generic reader and writer, [`decode`] and [`encode`] hold the
//! per-packet bodies.

mod decode;
mod encode;
mod header;
mod properties;
mod reader;

use bytes::BytesMut;

use crate::error::{DecodeError, EncodeError};
use crate::reason::PacketKind;
use crate::types::{Packet, ProtocolVersion};

/// Largest value a remaining-length variable byte integer can hold (MQTT 1.5.5).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Stateful decoder for one connection.
///
/// A server-side decoder starts without a protocol level: the first packet must be CONNECT,
/// which sets it. A client-side decoder is created with the level it sent in CONNECT.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
    server_side: bool,
    limits: PropertyLimits,
}

/// Limits on the MQTT 5 properties of one packet, checked while decoding so an oversized
/// property block is refused before its values are allocated (decoded user properties take
/// about 13 times their wire size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyLimits {
    /// User properties per property block.
    pub max_user_properties: u32,
    /// Bytes of one property block on the wire (its Property Length).
    pub max_properties_size: u32,
}

impl PropertyLimits {
    /// No limit beyond the packet size.
    pub const UNLIMITED: PropertyLimits =
        PropertyLimits { max_user_properties: u32::MAX, max_properties_size: u32::MAX };
}

impl Decoder {
    /// A server-side decoder: expects CONNECT first, rejects packets larger than
    /// `max_packet_size` bytes (whole packet, fixed header included).
    pub fn new_server(max_packet_size: u32) -> Decoder {
        Decoder { version: None, max_packet_size, server_side: true, limits: PropertyLimits::UNLIMITED }
    }

    /// Sets the limits on each packet's properties.
    pub fn set_property_limits(&mut self, limits: PropertyLimits) {
        self.limits = limits;
    }

    /// A client-side decoder for a connection at `version`.
    pub fn new_client(version: ProtocolVersion, max_packet_size: u32) -> Decoder {
        Decoder {
            version: Some(version),
            max_packet_size,
            server_side: false,
            limits: PropertyLimits::UNLIMITED,
        }
    }

    /// The protocol level, once known.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The maximum packet size in force.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Changes the maximum packet size.
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Decodes one packet from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a packet (nothing is consumed), and
    /// `Ok(Some(packet))` after removing exactly that packet's bytes from `buf`. Errors are
    /// final for the connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(h) = header::parse(buf)? else {
            return Ok(None);
        };
        if self.server_side {
            match (self.version, h.kind == PacketKind::Connect) {
                (None, false) => return Err(DecodeError::FirstPacketNotConnect),
                (Some(_), true) => return Err(DecodeError::SecondConnect),
                _ => {}
            }
        }
        let packet = decode_frame(buf, &h, self.version, self.max_packet_size, self.limits)?;
        if let Some(Packet::Connect(c)) = &packet
            && self.server_side
        {
            self.version = Some(c.protocol);
        }
        Ok(packet)
    }
}

/// Validates the fixed header against the level and the limit, then splits and decodes the
/// frame once it is complete.
fn decode_frame(
    buf: &mut BytesMut,
    h: &header::FixedHeader,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
    limits: PropertyLimits,
) -> Result<Option<Packet>, DecodeError> {
    if h.kind == PacketKind::Auth && version.is_some_and(|v| !v.is_v5()) {
        return Err(DecodeError::PacketTypeNotInVersion(PacketKind::Auth.type_id()));
    }
    header::check_flags(h.kind, h.flags)?;
    let total = h.header_len + h.remaining;
    if total as u64 > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge { size: total as u64, max: max_packet_size });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let frame = buf.split_to(total).freeze();
    let r = reader::Reader::new(frame, h.header_len).with_limits(limits);
    decode::body(h.kind, h.flags, version, r).map(Some)
}

/// Decodes one packet at a known protocol level (stateless; no CONNECT-first rule).
pub fn decode_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(h) = header::parse(buf)? else {
        return Ok(None);
    };
    decode_frame(buf, &h, Some(version), max_packet_size, PropertyLimits::UNLIMITED)
}

/// Total encoded size of `packet` at `version`, fixed header included.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = encode::remaining_len(packet, version)?;
    Ok(1 + header::vbi_len(remaining) + remaining)
}

/// Appends the encoding of `packet` at `version` to `buf`.
///
/// Properties do not exist in 3.x and are left out there; 3.x SUBACK maps error codes to 0x80.
/// A CONNECT is always encoded at its own `protocol` level.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    encode::encode(packet, version, buf)
}
