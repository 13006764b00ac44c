//! The auth layer over a real SQLite `tern_store::Db`: provisioning, password and SCRAM
//! logins, audit entries, and ACL reloads driven by the database's directory version.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::connect;
use tern_auth::provision::{
    NewAclRule, NewDevice, PasswordSource, add_acl_rule, add_device, set_device_enabled,
};
use tern_auth::{AclAuthorizer, AuthConfig, BackoffConfig, Method, TernAuthenticator};
use tern_broker::auth::{Action, AuthOutcome, Authenticator as _, Authorizer as _, Principal};
use tern_broker::store::{AclAction, DirectoryStore, Permission};
use tern_protocol::{QoS, ReasonCode};

#[tokio::test]
async fn provisioning_login_and_acl_reload_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("tern-auth-sqlite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("tern.db").display());
    let db: Arc<dyn DirectoryStore> =
        Arc::new(tern_store::connect(&url, &tern_store::StoreOptions::default()).await.unwrap());

    let added = add_device(
        &*db,
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
    let pw = added.generated_password.unwrap();

    let cfg = AuthConfig {
        chain: vec![Method::Password],
        acl_reload_secs: 1,
        backoff: BackoffConfig { enabled: false, ..BackoffConfig::default() },
        ..AuthConfig::default()
    };
    let auth = TernAuthenticator::new(&cfg, db.clone()).await.unwrap();
    let ok = auth.authenticate(&connect("sensor-1", Some("alice"), Some(pw.as_bytes()))).await;
    let AuthOutcome::Allow(principal) = ok else { panic!("{ok:?}") };
    let wrong = auth.authenticate(&connect("sensor-1", Some("alice"), Some(b"nope"))).await;
    assert_eq!(wrong, AuthOutcome::Deny(ReasonCode::BadUserNameOrPassword));
    let stored = db.device_by_client_id("sensor-1").await.unwrap().unwrap();
    assert!(stored.scram_verifier.unwrap().starts_with("SCRAM-SHA-256$4096:"));

    // ACL: the poller sees rules added through the database.
    let authz = AclAuthorizer::start(db.clone(), &cfg).await;
    assert!(authz.is_loaded());
    let publish = |p: &Principal, t: &str| authz.check(p, Action::Publish, t, QoS::AtLeastOnce, false);
    assert!(!publish(&principal, "devices/sensor-1/t"));
    let v = authz.version();
    add_acl_rule(
        &*db,
        NewAclRule {
            permission: Permission::Allow,
            action: AclAction::All,
            topic: "devices/%c/#".into(),
            client_id: None,
            username: None,
            max_qos: None,
            no_retain: false,
        },
        "cli",
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while authz.version() == v {
        assert!(tokio::time::Instant::now() < deadline, "no reload after the rule change");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(publish(&principal, "devices/sensor-1/t"));
    assert!(!publish(&principal, "devices/sensor-2/t"));

    set_device_enabled(&*db, "sensor-1", false, "cli").await.unwrap();
    let off = auth.authenticate(&connect("sensor-1", Some("alice"), Some(pw.as_bytes()))).await;
    assert_eq!(off, AuthOutcome::Deny(ReasonCode::NotAuthorized));

    let audit = db.recent_audit(10).await.unwrap();
    let actions: Vec<_> = audit.iter().rev().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["device.add", "acl.add", "device.disable"]);
    assert!(audit.iter().all(|e| e.actor == "cli" && !e.detail.contains("argon2")));
    let _ = std::fs::remove_dir_all(&dir);
}
