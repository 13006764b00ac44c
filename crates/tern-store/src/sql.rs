//! SQL text shared by both backends. PostgreSQL and SQLite (>= 3.35, bundled) both accept
//! `$N` parameters, `INSERT ... ON CONFLICT ... DO UPDATE/NOTHING` and `RETURNING`, so one text
//! serves both; dialect-specific statements live in `pg.rs` and `sqlite.rs`.
//! SELECT column orders match the decoders in `rows.rs`.

// Broker state: one statement per `StoreOp` kind.

pub(crate) const PUT_SESSION: &str = "INSERT INTO sessions \
     (client_id, expiry_interval, protocol, disconnected_at, will, will_at, last_seq, owner) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (client_id) DO UPDATE SET expiry_interval = excluded.expiry_interval, \
     protocol = excluded.protocol, disconnected_at = excluded.disconnected_at, will = excluded.will, \
     will_at = excluded.will_at, last_seq = excluded.last_seq, owner = excluded.owner";

/// `DeleteSession` runs these four, in this order. (No foreign keys from the session's rows to
/// `sessions`: an operation racing a session's deletion, e.g. a delivery routed to a session
/// that is expiring, must not fail the whole group-committed batch; `sweep` removes such
/// leftovers.)
pub(crate) const DELETE_SESSION: [&str; 4] = [
    "DELETE FROM subscriptions WHERE client_id = $1",
    "DELETE FROM deliveries WHERE client_id = $1",
    "DELETE FROM inbound_qos2 WHERE client_id = $1",
    "DELETE FROM sessions WHERE client_id = $1",
];

pub(crate) const PUT_SUBSCRIPTION: &str = "INSERT INTO subscriptions \
     (client_id, filter, options, subscription_id) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (client_id, filter) DO UPDATE SET options = excluded.options, \
     subscription_id = excluded.subscription_id";

pub(crate) const DELETE_SUBSCRIPTION: &str = "DELETE FROM subscriptions WHERE client_id = $1 AND filter = $2";

pub(crate) const PUT_MESSAGE: &str = "INSERT INTO messages \
     (id, topic, payload, qos, retain, properties, expires_at, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING";

pub(crate) const PUT_DELIVERY: &str = "INSERT INTO deliveries \
     (client_id, seq, message_id, qos, retain, subscription_ids, state) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (client_id, seq) DO UPDATE SET message_id = excluded.message_id, qos = excluded.qos, \
     retain = excluded.retain, subscription_ids = excluded.subscription_ids, state = excluded.state";

pub(crate) const SET_DELIVERY_STATE: &str =
    "UPDATE deliveries SET state = $3 WHERE client_id = $1 AND seq = $2";

pub(crate) const DELETE_DELIVERY: &str = "DELETE FROM deliveries WHERE client_id = $1 AND seq = $2";

pub(crate) const PUT_INBOUND: &str = "INSERT INTO inbound_qos2 (client_id, packet_id) VALUES ($1, $2) ON CONFLICT (client_id, packet_id) DO NOTHING";

pub(crate) const DELETE_INBOUND: &str = "DELETE FROM inbound_qos2 WHERE client_id = $1 AND packet_id = $2";

pub(crate) const PUT_RETAINED: &str = "INSERT INTO retained (topic, message_id) VALUES ($1, $2) \
     ON CONFLICT (topic) DO UPDATE SET message_id = excluded.message_id";

pub(crate) const DELETE_RETAINED: &str = "DELETE FROM retained WHERE topic = $1";

// load()

pub(crate) const LOAD_SESSIONS: &str = "SELECT client_id, expiry_interval, protocol, disconnected_at, \
     will, will_at, last_seq, owner FROM sessions ORDER BY client_id";

pub(crate) const LOAD_SUBSCRIPTIONS: &str =
    "SELECT client_id, filter, options, subscription_id FROM subscriptions ORDER BY client_id, filter";

pub(crate) const LOAD_DELIVERIES: &str = "SELECT client_id, seq, message_id, qos, retain, subscription_ids, \
     state FROM deliveries ORDER BY client_id, seq";

pub(crate) const LOAD_INBOUND: &str =
    "SELECT client_id, packet_id FROM inbound_qos2 ORDER BY client_id, packet_id";

pub(crate) const LOAD_RETAINED: &str = "SELECT topic, message_id FROM retained ORDER BY topic";

/// Only messages something refers to (unreferenced ones wait for the next sweep).
pub(crate) const LOAD_MESSAGES: &str = "SELECT m.id, m.topic, m.payload, m.qos, m.retain, m.properties, \
     m.expires_at, m.created_at FROM messages m \
     WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id) \
     OR EXISTS (SELECT 1 FROM retained r WHERE r.message_id = m.id) ORDER BY m.id";

// sweep($1 = now), in this order, in one transaction.

/// Rows of sessions that no longer exist (left by an operation that raced `DeleteSession`).
pub(crate) const SWEEP_ORPHANED_SESSION_ROWS: [&str; 3] = [
    "DELETE FROM subscriptions WHERE NOT EXISTS \
     (SELECT 1 FROM sessions s WHERE s.client_id = subscriptions.client_id)",
    "DELETE FROM deliveries WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.client_id = deliveries.client_id)",
    "DELETE FROM inbound_qos2 WHERE NOT EXISTS \
     (SELECT 1 FROM sessions s WHERE s.client_id = inbound_qos2.client_id)",
];

/// Deliveries not yet acknowledged (state 0) whose message expired. A delivery in state 1
/// (PUBREC received, PUBREL owed) stays: the exchange has started and must complete.
pub(crate) const SWEEP_EXPIRED_DELIVERIES: &str = "DELETE FROM deliveries WHERE state = 0 AND message_id IN \
     (SELECT id FROM messages WHERE expires_at IS NOT NULL AND expires_at < $1)";

pub(crate) const SWEEP_EXPIRED_RETAINED: &str = "DELETE FROM retained WHERE message_id IN \
     (SELECT id FROM messages WHERE expires_at IS NOT NULL AND expires_at < $1)";

pub(crate) const SWEEP_ORPHANED_MESSAGES: &str = "DELETE FROM messages WHERE \
     NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = messages.id) \
     AND NOT EXISTS (SELECT 1 FROM retained r WHERE r.message_id = messages.id)";

// Directory.

/// Run in the same transaction as every device or ACL rule change.
pub(crate) const BUMP_DIRECTORY_VERSION: &str =
    "UPDATE directory_version SET version = version + 1 WHERE id = 1";

pub(crate) const DIRECTORY_VERSION: &str = "SELECT version FROM directory_version WHERE id = 1";

pub(crate) const ADD_DEVICE: &str = "INSERT INTO devices \
     (client_id, username, password_hash, scram_verifier, cert_identity, enabled, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

pub(crate) const UPDATE_DEVICE: &str = "UPDATE devices SET username = $2, password_hash = $3, \
     scram_verifier = $4, cert_identity = $5, enabled = $6, created_at = $7 WHERE client_id = $1";

pub(crate) const REMOVE_DEVICE: &str = "DELETE FROM devices WHERE client_id = $1";

pub(crate) const DEVICE_BY_CLIENT_ID: &str = "SELECT client_id, username, password_hash, scram_verifier, \
     cert_identity, enabled, created_at FROM devices WHERE client_id = $1";

pub(crate) const DEVICE_BY_USERNAME: &str = "SELECT client_id, username, password_hash, scram_verifier, \
     cert_identity, enabled, created_at FROM devices WHERE username = $1";

pub(crate) const LIST_DEVICES: &str = "SELECT client_id, username, password_hash, scram_verifier, \
     cert_identity, enabled, created_at FROM devices ORDER BY client_id";

pub(crate) const ADD_ACL_RULE: &str = "INSERT INTO acl_rules \
     (client_id, username, permission, action, topic, max_qos, allow_retain) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";

pub(crate) const REMOVE_ACL_RULE: &str = "DELETE FROM acl_rules WHERE id = $1";

pub(crate) const LIST_ACL_RULES: &str = "SELECT id, client_id, username, permission, action, topic, max_qos, \
     allow_retain FROM acl_rules ORDER BY id";

pub(crate) const PUT_ADMIN_USER: &str = "INSERT INTO admin_users (username, password_hash, created_at) \
     VALUES ($1, $2, $3) ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, \
     created_at = excluded.created_at";

pub(crate) const ADMIN_USER: &str =
    "SELECT username, password_hash, created_at FROM admin_users WHERE username = $1";

pub(crate) const APPEND_AUDIT: &str =
    "INSERT INTO audit_log (at, actor, action, detail) VALUES ($1, $2, $3, $4) RETURNING id";

pub(crate) const RECENT_AUDIT: &str =
    "SELECT id, at, actor, action, detail FROM audit_log ORDER BY id DESC LIMIT $1";
