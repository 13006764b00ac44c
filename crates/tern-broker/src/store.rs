//! The storage port: what the broker persists and loads, as plain records and ordered
//! operations. `tern-store` implements it for PostgreSQL and SQLite.
//!
//! The broker batches operations from many connections into one `apply` call (group commit)
//! and acknowledges QoS 1/2 publishes only after that call returns `Ok`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

/// A boxed future returned by store methods (object-safe async).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A storage failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (connection refused, pool timeout, server shut down).
    /// The broker retries with backoff and refuses durable work meanwhile.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness constraint was violated (e.g. a device that already exists).
    #[error("already exists: {0}")]
    Conflict(String),
    /// A row that must exist does not.
    #[error("not found: {0}")]
    NotFound(String),
    /// Anything else (bad data, migration failure, ...).
    #[error("storage error: {0}")]
    Other(String),
}

/// Milliseconds since the Unix epoch (the unit of every stored time).
pub type UnixMillis = i64;

/// A persistent session (one row per client id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Client identifier (primary key).
    pub client_id: String,
    /// Session Expiry Interval in seconds; `u32::MAX` means never.
    pub expiry_interval: u32,
    /// Protocol level of the last connection (3, 4 or 5).
    pub protocol: u8,
    /// When the last connection ended; `None` while connected (or never disconnected).
    pub disconnected_at: Option<UnixMillis>,
    /// A will waiting for its delay: opaque bytes encoded by the broker.
    pub will: Option<Vec<u8>>,
    /// When that will is due.
    pub will_at: Option<UnixMillis>,
    /// Highest delivery sequence number used so far (so numbering continues after restart).
    pub last_seq: i64,
    /// The user name of the principal that created the session (`None`: anonymous); only
    /// the same principal may resume it.
    pub owner: Option<String>,
}

/// A subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// Owning session.
    pub client_id: String,
    /// The filter as sent, including any `$share/{group}/` prefix.
    pub filter: String,
    /// The MQTT 5 subscription options byte (QoS, No Local, Retain As Published, Retain Handling).
    pub options: u8,
    /// Subscription Identifier.
    pub subscription_id: Option<u32>,
}

/// A message body, stored once and referenced by deliveries and retained entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Broker-assigned id, unique and increasing.
    pub id: i64,
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// QoS as published.
    pub qos: u8,
    /// RETAIN flag as published.
    pub retain: bool,
    /// MQTT 5 application properties, opaque bytes encoded by the broker (may be empty).
    pub properties: Vec<u8>,
    /// When it expires, if ever.
    pub expires_at: Option<UnixMillis>,
    /// When it was received.
    pub created_at: UnixMillis,
}

/// A QoS 1/2 message owed to a persistent session: queued, or in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    /// Recipient session.
    pub client_id: String,
    /// Per-session sequence number; delivery order, and the source of the packet id.
    pub seq: i64,
    /// The message.
    pub message_id: i64,
    /// QoS of this delivery.
    pub qos: u8,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers to send.
    pub subscription_ids: Vec<u32>,
    /// 0 = not yet acknowledged at all; 1 = PUBREC received, PUBREL owed (QoS 2).
    pub state: u8,
}

/// One storage operation. A batch is applied in order, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace a session row.
    PutSession(StoredSession),
    /// Delete a session and everything it owns (subscriptions, deliveries, inbound QoS 2 ids).
    DeleteSession {
        /// The session.
        client_id: String,
    },
    /// Insert or replace a subscription (key: client id + filter).
    PutSubscription(StoredSubscription),
    /// Delete a subscription (no error if absent).
    DeleteSubscription {
        /// The session.
        client_id: String,
        /// The filter as sent.
        filter: String,
    },
    /// Insert a message body (ignored if the id exists).
    PutMessage(StoredMessage),
    /// Insert or replace a delivery (key: client id + seq).
    PutDelivery(StoredDelivery),
    /// Change a delivery's state (no error if absent).
    SetDeliveryState {
        /// The session.
        client_id: String,
        /// The delivery.
        seq: i64,
        /// The new state.
        state: u8,
    },
    /// Delete a delivery (no error if absent).
    DeleteDelivery {
        /// The session.
        client_id: String,
        /// The delivery.
        seq: i64,
    },
    /// Record an inbound QoS 2 packet id (PUBREC sent, PUBREL awaited).
    PutInbound {
        /// The session.
        client_id: String,
        /// The packet id.
        packet_id: u16,
    },
    /// Forget an inbound QoS 2 packet id (no error if absent).
    DeleteInbound {
        /// The session.
        client_id: String,
        /// The packet id.
        packet_id: u16,
    },
    /// Point a topic's retained entry at a message (insert or replace).
    PutRetained {
        /// Topic name.
        topic: String,
        /// The message.
        message_id: i64,
        /// The client that set it, when it is under a retained-message quota.
        client_id: Option<String>,
    },
    /// Remove a topic's retained entry (no error if absent).
    DeleteRetained {
        /// Topic name.
        topic: String,
    },
}

impl StoreOp {
    /// Approximate memory the operation takes while it waits (struct plus owned strings and
    /// buffers), for byte limits on queues of operations.
    pub fn mem_size(&self) -> usize {
        let heap = match self {
            StoreOp::PutSession(s) => {
                s.client_id.len()
                    + s.will.as_ref().map_or(0, Vec::len)
                    + s.owner.as_ref().map_or(0, String::len)
            }
            StoreOp::PutSubscription(s) => s.client_id.len() + s.filter.len(),
            StoreOp::DeleteSubscription { client_id, filter } => client_id.len() + filter.len(),
            StoreOp::PutMessage(m) => m.topic.len() + m.payload.len() + m.properties.len(),
            StoreOp::PutDelivery(d) => d.client_id.len() + 4 * d.subscription_ids.len(),
            StoreOp::DeleteSession { client_id }
            | StoreOp::SetDeliveryState { client_id, .. }
            | StoreOp::DeleteDelivery { client_id, .. }
            | StoreOp::PutInbound { client_id, .. }
            | StoreOp::DeleteInbound { client_id, .. } => client_id.len(),
            StoreOp::PutRetained { topic, client_id, .. } => {
                topic.len() + client_id.as_ref().map_or(0, String::len)
            }
            StoreOp::DeleteRetained { topic } => topic.len(),
        };
        std::mem::size_of::<StoreOp>() + heap
    }
}

/// Everything the broker loads at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// All sessions.
    pub sessions: Vec<StoredSession>,
    /// All subscriptions.
    pub subscriptions: Vec<StoredSubscription>,
    /// All deliveries, ordered by (client id, seq).
    pub deliveries: Vec<StoredDelivery>,
    /// All inbound QoS 2 ids as (client id, packet id).
    pub inbound: Vec<(String, u16)>,
    /// All retained entries as (topic, message id, client under a quota that set it).
    pub retained: Vec<(String, i64, Option<String>)>,
    /// Every message referenced by a delivery or a retained entry.
    pub messages: Vec<StoredMessage>,
}

/// Persistence of broker state.
pub trait Store: Send + Sync + Debug + 'static {
    /// Applies `ops` in order in one transaction: all or nothing.
    fn apply<'a>(&'a self, ops: &'a [StoreOp]) -> StoreFuture<'a, ()>;
    /// Loads the whole durable broker state.
    fn load(&self) -> StoreFuture<'_, Snapshot>;
    /// Loads only the listed sessions, with their subscriptions, deliveries, inbound QoS 2
    /// ids and the messages those reference; no retained entries (cluster mode: a session
    /// taken over from another node).
    fn load_sessions<'a>(&'a self, client_ids: &'a [String]) -> StoreFuture<'a, Snapshot> {
        let _ = client_ids;
        Box::pin(async { Err(StoreError::Other(format!("{} cannot load single sessions", self.backend()))) })
    }
    /// Deletes message bodies referenced by no delivery and no retained entry, and retained
    /// entries and deliveries whose message expired before `now`; returns rows deleted.
    fn sweep(&self, now: UnixMillis) -> StoreFuture<'_, u64>;
    /// Checks that the database answers.
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// Checks that the database takes a write (a committed write that changes nothing): the
    /// persister's recovery check after failed commits, which a read cannot stand for (a
    /// full disk still answers reads).
    fn ping_write(&self) -> StoreFuture<'_, ()> {
        self.ping()
    }
    /// A short name for logs and health ("sqlite", "postgres", "memory").
    fn backend(&self) -> &'static str;
    /// The connection pool: connections open and, of those, idle (`None`: no pool).
    fn pool_connections(&self) -> Option<(u32, u32)> {
        None
    }
}

/// A provisioned device (MQTT client credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The client id the device connects with (unique).
    pub client_id: String,
    /// The user name it presents, if any (unique when set).
    pub username: Option<String>,
    /// Argon2id PHC string of its password, if password authentication is allowed.
    pub password_hash: Option<String>,
    /// SCRAM-SHA-256 verifier for MQTT 5 enhanced authentication, RFC 5803 form
    /// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 fields).
    pub scram_verifier: Option<String>,
    /// Expected certificate identity (CN, DN, SAN or fingerprint, per listener mapping).
    pub cert_identity: Option<String>,
    /// Disabled devices are refused (0x87 / 0x86).
    pub enabled: bool,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Operator-defined labels (e.g. `site` = `berlin`), for search and grouping.
    pub labels: BTreeMap<String, String>,
    /// Its own limits, where they differ from the listener's or global ones.
    pub limits: DeviceLimits,
}

/// A device's own limits: each one set replaces the listener's or global value for this
/// device's connections and session (`None`: that value applies). Rates of 0 switch the limit
/// off for the device.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceLimits {
    /// PUBLISH packets per second (0: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<u32>,
    /// Burst of `publish_rate` (0: one second's worth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_burst: Option<u32>,
    /// PUBLISH bytes per second (0: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_bytes_rate: Option<u64>,
    /// Burst of `publish_bytes_rate` (0: one second's worth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_bytes_burst: Option<u64>,
    /// Bytes per second written to the device (0: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_bytes_rate: Option<u64>,
    /// Burst of `outbound_bytes_rate` (0: one second's worth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_bytes_burst: Option<u64>,
    /// Subscriptions its session may hold (0: none, a publish-only device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscriptions: Option<u32>,
    /// Messages its session queue may hold (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_messages: Option<u32>,
    /// Bytes its session queue may hold (at least 1024).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<u64>,
    /// Retained messages it may have set at once (0: it may not retain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retained: Option<u32>,
}

/// The largest byte count or byte rate a device limit may be (2^53 - 1).
pub const MAX_LIMIT_BYTES: u64 = (1 << 53) - 1;

impl DeviceLimits {
    /// Whether no limit is set (the device follows the listener's and global values).
    pub fn is_empty(&self) -> bool {
        *self == DeviceLimits::default()
    }

    /// Why these values cannot be used, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_queued_messages == Some(0) {
            return Err("max_queued_messages must be at least 1".into());
        }
        if self.max_queued_bytes.is_some_and(|b| b < 1024) {
            return Err("max_queued_bytes must be at least 1024".into());
        }
        // Byte counts beyond 2^53 - 1 mean nothing here and are not exact in JSON clients.
        let bytes = [
            ("publish_bytes_rate", self.publish_bytes_rate),
            ("publish_bytes_burst", self.publish_bytes_burst),
            ("outbound_bytes_rate", self.outbound_bytes_rate),
            ("outbound_bytes_burst", self.outbound_bytes_burst),
            ("max_queued_bytes", self.max_queued_bytes),
        ];
        if let Some((name, _)) = bytes.iter().find(|(_, v)| v.is_some_and(|v| v > MAX_LIMIT_BYTES)) {
            return Err(format!("{name} must be at most {MAX_LIMIT_BYTES}"));
        }
        Ok(())
    }
}

/// Which devices to list: filters and a cursor, in client-id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceQuery {
    /// Client ids or user names containing this (case-insensitive).
    pub search: Option<String>,
    /// Only enabled (`true`) or disabled (`false`) devices.
    pub enabled: Option<bool>,
    /// Only devices with this label set to this value.
    pub label: Option<(String, String)>,
    /// Cursor: client ids after this one.
    pub after: Option<String>,
    /// Rows at most.
    pub limit: u32,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Grants the action.
    Allow,
    /// Forbids the action; a matching deny overrides any allow.
    Deny,
}

/// What an ACL rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAction {
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// Both.
    All,
}

/// One topic-level access rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// Store-assigned id (0 when inserting).
    pub id: i64,
    /// Whose rule: a client id, `None` for a rule that applies to every client.
    pub client_id: Option<String>,
    /// Whose rule: a user name, `None` for any (both set: both must match).
    pub username: Option<String>,
    /// Allow or deny.
    pub permission: Permission,
    /// Publish, subscribe or both.
    pub action: AclAction,
    /// Topic filter; `%c` and `%u` stand for the client id and user name.
    pub topic: String,
    /// Highest QoS allowed, if limited.
    pub max_qos: Option<u8>,
    /// Whether retained publishes are allowed (`None` = no restriction).
    pub allow_retain: Option<bool>,
}

/// An administrator of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUser {
    /// Login name (unique).
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Its role in the admin API (`admin`, `operator` or `viewer`).
    pub role: String,
    /// When it was created.
    pub created_at: UnixMillis,
}

/// An admin API key (for automation): looked up by its public id, verified by a hash of its
/// secret part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Public id (the part of the key before its secret; unique).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Hex SHA-256 of the secret part (the secret itself is never stored).
    pub secret_hash: String,
    /// Its role (`admin`, `operator` or `viewer`).
    pub role: String,
    /// Admin user who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: UnixMillis,
    /// When it was last used (updated at most about once a minute).
    pub last_used_at: Option<UnixMillis>,
    /// When it stops working, if it does.
    pub expires_at: Option<UnixMillis>,
}

/// A refresh token of the admin API, stored by a hash of the token. Tokens of one login
/// form a family: each refresh uses one up and issues the next; a used token presented
/// again means it leaked, and the whole family is revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// Hex SHA-256 of the token.
    pub id: String,
    /// The login it descends from.
    pub family: String,
    /// Admin user it belongs to.
    pub username: String,
    /// When it was issued.
    pub issued_at: UnixMillis,
    /// When it stops working.
    pub expires_at: UnixMillis,
    /// How many times it was presented (0 for a fresh token; above 1 means reuse).
    pub uses: i64,
}

/// An audit log entry of an administrative change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Store-assigned id (0 when inserting).
    pub id: i64,
    /// When it happened.
    pub at: UnixMillis,
    /// Who did it (admin user name, or "cli").
    pub actor: String,
    /// What was done ("device.add", "acl.remove", ...).
    pub action: String,
    /// What it was done to ("device:dev-1", "acl:7", ...), if anything in particular.
    pub target: Option<String>,
    /// Where the request came from (IP address; `None` for the CLI).
    pub source: Option<String>,
    /// Details as JSON text (`before` / `after` for changes).
    pub detail: String,
}

/// Which audit entries to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this actor's.
    pub actor: Option<String>,
    /// Only actions starting with this (`device.` for every device action).
    pub action_prefix: Option<String>,
    /// Only entries about this target.
    pub target: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<UnixMillis>,
    /// Only entries before this time.
    pub until: Option<UnixMillis>,
    /// Cursor: entries with ids below this one.
    pub before_id: Option<i64>,
    /// Rows at most.
    pub limit: u32,
}

/// The answer of a directory method a store does not implement.
fn unsupported<'a, T: Send + 'a>(method: &str) -> StoreFuture<'a, T> {
    let e = StoreError::Other(format!("this directory store does not support {method}"));
    Box::pin(std::future::ready(Err(e)))
}

/// Devices, ACL rules, admin users and the audit log: the data the auth layer and the admin
/// API share. The admin API's methods (queries, admin accounts, API keys, refresh tokens,
/// settings) have defaults that refuse, so a store serving only authentication (a test
/// double) need not implement them; `tern-store` implements all.
pub trait DirectoryStore: Send + Sync + Debug + 'static {
    /// Inserts a device; `Conflict` if the client id or user name is taken.
    fn add_device<'a>(&'a self, device: &'a Device) -> StoreFuture<'a, ()>;
    /// Replaces a device's fields (keyed by client id); `NotFound` if absent.
    fn update_device<'a>(&'a self, device: &'a Device) -> StoreFuture<'a, ()>;
    /// Deletes a device; returns whether it existed.
    fn remove_device<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, bool>;
    /// A device by client id.
    fn device_by_client_id<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<Device>>;
    /// A device by user name.
    fn device_by_username<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<Device>>;
    /// All devices, ordered by client id.
    fn list_devices(&self) -> StoreFuture<'_, Vec<Device>>;
    /// Devices matching `query`, ordered by client id, `query.limit` at most.
    fn query_devices<'a>(&'a self, _query: &'a DeviceQuery) -> StoreFuture<'a, Vec<Device>> {
        unsupported("query_devices")
    }
    /// Client ids of devices (enabled or not) greater than `after`, in order, `limit` at most;
    /// `None` if this store cannot list them.
    fn device_client_ids<'a>(&'a self, _after: &'a str, _limit: u32) -> StoreFuture<'a, Option<Vec<String>>> {
        Box::pin(std::future::ready(Ok(None)))
    }
    /// Inserts an ACL rule; returns its id.
    fn add_acl_rule<'a>(&'a self, rule: &'a AclRule) -> StoreFuture<'a, i64>;
    /// Deletes an ACL rule; returns whether it existed.
    fn remove_acl_rule(&self, id: i64) -> StoreFuture<'_, bool>;
    /// All ACL rules, ordered by id.
    fn list_acl_rules(&self) -> StoreFuture<'_, Vec<AclRule>>;
    /// Replaces an ACL rule's fields (keyed by id); returns whether it existed.
    fn update_acl_rule<'a>(&'a self, _rule: &'a AclRule) -> StoreFuture<'a, bool> {
        unsupported("update_acl_rule")
    }
    /// A number that changes whenever devices or ACL rules change (for cache invalidation
    /// across processes, e.g. the CLI editing a running broker's database).
    fn directory_version(&self) -> StoreFuture<'_, i64>;
    /// Inserts or replaces an admin user.
    fn put_admin_user<'a>(&'a self, user: &'a AdminUser) -> StoreFuture<'a, ()>;
    /// Inserts an admin user; `Conflict` if the name is taken.
    fn add_admin_user<'a>(&'a self, _user: &'a AdminUser) -> StoreFuture<'a, ()> {
        unsupported("add_admin_user")
    }
    /// An admin user by name.
    fn admin_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<AdminUser>>;
    /// All admin users, ordered by name.
    fn list_admin_users(&self) -> StoreFuture<'_, Vec<AdminUser>> {
        unsupported("list_admin_users")
    }
    /// Deletes an admin user (and its refresh tokens); returns whether it existed.
    fn remove_admin_user<'a>(&'a self, _username: &'a str) -> StoreFuture<'a, bool> {
        unsupported("remove_admin_user")
    }
    /// Inserts an API key; `Conflict` if the id is taken.
    fn add_api_key<'a>(&'a self, _key: &'a ApiKey) -> StoreFuture<'a, ()> {
        unsupported("add_api_key")
    }
    /// An API key by id.
    fn api_key<'a>(&'a self, _id: &'a str) -> StoreFuture<'a, Option<ApiKey>> {
        unsupported("api_key")
    }
    /// All API keys, ordered by id.
    fn list_api_keys(&self) -> StoreFuture<'_, Vec<ApiKey>> {
        unsupported("list_api_keys")
    }
    /// Deletes an API key; returns whether it existed.
    fn remove_api_key<'a>(&'a self, _id: &'a str) -> StoreFuture<'a, bool> {
        unsupported("remove_api_key")
    }
    /// Records that an API key was used at `at`.
    fn touch_api_key<'a>(&'a self, _id: &'a str, _at: UnixMillis) -> StoreFuture<'a, ()> {
        unsupported("touch_api_key")
    }
    /// Stores a refresh token (its `uses` is stored as 0).
    fn add_refresh_token<'a>(&'a self, _token: &'a RefreshToken) -> StoreFuture<'a, ()> {
        unsupported("add_refresh_token")
    }
    /// Counts one use of a refresh token, atomically, and returns it as it is after that
    /// (`uses` 1: first use; above 1: presented again). `None` if unknown.
    fn use_refresh_token<'a>(&'a self, _id: &'a str) -> StoreFuture<'a, Option<RefreshToken>> {
        unsupported("use_refresh_token")
    }
    /// Whether a login (token family) still has a refresh token: false once it was logged
    /// out, revoked for reuse, or its user's logins were ended. Access tokens of the login are
    /// honoured only while this holds, in every process sharing the database.
    fn login_alive<'a>(&'a self, _family: &'a str) -> StoreFuture<'a, bool> {
        unsupported("login_alive")
    }
    /// Deletes a family's tokens; returns how many.
    fn revoke_refresh_family<'a>(&'a self, _family: &'a str) -> StoreFuture<'a, u64> {
        unsupported("revoke_refresh_family")
    }
    /// Deletes a user's refresh tokens; returns how many.
    fn revoke_refresh_tokens_of<'a>(&'a self, _username: &'a str) -> StoreFuture<'a, u64> {
        unsupported("revoke_refresh_tokens_of")
    }
    /// Deletes refresh tokens that expired before `now`; returns how many.
    fn sweep_refresh_tokens(&self, _now: UnixMillis) -> StoreFuture<'_, u64> {
        unsupported("sweep_refresh_tokens")
    }
    /// A stored setting (e.g. the generated admin signing key).
    fn setting<'a>(&'a self, _name: &'a str) -> StoreFuture<'a, Option<String>> {
        unsupported("setting")
    }
    /// Stores `value` under `name` unless a value is there; returns the value in force (so
    /// two processes racing to initialise agree).
    fn init_setting<'a>(&'a self, _name: &'a str, _value: &'a str) -> StoreFuture<'a, String> {
        unsupported("init_setting")
    }
    /// Appends to the audit log; returns the entry's id.
    fn append_audit<'a>(&'a self, entry: &'a AuditEntry) -> StoreFuture<'a, i64>;
    /// The newest `limit` audit entries, newest first.
    fn recent_audit(&self, limit: u32) -> StoreFuture<'_, Vec<AuditEntry>>;
    /// Audit entries matching `query`, newest first.
    fn query_audit<'a>(&'a self, _query: &'a AuditQuery) -> StoreFuture<'a, Vec<AuditEntry>> {
        unsupported("query_audit")
    }
}
