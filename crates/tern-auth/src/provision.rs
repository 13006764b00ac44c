//! Provisioning: adding, listing, enabling, disabling and removing devices and ACL rules in
//! the directory store, each change recorded in the audit log. The `tern device` / `tern acl`
//! commands and the admin API call these; nothing here prints or returns a password hash.

use std::collections::BTreeMap;

use serde::Serialize;
use tern_broker::store::{
    AclAction, AclRule, AuditEntry, Device, DeviceLimits, DirectoryStore, Permission, StoreError,
};

use crate::acl::validate_rule_topic;
use crate::password::{generate_password, hash_password};
use crate::scram::{DEFAULT_SCRAM_ITERATIONS, scram_verifier};

/// A provisioning failure.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such device or rule.
    #[error("not found: {0}")]
    NotFound(String),
    /// The store failed (including `Conflict` for a taken client id or user name).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The change was made but the audit entry could not be written.
    #[error("change applied, but writing the audit entry failed: {0}")]
    Audit(StoreError),
}

/// How a new device gets its password.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum PasswordSource {
    /// No password (certificate or JWT devices).
    #[default]
    None,
    /// This password (e.g. read from stdin).
    Given(String),
    /// A fresh random one, returned once in [`AddedDevice::generated_password`].
    Generate,
}

impl std::fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PasswordSource::None => "None",
            PasswordSource::Given(_) => "Given([redacted])",
            PasswordSource::Generate => "Generate",
        })
    }
}

/// A device to add.
#[derive(Debug, Clone, Default)]
pub struct NewDevice {
    /// Client id (required, unique).
    pub client_id: String,
    /// User name (unique when set).
    pub username: Option<String>,
    /// Password source.
    pub password: PasswordSource,
    /// Expected certificate identity.
    pub cert_identity: Option<String>,
    /// Also store a SCRAM-SHA-256 verifier of the password (needs a password).
    pub scram: bool,
    /// Labels (see [`check_labels`] for the limits).
    pub labels: BTreeMap<String, String>,
    /// Its own limits (see [`DeviceLimits`]).
    pub limits: DeviceLimits,
}

/// Who makes a change, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor<'a> {
    /// Admin user name, API key id, or `cli`.
    pub name: &'a str,
    /// The request's source IP address, if it came over the network.
    pub source: Option<&'a str>,
}

impl<'a> From<&'a str> for Actor<'a> {
    fn from(name: &'a str) -> Actor<'a> {
        Actor { name, source: None }
    }
}

/// Most labels a device may carry.
pub const MAX_LABELS: usize = 32;
/// Longest label key, bytes.
pub const MAX_LABEL_KEY: usize = 64;
/// Longest label value, bytes.
pub const MAX_LABEL_VALUE: usize = 256;

/// Checks a device's limits (see [`DeviceLimits::validate`]).
pub fn check_limits(limits: &DeviceLimits) -> Result<(), ProvisionError> {
    limits.validate().map_err(|why| ProvisionError::Invalid(format!("limits: {why}")))
}

/// Checks labels: at most [`MAX_LABELS`]; keys 1 to [`MAX_LABEL_KEY`] bytes of ASCII letters,
/// digits and `.`, `_`, `-`, `/`; values at most [`MAX_LABEL_VALUE`] bytes without NUL.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ProvisionError> {
    if labels.len() > MAX_LABELS {
        return Err(ProvisionError::Invalid(format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if !key_ok {
            return Err(ProvisionError::Invalid(format!(
                "label key {k:?} must be 1 to {MAX_LABEL_KEY} ASCII letters, digits, '.', '_', '-' or '/'"
            )));
        }
        if v.len() > MAX_LABEL_VALUE || v.contains('\0') {
            return Err(ProvisionError::Invalid(format!(
                "label {k:?}: the value must be at most {MAX_LABEL_VALUE} bytes without NUL"
            )));
        }
    }
    Ok(())
}

/// The result of adding a device.
#[derive(Clone, PartialEq, Eq)]
pub struct AddedDevice {
    /// The device as stored, summarised (no secrets).
    pub device: DeviceSummary,
    /// The generated password, when [`PasswordSource::Generate`] was asked: show it once.
    pub generated_password: Option<String>,
}

impl std::fmt::Debug for AddedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddedDevice")
            .field("device", &self.device)
            .field("generated_password", &self.generated_password.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// A device without its secrets, for listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSummary {
    /// Client id.
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Whether a password hash is stored.
    pub has_password: bool,
    /// Whether a SCRAM verifier is stored.
    pub has_scram: bool,
    /// Expected certificate identity.
    pub cert_identity: Option<String>,
    /// Whether it may connect.
    pub enabled: bool,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Its own limits (none set: the listener's and global values apply).
    pub limits: DeviceLimits,
}

impl From<&Device> for DeviceSummary {
    fn from(d: &Device) -> DeviceSummary {
        DeviceSummary {
            client_id: d.client_id.clone(),
            username: d.username.clone(),
            has_password: d.password_hash.is_some(),
            has_scram: d.scram_verifier.is_some(),
            cert_identity: d.cert_identity.clone(),
            enabled: d.enabled,
            created_at: d.created_at,
            labels: d.labels.clone(),
            limits: d.limits.clone(),
        }
    }
}

/// Now, in Unix milliseconds (the unit of the directory's times).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Appends one audit entry for a change that was made.
pub async fn audit(
    store: &dyn DirectoryStore,
    actor: Actor<'_>,
    action: &str,
    target: Option<String>,
    detail: serde_json::Value,
) -> Result<(), ProvisionError> {
    let entry = AuditEntry {
        id: 0,
        at: now_millis(),
        actor: actor.name.to_string(),
        action: action.to_string(),
        target,
        source: actor.source.map(str::to_string),
        detail: detail.to_string(),
    };
    store.append_audit(&entry).await.map(|_| ()).map_err(ProvisionError::Audit)
}

fn device_target(client_id: &str) -> String {
    format!("device:{client_id}")
}

fn acl_target(id: i64) -> String {
    format!("acl:{id}")
}

fn json_of<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

fn check_name(what: &str, v: &str) -> Result<(), ProvisionError> {
    if v.is_empty() || v.len() > 65_535 || v.contains('\0') {
        return Err(ProvisionError::Invalid(format!("{what} must be 1 to 65535 bytes without NUL")));
    }
    Ok(())
}

/// Adds a device (hashing the password with argon2id on the blocking pool, and making a
/// SCRAM verifier if asked) and audits `device.add`.
pub async fn add_device<'a>(
    store: &dyn DirectoryStore,
    req: NewDevice,
    actor: impl Into<Actor<'a>>,
) -> Result<AddedDevice, ProvisionError> {
    check_name("client id", &req.client_id)?;
    check_labels(&req.labels)?;
    if let Some(u) = &req.username {
        check_name("user name", u)?;
    }
    if let Some(c) = &req.cert_identity {
        check_name("certificate identity", c)?;
    }
    check_limits(&req.limits)?;
    let secrets = secrets(req.password, req.scram).await?;
    let device = Device {
        client_id: req.client_id,
        username: req.username,
        password_hash: secrets.password_hash,
        scram_verifier: secrets.scram_verifier,
        cert_identity: req.cert_identity,
        enabled: true,
        created_at: now_millis(),
        labels: req.labels,
        limits: req.limits,
    };
    store.add_device(&device).await.map_err(|e| match e {
        // The database's own words name a constraint, not what the operator typed.
        StoreError::Conflict(_) => StoreError::Conflict(match &device.username {
            Some(u) => {
                format!("a device with client id {:?} or user name {u:?} already exists", device.client_id)
            }
            None => format!("a device with client id {:?} already exists", device.client_id),
        }),
        other => other,
    })?;
    let summary = DeviceSummary::from(&device);
    let target = Some(device_target(&summary.client_id));
    audit(store, actor.into(), "device.add", target, serde_json::json!({ "after": json_of(&summary) }))
        .await?;
    Ok(AddedDevice { device: summary, generated_password: secrets.generated })
}

/// A device's password material, derived from a [`PasswordSource`].
struct Secrets {
    password_hash: Option<String>,
    scram_verifier: Option<String>,
    generated: Option<String>,
}

/// Hashes the password (argon2id, on the blocking pool) and derives the SCRAM verifier if
/// asked.
async fn secrets(source: PasswordSource, scram: bool) -> Result<Secrets, ProvisionError> {
    let (password, generated) = match source {
        PasswordSource::None => (None, None),
        PasswordSource::Given(p) if p.is_empty() => {
            return Err(ProvisionError::Invalid("the password is empty".into()));
        }
        PasswordSource::Given(p) => (Some(p), None),
        PasswordSource::Generate => {
            let p = generate_password();
            (Some(p.clone()), Some(p))
        }
    };
    if scram && password.is_none() {
        return Err(ProvisionError::Invalid("a SCRAM verifier needs a password (given or generated)".into()));
    }
    let (password_hash, scram_verifier) = match password {
        None => (None, None),
        Some(p) => tokio::task::spawn_blocking(move || {
            let v = scram.then(|| scram_verifier(&p, DEFAULT_SCRAM_ITERATIONS));
            (Some(hash_password(&p)), v)
        })
        .await
        .map_err(|e| ProvisionError::Invalid(format!("hashing failed: {e}")))?,
    };
    Ok(Secrets { password_hash, scram_verifier, generated })
}

/// One device, without secrets.
pub async fn get_device(
    store: &dyn DirectoryStore,
    client_id: &str,
) -> Result<DeviceSummary, ProvisionError> {
    store
        .device_by_client_id(client_id)
        .await?
        .map(|d| DeviceSummary::from(&d))
        .ok_or_else(|| ProvisionError::NotFound(format!("device {client_id:?}")))
}

/// Changes to a device's settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// Enable or disable it.
    pub enabled: Option<bool>,
    /// Replace its labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// Set (`Some(Some)`) or clear (`Some(None)`) its certificate identity.
    pub cert_identity: Option<Option<String>>,
    /// Replace its limits (an empty set clears them).
    pub limits: Option<DeviceLimits>,
}

/// Applies `update` to a device and audits `device.update` with the device before and after.
/// Returns the device before and after (the caller disconnects a live connection that the
/// change revokes).
pub async fn update_device<'a>(
    store: &dyn DirectoryStore,
    client_id: &str,
    update: DeviceUpdate,
    actor: impl Into<Actor<'a>>,
) -> Result<(DeviceSummary, DeviceSummary), ProvisionError> {
    if let Some(labels) = &update.labels {
        check_labels(labels)?;
    }
    if let Some(Some(c)) = &update.cert_identity {
        check_name("certificate identity", c)?;
    }
    if let Some(l) = &update.limits {
        check_limits(l)?;
    }
    let mut device = store
        .device_by_client_id(client_id)
        .await?
        .ok_or_else(|| ProvisionError::NotFound(format!("device {client_id:?}")))?;
    let before = DeviceSummary::from(&device);
    if let Some(e) = update.enabled {
        device.enabled = e;
    }
    if let Some(l) = update.labels {
        device.labels = l;
    }
    if let Some(c) = update.cert_identity {
        device.cert_identity = c;
    }
    if let Some(l) = update.limits {
        device.limits = l;
    }
    store.update_device(&device).await?;
    let after = DeviceSummary::from(&device);
    let detail = serde_json::json!({ "before": json_of(&before), "after": json_of(&after) });
    audit(store, actor.into(), "device.update", Some(device_target(client_id)), detail).await?;
    Ok((before, after))
}

/// Replaces a device's password (and SCRAM verifier: kept in step with the password, made
/// anew when `scram`, removed otherwise) and audits `device.rotate`. Returns the device and
/// the generated password, if one was asked for.
pub async fn rotate_credentials<'a>(
    store: &dyn DirectoryStore,
    client_id: &str,
    password: PasswordSource,
    scram: bool,
    actor: impl Into<Actor<'a>>,
) -> Result<AddedDevice, ProvisionError> {
    if password == PasswordSource::None {
        return Err(ProvisionError::Invalid("rotating needs a new password (given or generated)".into()));
    }
    let mut device = store
        .device_by_client_id(client_id)
        .await?
        .ok_or_else(|| ProvisionError::NotFound(format!("device {client_id:?}")))?;
    let s = secrets(password, scram).await?;
    device.password_hash = s.password_hash;
    device.scram_verifier = s.scram_verifier;
    store.update_device(&device).await?;
    let summary = DeviceSummary::from(&device);
    let detail = serde_json::json!({ "scram": scram, "generated": s.generated.is_some() });
    audit(store, actor.into(), "device.rotate", Some(device_target(client_id)), detail).await?;
    Ok(AddedDevice { device: summary, generated_password: s.generated })
}

/// Pretty JSON of listed devices or rules (for `--json` output).
pub fn to_json<T: Serialize>(items: &[T]) -> String {
    serde_json::to_string_pretty(items).unwrap_or_else(|_| "[]".to_string())
}

/// All devices, without secrets.
pub async fn list_devices(store: &dyn DirectoryStore) -> Result<Vec<DeviceSummary>, ProvisionError> {
    Ok(store.list_devices().await?.iter().map(DeviceSummary::from).collect())
}

/// Enables or disables a device and audits `device.enable` / `device.disable`. This only
/// changes the directory: new connections are refused, and disconnecting a live one is the
/// caller's (the admin API does; the CLI, in another process, cannot).
pub async fn set_device_enabled<'a>(
    store: &dyn DirectoryStore,
    client_id: &str,
    enabled: bool,
    actor: impl Into<Actor<'a>>,
) -> Result<(), ProvisionError> {
    let mut device = store
        .device_by_client_id(client_id)
        .await?
        .ok_or_else(|| ProvisionError::NotFound(format!("device {client_id:?}")))?;
    let was = device.enabled;
    device.enabled = enabled;
    store.update_device(&device).await?;
    let action = if enabled { "device.enable" } else { "device.disable" };
    let detail = serde_json::json!({ "before": { "enabled": was }, "after": { "enabled": enabled } });
    audit(store, actor.into(), action, Some(device_target(client_id)), detail).await
}

/// Removes a device and audits `device.remove` with what it was. Returns it.
pub async fn remove_device<'a>(
    store: &dyn DirectoryStore,
    client_id: &str,
    actor: impl Into<Actor<'a>>,
) -> Result<DeviceSummary, ProvisionError> {
    let not_found = || ProvisionError::NotFound(format!("device {client_id:?}"));
    let device = store.device_by_client_id(client_id).await?.ok_or_else(not_found)?;
    if !store.remove_device(client_id).await? {
        return Err(not_found());
    }
    let before = DeviceSummary::from(&device);
    let detail = serde_json::json!({ "before": json_of(&before) });
    audit(store, actor.into(), "device.remove", Some(device_target(client_id)), detail).await?;
    Ok(before)
}

/// An ACL rule to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAclRule {
    /// Allow or deny.
    pub permission: Permission,
    /// Publish, subscribe or all.
    pub action: AclAction,
    /// Topic filter, `%c` / `%u` allowed.
    pub topic: String,
    /// Client id selector.
    pub client_id: Option<String>,
    /// User name selector.
    pub username: Option<String>,
    /// QoS limit (allow rules only).
    pub max_qos: Option<u8>,
    /// Refuse retained publishes (allow rules only).
    pub no_retain: bool,
}

/// An ACL rule as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AclRuleSummary {
    /// Rule id.
    pub id: i64,
    /// "allow" or "deny".
    pub permission: &'static str,
    /// "publish", "subscribe" or "all".
    pub action: &'static str,
    /// Topic filter.
    pub topic: String,
    /// Client id selector.
    pub client_id: Option<String>,
    /// User name selector.
    pub username: Option<String>,
    /// QoS limit.
    pub max_qos: Option<u8>,
    /// Retain restriction (`Some(false)`: retained publishes refused).
    pub allow_retain: Option<bool>,
}

impl From<&AclRule> for AclRuleSummary {
    fn from(r: &AclRule) -> AclRuleSummary {
        AclRuleSummary {
            id: r.id,
            permission: match r.permission {
                Permission::Allow => "allow",
                Permission::Deny => "deny",
            },
            action: match r.action {
                AclAction::Publish => "publish",
                AclAction::Subscribe => "subscribe",
                AclAction::All => "all",
            },
            topic: r.topic.clone(),
            client_id: r.client_id.clone(),
            username: r.username.clone(),
            max_qos: r.max_qos,
            allow_retain: r.allow_retain,
        }
    }
}

/// Validates a rule to be stored with `id`.
fn checked_rule(id: i64, req: NewAclRule) -> Result<AclRule, ProvisionError> {
    validate_rule_topic(&req.topic).map_err(ProvisionError::Invalid)?;
    if let Some(q) = req.max_qos
        && q > 2
    {
        return Err(ProvisionError::Invalid(format!("max QoS {q} is not 0, 1 or 2")));
    }
    if req.permission == Permission::Deny && (req.max_qos.is_some() || req.no_retain) {
        return Err(ProvisionError::Invalid(
            "a QoS limit and no-retain restrict allow rules only; a deny rule refuses regardless".into(),
        ));
    }
    for (what, v) in [("client id", &req.client_id), ("user name", &req.username)] {
        if let Some(v) = v {
            check_name(what, v)?;
        }
    }
    Ok(AclRule {
        id,
        client_id: req.client_id,
        username: req.username,
        permission: req.permission,
        action: req.action,
        topic: req.topic,
        max_qos: req.max_qos,
        allow_retain: req.no_retain.then_some(false),
    })
}

/// Validates and adds an ACL rule, audits `acl.add`, and returns it as stored (with its id).
pub async fn add_acl_rule<'a>(
    store: &dyn DirectoryStore,
    req: NewAclRule,
    actor: impl Into<Actor<'a>>,
) -> Result<AclRuleSummary, ProvisionError> {
    let rule = checked_rule(0, req)?;
    let id = store.add_acl_rule(&rule).await?;
    let mut summary = AclRuleSummary::from(&rule);
    summary.id = id;
    audit(
        store,
        actor.into(),
        "acl.add",
        Some(acl_target(id)),
        serde_json::json!({ "after": json_of(&summary) }),
    )
    .await?;
    Ok(summary)
}

/// One ACL rule.
pub async fn get_acl_rule(store: &dyn DirectoryStore, id: i64) -> Result<AclRuleSummary, ProvisionError> {
    store
        .list_acl_rules()
        .await?
        .iter()
        .find(|r| r.id == id)
        .map(AclRuleSummary::from)
        .ok_or_else(|| ProvisionError::NotFound(format!("ACL rule {id}")))
}

/// Replaces ACL rule `id` with `req` (validated like a new rule) and audits `acl.update` with
/// the rule before and after. Returns the rule as stored.
pub async fn update_acl_rule<'a>(
    store: &dyn DirectoryStore,
    id: i64,
    req: NewAclRule,
    actor: impl Into<Actor<'a>>,
) -> Result<AclRuleSummary, ProvisionError> {
    let rule = checked_rule(id, req)?;
    let before = get_acl_rule(store, id).await?;
    if !store.update_acl_rule(&rule).await? {
        return Err(ProvisionError::NotFound(format!("ACL rule {id}")));
    }
    let after = AclRuleSummary::from(&rule);
    let detail = serde_json::json!({ "before": json_of(&before), "after": json_of(&after) });
    audit(store, actor.into(), "acl.update", Some(acl_target(id)), detail).await?;
    Ok(after)
}

/// All ACL rules.
pub async fn list_acl_rules(store: &dyn DirectoryStore) -> Result<Vec<AclRuleSummary>, ProvisionError> {
    Ok(store.list_acl_rules().await?.iter().map(AclRuleSummary::from).collect())
}

/// Removes an ACL rule and audits `acl.remove` with what it was.
pub async fn remove_acl_rule<'a>(
    store: &dyn DirectoryStore,
    id: i64,
    actor: impl Into<Actor<'a>>,
) -> Result<(), ProvisionError> {
    let before = get_acl_rule(store, id).await?;
    if !store.remove_acl_rule(id).await? {
        return Err(ProvisionError::NotFound(format!("ACL rule {id}")));
    }
    audit(
        store,
        actor.into(),
        "acl.remove",
        Some(acl_target(id)),
        serde_json::json!({ "before": json_of(&before) }),
    )
    .await
}
