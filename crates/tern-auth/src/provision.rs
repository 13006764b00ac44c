//! Provisioning: adding, listing, enabling, disabling and removing devices and ACL rules in
//! the directory store, each change recorded in the audit log. The `tern device` / `tern acl`
//! commands and the admin API call these; nothing here prints or returns a password hash.

use serde::Serialize;
use tern_broker::store::{AclAction, AclRule, AuditEntry, Device, DirectoryStore, Permission, StoreError};

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
        }
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn audit(
    store: &dyn DirectoryStore,
    actor: &str,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), ProvisionError> {
    let entry = AuditEntry {
        id: 0,
        at: now_millis(),
        actor: actor.to_string(),
        action: action.to_string(),
        detail: detail.to_string(),
    };
    store.append_audit(&entry).await.map(|_| ()).map_err(ProvisionError::Audit)
}

fn check_name(what: &str, v: &str) -> Result<(), ProvisionError> {
    if v.is_empty() || v.len() > 65_535 || v.contains('\0') {
        return Err(ProvisionError::Invalid(format!("{what} must be 1 to 65535 bytes without NUL")));
    }
    Ok(())
}

/// Adds a device (hashing the password with argon2id on the blocking pool, and making a
/// SCRAM verifier if asked) and audits `device.add`.
pub async fn add_device(
    store: &dyn DirectoryStore,
    req: NewDevice,
    actor: &str,
) -> Result<AddedDevice, ProvisionError> {
    check_name("client id", &req.client_id)?;
    if let Some(u) = &req.username {
        check_name("user name", u)?;
    }
    if let Some(c) = &req.cert_identity {
        check_name("certificate identity", c)?;
    }
    let (password, generated) = match req.password {
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
    if req.scram && password.is_none() {
        return Err(ProvisionError::Invalid(
            "--scram needs a password (--password-stdin or --generate-password)".into(),
        ));
    }
    let scram = req.scram;
    let (password_hash, scram_verifier) = match password {
        None => (None, None),
        Some(p) => tokio::task::spawn_blocking(move || {
            let v = scram.then(|| scram_verifier(&p, DEFAULT_SCRAM_ITERATIONS));
            (Some(hash_password(&p)), v)
        })
        .await
        .map_err(|e| ProvisionError::Invalid(format!("hashing failed: {e}")))?,
    };
    let device = Device {
        client_id: req.client_id,
        username: req.username,
        password_hash,
        scram_verifier,
        cert_identity: req.cert_identity,
        enabled: true,
        created_at: now_millis(),
    };
    store.add_device(&device).await?;
    let summary = DeviceSummary::from(&device);
    audit(store, actor, "device.add", serde_json::to_value(&summary).unwrap_or_default()).await?;
    Ok(AddedDevice { device: summary, generated_password: generated })
}

/// Pretty JSON of listed devices or rules (for `--json` output).
pub fn to_json<T: Serialize>(items: &[T]) -> String {
    serde_json::to_string_pretty(items).unwrap_or_else(|_| "[]".to_string())
}

/// All devices, without secrets.
pub async fn list_devices(store: &dyn DirectoryStore) -> Result<Vec<DeviceSummary>, ProvisionError> {
    Ok(store.list_devices().await?.iter().map(DeviceSummary::from).collect())
}

/// Enables or disables a device and audits `device.enable` / `device.disable`. Connected
/// clients are not disconnected by this (new connections are refused).
pub async fn set_device_enabled(
    store: &dyn DirectoryStore,
    client_id: &str,
    enabled: bool,
    actor: &str,
) -> Result<(), ProvisionError> {
    let mut device = store
        .device_by_client_id(client_id)
        .await?
        .ok_or_else(|| ProvisionError::NotFound(format!("device {client_id:?}")))?;
    device.enabled = enabled;
    store.update_device(&device).await?;
    let action = if enabled { "device.enable" } else { "device.disable" };
    audit(store, actor, action, serde_json::json!({ "client_id": client_id })).await
}

/// Removes a device and audits `device.remove`.
pub async fn remove_device(
    store: &dyn DirectoryStore,
    client_id: &str,
    actor: &str,
) -> Result<(), ProvisionError> {
    if !store.remove_device(client_id).await? {
        return Err(ProvisionError::NotFound(format!("device {client_id:?}")));
    }
    audit(store, actor, "device.remove", serde_json::json!({ "client_id": client_id })).await
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

/// Validates and adds an ACL rule, audits `acl.add`, and returns its id.
pub async fn add_acl_rule(
    store: &dyn DirectoryStore,
    req: NewAclRule,
    actor: &str,
) -> Result<i64, ProvisionError> {
    validate_rule_topic(&req.topic).map_err(ProvisionError::Invalid)?;
    if let Some(q) = req.max_qos
        && q > 2
    {
        return Err(ProvisionError::Invalid(format!("max QoS {q} is not 0, 1 or 2")));
    }
    if req.permission == Permission::Deny && (req.max_qos.is_some() || req.no_retain) {
        return Err(ProvisionError::Invalid(
            "--max-qos and --no-retain limit allow rules; a deny rule refuses regardless".into(),
        ));
    }
    for (what, v) in [("client id", &req.client_id), ("user name", &req.username)] {
        if let Some(v) = v {
            check_name(what, v)?;
        }
    }
    let rule = AclRule {
        id: 0,
        client_id: req.client_id,
        username: req.username,
        permission: req.permission,
        action: req.action,
        topic: req.topic,
        max_qos: req.max_qos,
        allow_retain: req.no_retain.then_some(false),
    };
    let id = store.add_acl_rule(&rule).await?;
    let mut summary = AclRuleSummary::from(&rule);
    summary.id = id;
    audit(store, actor, "acl.add", serde_json::to_value(&summary).unwrap_or_default()).await?;
    Ok(id)
}

/// All ACL rules.
pub async fn list_acl_rules(store: &dyn DirectoryStore) -> Result<Vec<AclRuleSummary>, ProvisionError> {
    Ok(store.list_acl_rules().await?.iter().map(AclRuleSummary::from).collect())
}

/// Removes an ACL rule and audits `acl.remove`.
pub async fn remove_acl_rule(store: &dyn DirectoryStore, id: i64, actor: &str) -> Result<(), ProvisionError> {
    if !store.remove_acl_rule(id).await? {
        return Err(ProvisionError::NotFound(format!("ACL rule {id}")));
    }
    audit(store, actor, "acl.remove", serde_json::json!({ "id": id })).await
}
