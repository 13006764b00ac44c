//! Authorization through the broker's `Authorizer` port: stored ACL rules with placeholders,
//! deny precedence, subscribe filter inclusion (allow and deny), delivery-time checks
//! (`may_receive`), QoS / retain limits, default policy, reloads, cache versioning and failure
//! handling (never fail open).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::MemStore;
use tern_auth::{AclAuthorizer, AclPolicy, AuthConfig};
use tern_broker::auth::{Action, Authorizer, InlineAclRule, Principal};
use tern_broker::store::{AclAction, AclRule, DirectoryStore as _, Permission};
use tern_protocol::QoS;

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

fn rule(permission: Permission, action: AclAction, topic: &str) -> AclRule {
    AclRule {
        id: 0,
        client_id: None,
        username: None,
        permission,
        action,
        topic: topic.into(),
        max_qos: None,
        allow_retain: None,
    }
}

fn allow(action: AclAction, topic: &str) -> AclRule {
    rule(Permission::Allow, action, topic)
}

fn deny(action: AclAction, topic: &str) -> AclRule {
    rule(Permission::Deny, action, topic)
}

fn who(client_id: &str, username: Option<&str>) -> Principal {
    Principal {
        client_id: client_id.into(),
        username: username.map(Into::into),
        expires_at: None,
        inline_acl: None,
        limits: None,
    }
}

async fn authorizer(rules: Vec<AclRule>, policy: AclPolicy) -> (Arc<MemStore>, AclAuthorizer) {
    let store = Arc::new(MemStore::new());
    for r in &rules {
        store.add_acl_rule(r).await.unwrap();
    }
    let cfg = AuthConfig { acl_default: policy, ..AuthConfig::default() };
    let a = AclAuthorizer::new(store.clone(), &cfg);
    a.reload_now().await.unwrap();
    (store, a)
}

fn publish(a: &AclAuthorizer, p: &Principal, topic: &str) -> bool {
    a.check(p, Action::Publish, topic, Q1, false)
}

fn subscribe(a: &AclAuthorizer, p: &Principal, filter: &str) -> bool {
    a.check(p, Action::Subscribe, filter, Q1, false)
}

fn receive(a: &AclAuthorizer, p: &Principal, topic: &str) -> bool {
    a.may_receive(p, topic, Q1)
}

#[tokio::test]
async fn placeholders_select_own_topics_only() {
    let (_, a) = authorizer(
        vec![allow(AclAction::All, "devices/%c/#"), allow(AclAction::Subscribe, "users/%u/inbox/+")],
        AclPolicy::Deny,
    )
    .await;
    let dev = who("dev-1", Some("alice"));
    assert!(publish(&a, &dev, "devices/dev-1/telemetry"));
    assert!(!publish(&a, &dev, "devices/dev-2/telemetry"));
    assert!(subscribe(&a, &dev, "devices/dev-1/#"));
    assert!(!subscribe(&a, &dev, "devices/+/#"), "a wildcard in place of %c is wider than the rule");
    assert!(subscribe(&a, &dev, "users/alice/inbox/+"));
    assert!(!subscribe(&a, &dev, "users/bob/inbox/+"));
    // No user name: %u rules do not apply.
    assert!(!subscribe(&a, &who("dev-1", None), "users//inbox/+"));
    // Client ids or user names with wildcards or separators cannot widen a rule.
    for cid in ["+", "#", "dev-1/x", "a+b"] {
        let p = who(cid, Some("+"));
        assert!(!subscribe(&a, &p, "devices/+/#"), "{cid}");
        assert!(!publish(&a, &p, "devices/dev-2/t"), "{cid}");
        assert!(!subscribe(&a, &p, "users/+/inbox/+"), "{cid}");
    }
    assert!(!publish(&a, &who("dev-1/x", None), "devices/dev-1/x/t"));
}

#[tokio::test]
async fn deny_overrides_allow_and_selectors() {
    let mut for_alice = deny(AclAction::Publish, "plant/valves/#");
    for_alice.username = Some("alice".into());
    let mut for_dev9 = allow(AclAction::Publish, "plant/valves/9");
    for_dev9.client_id = Some("dev-9".into());
    let mut both = allow(AclAction::Publish, "plant/both");
    both.client_id = Some("dev-9".into());
    both.username = Some("carol".into());
    let (_, a) = authorizer(
        vec![
            allow(AclAction::All, "plant/#"),
            deny(AclAction::All, "plant/secret/#"),
            for_alice,
            for_dev9,
            both,
        ],
        AclPolicy::Deny,
    )
    .await;
    let anyone = who("x", None);
    assert!(publish(&a, &anyone, "plant/line1"));
    assert!(!publish(&a, &anyone, "plant/secret/key"));
    assert!(!subscribe(&a, &anyone, "plant/secret/+"), "covered by the deny rule");
    // A subscription that merely could receive a denied topic is granted; the denied topics
    // are refused at delivery.
    assert!(subscribe(&a, &anyone, "plant/#"));
    assert!(!subscribe(&a, &anyone, "+/secret/x"), "not covered by the allow rule plant/#");
    assert!(receive(&a, &anyone, "plant/line1"));
    assert!(!receive(&a, &anyone, "plant/secret/key"));
    assert!(subscribe(&a, &anyone, "plant/line1/#"));
    // Selector rules.
    assert!(!publish(&a, &who("y", Some("alice")), "plant/valves/1"));
    assert!(publish(&a, &who("y", Some("bob")), "plant/valves/1"));
    let dev9_alice = who("dev-9", Some("alice"));
    assert!(!publish(&a, &dev9_alice, "plant/valves/9"), "alice's deny wins over dev-9's allow");
    // Both selectors must match.
    let (_, strict) = authorizer(
        vec![{
            let mut r = allow(AclAction::Publish, "only");
            r.client_id = Some("dev-9".into());
            r.username = Some("carol".into());
            r
        }],
        AclPolicy::Deny,
    )
    .await;
    assert!(publish(&strict, &who("dev-9", Some("carol")), "only"));
    assert!(!publish(&strict, &who("dev-9", None), "only"));
    assert!(!publish(&strict, &who("dev-8", Some("carol")), "only"));
}

#[tokio::test]
async fn subscribe_filter_inclusion() {
    let (_, a) = authorizer(
        vec![allow(AclAction::Subscribe, "a/#"), allow(AclAction::Subscribe, "b/+")],
        AclPolicy::Deny,
    )
    .await;
    let p = who("c", None);
    assert!(subscribe(&a, &p, "a/+/b"));
    assert!(subscribe(&a, &p, "a/#"));
    assert!(subscribe(&a, &p, "a"));
    assert!(subscribe(&a, &p, "b/x"));
    assert!(subscribe(&a, &p, "b/+"));
    assert!(!subscribe(&a, &p, "b/#"), "b/+ does not cover b/#");
    assert!(!subscribe(&a, &p, "#"));
    assert!(!subscribe(&a, &p, "+/x"));
    // The broker passes shared subscriptions' filters without the $share/{group}/ prefix; the
    // authorizer takes what it is given verbatim and does not strip a prefix again.
    assert!(subscribe(&a, &p, "a/x"));
    assert!(!subscribe(&a, &p, "$share/g1/a/x"), "a $-filter: not covered by a/#");
    // Subscribe rules do not grant publish.
    assert!(!publish(&a, &p, "a/x"));
    // Invalid filters are refused.
    assert!(!subscribe(&a, &p, "a/#/x"));
}

#[tokio::test]
async fn broad_subscriptions_with_a_deny_rule_and_default_allow() {
    // The reported case: one deny rule, default allow, a subscription to `#`.
    let (_, a) = authorizer(vec![deny(AclAction::Subscribe, "test/nosubscribe")], AclPolicy::Allow).await;
    let p = who("c", None);
    assert!(subscribe(&a, &p, "#"), "the deny rule only intersects #");
    assert!(subscribe(&a, &p, "test/#"));
    assert!(subscribe(&a, &p, "test/+"));
    assert!(!subscribe(&a, &p, "test/nosubscribe"), "exactly the denied filter");
    assert!(!receive(&a, &p, "test/nosubscribe"), "refused per delivery");
    assert!(receive(&a, &p, "test/other"));
    assert!(receive(&a, &p, "test/nosubscribe/deeper"));
    // Deny rules with wildcards refuse the filters they cover.
    let (_, a) = authorizer(vec![deny(AclAction::All, "plant/+/secret/#")], AclPolicy::Allow).await;
    assert!(!subscribe(&a, &p, "plant/+/secret/#"));
    assert!(!subscribe(&a, &p, "plant/7/secret/+"));
    assert!(!subscribe(&a, &p, "plant/7/secret"));
    assert!(subscribe(&a, &p, "plant/#"));
    assert!(subscribe(&a, &p, "plant/+/+"));
    assert!(!receive(&a, &p, "plant/7/secret"));
    assert!(!receive(&a, &p, "plant/7/secret/key"));
    assert!(receive(&a, &p, "plant/7/public"));
    assert!(!publish(&a, &p, "plant/7/secret/key"), "action all: publish is denied too");
}

#[tokio::test]
async fn broad_subscriptions_with_default_deny() {
    let (_, a) = authorizer(vec![allow(AclAction::Subscribe, "sensors/#")], AclPolicy::Deny).await;
    let p = who("c", None);
    assert!(!subscribe(&a, &p, "#"), "no allow rule covers #");
    assert!(!subscribe(&a, &p, "+/+/t"));
    assert!(subscribe(&a, &p, "sensors/+/t"));
    assert!(subscribe(&a, &p, "sensors/#"));
    assert!(receive(&a, &p, "sensors/1/t"));
    assert!(!receive(&a, &p, "actuators/1/t"), "default deny at delivery too");
}

#[tokio::test]
async fn delivery_checks_match_names_and_agree_with_subscribe_checks() {
    let mut limited = allow(AclAction::Subscribe, "meters/#");
    limited.max_qos = Some(1);
    let mut own = allow(AclAction::Subscribe, "d/%c/#");
    own.username = Some("alice".into());
    let (_, a) = authorizer(
        vec![
            limited,
            own,
            allow(AclAction::Subscribe, "$share/#"),
            deny(AclAction::Subscribe, "meters/private/+"),
            allow(AclAction::Publish, "pub/#"),
        ],
        AclPolicy::Deny,
    )
    .await;
    let alice = who("dev-1", Some("alice"));
    // max_qos applies to the QoS of the delivery.
    assert!(a.may_receive(&alice, "meters/1", Q0));
    assert!(a.may_receive(&alice, "meters/1", Q1));
    assert!(!a.may_receive(&alice, "meters/1", Q2));
    assert!(!a.may_receive(&alice, "meters/private/1", Q0));
    // Placeholders and selectors.
    assert!(receive(&a, &alice, "d/dev-1/x"));
    assert!(!receive(&a, &alice, "d/dev-2/x"));
    assert!(!receive(&a, &who("dev-1", Some("bob")), "d/dev-1/x"));
    // Publish rules do not let anyone receive.
    assert!(!receive(&a, &alice, "pub/x"));
    // A topic name is never parsed as a filter: `$share/...` stays a name.
    assert!(receive(&a, &alice, "$share/g/x"));
    assert!(!receive(&a, &alice, "g/x"));
    // The broker caches one bit per (topic, action, QoS) for both questions: they agree on
    // every plain name.
    for p in [alice.clone(), who("dev-1", None), who("+", Some("a/b"))] {
        for name in ["meters/1", "meters/private/1", "d/dev-1/x", "d/+/x", "$share/g/x", "pub/x", "x"] {
            for q in [Q0, Q1, Q2] {
                if name.contains('+') {
                    continue;
                }
                assert_eq!(
                    a.check(&p, Action::Subscribe, name, q, false),
                    a.may_receive(&p, name, q),
                    "{name} at {q:?} for {p:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn share_prefix_is_not_parsed_twice() {
    // The broker routes `$share/g/$share/h/x` in group g as `$share/h/x` and asks about that;
    // the authorizer must check `$share/h/x`, not `x`.
    let (_, a) = authorizer(vec![allow(AclAction::Subscribe, "x")], AclPolicy::Deny).await;
    let p = who("c", None);
    assert!(subscribe(&a, &p, "x"));
    assert!(!subscribe(&a, &p, "$share/h/x"));
    let (_, a) = authorizer(vec![deny(AclAction::Subscribe, "x")], AclPolicy::Allow).await;
    assert!(!subscribe(&a, &p, "x"));
    assert!(subscribe(&a, &p, "$share/h/x"), "not the denied filter x");
}

#[tokio::test]
async fn inline_rules_at_subscribe_and_delivery() {
    let (_, a) = authorizer(vec![deny(AclAction::Subscribe, "fleet/#")], AclPolicy::Deny).await;
    let rule = |allow: bool, topic: &str| InlineAclRule {
        allow,
        action: Action::Subscribe,
        topic: topic.into(),
        max_qos: None,
        retain: None,
    };
    let mut p = who("dev-1", Some("alice"));
    p.inline_acl = Some(Arc::from(vec![rule(true, "#"), rule(false, "secret/+")]));
    // Inline rules come first: their allow of # decides before the stored deny of fleet/#.
    assert!(subscribe(&a, &p, "#"), "the inline deny only intersects #");
    assert!(subscribe(&a, &p, "fleet/x"));
    assert!(!subscribe(&a, &p, "secret/+"), "covered by the inline deny");
    assert!(!receive(&a, &p, "secret/key"));
    assert!(receive(&a, &p, "fleet/1"));
    // Without inline rules the stored ones decide.
    let plain = who("dev-1", Some("alice"));
    assert!(!subscribe(&a, &plain, "#"));
    assert!(!receive(&a, &plain, "fleet/1"));
}

#[tokio::test]
async fn qos_and_retain_limits() {
    let mut limited = allow(AclAction::All, "meters/#");
    limited.max_qos = Some(1);
    limited.allow_retain = Some(false);
    let (_, a) = authorizer(vec![limited, allow(AclAction::Publish, "meters/vip/#")], AclPolicy::Allow).await;
    let p = who("c", None);
    assert!(a.check(&p, Action::Publish, "meters/1", Q0, false));
    assert!(a.check(&p, Action::Publish, "meters/1", Q1, false));
    assert!(!a.check(&p, Action::Publish, "meters/1", Q2, false), "above max_qos, even with default allow");
    assert!(!a.check(&p, Action::Publish, "meters/1", Q1, true), "retain refused");
    assert!(a.check(&p, Action::Publish, "meters/vip/1", Q2, true), "another allow rule grants it");
    assert!(a.check(&p, Action::Subscribe, "meters/+", Q1, false));
    assert!(!a.check(&p, Action::Subscribe, "meters/+", Q2, false));
    // No rule matches: default policy.
    assert!(a.check(&p, Action::Publish, "other", Q2, true));
}

#[tokio::test]
async fn default_policy_and_dollar_topics() {
    let (_, deny_all) = authorizer(vec![allow(AclAction::All, "#")], AclPolicy::Deny).await;
    let p = who("c", None);
    assert!(publish(&deny_all, &p, "anything/at/all"));
    assert!(!subscribe(&deny_all, &p, "$SYS/#"), "# does not cover $ topics");
    let (_, open) = authorizer(vec![], AclPolicy::Allow).await;
    assert!(publish(&open, &p, "x"));
    let (_, closed) = authorizer(vec![], AclPolicy::Deny).await;
    assert!(!publish(&closed, &p, "x"));
}

#[tokio::test]
async fn reload_bumps_version_and_changes_decisions() {
    let (store, a) = authorizer(vec![allow(AclAction::Publish, "a")], AclPolicy::Deny).await;
    let p = who("c", None);
    let v1 = a.version();
    assert!(publish(&a, &p, "a") && !publish(&a, &p, "b"));
    assert!(!a.poll().await.unwrap(), "nothing changed: no reload");
    assert_eq!(a.version(), v1);
    let id = store.add_acl_rule(&allow(AclAction::Publish, "b")).await.unwrap();
    assert!(!publish(&a, &p, "b"), "not reloaded yet");
    assert!(a.poll().await.unwrap());
    let v2 = a.version();
    assert!(v2 > v1, "connections drop their caches");
    assert!(publish(&a, &p, "b"));
    store.remove_acl_rule(id).await.unwrap();
    a.reload_now().await.unwrap();
    assert!(a.version() > v2);
    assert!(!publish(&a, &p, "b"));
}

#[tokio::test]
async fn failed_reload_keeps_the_last_good_rules() {
    let (store, a) = authorizer(vec![allow(AclAction::Publish, "a")], AclPolicy::Deny).await;
    let p = who("c", None);
    let v = a.version();
    store.add_acl_rule(&deny(AclAction::Publish, "a")).await.unwrap();
    store.set_down(true);
    assert!(a.poll().await.is_err());
    assert!(a.reload_now().await.is_err());
    assert_eq!(a.version(), v);
    assert!(publish(&a, &p, "a"), "old rules still in force, not fail-open and not fail-closed");
    assert!(!publish(&a, &p, "b"));
    // An invalid stored rule refuses the whole new set too.
    store.set_down(false);
    store.add_acl_rule(&allow(AclAction::All, "bad/#/rule")).await.unwrap();
    assert!(a.reload_now().await.is_err());
    assert_eq!(a.version(), v);
    assert!(publish(&a, &p, "a"));
    assert_eq!(a.rule_count(), 1);
}

#[tokio::test]
async fn first_load_failure_denies_everything_until_a_load_succeeds() {
    let store = Arc::new(MemStore::new());
    store.add_acl_rule(&allow(AclAction::All, "#")).await.unwrap();
    store.set_down(true);
    let cfg = AuthConfig { acl_default: AclPolicy::Allow, acl_reload_secs: 1, ..AuthConfig::default() };
    let a = AclAuthorizer::start(store.clone(), &cfg).await;
    let p = who("c", None);
    assert!(!a.is_loaded());
    assert!(!publish(&a, &p, "x"), "even with default allow, nothing is granted before a load");
    assert!(!subscribe(&a, &p, "x"));
    assert!(!receive(&a, &p, "x"));
    let v0 = a.version();
    store.set_down(false);
    // The background poll recovers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !a.is_loaded() {
        assert!(tokio::time::Instant::now() < deadline, "the poller did not load the rules");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.version() > v0);
    assert!(publish(&a, &p, "x"));
}

#[tokio::test]
async fn poller_picks_up_changes_and_stops_when_dropped() {
    let store = Arc::new(MemStore::new());
    let cfg = AuthConfig { acl_reload_secs: 1, ..AuthConfig::default() };
    let a = AclAuthorizer::start(store.clone(), &cfg).await;
    let p = who("c", None);
    assert!(!publish(&a, &p, "t"));
    store.add_acl_rule(&allow(AclAction::Publish, "t")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !publish(&a, &p, "t") {
        assert!(tokio::time::Instant::now() < deadline, "the poller did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let weak = Arc::downgrade(&a);
    drop(a);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(weak.upgrade().is_none(), "the poller holds no strong reference");
}

/// With no rule and an allow default the broker may skip every lookup; a rule, a deny
/// default or inline rules turn that off.
#[tokio::test]
async fn permissive_only_without_rules_and_with_an_allow_default() {
    let (store, a) = authorizer(vec![], AclPolicy::Allow).await;
    assert!(a.is_permissive());
    assert!(a.is_permissive_for(&who("c", None)));
    let mut jwt = who("c", Some("u"));
    jwt.inline_acl = Some(Arc::from(vec![InlineAclRule {
        allow: false,
        action: Action::Subscribe,
        topic: "x".into(),
        max_qos: None,
        retain: None,
    }]));
    assert!(!a.is_permissive_for(&jwt), "inline rules are checked");
    store.add_acl_rule(&deny(AclAction::Subscribe, "secret/#")).await.unwrap();
    a.reload_now().await.unwrap();
    assert!(!a.is_permissive(), "a stored rule is checked");
    let (_, d) = authorizer(vec![], AclPolicy::Deny).await;
    assert!(!d.is_permissive());
}
