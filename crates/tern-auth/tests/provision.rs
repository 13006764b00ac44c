//! Provisioning (the core of `tern device ...` / `tern acl ...`): devices and rules land in
//! the store, every change is audited, secrets never come back out, and the authenticator
//! accepts what was provisioned.

mod common;

use std::sync::Arc;

use common::{MemStore, connect};
use tern_auth::provision::{
    NewAclRule, NewDevice, PasswordSource, ProvisionError, add_acl_rule, add_device, list_acl_rules,
    list_devices, remove_acl_rule, remove_device, set_device_enabled,
};
use tern_auth::{AuthConfig, BackoffConfig, Method, TernAuthenticator, verify_password};
use tern_broker::auth::{AuthOutcome, Authenticator as _};
use tern_broker::store::{AclAction, DirectoryStore as _, Permission, StoreError};
use tern_protocol::ReasonCode;

#[tokio::test]
async fn devices_are_added_audited_listed_without_secrets_and_usable() {
    let store = Arc::new(MemStore::new());
    let added = add_device(
        &*store,
        NewDevice {
            client_id: "sensor-1".into(),
            username: Some("alice".into()),
            password: PasswordSource::Generate,
            scram: true,
            ..NewDevice::default()
        },
        "cli",
    )
    .await
    .unwrap();
    let password = added.generated_password.clone().expect("generated once");
    assert_eq!(password.len(), 32);
    assert!(!format!("{added:?}").contains(&password), "Debug hides the password");
    assert!(added.device.has_password && added.device.has_scram);

    let raw = store.raw_devices();
    let hash = raw[0].password_hash.as_deref().unwrap();
    assert!(hash.starts_with("$argon2id$"));
    assert!(verify_password(hash, password.as_bytes()));
    assert!(raw[0].scram_verifier.as_deref().unwrap().starts_with("SCRAM-SHA-256$4096:"));

    let listed = list_devices(&*store).await.unwrap();
    let json = serde_json::to_string(&listed).unwrap();
    assert!(!json.contains("argon2") && !json.contains("SCRAM") && !json.contains(&password), "{json}");

    // The authenticator accepts it.
    let cfg = AuthConfig {
        chain: vec![Method::Password],
        backoff: BackoffConfig { enabled: false, ..BackoffConfig::default() },
        ..AuthConfig::default()
    };
    let auth = TernAuthenticator::new(&cfg, store.clone()).await.unwrap();
    let ok = auth.authenticate(&connect("sensor-1", Some("alice"), Some(password.as_bytes()))).await;
    assert!(matches!(ok, AuthOutcome::Allow(_)), "{ok:?}");

    // Disable, enable, remove, each audited.
    set_device_enabled(&*store, "sensor-1", false, "cli").await.unwrap();
    let o = auth.authenticate(&connect("sensor-1", Some("alice"), Some(password.as_bytes()))).await;
    assert_eq!(o, AuthOutcome::Deny(ReasonCode::NotAuthorized));
    set_device_enabled(&*store, "sensor-1", true, "cli").await.unwrap();
    remove_device(&*store, "sensor-1", "cli").await.unwrap();
    assert!(matches!(remove_device(&*store, "sensor-1", "cli").await, Err(ProvisionError::NotFound(_))));
    assert!(matches!(
        set_device_enabled(&*store, "nope", true, "cli").await,
        Err(ProvisionError::NotFound(_))
    ));

    let audit = store.audit_log();
    let actions: Vec<_> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["device.add", "device.disable", "device.enable", "device.remove"]);
    assert!(audit.iter().all(|e| e.actor == "cli"));
    assert!(audit.iter().all(|e| !e.detail.contains("argon2") && !e.detail.contains(&password)));
}

#[tokio::test]
async fn device_requests_are_validated() {
    let store = MemStore::new();
    let given = NewDevice {
        client_id: "d".into(),
        password: PasswordSource::Given("pw".into()),
        cert_identity: Some("CN=d".into()),
        ..NewDevice::default()
    };
    assert!(!format!("{given:?}").contains("\"pw\""));
    let added = add_device(&store, given, "cli").await.unwrap();
    assert_eq!(added.generated_password, None);
    assert_eq!(added.device.cert_identity.as_deref(), Some("CN=d"));
    let dup = add_device(&store, NewDevice { client_id: "d".into(), ..NewDevice::default() }, "cli").await;
    assert!(matches!(dup, Err(ProvisionError::Store(StoreError::Conflict(_)))));
    let scram_without_password = NewDevice { client_id: "e".into(), scram: true, ..NewDevice::default() };
    assert!(matches!(
        add_device(&store, scram_without_password, "cli").await,
        Err(ProvisionError::Invalid(_))
    ));
    let empty = NewDevice { client_id: String::new(), ..NewDevice::default() };
    assert!(matches!(add_device(&store, empty, "cli").await, Err(ProvisionError::Invalid(_))));
    let empty_pw = NewDevice {
        client_id: "f".into(),
        password: PasswordSource::Given(String::new()),
        ..NewDevice::default()
    };
    assert!(matches!(add_device(&store, empty_pw, "cli").await, Err(ProvisionError::Invalid(_))));
    // A device without any secret is allowed (certificate or JWT devices).
    add_device(&store, NewDevice { client_id: "g".into(), ..NewDevice::default() }, "cli").await.unwrap();
}

fn rule_req(permission: Permission, topic: &str) -> NewAclRule {
    NewAclRule {
        permission,
        action: AclAction::Publish,
        topic: topic.into(),
        client_id: None,
        username: None,
        max_qos: None,
        no_retain: false,
    }
}

#[tokio::test]
async fn acl_rules_are_validated_added_listed_and_removed() {
    let store = MemStore::new();
    let mut req = rule_req(Permission::Allow, "devices/%c/#");
    req.max_qos = Some(1);
    req.no_retain = true;
    req.client_id = Some("dev-1".into());
    let id = add_acl_rule(&store, req, "cli").await.unwrap().id;
    let listed = list_acl_rules(&store).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].permission, listed[0].action), (id, "allow", "publish"));
    assert_eq!((listed[0].max_qos, listed[0].allow_retain), (Some(1), Some(false)));

    assert!(matches!(
        add_acl_rule(&store, rule_req(Permission::Allow, "a/#/b"), "cli").await,
        Err(ProvisionError::Invalid(_))
    ));
    let mut q3 = rule_req(Permission::Allow, "a");
    q3.max_qos = Some(3);
    assert!(matches!(add_acl_rule(&store, q3, "cli").await, Err(ProvisionError::Invalid(_))));
    let mut limited_deny = rule_req(Permission::Deny, "a");
    limited_deny.no_retain = true;
    assert!(matches!(add_acl_rule(&store, limited_deny, "cli").await, Err(ProvisionError::Invalid(_))));

    remove_acl_rule(&store, id, "cli").await.unwrap();
    assert!(matches!(remove_acl_rule(&store, id, "cli").await, Err(ProvisionError::NotFound(_))));
    let actions: Vec<_> = store.audit_log().into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["acl.add", "acl.remove"]);
}

#[tokio::test]
async fn store_failures_surface() {
    let store = MemStore::new();
    store.set_down(true);
    let r = add_device(&store, NewDevice { client_id: "d".into(), ..NewDevice::default() }, "cli").await;
    assert!(matches!(r, Err(ProvisionError::Store(StoreError::Unavailable(_)))));
    assert!(list_devices(&store).await.is_err());
    assert!(store.list_devices().await.is_err());
}
