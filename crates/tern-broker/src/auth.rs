//! The authentication and authorization port: what the connection asks at CONNECT (and
//! during MQTT 5 enhanced authentication) and on every PUBLISH and SUBSCRIBE.
//!
//! `tern-auth` implements it (passwords, JWT, certificates, SCRAM, ACL rules). Authorization
//! is synchronous and cheap: connections cache decisions and drop the cache when
//! [`Authorizer::version`] changes.

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tern_protocol::{QoS, ReasonCode};

/// A boxed future returned by authenticators.
pub type AuthFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Identity taken from a verified client certificate (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertIdentity {
    /// Subject common name.
    pub cn: Option<String>,
    /// Subject distinguished name, RFC 4514 form.
    pub dn: Option<String>,
    /// DNS subject alternative names.
    pub san_dns: Vec<String>,
    /// URI subject alternative names.
    pub san_uri: Vec<String>,
    /// SHA-256 fingerprint of the DER certificate, lower-case hex.
    pub sha256: String,
}

/// What the connection knows about a client at CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectInfo<'a> {
    /// The client identifier (after assignment for empty ids).
    pub client_id: &'a str,
    /// The user name field, if present.
    pub username: Option<&'a str>,
    /// The password field, if present.
    pub password: Option<&'a [u8]>,
    /// Remote address.
    pub peer: SocketAddr,
    /// Name of the listener the client came in on.
    pub listener: &'a str,
    /// Verified client certificate identity, on TLS listeners with client certificates.
    pub cert: Option<&'a CertIdentity>,
    /// Protocol level (3, 4 or 5).
    pub protocol: u8,
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Client id the connection uses (an authenticator may set it, e.g. from a certificate).
    pub client_id: String,
    /// User name ACL placeholders (`%u`) and rules refer to. Also the identity a session
    /// belongs to: a CONNECT may resume a session only with the same user name (anonymous
    /// principals have none), so authenticators map every method to one (device user name,
    /// JWT subject, certificate identity).
    pub username: Option<String>,
    /// When the credentials stop being valid (JWT `exp`); the connection is closed then.
    pub expires_at: Option<SystemTime>,
    /// Rules carried by the credentials themselves (JWT `acl` claim), checked before the
    /// stored rules.
    pub inline_acl: Option<Arc<[InlineAclRule]>>,
    /// The device's own limits (from the directory), replacing the listener's or global
    /// values where set.
    pub limits: Option<Arc<crate::store::DeviceLimits>>,
}

/// One rule carried in a credential (JWT `acl` claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineAclRule {
    /// Allow (true) or deny (false).
    pub allow: bool,
    /// Which action it governs.
    pub action: Action,
    /// Topic filter (placeholders `%c`, `%u` expanded by the authorizer).
    pub topic: String,
    /// Highest QoS, if limited.
    pub max_qos: Option<QoS>,
    /// Whether retained publishes are allowed, if restricted.
    pub retain: Option<bool>,
}

/// The result of authenticating a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Accepted.
    Allow(Principal),
    /// Refused with this CONNACK reason code (mapped to a 3.x return code for old clients).
    Deny(ReasonCode),
}

/// One step of MQTT 5 enhanced authentication (AUTH packets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send AUTH 0x18 with this authentication data and wait for the client's answer.
    Continue(Vec<u8>),
    /// Done: accept, sending this final authentication data in CONNACK (if any).
    Success(Principal, Option<Vec<u8>>),
    /// Refuse with this reason code.
    Failure(ReasonCode),
}

/// The state of one enhanced authentication exchange, owned by the connection.
pub trait EnhancedAuth: Send + Debug {
    /// Feeds the client's next authentication data.
    fn step<'a>(&'a mut self, data: &'a [u8]) -> AuthFuture<'a, AuthStep>;
}

/// The start of an enhanced authentication exchange: its state and the first step, or the
/// reason code refusing it.
pub type EnhancedStart = Result<(Box<dyn EnhancedAuth>, AuthStep), ReasonCode>;

/// Decides who may connect.
pub trait Authenticator: Send + Sync + Debug + 'static {
    /// Authenticates a CONNECT without an Authentication Method.
    fn authenticate<'a>(&'a self, info: &'a ConnectInfo<'a>) -> AuthFuture<'a, AuthOutcome>;

    /// Starts enhanced authentication for `method` with the CONNECT's authentication data.
    /// `Err(code)` refuses at once; by default every method is refused with 0x8C Bad
    /// authentication method (MQTT-4.12.0-1 lets a server decline enhanced authentication).
    fn start_enhanced<'a>(
        &'a self,
        _method: &'a str,
        _data: &'a [u8],
        _info: &'a ConnectInfo<'a>,
    ) -> AuthFuture<'a, EnhancedStart> {
        Box::pin(std::future::ready(Err(ReasonCode::BadAuthenticationMethod)))
    }
}

/// An action subject to authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publishing to a topic name.
    Publish,
    /// Subscribing to a topic filter.
    Subscribe,
    /// Either (only in rules).
    All,
}

/// Decides what an authenticated client may do.
pub trait Authorizer: Send + Sync + Debug + 'static {
    /// Changes whenever rules change; connections drop cached decisions when it does.
    fn version(&self) -> u64;

    /// Whether `principal` may perform `action` on `topic` (a name for Publish, a filter for
    /// Subscribe) at `qos`, with `retain` (publish only).
    ///
    /// A Subscribe filter arrives without its `$share/{group}/` prefix: the broker parses
    /// that prefix once, where it parses the SUBSCRIBE, for routing and ACL alike.
    /// Implementations take the filter verbatim and never strip a share prefix again (for
    /// `$share/g/$share/h/x` they are asked about `$share/h/x`, the filter that is routed).
    fn check(&self, principal: &Principal, action: Action, topic: &str, qos: QoS, retain: bool) -> bool;

    /// Whether `principal` may receive a message published on topic name `topic` at `qos`
    /// (checked on every delivery, so subscriptions follow rule changes and deny rules that
    /// only part of a broad filter hits). By default the subscribe rules decide, with the
    /// topic name taken as a filter without wildcards.
    fn may_receive(&self, principal: &Principal, topic: &str, qos: QoS) -> bool {
        self.check(principal, Action::Subscribe, topic, qos, false)
    }

    /// True only while the authorizer allows every request of a principal without inline
    /// rules, so connections can skip the lookups entirely (checked on every request: it may
    /// change when rules are loaded).
    fn is_permissive(&self) -> bool {
        false
    }

    /// Whether every request of `principal` is allowed right now.
    fn is_permissive_for(&self, principal: &Principal) -> bool {
        principal.inline_acl.is_none() && self.is_permissive()
    }
}

/// The authentication and authorization a broker runs with.
#[derive(Debug, Clone)]
pub struct Security {
    /// Decides who may connect.
    pub authenticator: Arc<dyn Authenticator>,
    /// Decides what they may do.
    pub authorizer: Arc<dyn Authorizer>,
}

impl Security {
    /// Everyone may connect and do anything (loopback-only default run, tests).
    pub fn allow_all() -> Security {
        Security { authenticator: Arc::new(AllowAll), authorizer: Arc::new(AllowAll) }
    }

    /// No one may connect: anonymous access is off and nothing else is configured.
    pub fn deny_all() -> Security {
        Security { authenticator: Arc::new(DenyAll), authorizer: Arc::new(AllowAll) }
    }
}

/// Accepts every client as anonymous: the run without a database, and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate<'a>(&'a self, info: &'a ConnectInfo<'a>) -> AuthFuture<'a, AuthOutcome> {
        // Anonymous: a user name the client sends is not verified, so it names no
        // principal (sessions of anonymous clients belong to "anonymous", whatever name
        // they send).
        let p = Principal {
            client_id: info.client_id.to_string(),
            username: None,
            expires_at: None,
            inline_acl: None,
            limits: None,
        };
        Box::pin(std::future::ready(AuthOutcome::Allow(p)))
    }
}

impl Authorizer for AllowAll {
    fn version(&self) -> u64 {
        0
    }

    fn check(&self, _: &Principal, _: Action, _: &str, _: QoS, _: bool) -> bool {
        true
    }

    fn is_permissive(&self) -> bool {
        true
    }
}

/// Refuses every client (anonymous access off and no authentication configured): never
/// fail open.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyAll;

impl Authenticator for DenyAll {
    fn authenticate<'a>(&'a self, _info: &'a ConnectInfo<'a>) -> AuthFuture<'a, AuthOutcome> {
        Box::pin(std::future::ready(AuthOutcome::Deny(ReasonCode::NotAuthorized)))
    }
}
