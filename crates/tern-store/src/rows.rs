//! Conversions between rows and the broker's records, written once for both backends over a
//! small column-reading trait, with range checks (a value out of range is an `Other` error).

use std::collections::BTreeMap;

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row, TypeInfo};
use tern_broker::store::{
    AclAction, AclRule, AdminUser, ApiKey, AuditEntry, Device, DeviceLimits, Permission, RefreshToken,
    StoredDelivery, StoredMessage, StoredSession, StoredSubscription,
};

type Result<T> = std::result::Result<T, sqlx::Error>;

/// Reads columns by index from either backend's row. Integers of any width come back as
/// `i64` (PostgreSQL has SMALLINT/INTEGER/BIGINT columns, SQLite only INTEGER).
pub(crate) trait RowGet {
    fn opt_int(&self, index: usize) -> Result<Option<i64>>;
    fn opt_text(&self, index: usize) -> Result<Option<String>>;
    fn opt_bytes(&self, index: usize) -> Result<Option<Vec<u8>>>;
    fn opt_bool(&self, index: usize) -> Result<Option<bool>>;

    fn int(&self, index: usize) -> Result<i64> {
        self.opt_int(index)?.ok_or_else(|| null(index))
    }
    fn text(&self, index: usize) -> Result<String> {
        self.opt_text(index)?.ok_or_else(|| null(index))
    }
    fn bytes(&self, index: usize) -> Result<Vec<u8>> {
        self.opt_bytes(index)?.ok_or_else(|| null(index))
    }
    fn boolean(&self, index: usize) -> Result<bool> {
        self.opt_bool(index)?.ok_or_else(|| null(index))
    }
}

fn null(index: usize) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: index.to_string(), source: "unexpected NULL".into() }
}

impl RowGet for PgRow {
    fn opt_int(&self, index: usize) -> Result<Option<i64>> {
        Ok(match self.try_column(index)?.type_info().name() {
            "INT2" => self.try_get::<Option<i16>, _>(index)?.map(i64::from),
            "INT4" => self.try_get::<Option<i32>, _>(index)?.map(i64::from),
            _ => self.try_get::<Option<i64>, _>(index)?,
        })
    }
    fn opt_text(&self, index: usize) -> Result<Option<String>> {
        self.try_get(index)
    }
    fn opt_bytes(&self, index: usize) -> Result<Option<Vec<u8>>> {
        self.try_get(index)
    }
    fn opt_bool(&self, index: usize) -> Result<Option<bool>> {
        self.try_get(index)
    }
}

impl RowGet for SqliteRow {
    fn opt_int(&self, index: usize) -> Result<Option<i64>> {
        self.try_get(index)
    }
    fn opt_text(&self, index: usize) -> Result<Option<String>> {
        self.try_get(index)
    }
    fn opt_bytes(&self, index: usize) -> Result<Option<Vec<u8>>> {
        self.try_get(index)
    }
    fn opt_bool(&self, index: usize) -> Result<Option<bool>> {
        self.try_get(index)
    }
}

/// Narrows a stored integer, failing with the column's name when it is out of range.
fn narrow<T: TryFrom<i64>>(value: i64, what: &str) -> Result<T> {
    T::try_from(value).map_err(|_| sqlx::Error::Decode(format!("{what} out of range: {value}").into()))
}

fn opt_narrow<T: TryFrom<i64>>(value: Option<i64>, what: &str) -> Result<Option<T>> {
    value.map(|v| narrow(v, what)).transpose()
}

// Column lists: the SELECTs in `sql` name columns in exactly this order.

/// `client_id, expiry_interval, protocol, disconnected_at, will, will_at, last_seq, owner`
pub(crate) fn session(r: &impl RowGet) -> Result<StoredSession> {
    Ok(StoredSession {
        client_id: r.text(0)?,
        expiry_interval: narrow(r.int(1)?, "sessions.expiry_interval")?,
        protocol: narrow(r.int(2)?, "sessions.protocol")?,
        disconnected_at: r.opt_int(3)?,
        will: r.opt_bytes(4)?,
        will_at: r.opt_int(5)?,
        last_seq: r.int(6)?,
        owner: r.opt_text(7)?,
    })
}

/// `client_id, filter, options, subscription_id`
pub(crate) fn subscription(r: &impl RowGet) -> Result<StoredSubscription> {
    Ok(StoredSubscription {
        client_id: r.text(0)?,
        filter: r.text(1)?,
        options: narrow(r.int(2)?, "subscriptions.options")?,
        subscription_id: opt_narrow(r.opt_int(3)?, "subscriptions.subscription_id")?,
    })
}

/// `id, topic, payload, qos, retain, properties, expires_at, created_at`
pub(crate) fn message(r: &impl RowGet) -> Result<StoredMessage> {
    Ok(StoredMessage {
        id: r.int(0)?,
        topic: r.text(1)?,
        payload: r.bytes(2)?,
        qos: narrow(r.int(3)?, "messages.qos")?,
        retain: r.boolean(4)?,
        properties: r.bytes(5)?,
        expires_at: r.opt_int(6)?,
        created_at: r.int(7)?,
    })
}

/// `client_id, seq, message_id, qos, retain, subscription_ids, state`
pub(crate) fn delivery(r: &impl RowGet) -> Result<StoredDelivery> {
    Ok(StoredDelivery {
        client_id: r.text(0)?,
        seq: r.int(1)?,
        message_id: r.int(2)?,
        qos: narrow(r.int(3)?, "deliveries.qos")?,
        retain: r.boolean(4)?,
        subscription_ids: decode_ids(&r.text(5)?)?,
        state: narrow(r.int(6)?, "deliveries.state")?,
    })
}

/// `client_id, packet_id`
pub(crate) fn inbound(r: &impl RowGet) -> Result<(String, u16)> {
    Ok((r.text(0)?, narrow(r.int(1)?, "inbound_qos2.packet_id")?))
}

/// `topic, message_id, client_id`
pub(crate) fn retained(r: &impl RowGet) -> Result<(String, i64, Option<String>)> {
    Ok((r.text(0)?, r.int(1)?, r.opt_text(2)?))
}

/// `client_id, username, password_hash, scram_verifier, cert_identity, enabled, created_at, labels,
/// limits`
pub(crate) fn device(r: &impl RowGet) -> Result<Device> {
    Ok(Device {
        client_id: r.text(0)?,
        username: r.opt_text(1)?,
        password_hash: r.opt_text(2)?,
        scram_verifier: r.opt_text(3)?,
        cert_identity: r.opt_text(4)?,
        enabled: r.boolean(5)?,
        created_at: r.int(6)?,
        labels: decode_labels(&r.text(7)?)?,
        limits: decode_limits(&r.text(8)?)?,
    })
}

/// `id, client_id, username, permission, action, topic, max_qos, allow_retain`
pub(crate) fn acl_rule(r: &impl RowGet) -> Result<AclRule> {
    Ok(AclRule {
        id: r.int(0)?,
        client_id: r.opt_text(1)?,
        username: r.opt_text(2)?,
        permission: permission_from_text(&r.text(3)?)?,
        action: action_from_text(&r.text(4)?)?,
        topic: r.text(5)?,
        max_qos: opt_narrow(r.opt_int(6)?, "acl_rules.max_qos")?,
        allow_retain: r.opt_bool(7)?,
    })
}

/// `username, password_hash, role, created_at`
pub(crate) fn admin_user(r: &impl RowGet) -> Result<AdminUser> {
    Ok(AdminUser { username: r.text(0)?, password_hash: r.text(1)?, role: r.text(2)?, created_at: r.int(3)? })
}

/// `id, name, secret_hash, role, created_by, created_at, last_used_at, expires_at`
pub(crate) fn api_key(r: &impl RowGet) -> Result<ApiKey> {
    Ok(ApiKey {
        id: r.text(0)?,
        name: r.text(1)?,
        secret_hash: r.text(2)?,
        role: r.text(3)?,
        created_by: r.text(4)?,
        created_at: r.int(5)?,
        last_used_at: r.opt_int(6)?,
        expires_at: r.opt_int(7)?,
    })
}

/// `id, family, username, issued_at, expires_at, uses`
pub(crate) fn refresh_token(r: &impl RowGet) -> Result<RefreshToken> {
    Ok(RefreshToken {
        id: r.text(0)?,
        family: r.text(1)?,
        username: r.text(2)?,
        issued_at: r.int(3)?,
        expires_at: r.int(4)?,
        uses: r.int(5)?,
    })
}

/// `id, at, actor, action, target, source, detail`
pub(crate) fn audit_entry(r: &impl RowGet) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.int(0)?,
        at: r.int(1)?,
        actor: r.text(2)?,
        action: r.text(3)?,
        target: r.opt_text(4)?,
        source: r.opt_text(5)?,
        detail: r.text(6)?,
    })
}

/// Labels as stored: serde_json's text of the map, which is canonical (a `BTreeMap` serializes
/// its keys in order, with no spaces), so equal label sets are equal texts and the label
/// filter of `QUERY_DEVICES` can look for one pair's text.
///
/// A NUL character is refused: PostgreSQL's JSON functions reject the `\u0000` that serde_json
/// would write, and SQLite's `json_each` cuts the text there, so the label filter could not
/// treat it alike on both (PostgreSQL refuses NUL in every other text column anyway).
pub(crate) fn encode_labels(labels: &BTreeMap<String, String>) -> Result<String> {
    if labels.iter().any(|(k, v)| k.contains('\0') || v.contains('\0')) {
        return Err(sqlx::Error::Encode("a device label contains a NUL character".into()));
    }
    serde_json::to_string(labels).map_err(|e| sqlx::Error::Encode(e.into()))
}

/// A device's limits as stored: a JSON object of the limits that are set (`{}`: none).
pub(crate) fn encode_limits(limits: &DeviceLimits) -> Result<String> {
    serde_json::to_string(limits).map_err(|e| sqlx::Error::Encode(e.into()))
}

/// Inverse of [`encode_limits`]; unknown keys or wrong types are a decode error.
pub(crate) fn decode_limits(text: &str) -> Result<DeviceLimits> {
    serde_json::from_str(text)
        .map_err(|e| sqlx::Error::Decode(format!("bad devices.limits {text:?}: {e}").into()))
}

/// Inverse of [`encode_labels`]; anything but a JSON object of strings is a decode error.
pub(crate) fn decode_labels(text: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(text)
        .map_err(|e| sqlx::Error::Decode(format!("bad devices.labels {text:?}: {e}").into()))
}

/// One label as it appears in [`encode_labels`]' text: `"key":"value"`.
pub(crate) fn label_needle(key: &str, value: &str) -> Result<String> {
    let key = serde_json::to_string(key).map_err(|e| sqlx::Error::Encode(e.into()))?;
    let value = serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(e.into()))?;
    Ok(format!("{key}:{value}"))
}

/// Subscription identifiers as stored: decimal, comma-separated, `""` for none.
pub(crate) fn encode_ids(ids: &[u32]) -> String {
    let mut out = String::with_capacity(ids.len() * 4);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out
}

/// Inverse of [`encode_ids`].
pub(crate) fn decode_ids(text: &str) -> Result<Vec<u32>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|id| {
            id.parse::<u32>()
                .map_err(|_| sqlx::Error::Decode(format!("bad subscription_ids value {text:?}").into()))
        })
        .collect()
}

pub(crate) fn permission_text(permission: Permission) -> &'static str {
    match permission {
        Permission::Allow => "allow",
        Permission::Deny => "deny",
    }
}

fn permission_from_text(text: &str) -> Result<Permission> {
    match text {
        "allow" => Ok(Permission::Allow),
        "deny" => Ok(Permission::Deny),
        _ => Err(sqlx::Error::Decode(format!("bad acl_rules.permission {text:?}").into())),
    }
}

pub(crate) fn action_text(action: AclAction) -> &'static str {
    match action {
        AclAction::Publish => "publish",
        AclAction::Subscribe => "subscribe",
        AclAction::All => "all",
    }
}

fn action_from_text(text: &str) -> Result<AclAction> {
    match text {
        "publish" => Ok(AclAction::Publish),
        "subscribe" => Ok(AclAction::Subscribe),
        "all" => Ok(AclAction::All),
        _ => Err(sqlx::Error::Decode(format!("bad acl_rules.action {text:?}").into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_ids_round_trip() {
        for ids in [vec![], vec![1], vec![1, 268_435_455, 7], vec![u32::MAX]] {
            assert_eq!(decode_ids(&encode_ids(&ids)).unwrap(), ids);
        }
        assert_eq!(encode_ids(&[3, 14]), "3,14");
        assert!(decode_ids("1,x").is_err());
        assert!(decode_ids("1,").is_err());
    }

    #[test]
    fn labels_are_canonical_and_checked() {
        let labels: BTreeMap<String, String> =
            [("site", "berlin"), ("a\"b", "x:\\y")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let text = encode_labels(&labels).unwrap();
        assert_eq!(text, r#"{"a\"b":"x:\\y","site":"berlin"}"#, "sorted keys, no spaces, escaped");
        assert_eq!(decode_labels(&text).unwrap(), labels);
        assert_eq!(encode_labels(&BTreeMap::new()).unwrap(), "{}", "the column's default");
        for nul in [("a\0", "b"), ("a", "b\0")] {
            let map = BTreeMap::from([(nul.0.to_owned(), nul.1.to_owned())]);
            assert!(matches!(encode_labels(&map), Err(sqlx::Error::Encode(_))), "{nul:?}");
        }
        assert!(text.contains(&label_needle("site", "berlin").unwrap()));
        assert!(text.contains(&label_needle("a\"b", "x:\\y").unwrap()));
        for bad in ["", "[]", r#"{"a":1}"#, r#"{"a":null}"#, "{", r#"{"a":{"b":"c"}}"#] {
            assert!(matches!(decode_labels(bad), Err(sqlx::Error::Decode(_))), "{bad:?}");
        }
    }

    #[test]
    fn narrowing_checks_ranges() {
        assert_eq!(narrow::<u8>(2, "qos").unwrap(), 2);
        assert!(narrow::<u8>(256, "qos").is_err());
        assert!(narrow::<u32>(-1, "expiry").is_err());
        assert_eq!(narrow::<u32>(i64::from(u32::MAX), "expiry").unwrap(), u32::MAX);
    }
}
