//! An independent builder and parser of raw MQTT bytes, written from the spec and not from
//! `tern-protocol`'s codec (ARCHITECTURE convention 11): end-to-end tests send these bytes so a
//! bug shared by the codec's encoder and decoder cannot hide itself, and malformed packets the
//! codec refuses to encode can still be sent.
//!
//! Every builder writes exactly what its arguments say: no field is validated, so a test can
//! send QoS 3, packet id 0, invalid UTF-8, duplicate properties and so on.

use std::fmt;

/// Property identifiers (MQTT 5, table 2-4).
pub mod prop {
    /// 0x01 Payload Format Indicator (byte).
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    /// 0x02 Message Expiry Interval (four byte integer).
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    /// 0x03 Content Type (string).
    pub const CONTENT_TYPE: u8 = 0x03;
    /// 0x08 Response Topic (string).
    pub const RESPONSE_TOPIC: u8 = 0x08;
    /// 0x09 Correlation Data (binary).
    pub const CORRELATION_DATA: u8 = 0x09;
    /// 0x0B Subscription Identifier (variable byte integer).
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    /// 0x11 Session Expiry Interval (four byte integer).
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    /// 0x12 Assigned Client Identifier (string).
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    /// 0x13 Server Keep Alive (two byte integer).
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// 0x15 Authentication Method (string).
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    /// 0x17 Request Problem Information (byte).
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    /// 0x18 Will Delay Interval (four byte integer).
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    /// 0x1F Reason String (string).
    pub const REASON_STRING: u8 = 0x1F;
    /// 0x21 Receive Maximum (two byte integer).
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// 0x22 Topic Alias Maximum (two byte integer).
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// 0x23 Topic Alias (two byte integer).
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// 0x26 User Property (string pair).
    pub const USER_PROPERTY: u8 = 0x26;
    /// 0x27 Maximum Packet Size (four byte integer).
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
}

/// A variable byte integer (MQTT 1.5.5). Values above 268,435,455 are written with 5 bytes,
/// which is malformed on purpose.
pub fn vbi(mut n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A two-byte big-endian integer.
pub fn u16be(n: u16) -> [u8; 2] {
    n.to_be_bytes()
}

/// A UTF-8 string field: two-byte length then the bytes (not validated).
pub fn string(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + s.len());
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
    out
}

/// A whole packet: `first_byte` (type and flags), the remaining length, then `body`.
pub fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first_byte);
    out.extend(vbi(body.len() as u64));
    out.extend_from_slice(body);
    out
}

/// A property list under construction (MQTT 5, 2.2.2). Order is kept; nothing is deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props(Vec<u8>);

impl Props {
    /// An empty property list.
    pub const fn new() -> Props {
        Props(Vec::new())
    }

    /// A one-byte property.
    pub fn byte(mut self, id: u8, v: u8) -> Props {
        self.0.push(id);
        self.0.push(v);
        self
    }

    /// A two-byte integer property.
    pub fn two(mut self, id: u8, v: u16) -> Props {
        self.0.push(id);
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A four-byte integer property.
    pub fn four(mut self, id: u8, v: u32) -> Props {
        self.0.push(id);
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A variable byte integer property.
    pub fn var(mut self, id: u8, v: u32) -> Props {
        self.0.push(id);
        self.0.extend(vbi(u64::from(v)));
        self
    }

    /// A string (or binary) property.
    pub fn string(mut self, id: u8, s: &[u8]) -> Props {
        self.0.push(id);
        self.0.extend(string(s));
        self
    }

    /// A User Property (0x26) name/value pair.
    pub fn user(mut self, name: &str, value: &str) -> Props {
        self.0.push(prop::USER_PROPERTY);
        self.0.extend(string(name.as_bytes()));
        self.0.extend(string(value.as_bytes()));
        self
    }

    /// Arbitrary bytes appended to the list (e.g. an unknown identifier).
    pub fn raw(mut self, bytes: &[u8]) -> Props {
        self.0.extend_from_slice(bytes);
        self
    }

    /// The encoded list: property length, then the properties.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vbi(self.0.len() as u64);
        out.extend_from_slice(&self.0);
        out
    }
}

/// The will part of a [`ConnectBytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillBytes {
    /// Will properties (written only when the CONNECT has properties, i.e. at level 5).
    pub props: Props,
    /// Will topic bytes.
    pub topic: Vec<u8>,
    /// Will payload.
    pub payload: Vec<u8>,
    /// Will QoS (0..=3, not validated).
    pub qos: u8,
    /// Will retain.
    pub retain: bool,
}

/// A CONNECT packet under construction. Fields are public so a test can break any of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectBytes {
    /// Protocol name ("MQTT" or "MQIsdp").
    pub protocol_name: Vec<u8>,
    /// Protocol level byte.
    pub level: u8,
    /// Clean Start / Clean Session.
    pub clean_start: bool,
    /// Keep alive seconds.
    pub keep_alive: u16,
    /// Properties; `Some` writes a property list (level 5), `None` writes none (3.x).
    pub props: Option<Props>,
    /// Client identifier bytes.
    pub client_id: Vec<u8>,
    /// Will.
    pub will: Option<WillBytes>,
    /// User name.
    pub username: Option<Vec<u8>>,
    /// Password.
    pub password: Option<Vec<u8>>,
    /// Replaces the computed connect flags byte when set.
    pub flags_override: Option<u8>,
}

impl ConnectBytes {
    /// An MQTT 5 CONNECT (clean start, keep alive 60, no properties).
    pub fn v5(client_id: &str) -> ConnectBytes {
        ConnectBytes {
            protocol_name: b"MQTT".to_vec(),
            level: 5,
            clean_start: true,
            keep_alive: 60,
            props: Some(Props::new()),
            client_id: client_id.as_bytes().to_vec(),
            will: None,
            username: None,
            password: None,
            flags_override: None,
        }
    }

    /// An MQTT 3.1.1 CONNECT (clean session, keep alive 60).
    pub fn v311(client_id: &str) -> ConnectBytes {
        ConnectBytes { level: 4, props: None, ..ConnectBytes::v5(client_id) }
    }

    /// An MQTT 3.1 CONNECT ("MQIsdp", level 3, clean session, keep alive 60).
    pub fn v31(client_id: &str) -> ConnectBytes {
        ConnectBytes {
            protocol_name: b"MQIsdp".to_vec(),
            level: 3,
            props: None,
            ..ConnectBytes::v5(client_id)
        }
    }

    /// The connect flags byte implied by the fields.
    pub fn flags(&self) -> u8 {
        if let Some(f) = self.flags_override {
            return f;
        }
        let mut f = 0u8;
        if self.clean_start {
            f |= 0x02;
        }
        if let Some(w) = &self.will {
            f |= 0x04 | ((w.qos & 0x03) << 3);
            if w.retain {
                f |= 0x20;
            }
        }
        if self.password.is_some() {
            f |= 0x40;
        }
        if self.username.is_some() {
            f |= 0x80;
        }
        f
    }

    /// The packet bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut body = string(&self.protocol_name);
        body.push(self.level);
        body.push(self.flags());
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if let Some(p) = &self.props {
            body.extend(p.encode());
        }
        body.extend(string(&self.client_id));
        if let Some(w) = &self.will {
            if self.props.is_some() {
                body.extend(w.props.encode());
            }
            body.extend(string(&w.topic));
            body.extend(string(&w.payload));
        }
        if let Some(u) = &self.username {
            body.extend(string(u));
        }
        if let Some(p) = &self.password {
            body.extend(string(p));
        }
        frame(0x10, &body)
    }
}

/// A PUBLISH. `qos` may be 3 (malformed on purpose); `props` is written only when `Some`
/// (i.e. on a 5.0 connection).
pub fn publish(
    qos: u8,
    dup: bool,
    retain: bool,
    topic: &[u8],
    packet_id: Option<u16>,
    props: Option<&Props>,
    payload: &[u8],
) -> Vec<u8> {
    let first = 0x30 | (u8::from(dup) << 3) | ((qos & 0x03) << 1) | u8::from(retain);
    let mut body = string(topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if let Some(p) = props {
        body.extend(p.encode());
    }
    body.extend_from_slice(payload);
    frame(first, &body)
}

/// A SUBSCRIBE (fixed header 0x82) with `(filter bytes, options byte)` pairs.
pub fn subscribe(packet_id: u16, props: Option<&Props>, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if let Some(p) = props {
        body.extend(p.encode());
    }
    for (f, opts) in filters {
        body.extend(string(f));
        body.push(*opts);
    }
    frame(0x82, &body)
}

/// An UNSUBSCRIBE (fixed header 0xA2).
pub fn unsubscribe(packet_id: u16, props: Option<&Props>, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if let Some(p) = props {
        body.extend(p.encode());
    }
    for f in filters {
        body.extend(string(f));
    }
    frame(0xA2, &body)
}

fn ack(first: u8, packet_id: u16, reason: Option<u8>) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if let Some(r) = reason {
        body.push(r);
    }
    frame(first, &body)
}

/// PUBACK (0x40); `reason` only on 5.0 (omitted means Success).
pub fn puback(packet_id: u16, reason: Option<u8>) -> Vec<u8> {
    ack(0x40, packet_id, reason)
}

/// PUBREC (0x50).
pub fn pubrec(packet_id: u16, reason: Option<u8>) -> Vec<u8> {
    ack(0x50, packet_id, reason)
}

/// PUBREL (0x62).
pub fn pubrel(packet_id: u16, reason: Option<u8>) -> Vec<u8> {
    ack(0x62, packet_id, reason)
}

/// PUBCOMP (0x70).
pub fn pubcomp(packet_id: u16, reason: Option<u8>) -> Vec<u8> {
    ack(0x70, packet_id, reason)
}

/// PINGREQ.
pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

/// DISCONNECT (0xE0). `None` reason writes the 3.x / short 5.0 form (remaining length 0).
pub fn disconnect(reason: Option<u8>, props: Option<&Props>) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(r) = reason {
        body.push(r);
        if let Some(p) = props {
            body.extend(p.encode());
        }
    }
    frame(0xE0, &body)
}

/// AUTH (0xF0) with a reason code and properties.
pub fn auth(reason: u8, props: &Props) -> Vec<u8> {
    let mut body = vec![reason];
    body.extend(props.encode());
    frame(0xF0, &body)
}

/// One received packet split by its fixed header only, parsed without the codec.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// The first byte (type in the high nibble, flags in the low).
    pub first_byte: u8,
    /// The bytes after the remaining length.
    pub body: Vec<u8>,
    /// Total size on the wire, fixed header included.
    pub wire_len: usize,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame(type {} flags {:#06b}, body", self.packet_type(), self.first_byte & 0x0F)?;
        for b in self.body.iter().take(32) {
            write!(f, " {b:02x}")?;
        }
        if self.body.len() > 32 {
            write!(f, " ... ({} bytes)", self.body.len())?;
        }
        write!(f, ")")
    }
}

/// Packet type numbers (high nibble of the first byte).
pub mod kind {
    /// CONNACK.
    pub const CONNACK: u8 = 2;
    /// PUBLISH.
    pub const PUBLISH: u8 = 3;
    /// PUBACK.
    pub const PUBACK: u8 = 4;
    /// PUBREC.
    pub const PUBREC: u8 = 5;
    /// PUBREL.
    pub const PUBREL: u8 = 6;
    /// PUBCOMP.
    pub const PUBCOMP: u8 = 7;
    /// SUBACK.
    pub const SUBACK: u8 = 9;
    /// UNSUBACK.
    pub const UNSUBACK: u8 = 11;
    /// PINGRESP.
    pub const PINGRESP: u8 = 13;
    /// DISCONNECT.
    pub const DISCONNECT: u8 = 14;
}

impl Frame {
    /// Splits one frame off the front of `buf`. `Ok(None)` when incomplete; an error when the
    /// remaining length is longer than 4 bytes.
    pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
        if buf.is_empty() {
            return Ok(None);
        }
        let mut len: usize = 0;
        let mut shift = 0;
        let mut i = 1;
        loop {
            if i > 4 {
                return Err("remaining length longer than 4 bytes".into());
            }
            let Some(&b) = buf.get(i) else { return Ok(None) };
            len |= usize::from(b & 0x7F) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let total = i + len;
        if buf.len() < total {
            return Ok(None);
        }
        Ok(Some((Frame { first_byte: buf[0], body: buf[i..total].to_vec(), wire_len: total }, total)))
    }

    /// The packet type (1..=15).
    pub fn packet_type(&self) -> u8 {
        self.first_byte >> 4
    }

    /// The reason code of a 5.0 CONNACK (byte 2), DISCONNECT (byte 1, 0x00 when absent),
    /// PUBACK/PUBREC/PUBREL/PUBCOMP (byte 3, 0x00 when absent); for a 3.x CONNACK the return code.
    pub fn reason_code(&self) -> Option<u8> {
        match self.packet_type() {
            kind::CONNACK => self.body.get(1).copied(),
            kind::DISCONNECT => Some(self.body.first().copied().unwrap_or(0)),
            kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
                Some(self.body.get(2).copied().unwrap_or(0))
            }
            _ => None,
        }
    }

    /// The packet identifier of an ack, SUBACK or UNSUBACK (first two body bytes).
    pub fn packet_id(&self) -> Option<u16> {
        match self.packet_type() {
            4..=7 | 9 | 11 => Some(u16::from_be_bytes([*self.body.first()?, *self.body.get(1)?])),
            _ => None,
        }
    }

    /// For a PUBLISH: (qos, topic bytes).
    pub fn publish_topic(&self) -> Option<(u8, &[u8])> {
        if self.packet_type() != kind::PUBLISH {
            return None;
        }
        let n = usize::from(u16::from_be_bytes([*self.body.first()?, *self.body.get(1)?]));
        Some(((self.first_byte >> 1) & 0x03, self.body.get(2..2 + n)?))
    }
}

/// Hex dump for assertion messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbi_matches_spec_table() {
        // MQTT 5 table 1-1 boundaries.
        assert_eq!(vbi(0), [0x00]);
        assert_eq!(vbi(127), [0x7F]);
        assert_eq!(vbi(128), [0x80, 0x01]);
        assert_eq!(vbi(16_383), [0xFF, 0x7F]);
        assert_eq!(vbi(16_384), [0x80, 0x80, 0x01]);
        assert_eq!(vbi(2_097_151), [0xFF, 0xFF, 0x7F]);
        assert_eq!(vbi(2_097_152), [0x80, 0x80, 0x80, 0x01]);
        assert_eq!(vbi(268_435_455), [0xFF, 0xFF, 0xFF, 0x7F]);
        assert_eq!(vbi(268_435_456).len(), 5);
    }

    #[test]
    fn connect_v311_golden() {
        let b = ConnectBytes::v311("ab").build();
        let want = [0x10, 14, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4, 0x02, 0x00, 60, 0x00, 0x02, b'a', b'b'];
        assert_eq!(b, want, "got {}", hex(&b));
    }

    #[test]
    fn connect_v5_with_will_and_props_golden() {
        let mut c = ConnectBytes::v5("c");
        c.props = Some(Props::new().four(prop::SESSION_EXPIRY_INTERVAL, 10));
        c.will = Some(WillBytes {
            props: Props::new().four(prop::WILL_DELAY_INTERVAL, 1),
            topic: b"w".to_vec(),
            payload: b"x".to_vec(),
            qos: 1,
            retain: true,
        });
        c.username = Some(b"u".to_vec());
        let b = c.build();
        let want = [
            0x10,
            34,
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            5,
            0b1010_1110,
            0,
            60,
            5,
            0x11,
            0,
            0,
            0,
            10,
            0,
            1,
            b'c',
            5,
            0x18,
            0,
            0,
            0,
            1,
            0,
            1,
            b'w',
            0,
            1,
            b'x',
            0,
            1,
            b'u',
        ];
        assert_eq!(b, want, "got {}", hex(&b));
    }

    #[test]
    fn publish_and_subscribe_golden() {
        let p = publish(1, true, true, b"a/b", Some(10), Some(&Props::new()), b"hi");
        assert_eq!(p, [0x3B, 10, 0, 3, b'a', b'/', b'b', 0, 10, 0, b'h', b'i'], "got {}", hex(&p));
        let s = subscribe(1, None, &[(b"a/+", 0x01)]);
        assert_eq!(s, [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'+', 1], "got {}", hex(&s));
        assert_eq!(pubrel(5, None), [0x62, 2, 0, 5]);
        assert_eq!(disconnect(Some(0x04), None), [0xE0, 1, 0x04]);
    }

    #[test]
    fn frame_parse_handles_partial_and_long_lengths() {
        assert_eq!(Frame::parse(&[0x20]).unwrap(), None);
        assert_eq!(Frame::parse(&[0x20, 3, 0, 0]).unwrap(), None);
        let (f, n) = Frame::parse(&[0x20, 3, 0, 0x84, 0, 0xFF]).unwrap().unwrap();
        assert_eq!(n, 5);
        assert_eq!(f.reason_code(), Some(0x84));
        assert!(Frame::parse(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).is_err());
        let (d, _) = Frame::parse(&[0xE0, 0]).unwrap().unwrap();
        assert_eq!(d.reason_code(), Some(0));
    }
}
