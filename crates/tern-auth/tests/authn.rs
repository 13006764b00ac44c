//! Authentication through the broker's `Authenticator` port: passwords, backoff, method
//! chains, anonymous, client certificates and SCRAM-SHA-256 enhanced authentication.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{MemStore, connect, connect_tls, device};
use tern_auth::{
    AuthConfig, BackoffConfig, CertField, CertMapTo, CertMapping, Method, TernAuthenticator, cert_identity,
    hash_password, scram_verifier,
};
use tern_broker::auth::{AuthOutcome, AuthStep, Authenticator, CertIdentity, Principal};
use tern_protocol::ReasonCode;

fn no_backoff() -> BackoffConfig {
    BackoffConfig { enabled: false, ..BackoffConfig::default() }
}

fn config(chain: &[Method]) -> AuthConfig {
    AuthConfig { chain: chain.to_vec(), backoff: no_backoff(), ..AuthConfig::default() }
}

async fn store_with_passwords() -> Arc<MemStore> {
    let store = Arc::new(MemStore::new());
    let hash = tokio::task::spawn_blocking(|| hash_password("s3cret")).await.unwrap();
    let mut d = device("sensor-1", Some("alice"));
    d.password_hash = Some(hash.clone());
    tern_broker::store::DirectoryStore::add_device(&*store, &d).await.unwrap();
    let mut off = device("sensor-off", Some("bob"));
    off.password_hash = Some(hash.clone());
    off.enabled = false;
    tern_broker::store::DirectoryStore::add_device(&*store, &off).await.unwrap();
    let mut noname = device("sensor-2", None);
    noname.password_hash = Some(hash);
    tern_broker::store::DirectoryStore::add_device(&*store, &noname).await.unwrap();
    store
}

fn allowed(o: AuthOutcome) -> Principal {
    match o {
        AuthOutcome::Allow(p) => p,
        AuthOutcome::Deny(c) => panic!("refused with {c}"),
    }
}

fn denied(o: &AuthOutcome) -> ReasonCode {
    match o {
        AuthOutcome::Allow(p) => panic!("unexpectedly allowed: {p:?}"),
        AuthOutcome::Deny(c) => *c,
    }
}

#[tokio::test]
async fn passwords_right_wrong_unknown_disabled() {
    let store = store_with_passwords().await;
    let auth = TernAuthenticator::new(&config(&[Method::Password]), store).await.unwrap();

    let p = allowed(auth.authenticate(&connect("sensor-1", Some("alice"), Some(b"s3cret"))).await);
    assert_eq!(p.client_id, "sensor-1");
    assert_eq!(p.username.as_deref(), Some("alice"));
    assert_eq!(p.expires_at, None);

    // Without a user name the device is found by client id; a device without a user name
    // is named by its client id (never by what the CONNECT claims).
    let p = allowed(auth.authenticate(&connect("sensor-2", None, Some(b"s3cret"))).await);
    assert_eq!(p.username.as_deref(), Some("sensor-2"));

    let bad = ReasonCode::BadUserNameOrPassword;
    assert_eq!(denied(&auth.authenticate(&connect("sensor-1", Some("alice"), Some(b"wrong"))).await), bad);
    assert_eq!(denied(&auth.authenticate(&connect("x", Some("mallory"), Some(b"s3cret"))).await), bad);
    // Disabled: refused as not authorized, but only with the right password.
    let na = ReasonCode::NotAuthorized;
    assert_eq!(denied(&auth.authenticate(&connect("sensor-off", Some("bob"), Some(b"s3cret"))).await), na);
    assert_eq!(denied(&auth.authenticate(&connect("sensor-off", Some("bob"), Some(b"nope"))).await), bad);
    // Right password, but another device's client id.
    assert_eq!(denied(&auth.authenticate(&connect("sensor-2", Some("alice"), Some(b"s3cret"))).await), na);
    // No password at all: the password method does not apply, nothing else does.
    assert_eq!(denied(&auth.authenticate(&connect("sensor-1", Some("alice"), None)).await), na);
}

#[tokio::test]
async fn unknown_users_cost_a_full_verification() {
    let store = store_with_passwords().await;
    let auth = TernAuthenticator::new(&config(&[Method::Password]), store).await.unwrap();
    let time = |cid: &'static str, user: &'static str| {
        let auth = &auth;
        async move {
            let t = Instant::now();
            for _ in 0..3 {
                let _ = auth.authenticate(&connect(cid, Some(user), Some(b"wrong"))).await;
            }
            t.elapsed()
        }
    };
    let known = time("sensor-1", "alice").await;
    let unknown = time("ghost", "ghost").await;
    // Both run argon2id; without the dummy hash an unknown user would answer in microseconds.
    // (A loose bound: other tests share the CPU.)
    assert!(unknown * 4 > known && known * 4 > unknown, "known {known:?} vs unknown {unknown:?}");
}

#[tokio::test]
async fn store_outage_refuses_with_server_unavailable() {
    let store = store_with_passwords().await;
    let auth =
        TernAuthenticator::new(&config(&[Method::Password, Method::Anonymous]), store.clone()).await.unwrap();
    store.set_down(true);
    let o = auth.authenticate(&connect("sensor-1", Some("alice"), Some(b"s3cret"))).await;
    assert_eq!(denied(&o), ReasonCode::ServerUnavailable);
    let o = auth.authenticate(&connect("anon", None, None)).await;
    assert_eq!(denied(&o), ReasonCode::ServerUnavailable);
}

#[tokio::test]
async fn a_recent_login_reconnects_without_argon2_until_anything_changes() {
    use tern_broker::store::DirectoryStore as _;
    let store = store_with_passwords().await;
    let auth = TernAuthenticator::new(&config(&[Method::Password]), store.clone()).await.unwrap();
    let hits = || auth.stats().credential_cache_hits_total();
    let login = |pw: &'static [u8]| {
        let auth = &auth;
        async move { auth.authenticate(&connect("sensor-1", Some("alice"), Some(pw))).await }
    };
    allowed(login(b"s3cret").await);
    assert_eq!(hits(), 0, "the first login runs argon2id");
    let p = allowed(login(b"s3cret").await);
    assert_eq!((hits(), p.username.as_deref()), (1, Some("alice")), "the reconnect does not");
    // A wrong password is never answered by the cache.
    assert_eq!(denied(&login(b"s3creT").await), ReasonCode::BadUserNameOrPassword);
    assert_eq!(hits(), 1);
    // The store is asked every time: a disabled device is refused at once.
    let mut d = store.device_by_client_id("sensor-1").await.unwrap().unwrap();
    d.enabled = false;
    store.update_device(&d).await.unwrap();
    assert_eq!(denied(&login(b"s3cret").await), ReasonCode::NotAuthorized);
    // A new password: the old one no longer matches the stored hash, the new one is verified.
    d.enabled = true;
    d.password_hash = Some(tokio::task::spawn_blocking(|| hash_password("n3w")).await.unwrap());
    store.update_device(&d).await.unwrap();
    let before = hits();
    assert_eq!(denied(&login(b"s3cret").await), ReasonCode::BadUserNameOrPassword);
    allowed(login(b"n3w").await);
    assert_eq!(hits(), before, "verified with argon2id");
    allowed(login(b"n3w").await);
    assert_eq!(hits(), before + 1);

    // Off: every login runs argon2id.
    let mut cfg = config(&[Method::Password]);
    cfg.credential_cache_secs = 0;
    let auth = TernAuthenticator::new(&cfg, store.clone()).await.unwrap();
    for _ in 0..2 {
        allowed(auth.authenticate(&connect("sensor-1", Some("alice"), Some(b"n3w"))).await);
    }
    assert_eq!(auth.stats().credential_cache_hits_total(), 0);
}

/// An authenticator over `store` with the directory cache configured.
async fn cached_auth(store: &Arc<MemStore>, bytes: usize, ttl_secs: u64) -> TernAuthenticator {
    let mut cfg = config(&[Method::Password]);
    cfg.directory_cache_bytes = bytes;
    cfg.directory_cache_ttl_secs = ttl_secs;
    TernAuthenticator::new(&cfg, store.clone()).await.unwrap()
}

#[tokio::test]
async fn devices_seen_before_keep_authenticating_during_an_outage() {
    use tern_broker::store::DirectoryStore as _;
    let store = store_with_passwords().await;
    let auth = cached_auth(&store, 1 << 20, 3600).await;
    let login = |cid: &'static str, user: Option<&'static str>, pw: &'static [u8]| {
        let auth = &auth;
        async move { auth.authenticate(&connect(cid, user, Some(pw))).await }
    };
    let (bad, na, unavailable) =
        (ReasonCode::BadUserNameOrPassword, ReasonCode::NotAuthorized, ReasonCode::ServerUnavailable);
    // Seen while the store is up: by user name, and by client id.
    allowed(login("sensor-1", Some("alice"), b"s3cret").await);
    allowed(login("sensor-2", None, b"s3cret").await);

    store.set_down(true);
    let p = allowed(login("sensor-1", Some("alice"), b"s3cret").await);
    assert_eq!((p.client_id.as_str(), p.username.as_deref()), ("sensor-1", Some("alice")));
    let p = allowed(login("sensor-2", None, b"s3cret").await);
    assert_eq!((p.client_id.as_str(), p.username.as_deref()), ("sensor-2", Some("sensor-2")));
    // The remembered hash is verified like the stored one.
    assert_eq!(denied(&login("sensor-1", Some("alice"), b"wrong").await), bad);
    assert_eq!(denied(&login("sensor-2", Some("alice"), b"s3cret").await), na, "another device's client id");
    // Never seen (or only by the other lookup): the store is needed.
    assert_eq!(denied(&login("sensor-off", Some("bob"), b"s3cret").await), unavailable);
    assert_eq!(denied(&login("sensor-1", None, b"s3cret").await), unavailable);
    // Wrong guesses during the outage do not evict the real device.
    allowed(login("sensor-1", Some("alice"), b"s3cret").await);

    // Back: the store wins. Disabled, then refused during the next outage too.
    store.set_down(false);
    let mut d = store.raw_devices().into_iter().find(|d| d.client_id == "sensor-1").unwrap();
    d.enabled = false;
    store.update_device(&d).await.unwrap();
    assert_eq!(denied(&login("sensor-1", Some("alice"), b"s3cret").await), na);
    // A new password: the old one is refused by the store, and then not remembered.
    let mut d2 = store.raw_devices().into_iter().find(|d| d.client_id == "sensor-2").unwrap();
    d2.password_hash = Some(tokio::task::spawn_blocking(|| hash_password("n3w")).await.unwrap());
    store.update_device(&d2).await.unwrap();
    assert_eq!(denied(&login("sensor-2", None, b"s3cret").await), bad);
    store.set_down(true);
    assert_eq!(
        denied(&login("sensor-1", Some("alice"), b"s3cret").await),
        unavailable,
        "disabled: forgotten"
    );
    assert_eq!(denied(&login("sensor-2", None, b"s3cret").await), unavailable, "old password: forgotten");
    assert_eq!(denied(&login("sensor-2", None, b"n3w").await), unavailable, "new one not seen yet");
    store.set_down(false);
    allowed(login("sensor-2", None, b"n3w").await);
    // Removed: the store's "unknown" forgets it as well.
    store.remove_device("sensor-2").await.unwrap();
    assert_eq!(denied(&login("sensor-2", None, b"n3w").await), bad);
    store.set_down(true);
    assert_eq!(denied(&login("sensor-2", None, b"n3w").await), unavailable);
}

#[tokio::test]
async fn directory_cache_entries_expire_and_can_be_turned_off() {
    let store = store_with_passwords().await;
    let unavailable = ReasonCode::ServerUnavailable;
    // TTL: an entry the store has not confirmed for directory_cache_ttl_secs is not used.
    let auth = cached_auth(&store, 1 << 20, 1).await;
    allowed(auth.authenticate(&connect("sensor-1", Some("alice"), Some(b"s3cret"))).await);
    store.set_down(true);
    allowed(auth.authenticate(&connect("sensor-1", Some("alice"), Some(b"s3cret"))).await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        denied(&auth.authenticate(&connect("sensor-1", Some("alice"), Some(b"s3cret"))).await),
        unavailable
    );
    // 0 bytes: off.
    store.set_down(false);
    let off = cached_auth(&store, 0, 3600).await;
    allowed(off.authenticate(&connect("sensor-1", Some("alice"), Some(b"s3cret"))).await);
    store.set_down(true);
    assert_eq!(
        denied(&off.authenticate(&connect("sensor-1", Some("alice"), Some(b"s3cret"))).await),
        unavailable
    );
    // A budget too small for one record: nothing is remembered, nothing breaks.
    store.set_down(false);
    let tiny = cached_auth(&store, 64, 3600).await;
    allowed(tiny.authenticate(&connect("sensor-1", Some("alice"), Some(b"s3cret"))).await);
    store.set_down(true);
    assert_eq!(
        denied(&tiny.authenticate(&connect("sensor-1", Some("alice"), Some(b"s3cret"))).await),
        unavailable
    );
}

#[tokio::test]
async fn anonymous_checks_are_remembered_until_the_directory_changes() {
    let store = store_with_passwords().await;
    let auth = TernAuthenticator::new(&config(&[Method::Anonymous]), store.clone()).await.unwrap();
    allowed(auth.authenticate(&connect("late-device", None, None)).await);
    // Provisioned meanwhile: seen once the directory's version is compared again (≤ 1 s).
    let d = device("late-device", None);
    tern_broker::store::DirectoryStore::add_device(&*store, &d).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        denied(&auth.authenticate(&connect("late-device", None, None)).await),
        ReasonCode::NotAuthorized
    );
    // A client id seen before is answered from memory while the store is away; a new one
    // needs the store.
    allowed(auth.authenticate(&connect("regular", None, None)).await);
    store.set_down(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    allowed(auth.authenticate(&connect("regular", None, None)).await);
    assert_eq!(
        denied(&auth.authenticate(&connect("late-device", None, None)).await),
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        denied(&auth.authenticate(&connect("newcomer", None, None)).await),
        ReasonCode::ServerUnavailable
    );
}

#[tokio::test]
async fn backoff_delays_then_bans() {
    let store = store_with_passwords().await;
    let mut cfg = config(&[Method::Password]);
    cfg.backoff = BackoffConfig {
        enabled: true,
        free_failures: 2,
        base_delay_ms: 300,
        max_delay_ms: 600,
        decay_secs: 600,
        ban_after: 5,
        max_entries: 100,
    };
    let auth = TernAuthenticator::new(&cfg, store).await.unwrap();
    let wrong = connect("sensor-1", Some("alice"), Some(b"wrong"));
    for _ in 0..2 {
        assert_eq!(denied(&auth.authenticate(&wrong).await), ReasonCode::BadUserNameOrPassword);
    }
    // Third attempt: delayed by the base delay before the answer, even with the right password.
    let t = Instant::now();
    allowed(auth.authenticate(&connect("sensor-1", Some("alice"), Some(b"s3cret"))).await);
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
    for _ in 0..3 {
        let _ = auth.authenticate(&wrong).await;
    }
    // Five failures from this address: banned without checking credentials.
    let t = Instant::now();
    let o = auth.authenticate(&connect("sensor-1", Some("alice"), Some(b"s3cret"))).await;
    assert_eq!(denied(&o), ReasonCode::Banned);
    assert!(t.elapsed() < Duration::from_millis(100), "a ban answers at once");
}

#[tokio::test]
async fn chain_order_and_fallthrough_rules() {
    let store = store_with_passwords().await;
    let mut cfg = config(&[Method::Password, Method::Anonymous]);
    cfg.listener_chains.insert("locked".into(), vec![Method::Password]);
    let auth = TernAuthenticator::new(&cfg, store).await.unwrap();

    // No credentials: password does not apply, anonymous does (without a user name, even if
    // one was claimed).
    let p = allowed(auth.authenticate(&connect("visitor", Some("claimed"), None)).await);
    assert_eq!((p.client_id.as_str(), p.username), ("visitor", None));
    // A bad password never falls through to anonymous.
    let o = auth.authenticate(&connect("visitor", Some("alice"), Some(b"bad"))).await;
    assert_eq!(denied(&o), ReasonCode::BadUserNameOrPassword);
    // Anonymous clients cannot use a provisioned device's client id.
    assert_eq!(denied(&auth.authenticate(&connect("sensor-1", None, None)).await), ReasonCode::NotAuthorized);
    // The per-listener chain has no anonymous.
    let mut info = connect("visitor", None, None);
    info.listener = "locked";
    assert_eq!(denied(&auth.authenticate(&info).await), ReasonCode::NotAuthorized);
    // An empty chain refuses everyone.
    let empty = TernAuthenticator::new(&config(&[]), Arc::new(MemStore::new())).await.unwrap();
    assert_eq!(denied(&empty.authenticate(&connect("a", None, None)).await), ReasonCode::NotAuthorized);
}

// ---- certificates -------------------------------------------------------------------------

fn make_cert(cn: &str, dns: &[&str], uris: &[&str]) -> Vec<u8> {
    let mut params =
        rcgen::CertificateParams::new(dns.iter().map(|s| (*s).to_string()).collect::<Vec<_>>()).unwrap();
    for u in uris {
        params.subject_alt_names.push(rcgen::SanType::URI((*u).try_into().unwrap()));
    }
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CountryName, "NL");
    dn.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
    dn.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn cert_identity_fields() {
    let der = make_cert("sensor-7", &["sensor-7.devices.example"], &["spiffe://example/sensor-7"]);
    let id = cert_identity(&der).unwrap();
    assert_eq!(id.cn.as_deref(), Some("sensor-7"));
    assert_eq!(id.dn.as_deref(), Some("CN=sensor-7,O=Acme\\, Inc.,C=NL"));
    assert_eq!(id.san_dns, ["sensor-7.devices.example"]);
    assert_eq!(id.san_uri, ["spiffe://example/sensor-7"]);
    let fp = ring::digest::digest(&ring::digest::SHA256, &der);
    let hex = fp.as_ref().iter().fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    });
    assert_eq!(id.sha256, hex);
    assert_eq!(id.sha256.len(), 64);
    // No SANs at all.
    let bare = cert_identity(&make_cert("x", &[], &[])).unwrap();
    assert!(bare.san_dns.is_empty() && bare.san_uri.is_empty());
    // Trailing garbage is refused.
    let mut long = der.clone();
    long.push(0);
    assert!(cert_identity(&long).is_err());
}

#[tokio::test]
async fn certificate_mapping_per_listener() {
    let store = Arc::new(MemStore::new());
    let s = &*store;
    use tern_broker::store::DirectoryStore as _;
    s.add_device(&device("sensor-7", Some("s7"))).await.unwrap();
    let der = make_cert("sensor-7", &["sensor-7.devices.example"], &[]);
    let id = cert_identity(&der).unwrap();
    let mut pinned = device("pinned", None);
    pinned.cert_identity = Some(id.sha256.clone());
    s.add_device(&pinned).await.unwrap();
    let mut off = device("off", None);
    off.enabled = false;
    s.add_device(&off).await.unwrap();
    let mut by_name = device("dev-9", Some("sensor-7.devices.example"));
    by_name.cert_identity = None;
    s.add_device(&by_name).await.unwrap();

    let mut cfg = config(&[Method::Cert, Method::Password]);
    cfg.cert
        .listeners
        .insert("fp".into(), CertMapping { identity: CertField::Sha256, map_to: CertMapTo::ClientId });
    cfg.cert
        .listeners
        .insert("dns".into(), CertMapping { identity: CertField::SanDns, map_to: CertMapTo::Username });
    cfg.cert
        .listeners
        .insert("both".into(), CertMapping { identity: CertField::Cn, map_to: CertMapTo::Both });
    let auth = TernAuthenticator::new(&cfg, store.clone()).await.unwrap();

    // Default mapping: CN -> client id (overriding the CONNECT's).
    let p = allowed(auth.authenticate(&connect_tls("whatever", "tls", &id)).await);
    assert_eq!((p.client_id.as_str(), p.username.as_deref()), ("sensor-7", Some("s7")));
    // sha256 on listener "fp": no device has the fingerprint as client id; the CONNECT's
    // client id names a device pinned to it.
    let p = allowed(auth.authenticate(&connect_tls("pinned", "fp", &id)).await);
    assert_eq!(p.client_id, "pinned");
    assert_eq!(p.username.as_deref(), Some("pinned"), "a device without a user name: its client id");
    assert_eq!(
        denied(&auth.authenticate(&connect_tls("sensor-7", "fp", &id)).await),
        ReasonCode::NotAuthorized
    );
    // SAN DNS -> user name; the client id must be the device's.
    let p = allowed(auth.authenticate(&connect_tls("dev-9", "dns", &id)).await);
    assert_eq!(p.username.as_deref(), Some("sensor-7.devices.example"));
    assert_eq!(
        denied(&auth.authenticate(&connect_tls("dev-x", "dns", &id)).await),
        ReasonCode::NotAuthorized
    );
    // Both.
    let p = allowed(auth.authenticate(&connect_tls("c", "both", &id)).await);
    assert_eq!((p.client_id.as_str(), p.username.as_deref()), ("sensor-7", Some("sensor-7")));
    // Unknown identity, disabled device, pinned identity mismatch.
    let other = cert_identity(&make_cert("stranger", &[], &[])).unwrap();
    assert_eq!(denied(&auth.authenticate(&connect_tls("c", "tls", &other)).await), ReasonCode::NotAuthorized);
    let off_id = CertIdentity { cn: Some("off".into()), ..CertIdentity::default() };
    assert_eq!(
        denied(&auth.authenticate(&connect_tls("c", "tls", &off_id)).await),
        ReasonCode::NotAuthorized
    );
    let fake_pinned =
        CertIdentity { cn: Some("pinned".into()), sha256: "00".repeat(32), ..CertIdentity::default() };
    assert_eq!(
        denied(&auth.authenticate(&connect_tls("c", "tls", &fake_pinned)).await),
        ReasonCode::NotAuthorized
    );
    // Without a certificate the cert method does not apply: on to password.
    let o = auth.authenticate(&connect("sensor-7", Some("s7"), Some(b"x"))).await;
    assert_eq!(denied(&o), ReasonCode::BadUserNameOrPassword);
}

// ---- SCRAM-SHA-256 ------------------------------------------------------------------------

/// An independent client side of RFC 5802 (ring primitives only, no tern-auth code).
struct ScramClient {
    user: String,
    password: String,
    cnonce: String,
    first_bare: String,
    expected_server_signature: Option<Vec<u8>>,
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data).as_ref().to_vec()
}

impl ScramClient {
    fn new(user: &str, password: &str) -> ScramClient {
        let cnonce = "fyko+d2lbbFgONRv9qkxdawL".to_string();
        let first_bare = format!("n={},r={cnonce}", user.replace('=', "=3D").replace(',', "=2C"));
        ScramClient {
            user: user.into(),
            password: password.into(),
            cnonce,
            first_bare,
            expected_server_signature: None,
        }
    }

    fn first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    fn final_message(&mut self, server_first: &[u8]) -> Vec<u8> {
        let sf = std::str::from_utf8(server_first).unwrap();
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iters = 0u32;
        for attr in sf.split(',') {
            let (k, v) = attr.split_at(2);
            match k {
                "r=" => nonce = v,
                "s=" => salt = B64.decode(v).unwrap(),
                "i=" => iters = v.parse().unwrap(),
                _ => {}
            }
        }
        assert!(
            nonce.starts_with(&self.cnonce) && nonce.len() > self.cnonce.len(),
            "server nonce extends ours"
        );
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iters.try_into().unwrap(),
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, &client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
        let auth_message = format!("{},{sf},{without_proof}", self.first_bare);
        let sig = hmac(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        let server_key = hmac(&salted, b"Server Key");
        self.expected_server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        let _ = &self.user;
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
    }

    fn check_server_final(&self, data: &[u8]) {
        let v = std::str::from_utf8(data).unwrap().strip_prefix("v=").unwrap();
        assert_eq!(
            B64.decode(v).unwrap(),
            self.expected_server_signature.clone().unwrap(),
            "server proves the key"
        );
    }
}

async fn scram_store() -> Arc<MemStore> {
    use tern_broker::store::DirectoryStore as _;
    let store = Arc::new(MemStore::new());
    let v = tokio::task::spawn_blocking(|| scram_verifier("pencil", 4096)).await.unwrap();
    let mut d = device("meter-1", Some("user"));
    d.scram_verifier = Some(v.clone());
    store.add_device(&d).await.unwrap();
    let mut anonymous_name = device("meter-2", None);
    anonymous_name.scram_verifier = Some(v.clone());
    store.add_device(&anonymous_name).await.unwrap();
    let mut off = device("meter-off", Some("off,user"));
    off.scram_verifier = Some(v);
    off.enabled = false;
    store.add_device(&off).await.unwrap();
    store
}

/// Runs a whole exchange; returns the final step.
async fn scram_exchange(auth: &TernAuthenticator, client_id: &str, user: &str, password: &str) -> AuthStep {
    let mut client = ScramClient::new(user, password);
    let info = connect(client_id, None, None);
    let (mut server, step) = auth.start_enhanced("SCRAM-SHA-256", &client.first(), &info).await.unwrap();
    let AuthStep::Continue(server_first) = step else { panic!("expected a challenge, got {step:?}") };
    let last = server.step(&client.final_message(&server_first)).await;
    if let AuthStep::Success(_, Some(data)) = &last {
        client.check_server_final(data);
    }
    // The exchange is over: more data is a protocol error.
    if matches!(last, AuthStep::Success(..)) {
        assert_eq!(server.step(b"again").await, AuthStep::Failure(ReasonCode::ProtocolError));
    }
    last
}

#[tokio::test]
async fn scram_full_exchange_and_failures() {
    let auth = TernAuthenticator::new(&config(&[Method::Password]), scram_store().await).await.unwrap();
    match scram_exchange(&auth, "meter-1", "user", "pencil").await {
        AuthStep::Success(p, Some(_)) => {
            assert_eq!((p.client_id.as_str(), p.username.as_deref()), ("meter-1", Some("user")));
        }
        other => panic!("expected success, got {other:?}"),
    }
    // A device without a user name (SCRAM name = its client id) is named by its client id.
    match scram_exchange(&auth, "meter-2", "meter-2", "pencil").await {
        AuthStep::Success(p, Some(_)) => {
            assert_eq!((p.client_id.as_str(), p.username.as_deref()), ("meter-2", Some("meter-2")));
        }
        other => panic!("expected success, got {other:?}"),
    }
    let bad = AuthStep::Failure(ReasonCode::BadUserNameOrPassword);
    assert_eq!(scram_exchange(&auth, "meter-1", "user", "pencil2").await, bad);
    assert_eq!(scram_exchange(&auth, "ghost", "ghost", "pencil").await, bad, "unknown user");
    let na = AuthStep::Failure(ReasonCode::NotAuthorized);
    assert_eq!(scram_exchange(&auth, "meter-off", "off,user", "pencil").await, na, "disabled (escaped name)");
    assert_eq!(
        scram_exchange(&auth, "other-id", "user", "pencil").await,
        na,
        "client id is not the device's"
    );

    // An unknown user gets a stable salt, as a real one would.
    let info = connect("c", None, None);
    let first = ScramClient::new("ghost", "x").first();
    let salt = |step: AuthStep| match step {
        AuthStep::Continue(d) => String::from_utf8(d).unwrap().split(",s=").nth(1).unwrap().to_string(),
        other => panic!("{other:?}"),
    };
    let a = salt(auth.start_enhanced("SCRAM-SHA-256", &first, &info).await.unwrap().1);
    let b = salt(auth.start_enhanced("SCRAM-SHA-256", &first, &info).await.unwrap().1);
    assert_eq!(a, b);
}

#[tokio::test]
async fn scram_method_and_message_checks() {
    let mut cfg = config(&[Method::Password]);
    cfg.listener_chains.insert("certs-only".into(), vec![Method::Cert]);
    let auth = TernAuthenticator::new(&cfg, scram_store().await).await.unwrap();
    let info = connect("meter-1", None, None);
    let first = ScramClient::new("user", "pencil").first();
    let err = |r: tern_broker::auth::EnhancedStart| r.map(|_| ()).unwrap_err();
    assert_eq!(
        err(auth.start_enhanced("SCRAM-SHA-1", &first, &info).await),
        ReasonCode::BadAuthenticationMethod
    );
    let mut locked = connect("meter-1", None, None);
    locked.listener = "certs-only";
    assert_eq!(
        err(auth.start_enhanced("SCRAM-SHA-256", &first, &locked).await),
        ReasonCode::BadAuthenticationMethod
    );
    assert_eq!(
        err(auth.start_enhanced("SCRAM-SHA-256", b"p=tls-unique,,n=user,r=abc", &info).await),
        ReasonCode::BadUserNameOrPassword,
        "channel binding is not offered"
    );
    // A tampered nonce in the final message fails.
    let (mut server, step) = auth.start_enhanced("SCRAM-SHA-256", &first, &info).await.unwrap();
    let AuthStep::Continue(sf) = step else { panic!() };
    let mut client = ScramClient::new("user", "pencil");
    let fin = String::from_utf8(client.final_message(&sf)).unwrap().replace(",r=fyko", ",r=fykX");
    assert_eq!(server.step(fin.as_bytes()).await, AuthStep::Failure(ReasonCode::BadUserNameOrPassword));
    // Enhanced methods can be switched off.
    let off = TernAuthenticator::new(&AuthConfig { enhanced_methods: vec![], ..cfg }, scram_store().await)
        .await
        .unwrap();
    assert_eq!(
        err(off.start_enhanced("SCRAM-SHA-256", &first, &info).await),
        ReasonCode::BadAuthenticationMethod
    );
}
