//! Packet bodies: one function per packet type, reading a complete frame.

use super::properties::{self, Ctx, Properties};
use super::reader::Reader;
use crate::error::DecodeError;
use crate::reason::{PacketKind, ReasonCode};
use crate::types::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, ProtocolVersion, PubReply, Publish, QoS,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, WillProperties,
};

/// Decodes the body of a complete frame whose fixed header has been checked.
///
/// `version` is `None` only for a server's first packet, which is then a CONNECT; a CONNECT is
/// always read at its own protocol level.
pub(super) fn body(
    kind: PacketKind,
    flags: u8,
    version: Option<ProtocolVersion>,
    mut r: Reader,
) -> Result<Packet, DecodeError> {
    if kind == PacketKind::Connect {
        return Ok(Packet::Connect(Box::new(connect(&mut r)?)));
    }
    let v = version.unwrap_or(ProtocolVersion::V5);
    let packet = match kind {
        PacketKind::Publish => Packet::Publish(publish(&mut r, flags, v)?),
        PacketKind::ConnAck => Packet::ConnAck(connack(&mut r, v)?),
        PacketKind::PubAck => Packet::PubAck(pub_reply(&mut r, kind, v)?),
        PacketKind::PubRec => Packet::PubRec(pub_reply(&mut r, kind, v)?),
        PacketKind::PubRel => Packet::PubRel(pub_reply(&mut r, kind, v)?),
        PacketKind::PubComp => Packet::PubComp(pub_reply(&mut r, kind, v)?),
        PacketKind::Subscribe => Packet::Subscribe(subscribe(&mut r, v)?),
        PacketKind::SubAck => Packet::SubAck(suback(&mut r, v)?),
        PacketKind::Unsubscribe => Packet::Unsubscribe(unsubscribe(&mut r, v)?),
        PacketKind::UnsubAck => Packet::UnsubAck(unsuback(&mut r, v)?),
        PacketKind::PingReq => Packet::PingReq,
        PacketKind::PingResp => Packet::PingResp,
        PacketKind::Disconnect => {
            let (reason_code, properties) = short_tail(&mut r, kind, v)?;
            Packet::Disconnect(Disconnect { reason_code, properties })
        }
        PacketKind::Auth => {
            let (reason_code, properties) = short_tail(&mut r, kind, v)?;
            Packet::Auth(Auth { reason_code, properties })
        }
        PacketKind::Connect => return Err(DecodeError::SecondConnect),
    };
    r.finish()?;
    Ok(packet)
}

/// Properties of `kind` at v5, defaults at 3.x.
#[inline]
fn props<P: Properties>(r: &mut Reader, kind: PacketKind, v: ProtocolVersion) -> Result<P, DecodeError> {
    if v.is_v5() { properties::read(r, Ctx::Packet(kind)) } else { Ok(P::default()) }
}

/// A reason code byte that must be valid for `kind`.
#[inline]
fn reason(r: &mut Reader, kind: PacketKind) -> Result<ReasonCode, DecodeError> {
    let code = r.u8("reason code")?;
    match ReasonCode::from_u8(code) {
        Some(rc) if rc.valid_for(kind) => Ok(rc),
        _ => Err(DecodeError::InvalidReasonCode { kind, code }),
    }
}

/// CONNECT (3.1): protocol name and level, flags, keep alive, properties, payload.
fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary_ref("protocol name")?;
    let is_mqtt = name == b"MQTT";
    let is_mqisdp = name == b"MQIsdp";
    if !is_mqtt && !is_mqisdp {
        return Err(DecodeError::InvalidProtocolName);
    }
    let level = r.u8("protocol level")?;
    let protocol = match (is_mqtt, level) {
        (true, 4) => ProtocolVersion::V3_1_1,
        (true, 5) => ProtocolVersion::V5,
        (false, 3) => ProtocolVersion::V3_1,
        _ => return Err(DecodeError::UnsupportedProtocolVersion(level)),
    };
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedConnectFlag);
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    if will_qos == 3 || (!will_flag && (will_qos != 0 || will_retain)) {
        return Err(DecodeError::InvalidWillFlags);
    }
    let has_username = flags & 0x80 != 0;
    let has_password = flags & 0x40 != 0;
    if has_password && !has_username && !protocol.is_v5() {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = props(r, PacketKind::Connect, protocol)?;
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties =
            if protocol.is_v5() { properties::read(r, Ctx::Will)? } else { WillProperties::default() };
        let topic = r.topic_name("will topic")?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopicName);
        }
        let payload = r.binary("will payload")?;
        let qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidWillFlags)?;
        Some(LastWill { topic, payload, qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if has_username { Some(r.string("user name")?) } else { None };
    let password = if has_password { Some(r.binary("password")?) } else { None };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// CONNACK (3.2): acknowledge flags, return code / reason code, properties.
fn connack(r: &mut Reader, v: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("connack flags")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::InvalidConnAckFlags);
    }
    let reason_code = if v.is_v5() {
        reason(r, PacketKind::ConnAck)?
    } else {
        let code = r.u8("return code")?;
        ReasonCode::from_v3_connack(code)
            .ok_or(DecodeError::InvalidReasonCode { kind: PacketKind::ConnAck, code })?
    };
    let properties = props(r, PacketKind::ConnAck, v)?;
    Ok(ConnAck { session_present: flags & 0x01 != 0, reason_code, properties })
}

/// PUBLISH (3.3): the hot path. Flags were checked with the fixed header.
#[inline]
fn publish(r: &mut Reader, flags: u8, v: ProtocolVersion) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    let topic = r.topic_name("topic name")?;
    let packet_id = if qos == QoS::AtMostOnce { None } else { Some(r.packet_id()?) };
    let properties: crate::types::PublishProperties = props(r, PacketKind::Publish, v)?;
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicName);
    }
    let payload = r.rest();
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        properties,
        payload,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (3.4-3.7): packet id, then at v5 an optional reason code
/// and optional properties (remaining length 2 = Success, 3 = reason only; MQTT 3.4.2.1).
fn pub_reply(r: &mut Reader, kind: PacketKind, v: ProtocolVersion) -> Result<PubReply, DecodeError> {
    let packet_id = r.packet_id()?;
    let (reason_code, properties) = short_tail(r, kind, v)?;
    Ok(PubReply { packet_id, reason_code, properties })
}

/// An optional reason code followed by optional properties (v5 acks, DISCONNECT, AUTH); at 3.x
/// nothing, i.e. Success and no properties.
fn short_tail<P: Properties>(
    r: &mut Reader,
    kind: PacketKind,
    v: ProtocolVersion,
) -> Result<(ReasonCode, P), DecodeError> {
    if !v.is_v5() || r.remaining() == 0 {
        return Ok((ReasonCode::Success, P::default()));
    }
    let rc = reason(r, kind)?;
    if r.remaining() == 0 {
        return Ok((rc, P::default()));
    }
    Ok((rc, properties::read(r, Ctx::Packet(kind))?))
}

/// Subscription options byte (3.8.3.1): reserved bits, QoS 3 and Retain Handling 3 rejected.
fn subscription_options(b: u8, v: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if v.is_v5() { 0xC0 } else { 0xFC };
    let invalid = DecodeError::InvalidSubscriptionOptions(b);
    if b & reserved != 0 {
        return Err(invalid);
    }
    let qos = QoS::from_u8(b & 0x03).ok_or(invalid.clone())?;
    let retain_handling = match (b >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(invalid),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling,
    })
}

/// SUBSCRIBE (3.8): packet id, properties, one or more (filter, options).
fn subscribe(r: &mut Reader, v: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = props(r, PacketKind::Subscribe, v)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string("topic filter")?;
        let options = subscription_options(r.u8("subscription options")?, v)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Subscribe { packet_id, filters, properties })
}

/// SUBACK (3.9): packet id, properties, one reason code per filter.
fn suback(r: &mut Reader, v: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = props(r, PacketKind::SubAck, v)?;
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while r.remaining() > 0 {
        let rc = if v.is_v5() {
            reason(r, PacketKind::SubAck)?
        } else {
            match r.u8("return code")? {
                0x00 => ReasonCode::Success,
                0x01 => ReasonCode::GrantedQoS1,
                0x02 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                code => return Err(DecodeError::InvalidReasonCode { kind: PacketKind::SubAck, code }),
            }
        };
        reason_codes.push(rc);
    }
    Ok(SubAck { packet_id, reason_codes, properties })
}

/// UNSUBSCRIBE (3.10): packet id, properties, one or more filters.
fn unsubscribe(r: &mut Reader, v: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = props(r, PacketKind::Unsubscribe, v)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoUnsubscribeFilters);
    }
    Ok(Unsubscribe { packet_id, filters, properties })
}

/// UNSUBACK (3.11): packet id; at v5 properties and one reason code per filter.
fn unsuback(r: &mut Reader, v: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = props(r, PacketKind::UnsubAck, v)?;
    let mut reason_codes = Vec::new();
    if v.is_v5() {
        reason_codes.reserve_exact(r.remaining());
        while r.remaining() > 0 {
            reason_codes.push(reason(r, PacketKind::UnsubAck)?);
        }
    }
    Ok(UnsubAck { packet_id, reason_codes, properties })
}
