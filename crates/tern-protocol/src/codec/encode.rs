//! Packet encoding: [`remaining_len`] sizes and validates, [`encode`] writes into one reserved
//! buffer; both walk the same field layout.

use bytes::{BufMut, BytesMut};

use super::MAX_REMAINING_LENGTH;
use super::header::{fixed_flags, put_vbi, vbi_len};
use super::properties::{self, Properties, put_field};
use crate::error::EncodeError;
use crate::reason::ReasonCode;
use crate::types::{
    ConnAck, Connect, Packet, ProtocolVersion, PubReply, Publish, QoS, RetainHandling, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};

/// Size of a length-prefixed string or binary field, checked against 65,535.
#[inline]
fn field(b: &[u8], name: &'static str) -> Result<usize, EncodeError> {
    if b.len() > 65_535 { Err(EncodeError::FieldTooLong(name)) } else { Ok(2 + b.len()) }
}

/// Property block size at v5, 0 at 3.x.
#[inline]
fn props_block<P: Properties>(p: &P, v: ProtocolVersion) -> Result<usize, EncodeError> {
    if v.is_v5() { properties::block_len(p) } else { Ok(0) }
}

/// Writes the property block at v5 (sizes already validated).
#[inline]
fn put_props<P: Properties>(p: &P, v: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    if v.is_v5() {
        let n = properties::len(p)?;
        properties::write(p, n, buf);
    }
    Ok(())
}

/// The packet identifier a QoS 1/2 PUBLISH must carry.
#[inline]
fn publish_id(p: &Publish) -> Result<Option<u16>, EncodeError> {
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, _) => Ok(None),
        (_, Some(id)) if id != 0 => Ok(Some(id)),
        _ => Err(EncodeError::MissingPacketId),
    }
}

/// The shortest tail for a v5 ack / DISCONNECT / AUTH: nothing when Success without
/// properties, the reason code alone when there are no properties (`with_len_always` forces
/// the property length after the reason code, used for AUTH).
#[inline]
fn short_tail_len<P: Properties>(
    rc: ReasonCode,
    p: &P,
    v: ProtocolVersion,
    with_len_always: bool,
) -> Result<usize, EncodeError> {
    if !v.is_v5() {
        return Ok(0);
    }
    let n = properties::len(p)?;
    Ok(match (rc, n) {
        (ReasonCode::Success, 0) => 0,
        (_, 0) if !with_len_always => 1,
        _ => 1 + vbi_len(n) + n,
    })
}

/// Writes the tail sized by [`short_tail_len`].
#[inline]
fn put_short_tail<P: Properties>(
    rc: ReasonCode,
    p: &P,
    v: ProtocolVersion,
    with_len_always: bool,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    if !v.is_v5() {
        return Ok(());
    }
    let n = properties::len(p)?;
    match (rc, n) {
        (ReasonCode::Success, 0) => {}
        (_, 0) if !with_len_always => buf.put_u8(rc.as_u8()),
        _ => {
            buf.put_u8(rc.as_u8());
            properties::write(p, n, buf);
        }
    }
    Ok(())
}

/// The body size of `packet` at `version`, after checking it can be encoded.
pub(super) fn remaining_len(packet: &Packet, v: ProtocolVersion) -> Result<usize, EncodeError> {
    let n = match packet {
        Packet::Publish(p) => publish_len(p, v)?,
        Packet::Connect(c) => connect_len(c)?,
        Packet::ConnAck(c) => 2 + props_block(&c.properties, v)?,
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            2 + short_tail_len(r.reason_code, &r.properties, v, false)?
        }
        Packet::Subscribe(s) => subscribe_len(s, v)?,
        Packet::SubAck(s) => 2 + props_block(&s.properties, v)? + s.reason_codes.len(),
        Packet::Unsubscribe(u) => unsubscribe_len(u, v)?,
        Packet::UnsubAck(u) => {
            if v.is_v5() {
                2 + props_block(&u.properties, v)? + u.reason_codes.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => short_tail_len(d.reason_code, &d.properties, v, false)?,
        Packet::Auth(a) => {
            if !v.is_v5() {
                return Err(EncodeError::NotInVersion);
            }
            short_tail_len(a.reason_code, &a.properties, v, true)?
        }
    };
    if n > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge(n));
    }
    Ok(n)
}

/// Body size of a PUBLISH.
#[inline]
fn publish_len(p: &Publish, v: ProtocolVersion) -> Result<usize, EncodeError> {
    if p.dup && p.qos == QoS::AtMostOnce {
        return Err(EncodeError::Invalid("DUP set on a QoS 0 PUBLISH"));
    }
    if p.topic.is_empty() && !(v.is_v5() && p.properties.topic_alias.is_some()) {
        return Err(EncodeError::Invalid("empty topic name without a topic alias"));
    }
    let id = if publish_id(p)?.is_some() { 2 } else { 0 };
    let props = if v.is_v5() {
        if p.properties.is_empty() { 1 } else { properties::block_len(&p.properties)? }
    } else {
        0
    };
    Ok(field(p.topic.as_bytes(), "topic name")? + id + props + p.payload.len())
}

/// Body size of a CONNECT, at its own protocol level.
fn connect_len(c: &Connect) -> Result<usize, EncodeError> {
    let v = c.protocol;
    if c.password.is_some() && c.username.is_none() && !v.is_v5() {
        return Err(EncodeError::Invalid("password without user name in MQTT 3.x"));
    }
    let mut n = 2 + v.protocol_name().len() + 1 + 1 + 2;
    n += props_block(&c.properties, v)?;
    n += field(c.client_id.as_bytes(), "client identifier")?;
    if let Some(w) = &c.will {
        n += props_block(&w.properties, v)?;
        n += field(w.topic.as_bytes(), "will topic")?;
        n += field(&w.payload, "will payload")?;
    }
    if let Some(u) = &c.username {
        n += field(u.as_bytes(), "user name")?;
    }
    if let Some(p) = &c.password {
        n += field(p, "password")?;
    }
    Ok(n)
}

/// Body size of a SUBSCRIBE.
fn subscribe_len(s: &Subscribe, v: ProtocolVersion) -> Result<usize, EncodeError> {
    if s.packet_id == 0 {
        return Err(EncodeError::MissingPacketId);
    }
    let mut n = 2 + props_block(&s.properties, v)?;
    for (f, _) in &s.filters {
        n += field(f.as_bytes(), "topic filter")? + 1;
    }
    Ok(n)
}

/// Body size of an UNSUBSCRIBE.
fn unsubscribe_len(u: &Unsubscribe, v: ProtocolVersion) -> Result<usize, EncodeError> {
    if u.packet_id == 0 {
        return Err(EncodeError::MissingPacketId);
    }
    let mut n = 2 + props_block(&u.properties, v)?;
    for f in &u.filters {
        n += field(f.as_bytes(), "topic filter")?;
    }
    Ok(n)
}

/// Appends `packet` to `buf`, reserving the exact size once.
pub(super) fn encode(packet: &Packet, v: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let remaining = remaining_len(packet, v)?;
    buf.reserve(1 + vbi_len(remaining) + remaining);
    let kind = packet.kind();
    let flags = match packet {
        Packet::Publish(p) => (u8::from(p.dup) << 3) | (p.qos.as_u8() << 1) | u8::from(p.retain),
        _ => fixed_flags(kind),
    };
    buf.put_u8((kind.type_id() << 4) | flags);
    put_vbi(buf, remaining);
    match packet {
        Packet::Publish(p) => put_publish(p, v, buf)?,
        Packet::Connect(c) => put_connect(c, buf)?,
        Packet::ConnAck(c) => put_connack(c, v, buf)?,
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            put_pub_reply(r, v, buf)?;
        }
        Packet::Subscribe(s) => put_subscribe(s, v, buf)?,
        Packet::SubAck(s) => put_suback(s, v, buf)?,
        Packet::Unsubscribe(u) => put_unsubscribe(u, v, buf)?,
        Packet::UnsubAck(u) => put_unsuback(u, v, buf)?,
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => put_short_tail(d.reason_code, &d.properties, v, false, buf)?,
        Packet::Auth(a) => put_short_tail(a.reason_code, &a.properties, v, true, buf)?,
    }
    Ok(())
}

#[inline]
fn put_publish(p: &Publish, v: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    put_field(buf, p.topic.as_bytes());
    if let Some(id) = publish_id(p)? {
        buf.put_u16(id);
    }
    if v.is_v5() {
        if p.properties.is_empty() {
            buf.put_u8(0);
        } else {
            put_props(&p.properties, v, buf)?;
        }
    }
    buf.put_slice(&p.payload);
    Ok(())
}

fn put_connect(c: &Connect, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let v = c.protocol;
    put_field(buf, v.protocol_name().as_bytes());
    buf.put_u8(v.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos.as_u8() << 3) | (u8::from(w.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    put_props(&c.properties, v, buf)?;
    put_field(buf, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        put_props(&w.properties, v, buf)?;
        put_field(buf, w.topic.as_bytes());
        put_field(buf, &w.payload);
    }
    if let Some(u) = &c.username {
        put_field(buf, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_field(buf, p);
    }
    Ok(())
}

fn put_connack(c: &ConnAck, v: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.put_u8(u8::from(c.session_present));
    buf.put_u8(if v.is_v5() { c.reason_code.as_u8() } else { c.reason_code.to_v3_connack() });
    put_props(&c.properties, v, buf)
}

fn put_pub_reply(r: &PubReply, v: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.put_u16(r.packet_id);
    put_short_tail(r.reason_code, &r.properties, v, false, buf)
}

/// The subscription options byte; at 3.x only the QoS bits.
fn options_byte(o: SubscriptionOptions, v: ProtocolVersion) -> u8 {
    let mut b = o.qos.as_u8();
    if v.is_v5() {
        b |= u8::from(o.no_local) << 2;
        b |= u8::from(o.retain_as_published) << 3;
        b |= match o.retain_handling {
            RetainHandling::SendAtSubscribe => 0,
            RetainHandling::SendIfNew => 1,
            RetainHandling::DoNotSend => 2,
        } << 4;
    }
    b
}

fn put_subscribe(s: &Subscribe, v: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.put_u16(s.packet_id);
    put_props(&s.properties, v, buf)?;
    for (f, o) in &s.filters {
        put_field(buf, f.as_bytes());
        buf.put_u8(options_byte(*o, v));
    }
    Ok(())
}

/// A 3.x SUBACK return code: granted QoS 0-2, anything else 0x80.
fn v3_suback_code(rc: ReasonCode) -> u8 {
    match rc {
        ReasonCode::Success | ReasonCode::GrantedQoS1 | ReasonCode::GrantedQoS2 => rc.as_u8(),
        _ => 0x80,
    }
}

fn put_suback(s: &SubAck, v: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.put_u16(s.packet_id);
    put_props(&s.properties, v, buf)?;
    for &rc in &s.reason_codes {
        buf.put_u8(if v.is_v5() { rc.as_u8() } else { v3_suback_code(rc) });
    }
    Ok(())
}

fn put_unsubscribe(u: &Unsubscribe, v: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.put_u16(u.packet_id);
    put_props(&u.properties, v, buf)?;
    for f in &u.filters {
        put_field(buf, f.as_bytes());
    }
    Ok(())
}

fn put_unsuback(u: &UnsubAck, v: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.put_u16(u.packet_id);
    if v.is_v5() {
        put_props(&u.properties, v, buf)?;
        for &rc in &u.reason_codes {
            buf.put_u8(rc.as_u8());
        }
    }
    Ok(())
}
