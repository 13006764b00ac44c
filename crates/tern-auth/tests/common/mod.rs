//! Shared test helpers: an in-memory `DirectoryStore` (a real implementation over mutex-guarded
//! vectors, with a switch that simulates a database outage) and CONNECT builders.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tern_broker::auth::{CertIdentity, ConnectInfo};
use tern_broker::store::{AclRule, AdminUser, AuditEntry, Device, DirectoryStore, StoreError, StoreFuture};

#[derive(Debug, Default)]
struct Inner {
    devices: Vec<Device>,
    rules: Vec<AclRule>,
    admins: Vec<AdminUser>,
    audit: Vec<AuditEntry>,
    next_rule: i64,
    next_audit: i64,
    version: i64,
}

/// The in-memory directory.
#[derive(Debug, Default)]
pub(crate) struct MemStore {
    inner: Mutex<Inner>,
    /// While set, every call fails with `Unavailable` (a database outage).
    pub(crate) down: AtomicBool,
}

fn ready<'a, T: Send + 'a>(v: Result<T, StoreError>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl MemStore {
    pub(crate) fn new() -> MemStore {
        MemStore::default()
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("simulated outage".into()));
        }
        f(&mut self.inner.lock().unwrap())
    }

    pub(crate) fn audit_log(&self) -> Vec<AuditEntry> {
        self.inner.lock().unwrap().audit.clone()
    }

    pub(crate) fn raw_devices(&self) -> Vec<Device> {
        self.inner.lock().unwrap().devices.clone()
    }
}

impl DirectoryStore for MemStore {
    fn add_device<'a>(&'a self, device: &'a Device) -> StoreFuture<'a, ()> {
        ready(self.with(|i| {
            let taken = i.devices.iter().any(|d| {
                d.client_id == device.client_id
                    || (device.username.is_some() && d.username == device.username)
            });
            if taken {
                return Err(StoreError::Conflict(format!("device {}", device.client_id)));
            }
            i.devices.push(device.clone());
            i.version += 1;
            Ok(())
        }))
    }

    fn update_device<'a>(&'a self, device: &'a Device) -> StoreFuture<'a, ()> {
        ready(self.with(|i| {
            let d = i
                .devices
                .iter_mut()
                .find(|d| d.client_id == device.client_id)
                .ok_or_else(|| StoreError::NotFound(device.client_id.clone()))?;
            *d = device.clone();
            i.version += 1;
            Ok(())
        }))
    }

    fn remove_device<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, bool> {
        ready(self.with(|i| {
            let before = i.devices.len();
            i.devices.retain(|d| d.client_id != client_id);
            let removed = i.devices.len() != before;
            if removed {
                i.version += 1;
            }
            Ok(removed)
        }))
    }

    fn device_by_client_id<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<Device>> {
        ready(self.with(|i| Ok(i.devices.iter().find(|d| d.client_id == client_id).cloned())))
    }

    fn device_by_username<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<Device>> {
        ready(self.with(|i| Ok(i.devices.iter().find(|d| d.username.as_deref() == Some(username)).cloned())))
    }

    fn list_devices(&self) -> StoreFuture<'_, Vec<Device>> {
        ready(self.with(|i| {
            let mut v = i.devices.clone();
            v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
            Ok(v)
        }))
    }

    fn add_acl_rule<'a>(&'a self, rule: &'a AclRule) -> StoreFuture<'a, i64> {
        ready(self.with(|i| {
            i.next_rule += 1;
            let mut r = rule.clone();
            r.id = i.next_rule;
            i.rules.push(r);
            i.version += 1;
            Ok(i.next_rule)
        }))
    }

    fn remove_acl_rule(&self, id: i64) -> StoreFuture<'_, bool> {
        ready(self.with(|i| {
            let before = i.rules.len();
            i.rules.retain(|r| r.id != id);
            let removed = i.rules.len() != before;
            if removed {
                i.version += 1;
            }
            Ok(removed)
        }))
    }

    fn list_acl_rules(&self) -> StoreFuture<'_, Vec<AclRule>> {
        ready(self.with(|i| Ok(i.rules.clone())))
    }

    fn directory_version(&self) -> StoreFuture<'_, i64> {
        ready(self.with(|i| Ok(i.version)))
    }

    fn put_admin_user<'a>(&'a self, user: &'a AdminUser) -> StoreFuture<'a, ()> {
        ready(self.with(|i| {
            i.admins.retain(|a| a.username != user.username);
            i.admins.push(user.clone());
            Ok(())
        }))
    }

    fn admin_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<AdminUser>> {
        ready(self.with(|i| Ok(i.admins.iter().find(|a| a.username == username).cloned())))
    }

    fn append_audit<'a>(&'a self, entry: &'a AuditEntry) -> StoreFuture<'a, i64> {
        ready(self.with(|i| {
            i.next_audit += 1;
            let mut e = entry.clone();
            e.id = i.next_audit;
            i.audit.push(e);
            Ok(i.next_audit)
        }))
    }

    fn recent_audit(&self, limit: u32) -> StoreFuture<'_, Vec<AuditEntry>> {
        ready(self.with(|i| Ok(i.audit.iter().rev().take(limit as usize).cloned().collect())))
    }
}

pub(crate) const PEER: &str = "127.0.0.1:40000";

/// A CONNECT on listener "tcp" from [`PEER`], protocol 5.
pub(crate) fn connect<'a>(
    client_id: &'a str,
    username: Option<&'a str>,
    password: Option<&'a [u8]>,
) -> ConnectInfo<'a> {
    ConnectInfo {
        client_id,
        username,
        password,
        peer: PEER.parse::<SocketAddr>().unwrap(),
        listener: "tcp",
        cert: None,
        protocol: 5,
    }
}

/// The same, on `listener` with a certificate identity.
pub(crate) fn connect_tls<'a>(
    client_id: &'a str,
    listener: &'a str,
    cert: &'a CertIdentity,
) -> ConnectInfo<'a> {
    ConnectInfo { listener, cert: Some(cert), ..connect(client_id, None, None) }
}

/// A device record (no secrets).
pub(crate) fn device(client_id: &str, username: Option<&str>) -> Device {
    Device {
        client_id: client_id.into(),
        username: username.map(Into::into),
        password_hash: None,
        scram_verifier: None,
        cert_identity: None,
        enabled: true,
        created_at: 0,
        labels: std::collections::BTreeMap::new(),
        limits: tern_broker::store::DeviceLimits::default(),
    }
}

/// Decodes the first PEM block's body.
pub(crate) fn pem_body(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}
