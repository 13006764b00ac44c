//! The storage port: what the broker persists and loads, as plain records and ordered
//! operations. `tern-store` implements it for PostgreSQL and SQLite.
//!
//! The broker batches operations from many connections into one `apply` call (group commit)
//! and acknowledges QoS 1/2 publishes only after that call returns `Ok`.

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
            StoreOp::PutRetained { topic, .. } | StoreOp::DeleteRetained { topic } => topic.len(),
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
    /// All retained entries as (topic, message id).
    pub retained: Vec<(String, i64)>,
    /// Every message referenced by a delivery or a retained entry.
    pub messages: Vec<StoredMessage>,
}

/// Persistence of broker state.
pub trait Store: Send + Sync + Debug + 'static {
    /// Applies `ops` in order in one transaction: all or nothing.
    fn apply<'a>(&'a self, ops: &'a [StoreOp]) -> StoreFuture<'a, ()>;
    /// Loads the whole durable broker state.
    fn load(&self) -> StoreFuture<'_, Snapshot>;
    /// Deletes message bodies referenced by no delivery and no retained entry, and retained
    /// entries and deliveries whose message expired before `now`; returns rows deleted.
    fn sweep(&self, now: UnixMillis) -> StoreFuture<'_, u64>;
    /// Checks that the database answers.
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// A short name for logs and health ("sqlite", "postgres", "memory").
    fn backend(&self) -> &'static str;
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
    /// When it was created.
    pub created_at: UnixMillis,
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
    /// Details as JSON text.
    pub detail: String,
}

/// Devices, ACL rules, admin users and the audit log: the data the auth layer and the admin
/// API share.
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
    /// Inserts an ACL rule; returns its id.
    fn add_acl_rule<'a>(&'a self, rule: &'a AclRule) -> StoreFuture<'a, i64>;
    /// Deletes an ACL rule; returns whether it existed.
    fn remove_acl_rule(&self, id: i64) -> StoreFuture<'_, bool>;
    /// All ACL rules, ordered by id.
    fn list_acl_rules(&self) -> StoreFuture<'_, Vec<AclRule>>;
    /// A number that changes whenever devices or ACL rules change (for cache invalidation
    /// across processes, e.g. the CLI editing a running broker's database).
    fn directory_version(&self) -> StoreFuture<'_, i64>;
    /// Inserts or replaces an admin user.
    fn put_admin_user<'a>(&'a self, user: &'a AdminUser) -> StoreFuture<'a, ()>;
    /// An admin user by name.
    fn admin_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<AdminUser>>;
    /// Appends to the audit log; returns the entry's id.
    fn append_audit<'a>(&'a self, entry: &'a AuditEntry) -> StoreFuture<'a, i64>;
    /// The newest `limit` audit entries, newest first.
    fn recent_audit(&self, limit: u32) -> StoreFuture<'_, Vec<AuditEntry>>;
}
