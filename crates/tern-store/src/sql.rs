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

pub(crate) const PUT_RETAINED: &str = "INSERT INTO retained (topic, message_id, client_id) VALUES ($1, $2, $3) \
     ON CONFLICT (topic) DO UPDATE SET message_id = excluded.message_id, client_id = excluded.client_id";

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

pub(crate) const LOAD_RETAINED: &str = "SELECT topic, message_id, client_id FROM retained ORDER BY topic";

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

pub(crate) const TOUCH_DIRECTORY_VERSION: &str =
    "UPDATE directory_version SET version = version WHERE id = 1";

pub(crate) const DIRECTORY_VERSION: &str = "SELECT version FROM directory_version WHERE id = 1";

pub(crate) const ADD_DEVICE: &str = "INSERT INTO devices \
     (client_id, username, password_hash, scram_verifier, cert_identity, enabled, created_at, labels, limits) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

pub(crate) const UPDATE_DEVICE: &str = "UPDATE devices SET username = $2, password_hash = $3, \
     scram_verifier = $4, cert_identity = $5, enabled = $6, created_at = $7, labels = $8, limits = $9 \
     WHERE client_id = $1";

pub(crate) const REMOVE_DEVICE: &str = "DELETE FROM devices WHERE client_id = $1";

pub(crate) const DEVICE_BY_CLIENT_ID: &str = "SELECT client_id, username, password_hash, scram_verifier, \
     cert_identity, enabled, created_at, labels, limits FROM devices WHERE client_id = $1";

pub(crate) const DEVICE_BY_USERNAME: &str = "SELECT client_id, username, password_hash, scram_verifier, \
     cert_identity, enabled, created_at, labels, limits FROM devices WHERE username = $1";

pub(crate) const LIST_DEVICES: &str = "SELECT client_id, username, password_hash, scram_verifier, \
     cert_identity, enabled, created_at, labels, limits FROM devices ORDER BY client_id";

pub(crate) const DEVICE_CLIENT_IDS: &str =
    "SELECT client_id FROM devices WHERE client_id > $1 ORDER BY client_id LIMIT $2";

// `query_devices` differs per backend (string functions): `QUERY_DEVICES` in pg.rs and sqlite.rs.

pub(crate) const ADD_ACL_RULE: &str = "INSERT INTO acl_rules \
     (client_id, username, permission, action, topic, max_qos, allow_retain) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";

pub(crate) const UPDATE_ACL_RULE: &str = "UPDATE acl_rules SET client_id = $2, username = $3, \
     permission = $4, action = $5, topic = $6, max_qos = $7, allow_retain = $8 WHERE id = $1";

pub(crate) const REMOVE_ACL_RULE: &str = "DELETE FROM acl_rules WHERE id = $1";

pub(crate) const LIST_ACL_RULES: &str = "SELECT id, client_id, username, permission, action, topic, max_qos, \
     allow_retain FROM acl_rules ORDER BY id";

// Admin users, API keys, refresh tokens, settings.

pub(crate) const PUT_ADMIN_USER: &str = "INSERT INTO admin_users (username, password_hash, role, created_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, \
     role = excluded.role, created_at = excluded.created_at";

pub(crate) const ADD_ADMIN_USER: &str =
    "INSERT INTO admin_users (username, password_hash, role, created_at) VALUES ($1, $2, $3, $4)";

pub(crate) const ADMIN_USER: &str =
    "SELECT username, password_hash, role, created_at FROM admin_users WHERE username = $1";

pub(crate) const LIST_ADMIN_USERS: &str =
    "SELECT username, password_hash, role, created_at FROM admin_users ORDER BY username";

pub(crate) const REMOVE_ADMIN_USER: &str = "DELETE FROM admin_users WHERE username = $1";

pub(crate) const ADD_API_KEY: &str = "INSERT INTO api_keys \
     (id, name, secret_hash, role, created_by, created_at, last_used_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

pub(crate) const API_KEY: &str = "SELECT id, name, secret_hash, role, created_by, created_at, last_used_at, \
     expires_at FROM api_keys WHERE id = $1";

pub(crate) const LIST_API_KEYS: &str = "SELECT id, name, secret_hash, role, created_by, created_at, \
     last_used_at, expires_at FROM api_keys ORDER BY id";

pub(crate) const REMOVE_API_KEY: &str = "DELETE FROM api_keys WHERE id = $1";

pub(crate) const TOUCH_API_KEY: &str = "UPDATE api_keys SET last_used_at = $2 WHERE id = $1";

/// A new token has not been used, whatever the caller's record says.
pub(crate) const ADD_REFRESH_TOKEN: &str = "INSERT INTO refresh_tokens \
     (id, family, username, issued_at, expires_at, uses) VALUES ($1, $2, $3, $4, $5, 0)";

/// One statement, so two requests presenting the same token at once get 1 and 2 (the row
/// lock on PostgreSQL, the write lock on SQLite), never 1 twice.
pub(crate) const USE_REFRESH_TOKEN: &str = "UPDATE refresh_tokens SET uses = uses + 1 WHERE id = $1 \
     RETURNING id, family, username, issued_at, expires_at, uses";

pub(crate) const REVOKE_REFRESH_FAMILY: &str = "DELETE FROM refresh_tokens WHERE family = $1";

/// 1 if the family has a token left, else 0 (an integer on both backends).
pub(crate) const LOGIN_ALIVE: &str =
    "SELECT COUNT(*) FROM (SELECT 1 FROM refresh_tokens WHERE family = $1 LIMIT 1) AS alive";

pub(crate) const REVOKE_REFRESH_TOKENS_OF: &str = "DELETE FROM refresh_tokens WHERE username = $1";

pub(crate) const SWEEP_REFRESH_TOKENS: &str = "DELETE FROM refresh_tokens WHERE expires_at < $1";

pub(crate) const SETTING: &str = "SELECT value FROM settings WHERE name = $1";

/// Followed by `SETTING` in the same transaction: the value in force, whoever inserted it.
pub(crate) const INIT_SETTING: &str =
    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";

// Audit log.

pub(crate) const APPEND_AUDIT: &str = "INSERT INTO audit_log (at, actor, action, target, source, detail) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";

pub(crate) const RECENT_AUDIT: &str = "SELECT id, at, actor, action, target, source, detail FROM audit_log \
     ORDER BY id DESC LIMIT $1";

/// `$1` actor, `$2` action prefix, `$3` target, `$4` since, `$5` until, `$6` before id, `$7`
/// limit; a NULL filter is off. The prefix test is `substr`/`length`, not `LIKE`, so `_` and
/// `%` in a prefix are plain characters (both count characters, on both backends). The cursor
/// is a range on the ordering key even when absent (no id reaches i64::MAX), so that the scan
/// starts at the cursor instead of filtering every newer row; PostgreSQL's custom plans also
/// use the actor, target and time indexes, SQLite's planner cannot through `$n IS NULL OR`.
pub(crate) const QUERY_AUDIT: &str = "SELECT id, at, actor, action, target, source, detail FROM audit_log \
     WHERE id < COALESCE($6, 9223372036854775807) \
     AND ($1 IS NULL OR actor = $1) \
     AND ($2 IS NULL OR substr(action, 1, length($2)) = $2) \
     AND ($3 IS NULL OR target = $3) \
     AND ($4 IS NULL OR at >= $4) \
     AND ($5 IS NULL OR at < $5) \
     ORDER BY id DESC LIMIT $7";
