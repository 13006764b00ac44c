//! MQTT 5 properties: one table of identifiers (type and packets allowed, spec table 2-4), one
//! generic reader and one generic writer shared by every packet.

use bytes::{BufMut, Bytes, BytesMut};

use super::header::{put_vbi, vbi_len};
use super::reader::Reader;
use crate::codec::MAX_REMAINING_LENGTH;
use crate::error::{DecodeError, EncodeError};
use crate::reason::PacketKind;
use crate::types::{
    AckProperties, AuthProperties, ByteStr, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, QoS, SubscribeProperties, UnsubscribeProperties, UserProperty, WillProperties,
};

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// Where a property block appears: a packet, or the will properties of a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ctx {
    /// The property block of a packet's variable header.
    Packet(PacketKind),
    /// The Will Properties in the CONNECT payload.
    Will,
}

impl Ctx {
    /// This context's bit in the allowed-packets masks.
    const fn bit(self) -> u16 {
        match self {
            Ctx::Will => WILL,
            Ctx::Packet(k) => 1 << k.type_id(),
        }
    }

    /// The packet kind reported in errors (Will properties report CONNECT).
    const fn kind(self) -> PacketKind {
        match self {
            Ctx::Will => PacketKind::Connect,
            Ctx::Packet(k) => k,
        }
    }
}

const WILL: u16 = 1;
const CONNECT: u16 = 1 << 1;
const CONNACK: u16 = 1 << 2;
const PUBLISH: u16 = 1 << 3;
const PUBACK: u16 = 1 << 4;
const PUBREC: u16 = 1 << 5;
const PUBREL: u16 = 1 << 6;
const PUBCOMP: u16 = 1 << 7;
const SUBSCRIBE: u16 = 1 << 8;
const SUBACK: u16 = 1 << 9;
const UNSUBSCRIBE: u16 = 1 << 10;
const UNSUBACK: u16 = 1 << 11;
const DISCONNECT: u16 = 1 << 14;
const AUTH: u16 = 1 << 15;
/// User Property: every packet with properties (all but PINGREQ and PINGRESP), and the will.
const ALL: u16 = WILL
    | CONNECT
    | CONNACK
    | PUBLISH
    | PUBACK
    | PUBREC
    | PUBREL
    | PUBCOMP
    | SUBSCRIBE
    | SUBACK
    | UNSUBSCRIBE
    | UNSUBACK
    | DISCONNECT
    | AUTH;

/// Wire type of a property value, with its range rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    /// Byte that must be 0 or 1.
    Bool,
    /// Maximum QoS: byte that must be 0 or 1.
    MaxQos,
    /// Two byte integer.
    U16,
    /// Two byte integer that must not be 0.
    U16NonZero,
    /// Four byte integer.
    U32,
    /// Four byte integer that must not be 0.
    U32NonZero,
    /// Variable byte integer that must not be 0 (Subscription Identifier).
    VbiNonZero,
    /// UTF-8 string.
    Str,
    /// Binary data.
    Bin,
    /// UTF-8 string pair.
    Pair,
}

/// The spec's property table: type and the packets each identifier may appear in.
const fn spec(id: u8) -> Option<(Ty, u16)> {
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR => (Ty::Bool, PUBLISH | WILL),
        MESSAGE_EXPIRY_INTERVAL => (Ty::U32, PUBLISH | WILL),
        CONTENT_TYPE | RESPONSE_TOPIC => (Ty::Str, PUBLISH | WILL),
        CORRELATION_DATA => (Ty::Bin, PUBLISH | WILL),
        SUBSCRIPTION_IDENTIFIER => (Ty::VbiNonZero, PUBLISH | SUBSCRIBE),
        SESSION_EXPIRY_INTERVAL => (Ty::U32, CONNECT | CONNACK | DISCONNECT),
        ASSIGNED_CLIENT_IDENTIFIER | RESPONSE_INFORMATION => (Ty::Str, CONNACK),
        SERVER_KEEP_ALIVE => (Ty::U16, CONNACK),
        AUTHENTICATION_METHOD => (Ty::Str, CONNECT | CONNACK | AUTH),
        AUTHENTICATION_DATA => (Ty::Bin, CONNECT | CONNACK | AUTH),
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => (Ty::Bool, CONNECT),
        WILL_DELAY_INTERVAL => (Ty::U32, WILL),
        SERVER_REFERENCE => (Ty::Str, CONNACK | DISCONNECT),
        REASON_STRING => {
            (Ty::Str, CONNACK | PUBACK | PUBREC | PUBREL | PUBCOMP | SUBACK | UNSUBACK | DISCONNECT | AUTH)
        }
        RECEIVE_MAXIMUM => (Ty::U16NonZero, CONNECT | CONNACK),
        TOPIC_ALIAS_MAXIMUM => (Ty::U16, CONNECT | CONNACK),
        TOPIC_ALIAS => (Ty::U16NonZero, PUBLISH),
        MAXIMUM_QOS => (Ty::MaxQos, CONNACK),
        RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => (Ty::Bool, CONNACK),
        USER_PROPERTY => (Ty::Pair, ALL),
        MAXIMUM_PACKET_SIZE => (Ty::U32NonZero, CONNECT | CONNACK),
        _ => return None,
    })
}

/// A decoded property value (numbers of every width travel as `Int`).
#[derive(Debug)]
pub(super) enum Value {
    /// Any integer property.
    Int(u32),
    /// UTF-8 string.
    Str(ByteStr),
    /// Binary data.
    Bin(Bytes),
    /// String pair.
    Pair(ByteStr, ByteStr),
}

/// A property value borrowed from a properties struct for encoding; the identifier's wire
/// type (from [`spec`]) decides how an `Int` is written.
#[derive(Debug, Clone, Copy)]
pub(super) enum ValueRef<'a> {
    /// Any integer property.
    Int(u32),
    /// UTF-8 string or binary data.
    Bytes(&'a [u8]),
    /// String pair.
    Pair(&'a [u8], &'a [u8]),
}

/// One field of a properties struct: how a decoded value is stored and how it is visited.
trait Field {
    /// Stores `v`; false if the value kind does not fit (never for the spec table).
    fn set(&mut self, v: Value) -> bool;
    /// Reports each value present under identifier `id`.
    fn visit<F: FnMut(u8, ValueRef<'_>)>(&self, id: u8, f: &mut F);
}

impl Field for Option<u32> {
    fn set(&mut self, v: Value) -> bool {
        let Value::Int(x) = v else { return false };
        *self = Some(x);
        true
    }
    fn visit<F: FnMut(u8, ValueRef<'_>)>(&self, id: u8, f: &mut F) {
        if let Some(x) = *self {
            f(id, ValueRef::Int(x));
        }
    }
}

impl Field for Option<u16> {
    fn set(&mut self, v: Value) -> bool {
        let Value::Int(x) = v else { return false };
        *self = u16::try_from(x).ok();
        self.is_some()
    }
    fn visit<F: FnMut(u8, ValueRef<'_>)>(&self, id: u8, f: &mut F) {
        if let Some(x) = *self {
            f(id, ValueRef::Int(u32::from(x)));
        }
    }
}

impl Field for Option<bool> {
    fn set(&mut self, v: Value) -> bool {
        let Value::Int(x) = v else { return false };
        *self = Some(x == 1);
        true
    }
    fn visit<F: FnMut(u8, ValueRef<'_>)>(&self, id: u8, f: &mut F) {
        if let Some(x) = *self {
            f(id, ValueRef::Int(u32::from(x)));
        }
    }
}

impl Field for Option<QoS> {
    fn set(&mut self, v: Value) -> bool {
        let Value::Int(x) = v else { return false };
        *self = u8::try_from(x).ok().and_then(QoS::from_u8);
        self.is_some()
    }
    fn visit<F: FnMut(u8, ValueRef<'_>)>(&self, id: u8, f: &mut F) {
        if let Some(x) = *self {
            f(id, ValueRef::Int(u32::from(x.as_u8())));
        }
    }
}

impl Field for Option<ByteStr> {
    fn set(&mut self, v: Value) -> bool {
        let Value::Str(x) = v else { return false };
        *self = Some(x);
        true
    }
    fn visit<F: FnMut(u8, ValueRef<'_>)>(&self, id: u8, f: &mut F) {
        if let Some(x) = self {
            f(id, ValueRef::Bytes(x.as_bytes()));
        }
    }
}

impl Field for Option<Bytes> {
    fn set(&mut self, v: Value) -> bool {
        let Value::Bin(x) = v else { return false };
        *self = Some(x);
        true
    }
    fn visit<F: FnMut(u8, ValueRef<'_>)>(&self, id: u8, f: &mut F) {
        if let Some(x) = self {
            f(id, ValueRef::Bytes(x));
        }
    }
}

impl Field for Vec<UserProperty> {
    fn set(&mut self, v: Value) -> bool {
        let Value::Pair(k, val) = v else { return false };
        self.push((k, val));
        true
    }
    fn visit<F: FnMut(u8, ValueRef<'_>)>(&self, id: u8, f: &mut F) {
        for (k, v) in self {
            f(id, ValueRef::Pair(k.as_bytes(), v.as_bytes()));
        }
    }
}

impl Field for Vec<u32> {
    fn set(&mut self, v: Value) -> bool {
        let Value::Int(x) = v else { return false };
        self.push(x);
        true
    }
    fn visit<F: FnMut(u8, ValueRef<'_>)>(&self, id: u8, f: &mut F) {
        for &x in self {
            f(id, ValueRef::Int(x));
        }
    }
}

/// A properties struct: filled by [`read`], walked by [`len`] and [`write`].
pub(super) trait Properties: Default {
    /// Stores one decoded property; false if this struct has no field for `id`.
    fn set(&mut self, id: u8, v: Value) -> bool;
    /// Calls `f` for each property present, in encoding order.
    fn visit<F: FnMut(u8, ValueRef<'_>)>(&self, f: F);
}

/// Implements [`Properties`] from a list of `field = IDENTIFIER` pairs (the encoding order).
macro_rules! properties {
    ($ty:ty { $($field:ident = $id:ident),* $(,)? }) => {
        impl Properties for $ty {
            fn set(&mut self, id: u8, v: Value) -> bool {
                match id {
                    $( $id => Field::set(&mut self.$field, v), )*
                    _ => false,
                }
            }
            fn visit<F: FnMut(u8, ValueRef<'_>)>(&self, mut f: F) {
                $( Field::visit(&self.$field, $id, &mut f); )*
            }
        }
    };
}

properties!(ConnectProperties {
    session_expiry_interval = SESSION_EXPIRY_INTERVAL,
    receive_maximum = RECEIVE_MAXIMUM,
    maximum_packet_size = MAXIMUM_PACKET_SIZE,
    topic_alias_maximum = TOPIC_ALIAS_MAXIMUM,
    request_response_information = REQUEST_RESPONSE_INFORMATION,
    request_problem_information = REQUEST_PROBLEM_INFORMATION,
    authentication_method = AUTHENTICATION_METHOD,
    authentication_data = AUTHENTICATION_DATA,
    user_properties = USER_PROPERTY,
});

properties!(WillProperties {
    will_delay_interval = WILL_DELAY_INTERVAL,
    payload_format_indicator = PAYLOAD_FORMAT_INDICATOR,
    message_expiry_interval = MESSAGE_EXPIRY_INTERVAL,
    content_type = CONTENT_TYPE,
    response_topic = RESPONSE_TOPIC,
    correlation_data = CORRELATION_DATA,
    user_properties = USER_PROPERTY,
});

properties!(ConnAckProperties {
    session_expiry_interval = SESSION_EXPIRY_INTERVAL,
    receive_maximum = RECEIVE_MAXIMUM,
    maximum_qos = MAXIMUM_QOS,
    retain_available = RETAIN_AVAILABLE,
    maximum_packet_size = MAXIMUM_PACKET_SIZE,
    assigned_client_identifier = ASSIGNED_CLIENT_IDENTIFIER,
    topic_alias_maximum = TOPIC_ALIAS_MAXIMUM,
    reason_string = REASON_STRING,
    wildcard_subscription_available = WILDCARD_SUBSCRIPTION_AVAILABLE,
    subscription_identifiers_available = SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    shared_subscription_available = SHARED_SUBSCRIPTION_AVAILABLE,
    server_keep_alive = SERVER_KEEP_ALIVE,
    response_information = RESPONSE_INFORMATION,
    server_reference = SERVER_REFERENCE,
    authentication_method = AUTHENTICATION_METHOD,
    authentication_data = AUTHENTICATION_DATA,
    user_properties = USER_PROPERTY,
});

properties!(PublishProperties {
    payload_format_indicator = PAYLOAD_FORMAT_INDICATOR,
    message_expiry_interval = MESSAGE_EXPIRY_INTERVAL,
    topic_alias = TOPIC_ALIAS,
    response_topic = RESPONSE_TOPIC,
    correlation_data = CORRELATION_DATA,
    subscription_identifiers = SUBSCRIPTION_IDENTIFIER,
    content_type = CONTENT_TYPE,
    user_properties = USER_PROPERTY,
});

properties!(AckProperties { reason_string = REASON_STRING, user_properties = USER_PROPERTY });

properties!(SubscribeProperties {
    subscription_identifier = SUBSCRIPTION_IDENTIFIER,
    user_properties = USER_PROPERTY,
});

properties!(UnsubscribeProperties { user_properties = USER_PROPERTY });

properties!(DisconnectProperties {
    session_expiry_interval = SESSION_EXPIRY_INTERVAL,
    reason_string = REASON_STRING,
    server_reference = SERVER_REFERENCE,
    user_properties = USER_PROPERTY,
});

properties!(AuthProperties {
    authentication_method = AUTHENTICATION_METHOD,
    authentication_data = AUTHENTICATION_DATA,
    reason_string = REASON_STRING,
    user_properties = USER_PROPERTY,
});

/// Reads a property block (length, then properties) for `ctx`: checks every identifier is
/// known and allowed there, rejects duplicates (except User Property, and Subscription
/// Identifier in PUBLISH) and out-of-range values.
pub(super) fn read<P: Properties>(r: &mut Reader, ctx: Ctx) -> Result<P, DecodeError> {
    let len = r.vbi("property length")? as usize;
    let mut props = P::default();
    if len == 0 {
        return Ok(props);
    }
    if len > r.remaining() {
        return Err(DecodeError::PropertyLengthOverflow);
    }
    let limits = r.limits;
    if len > limits.max_properties_size as usize {
        return Err(DecodeError::PropertiesTooLarge { size: len, max: limits.max_properties_size });
    }
    let mut user_properties = 0u32;
    let outer_end = r.narrow(len);
    let mut seen = 0u64;
    while r.remaining() > 0 {
        let id = r.u8("property identifier")?;
        let Some((ty, allowed)) = spec(id) else {
            return Err(DecodeError::UnknownProperty(id));
        };
        if allowed & ctx.bit() == 0 {
            return Err(DecodeError::PropertyNotAllowed { id, kind: ctx.kind() });
        }
        if id == USER_PROPERTY {
            user_properties += 1;
            if user_properties > limits.max_user_properties {
                return Err(DecodeError::TooManyUserProperties { max: limits.max_user_properties });
            }
        }
        let repeatable =
            id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && ctx == Ctx::Packet(PacketKind::Publish));
        if !repeatable {
            let bit = 1u64 << id; // id <= 0x2A, checked by `spec`
            if seen & bit != 0 {
                return Err(DecodeError::DuplicateProperty(id));
            }
            seen |= bit;
        }
        let value = read_value(r, id, ty)?;
        if !props.set(id, value) {
            return Err(DecodeError::PropertyNotAllowed { id, kind: ctx.kind() });
        }
    }
    r.restore(outer_end);
    Ok(props)
}

/// Reads one value of type `ty` and checks its range.
fn read_value(r: &mut Reader, id: u8, ty: Ty) -> Result<Value, DecodeError> {
    const FIELD: &str = "property value";
    let invalid = DecodeError::InvalidPropertyValue(id);
    Ok(match ty {
        Ty::Bool | Ty::MaxQos => match r.u8(FIELD)? {
            b @ (0 | 1) => Value::Int(u32::from(b)),
            _ => return Err(invalid),
        },
        Ty::U16 => Value::Int(u32::from(r.u16(FIELD)?)),
        Ty::U16NonZero => match r.u16(FIELD)? {
            0 => return Err(invalid),
            v => Value::Int(u32::from(v)),
        },
        Ty::U32 => Value::Int(r.u32(FIELD)?),
        Ty::U32NonZero => match r.u32(FIELD)? {
            0 => return Err(invalid),
            v => Value::Int(v),
        },
        Ty::VbiNonZero => match r.vbi(FIELD)? {
            0 => return Err(invalid),
            v => Value::Int(v),
        },
        Ty::Str => Value::Str(r.string(FIELD)?),
        Ty::Bin => Value::Bin(r.binary(FIELD)?),
        Ty::Pair => {
            let k = r.string("user property name")?;
            let v = r.string("user property value")?;
            Value::Pair(k, v)
        }
    })
}

/// Size of one encoded value of type `ty`, or the reason it cannot be encoded.
fn value_len(ty: Ty, v: ValueRef<'_>) -> Result<usize, EncodeError> {
    const FIELD: &str = "property";
    let field =
        |b: &[u8]| if b.len() > 65_535 { Err(EncodeError::FieldTooLong(FIELD)) } else { Ok(2 + b.len()) };
    Ok(match (ty, v) {
        (Ty::Bool | Ty::MaxQos, _) => 1,
        (Ty::U16 | Ty::U16NonZero, _) => 2,
        (Ty::U32 | Ty::U32NonZero, _) => 4,
        (Ty::VbiNonZero, ValueRef::Int(x)) => {
            if x as usize > MAX_REMAINING_LENGTH {
                return Err(EncodeError::VariableIntegerTooLarge(x));
            }
            vbi_len(x as usize)
        }
        (_, ValueRef::Bytes(b)) => field(b)?,
        (_, ValueRef::Pair(k, v)) => field(k)? + field(v)?,
        (_, ValueRef::Int(_)) => 4,
    })
}

/// Wire type used to encode identifier `id`.
fn ty_of(id: u8) -> Ty {
    spec(id).map_or(Ty::U32, |(ty, _)| ty)
}

/// Size of the properties (without the property length prefix).
pub(super) fn len<P: Properties>(p: &P) -> Result<usize, EncodeError> {
    let mut total = 0usize;
    let mut err = None;
    p.visit(|id, v| match value_len(ty_of(id), v) {
        Ok(n) => total += 1 + n,
        Err(e) => err = Some(e),
    });
    match err {
        Some(e) => Err(e),
        None if total > MAX_REMAINING_LENGTH => Err(EncodeError::PacketTooLarge(total)),
        None => Ok(total),
    }
}

/// Size of the property block: length prefix plus properties.
pub(super) fn block_len<P: Properties>(p: &P) -> Result<usize, EncodeError> {
    let n = len(p)?;
    Ok(vbi_len(n) + n)
}

/// Writes the property block; `len` is the value returned by [`len`] for `p`.
pub(super) fn write<P: Properties>(p: &P, len: usize, buf: &mut BytesMut) {
    put_vbi(buf, len);
    p.visit(|id, v| {
        buf.put_u8(id);
        match (ty_of(id), v) {
            (Ty::Bool | Ty::MaxQos, ValueRef::Int(x)) => buf.put_u8(x as u8),
            (Ty::U16 | Ty::U16NonZero, ValueRef::Int(x)) => buf.put_u16(x as u16),
            (Ty::VbiNonZero, ValueRef::Int(x)) => put_vbi(buf, x as usize),
            (_, ValueRef::Int(x)) => buf.put_u32(x),
            (_, ValueRef::Bytes(b)) => put_field(buf, b),
            (_, ValueRef::Pair(k, v)) => {
                put_field(buf, k);
                put_field(buf, v);
            }
        }
    });
}

/// Writes a two-byte length and the bytes (length checked by the caller).
#[inline]
pub(super) fn put_field(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u16(b.len() as u16);
    buf.put_slice(b);
}
