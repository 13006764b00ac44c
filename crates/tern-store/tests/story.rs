//! The storage story (convention 9): every chapter runs against both backends, SQLite in a
//! temporary directory and PostgreSQL in a fresh database of `TERN_TEST_POSTGRES_URL` (started
//! with scripts/postgres.sh when unset outside CI; unset in CI fails).
//!
//! `cargo test -p tern-store --test story` runs it; each chapter is `<chapter>::sqlite` and
//! `<chapter>::postgres`.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tern_broker::store::{
    AclAction, AclRule, AdminUser, ApiKey, AuditEntry, AuditQuery, Device, DeviceLimits, DeviceQuery,
    DirectoryStore, Permission, RefreshToken, Snapshot, Store, StoreError, StoreOp, StoredDelivery,
    StoredMessage, StoredSession, StoredSubscription,
};
use tern_store::{Db, StoreOptions};

use support::{Model, Rng, TestDb, delivery, message, session, subscription};

/// Declares `$chapter::sqlite` and `$chapter::postgres`, each running `$chapter(&TestDb)`.
macro_rules! chapter {
    ($($chapter:ident),* $(,)?) => {$(
        mod $chapter {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let t = crate::support::TestDb::sqlite().await;
                super::$chapter(&t).await;
                t.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let t = crate::support::TestDb::postgres().await;
                super::$chapter(&t).await;
                t.finish().await;
            }
        }
    )*};
}

chapter!(
    snapshot_round_trip,
    upserts_and_idempotent_deletes,
    delivery_state_and_acks,
    delete_session_takes_its_rows,
    sweep_removes_orphaned_and_expired,
    ordering_inside_one_batch,
    random_batches_match_the_model,
    failing_batch_rolls_back,
    concurrent_writers,
    reopen_and_migrate,
    devices,
    acl_rules,
    admin_users_and_audit_log,
    device_labels,
    device_limits,
    device_queries,
    bad_labels_are_decode_errors,
    acl_rule_updates,
    admin_user_accounts,
    api_keys,
    refresh_tokens,
    settings,
    audit_queries,
    cluster_scoped_loads,
);

async fn apply(db: &Db, ops: Vec<StoreOp>) {
    db.apply(&ops).await.unwrap_or_else(|e| panic!("apply failed: {e}\nops: {ops:#?}"));
}

async fn load(db: &Db) -> Snapshot {
    db.load().await.expect("load")
}

// --- Broker state ---------------------------------------------------------------------------

/// What goes in comes back out, exactly, in the documented order.
async fn snapshot_round_trip(t: &TestDb) {
    let db = &t.db;
    assert!(matches!(db.backend(), "sqlite" | "postgres"));
    db.ping().await.expect("ping");
    assert_eq!(load(db).await, Snapshot::default(), "a new database is empty");

    let full = StoredSession {
        client_id: "sensor-ü/1".into(),
        expiry_interval: u32::MAX,
        protocol: 4,
        disconnected_at: Some(1_700_000_123_456),
        will: Some(vec![0, 1, 2, 255]),
        will_at: Some(1_700_000_200_000),
        last_seq: i64::MAX,
        owner: Some("operator-ü".into()),
    };
    let plain = session("alpha");
    assert_eq!(plain.owner, None, "an anonymous session");
    let big = StoredMessage {
        id: 7,
        topic: "plant/ü/temp".into(),
        payload: (0..=255u8).cycle().take(256 * 1024).collect(),
        qos: 2,
        retain: true,
        properties: vec![1, 2, 3],
        expires_at: Some(i64::MAX),
        created_at: 1,
    };
    let empty = StoredMessage { payload: Vec::new(), ..message(3, "empty") };
    let unreferenced = message(99, "nobody");
    let subs = [
        StoredSubscription {
            client_id: "alpha".into(),
            filter: "$share/g/a/+/#".into(),
            options: 0b0010_1110,
            subscription_id: Some(268_435_455),
        },
        subscription("alpha", "a/b"),
        StoredSubscription { subscription_id: Some(1), ..subscription("sensor-ü/1", "#") },
    ];
    let d_big = StoredDelivery {
        qos: 2,
        retain: true,
        subscription_ids: vec![1, 268_435_455, u32::MAX],
        state: 1,
        ..delivery("alpha", 2, 7)
    };
    let d_empty = delivery("alpha", 1, 3);
    let d_other = delivery("sensor-ü/1", 10, 7);
    apply(
        db,
        vec![
            StoreOp::PutSession(full.clone()),
            StoreOp::PutSession(plain.clone()),
            StoreOp::PutMessage(big.clone()),
            StoreOp::PutMessage(empty.clone()),
            StoreOp::PutMessage(unreferenced.clone()),
            StoreOp::PutSubscription(subs[0].clone()),
            StoreOp::PutSubscription(subs[1].clone()),
            StoreOp::PutSubscription(subs[2].clone()),
            StoreOp::PutDelivery(d_big.clone()),
            StoreOp::PutDelivery(d_empty.clone()),
            StoreOp::PutDelivery(d_other.clone()),
            StoreOp::PutInbound { client_id: "alpha".into(), packet_id: 65535 },
            StoreOp::PutInbound { client_id: "alpha".into(), packet_id: 1 },
            StoreOp::PutRetained {
                topic: "plant/ü/temp".into(),
                message_id: 7,
                client_id: Some("dev-1".into()),
            },
            StoreOp::PutRetained { topic: "empty".into(), message_id: 3, client_id: None },
        ],
    )
    .await;

    let snapshot = load(db).await;
    assert_eq!(snapshot.sessions, vec![plain, full]);
    assert_eq!(snapshot.subscriptions, vec![subs[0].clone(), subs[1].clone(), subs[2].clone()]);
    assert_eq!(snapshot.deliveries, vec![d_empty, d_big, d_other], "ordered by (client id, seq)");
    assert_eq!(snapshot.inbound, vec![("alpha".to_owned(), 1), ("alpha".to_owned(), 65535)]);
    assert_eq!(
        snapshot.retained,
        vec![("empty".to_owned(), 3, None), ("plant/ü/temp".to_owned(), 7, Some("dev-1".to_owned()))]
    );
    assert_eq!(snapshot.messages, vec![empty, big], "only referenced messages, ordered by id");
}

/// Puts replace, `PutMessage` keeps the first body, deletes of absent rows are no-ops.
async fn upserts_and_idempotent_deletes(t: &TestDb) {
    let db = &t.db;
    apply(
        db,
        vec![
            StoreOp::PutSession(session("c")),
            StoreOp::PutSubscription(subscription("c", "x/#")),
            StoreOp::PutMessage(message(1, "first")),
            StoreOp::PutDelivery(delivery("c", 1, 1)),
            StoreOp::PutRetained { topic: "r".into(), message_id: 1, client_id: None },
            StoreOp::PutInbound { client_id: "c".into(), packet_id: 5 },
        ],
    )
    .await;
    let updated = StoredSession {
        last_seq: 42,
        disconnected_at: Some(5),
        will: Some(vec![9]),
        owner: Some("user-c".into()),
        ..session("c")
    };
    let resubscribed =
        StoredSubscription { options: 2, subscription_id: Some(9), ..subscription("c", "x/#") };
    apply(
        db,
        vec![
            StoreOp::PutSession(updated.clone()),
            StoreOp::PutSubscription(resubscribed.clone()),
            StoreOp::PutMessage(message(1, "second body for the same id")),
            StoreOp::PutMessage(message(2, "new retained")),
            StoreOp::PutRetained { topic: "r".into(), message_id: 2, client_id: None },
            StoreOp::PutInbound { client_id: "c".into(), packet_id: 5 },
            StoreOp::DeleteSubscription { client_id: "c".into(), filter: "absent".into() },
            StoreOp::DeleteDelivery { client_id: "c".into(), seq: 999 },
            StoreOp::SetDeliveryState { client_id: "c".into(), seq: 999, state: 1 },
            StoreOp::DeleteInbound { client_id: "c".into(), packet_id: 6 },
            StoreOp::DeleteRetained { topic: "absent".into() },
            StoreOp::DeleteSession { client_id: "absent".into() },
        ],
    )
    .await;
    let s = load(db).await;
    assert_eq!(s.sessions, vec![updated.clone()], "PutSession replaces the row");
    assert_eq!(s.subscriptions, vec![resubscribed], "PutSubscription replaces the row");
    assert_eq!(s.deliveries, vec![delivery("c", 1, 1)], "re-putting the session keeps its deliveries");
    assert_eq!(s.inbound, vec![("c".to_owned(), 5)]);
    assert_eq!(s.retained, vec![("r".to_owned(), 2, None)], "PutRetained replaces the entry");
    assert_eq!(s.messages, vec![message(1, "first"), message(2, "new retained")], "the first body wins");
    apply(db, vec![StoreOp::PutSession(StoredSession { owner: None, ..updated.clone() })]).await;
    assert_eq!(load(db).await.sessions[0].owner, None, "PutSession replaces the owner with None too");
    apply(db, vec![StoreOp::PutSession(updated)]).await;

    apply(
        db,
        vec![
            StoreOp::DeleteRetained { topic: "r".into() },
            StoreOp::DeleteSubscription { client_id: "c".into(), filter: "x/#".into() },
            StoreOp::DeleteInbound { client_id: "c".into(), packet_id: 5 },
        ],
    )
    .await;
    let s = load(db).await;
    assert!(s.retained.is_empty() && s.subscriptions.is_empty() && s.inbound.is_empty());
    assert_eq!(s.messages, vec![message(1, "first")], "message 2 is no longer referenced");
    db.apply(&[]).await.expect("an empty batch is fine");
}

/// The QoS 1/2 outbound life: queued, PUBREC received, acknowledged.
async fn delivery_state_and_acks(t: &TestDb) {
    let db = &t.db;
    let mut ops = vec![StoreOp::PutSession(session("s")), StoreOp::PutMessage(message(1, "t"))];
    ops.extend((1..=5).map(|seq| StoreOp::PutDelivery(delivery("s", seq, 1))));
    apply(db, ops).await;
    apply(
        db,
        vec![
            StoreOp::SetDeliveryState { client_id: "s".into(), seq: 2, state: 1 },
            StoreOp::SetDeliveryState { client_id: "s".into(), seq: 3, state: 1 },
            StoreOp::DeleteDelivery { client_id: "s".into(), seq: 1 },
        ],
    )
    .await;
    let s = load(db).await;
    let states: Vec<(i64, u8)> = s.deliveries.iter().map(|d| (d.seq, d.state)).collect();
    assert_eq!(states, vec![(2, 1), (3, 1), (4, 0), (5, 0)]);
    apply(
        db,
        vec![
            StoreOp::DeleteDelivery { client_id: "s".into(), seq: 2 },
            StoreOp::DeleteDelivery { client_id: "s".into(), seq: 3 },
            StoreOp::DeleteDelivery { client_id: "s".into(), seq: 4 },
            StoreOp::DeleteDelivery { client_id: "s".into(), seq: 5 },
        ],
    )
    .await;
    let s = load(db).await;
    assert!(s.deliveries.is_empty());
    assert!(s.messages.is_empty(), "an unreferenced body is not loaded");
    assert_eq!(s.sessions.len(), 1);
}

/// `DeleteSession` removes the session's subscriptions, deliveries and inbound ids, and
/// nothing of other sessions.
async fn delete_session_takes_its_rows(t: &TestDb) {
    let db = &t.db;
    let mut ops = vec![StoreOp::PutMessage(message(1, "t"))];
    for c in ["gone", "kept"] {
        ops.push(StoreOp::PutSession(session(c)));
        ops.push(StoreOp::PutSubscription(subscription(c, "t")));
        ops.push(StoreOp::PutDelivery(delivery(c, 1, 1)));
        ops.push(StoreOp::PutInbound { client_id: c.into(), packet_id: 7 });
    }
    ops.push(StoreOp::PutRetained { topic: "t".into(), message_id: 1, client_id: None });
    apply(db, ops).await;
    apply(db, vec![StoreOp::DeleteSession { client_id: "gone".into() }]).await;
    let s = load(db).await;
    assert_eq!(s.sessions, vec![session("kept")]);
    assert_eq!(s.subscriptions, vec![subscription("kept", "t")]);
    assert_eq!(s.deliveries, vec![delivery("kept", 1, 1)]);
    assert_eq!(s.inbound, vec![("kept".to_owned(), 7)]);
    assert_eq!(s.retained, vec![("t".to_owned(), 1, None)], "retained entries belong to no session");
}

/// `sweep` deletes orphaned and expired rows, never referenced live ones, and counts them.
async fn sweep_removes_orphaned_and_expired(t: &TestDb) {
    let db = &t.db;
    let now = 1_800_000_000_000;
    let expired = |id, topic| StoredMessage { expires_at: Some(now - 1), ..message(id, topic) };
    let live_until_now = StoredMessage { expires_at: Some(now), ..message(5, "expires exactly now") };
    apply(
        db,
        vec![
            StoreOp::PutSession(session("s")),
            StoreOp::PutMessage(message(1, "orphan")),
            StoreOp::PutMessage(expired(2, "expired, queued")),
            StoreOp::PutMessage(expired(3, "expired, retained")),
            StoreOp::PutMessage(expired(4, "expired, PUBREL owed")),
            StoreOp::PutMessage(live_until_now.clone()),
            StoreOp::PutMessage(message(6, "live, queued")),
            StoreOp::PutMessage(message(7, "live, retained")),
            StoreOp::PutDelivery(delivery("s", 1, 2)),
            StoreOp::PutDelivery(StoredDelivery { state: 1, ..delivery("s", 2, 4) }),
            StoreOp::PutDelivery(delivery("s", 3, 5)),
            StoreOp::PutDelivery(delivery("s", 4, 6)),
            StoreOp::PutRetained { topic: "expired".into(), message_id: 3, client_id: None },
            StoreOp::PutRetained { topic: "live".into(), message_id: 7, client_id: None },
        ],
    )
    .await;
    let before = load(db).await;
    // Deleted: delivery s/1, retained "expired", messages 1, 2, 3.
    assert_eq!(db.sweep(now).await.expect("sweep"), 5);
    let after = load(db).await;
    let seqs: Vec<i64> = after.deliveries.iter().map(|d| d.seq).collect();
    assert_eq!(seqs, vec![2, 3, 4], "a delivery in state 1 stays even if its message expired");
    assert_eq!(after.retained, vec![("live".to_owned(), 7, None)]);
    let ids: Vec<i64> = after.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![4, 5, 6, 7]);
    assert_eq!(after.sessions, before.sessions);
    assert_eq!(db.sweep(now).await.expect("sweep"), 0, "nothing left to sweep");

    // Rows of a session that no longer exists (e.g. a delivery that raced DeleteSession).
    apply(
        db,
        vec![
            StoreOp::DeleteSession { client_id: "s".into() },
            StoreOp::PutDelivery(delivery("s", 9, 6)),
            StoreOp::PutSubscription(subscription("s", "late")),
            StoreOp::PutInbound { client_id: "s".into(), packet_id: 1 },
        ],
    )
    .await;
    assert_eq!(load(db).await.deliveries.len(), 1);
    // The three orphans, then messages 4, 5, 6 (no longer referenced).
    assert_eq!(db.sweep(now).await.expect("sweep"), 6);
    let s = load(db).await;
    assert!(s.deliveries.is_empty() && s.subscriptions.is_empty() && s.inbound.is_empty());
    assert_eq!(s.messages.iter().map(|m| m.id).collect::<Vec<_>>(), vec![7]);
}

/// A batch is applied in order: later operations on the same key win.
async fn ordering_inside_one_batch(t: &TestDb) {
    let db = &t.db;
    let mut ops = vec![StoreOp::PutSession(session("o")), StoreOp::PutMessage(message(1, "a"))];
    // put, delete -> gone
    ops.push(StoreOp::PutDelivery(delivery("o", 1, 1)));
    ops.push(StoreOp::DeleteDelivery { client_id: "o".into(), seq: 1 });
    // put, set state -> state 1
    ops.push(StoreOp::PutDelivery(delivery("o", 2, 1)));
    ops.push(StoreOp::SetDeliveryState { client_id: "o".into(), seq: 2, state: 1 });
    // put, delete, put -> present (second body)
    ops.push(StoreOp::PutDelivery(delivery("o", 3, 1)));
    ops.push(StoreOp::DeleteDelivery { client_id: "o".into(), seq: 3 });
    ops.push(StoreOp::PutMessage(message(2, "b")));
    ops.push(StoreOp::PutDelivery(delivery("o", 3, 2)));
    // set state on a missing row, then put -> the put's state
    ops.push(StoreOp::SetDeliveryState { client_id: "o".into(), seq: 4, state: 1 });
    ops.push(StoreOp::PutDelivery(delivery("o", 4, 1)));
    // put retained, delete retained, put again
    ops.push(StoreOp::PutRetained { topic: "r".into(), message_id: 1, client_id: None });
    ops.push(StoreOp::DeleteRetained { topic: "r".into() });
    ops.push(StoreOp::PutRetained { topic: "r".into(), message_id: 2, client_id: None });
    // inbound put, delete
    ops.push(StoreOp::PutInbound { client_id: "o".into(), packet_id: 3 });
    ops.push(StoreOp::DeleteInbound { client_id: "o".into(), packet_id: 3 });
    // a delivery, then the session is deleted and created again: the delivery is gone
    ops.push(StoreOp::PutSession(session("p")));
    ops.push(StoreOp::PutDelivery(delivery("p", 1, 1)));
    ops.push(StoreOp::DeleteSession { client_id: "p".into() });
    ops.push(StoreOp::PutSession(StoredSession { last_seq: 1, ..session("p") }));
    ops.push(StoreOp::PutDelivery(delivery("p", 2, 2)));
    apply(db, ops).await;

    let s = load(db).await;
    let got: Vec<(String, i64, i64, u8)> =
        s.deliveries.iter().map(|d| (d.client_id.clone(), d.seq, d.message_id, d.state)).collect();
    assert_eq!(
        got,
        vec![
            ("o".to_owned(), 2, 1, 1),
            ("o".to_owned(), 3, 2, 0),
            ("o".to_owned(), 4, 1, 0),
            ("p".to_owned(), 2, 2, 0),
        ]
    );
    assert_eq!(s.retained, vec![("r".to_owned(), 2, None)]);
    assert!(s.inbound.is_empty());
    assert_eq!(s.sessions[1], StoredSession { last_seq: 1, ..session("p") });

    // A delivery may come before its message and its session in the batch (the store enforces
    // no references; the broker puts a body in the same batch as what refers to it).
    apply(
        db,
        vec![
            StoreOp::PutDelivery(delivery("q", 1, 3)),
            StoreOp::PutRetained { topic: "q".into(), message_id: 3, client_id: None },
            StoreOp::PutMessage(message(3, "late body")),
            StoreOp::PutSession(session("q")),
        ],
    )
    .await;
    assert!(load(db).await.deliveries.iter().any(|d| d.client_id == "q"));
}

/// Random batches (with many operations on the same keys) end in the state of the in-memory
/// model; sweeps delete what the model deletes.
async fn random_batches_match_the_model(t: &TestDb) {
    let db = &t.db;
    let mut rng = Rng::new(0x7e57_5eed);
    let mut model = Model::default();
    let clients = ["a", "b", "c"];
    let topics = ["t/1", "t/2", "t/3"];
    let mut next_message = 1i64;
    for batch in 0..60 {
        let mut ops = Vec::new();
        let len = 1 + rng.below(if batch % 10 == 0 { 400 } else { 40 });
        for _ in 0..len {
            let client = rng.pick(&clients).to_owned();
            let seq = rng.below(6) as i64;
            // Every third batch has only the hot operations (PostgreSQL runs those as one
            // statement); the others mix in everything.
            let kind = match rng.below(4) {
                _ if batch % 3 != 0 => rng.below(16),
                0 => 4,
                1 if !model.messages.is_empty() => 6,
                1 => 4,
                2 => 9,
                _ => 11,
            };
            let op = match kind {
                0 => StoreOp::PutSession(StoredSession {
                    last_seq: rng.below(100) as i64,
                    owner: match rng.below(3) {
                        0 => None,
                        n => Some(format!("user-{n}")),
                    },
                    ..session(&client)
                }),
                1 if rng.below(3) == 0 => StoreOp::DeleteSession { client_id: client },
                2 => StoreOp::PutSubscription(StoredSubscription {
                    options: rng.below(3) as u8,
                    ..subscription(&client, rng.pick(&topics))
                }),
                3 => StoreOp::DeleteSubscription { client_id: client, filter: rng.pick(&topics).to_owned() },
                4 | 5 => {
                    // Sometimes a second body for an existing id (must be ignored).
                    let id = if next_message > 1 && rng.below(4) == 0 {
                        1 + rng.below(next_message as u64 - 1) as i64
                    } else {
                        next_message += 1;
                        next_message - 1
                    };
                    let expires_at = (rng.below(3) == 0).then(|| 1000 + rng.below(1000) as i64);
                    StoreOp::PutMessage(StoredMessage {
                        expires_at,
                        payload: vec![rng.below(256) as u8; rng.below(64) as usize],
                        ..message(id, rng.pick(&topics))
                    })
                }
                6..=8 if !model.messages.is_empty() => {
                    let ids: Vec<i64> = model.messages.keys().copied().collect();
                    StoreOp::PutDelivery(StoredDelivery {
                        state: rng.below(2) as u8,
                        subscription_ids: (0..rng.below(3)).map(|i| i as u32 + 1).collect(),
                        ..delivery(&client, seq, rng.pick(&ids))
                    })
                }
                9 | 10 => StoreOp::SetDeliveryState { client_id: client, seq, state: rng.below(2) as u8 },
                11 | 12 => StoreOp::DeleteDelivery { client_id: client, seq },
                13 => StoreOp::PutInbound { client_id: client, packet_id: rng.below(4) as u16 },
                14 => StoreOp::DeleteInbound { client_id: client, packet_id: rng.below(4) as u16 },
                15 if !model.messages.is_empty() => {
                    let ids: Vec<i64> = model.messages.keys().copied().collect();
                    StoreOp::PutRetained {
                        topic: rng.pick(&topics).to_owned(),
                        message_id: rng.pick(&ids),
                        client_id: rng.pick(&[None, Some("dev-1")]).map(str::to_owned),
                    }
                }
                _ => StoreOp::DeleteRetained { topic: rng.pick(&topics).to_owned() },
            };
            model.apply(&op);
            ops.push(op);
        }
        apply(db, ops).await;
        assert_eq!(load(db).await, model.snapshot(), "after batch {batch}");
        if batch % 7 == 6 {
            let now = 1000 + rng.below(1200) as i64;
            let expected = model.sweep(now);
            assert_eq!(db.sweep(now).await.expect("sweep"), expected, "sweep({now}) after batch {batch}");
            assert_eq!(load(db).await, model.snapshot(), "after the sweep after batch {batch}");
        }
    }
}

/// A batch that fails leaves nothing behind, and the next batch works.
async fn failing_batch_rolls_back(t: &TestDb) {
    let db = &t.db;
    apply(db, vec![StoreOp::PutSession(session("keep")), StoreOp::PutMessage(message(1, "t"))]).await;
    let before = load(db).await;

    // A value the schema rejects (QoS 3), after valid operations.
    let bad_qos = vec![
        StoreOp::PutSession(session("new")),
        StoreOp::PutMessage(message(2, "t")),
        StoreOp::PutDelivery(delivery("keep", 1, 2)),
        StoreOp::DeleteSession { client_id: "keep".into() },
        StoreOp::PutMessage(StoredMessage { qos: 3, ..message(3, "bad") }),
        StoreOp::PutRetained { topic: "t".into(), message_id: 2, client_id: None },
    ];
    let err = db.apply(&bad_qos).await.expect_err("QoS 3 violates a CHECK constraint");
    assert!(matches!(err, StoreError::Other(_)), "{err:?}");
    assert_eq!(load(db).await, before, "nothing of the failed batch is visible");

    // A bad delivery as the only delivery of its batch (the single-row statement).
    let bad_delivery = vec![
        StoreOp::PutSession(session("new")),
        StoreOp::PutMessage(message(2, "t")),
        StoreOp::PutDelivery(StoredDelivery { qos: 3, ..delivery("new", 1, 2) }),
        StoreOp::PutInbound { client_id: "new".into(), packet_id: 1 },
    ];
    let err = db.apply(&bad_delivery).await.expect_err("QoS 3 violates a CHECK constraint");
    assert!(matches!(err, StoreError::Other(_)), "{err:?}");
    assert_eq!(load(db).await, before, "nothing of the failed batch is visible");

    // Many rows in one batch, the bad one last (PostgreSQL's multi-row path).
    let mut many: Vec<StoreOp> = (10..500).map(|id| StoreOp::PutMessage(message(id, "bulk"))).collect();
    many.extend((10..500).map(|id| StoreOp::PutDelivery(delivery("keep", id, id))));
    many.push(StoreOp::PutDelivery(StoredDelivery { qos: 7, ..delivery("keep", 9999, 10) }));
    assert!(matches!(db.apply(&many).await, Err(StoreError::Other(_))));
    assert_eq!(load(db).await, before);

    apply(db, vec![StoreOp::PutDelivery(delivery("keep", 1, 1))]).await;
    assert_eq!(load(db).await.deliveries, vec![delivery("keep", 1, 1)], "the pool still works");
}

/// Batches from several tasks at once all commit (SQLite writers wait for the lock).
async fn concurrent_writers(t: &TestDb) {
    let mut tasks = Vec::new();
    for w in 0..6i64 {
        let db = t.db.clone();
        tasks.push(tokio::spawn(async move {
            let client = format!("writer-{w}");
            db.apply(&[StoreOp::PutSession(session(&client))]).await?;
            for b in 0..15i64 {
                let mut ops = Vec::new();
                for i in 0..20i64 {
                    let id = w * 1_000_000 + b * 1000 + i;
                    ops.push(StoreOp::PutMessage(message(id, "load")));
                    ops.push(StoreOp::PutDelivery(delivery(&client, b * 1000 + i, id)));
                }
                db.apply(&ops).await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("apply");
    }
    let s = load(&t.db).await;
    assert_eq!(s.sessions.len(), 6);
    assert_eq!(s.deliveries.len(), 6 * 15 * 20);
    assert_eq!(s.messages.len(), 6 * 15 * 20);
}

/// Committed state survives the pool (and, for SQLite, the file is reopened); `migrate` on a
/// current schema applies nothing.
async fn reopen_and_migrate(t: &TestDb) {
    apply(
        &t.db,
        vec![
            StoreOp::PutSession(session("durable")),
            StoreOp::PutMessage(message(1, "t")),
            StoreOp::PutDelivery(delivery("durable", 1, 1)),
        ],
    )
    .await;
    let expected = load(&t.db).await;
    assert_eq!(tern_store::migrate(&t.url, &support::options()).await.expect("migrate"), Vec::<i64>::new());
    let second = tern_store::connect(&t.url, &support::options()).await.expect("second pool");
    assert_eq!(second.load().await.expect("load"), expected);
    second.close().await;
    assert!(matches!(second.ping().await, Err(StoreError::Unavailable(_))), "a closed pool is unavailable");
}

// --- Schema upgrades (outside the chapter macro: the database starts at an older version) ---

/// Creates the schema of the migrations `files` (of `migrations/<backend>`) at `url` with sqlx's
/// own migrator, as an older Tern would have, then runs `inserts`.
async fn old_database(url: &str, backend: &str, files: &[&str], inserts: &[&str]) {
    let old = tempfile::tempdir().expect("temp dir");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations").join(backend);
    for file in files {
        std::fs::copy(source.join(file), old.path().join(file)).expect("copy a migration");
    }
    let migrator = sqlx::migrate::Migrator::new(old.path()).await.expect("migrator of the old files");
    if backend == "sqlite" {
        use sqlx::{ConnectOptions, Connection};
        let options: sqlx::sqlite::SqliteConnectOptions =
            url.parse::<sqlx::sqlite::SqliteConnectOptions>().expect("url").create_if_missing(true);
        let mut conn = options.connect().await.expect("connect");
        migrator.run(&mut conn).await.expect("old migrations");
        for insert in inserts {
            sqlx::query(insert).execute(&mut conn).await.expect(insert);
        }
        conn.close().await.expect("close");
    } else {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        migrator.run(&mut conn).await.expect("old migrations");
        for insert in inserts {
            sqlx::query(insert).execute(&mut conn).await.expect(insert);
        }
        conn.close().await.expect("close");
    }
}

/// A database created by migration 0001 only, holding a session row, upgrades in place: the
/// row keeps its values and gets no owner (anonymous), and an owner written afterwards sticks.
async fn upgrade_from_0001(url: &str, backend: &str) {
    let insert = "INSERT INTO sessions (client_id, expiry_interval, protocol, disconnected_at, will, \
                  will_at, last_seq) VALUES ('old', 60, 4, 5, NULL, NULL, 9)";
    old_database(url, backend, &["0001_initial.sql"], &[insert]).await;

    assert_eq!(tern_store::migrate(url, &support::options()).await.expect("migrate"), vec![2, 3, 4, 5, 6]);
    let db = tern_store::connect(url, &support::options()).await.expect("connect");
    let old_row = StoredSession {
        expiry_interval: 60,
        protocol: 4,
        disconnected_at: Some(5),
        last_seq: 9,
        ..session("old")
    };
    assert_eq!(old_row.owner, None);
    assert_eq!(load(&db).await.sessions, vec![old_row.clone()], "an existing row is anonymous");
    let owned = StoredSession { owner: Some("fleet-7".into()), ..old_row };
    apply(&db, vec![StoreOp::PutSession(owned.clone())]).await;
    assert_eq!(load(&db).await.sessions, vec![owned]);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_0001_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    upgrade_from_0001(&format!("sqlite://{}/tern.db", dir.path().display()), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_0001_postgres() {
    let (admin_url, name, url) = support::create_postgres_database().await;
    upgrade_from_0001(&url, "postgres").await;
    support::drop_postgres_database(&admin_url, &name).await;
}

/// A database at migration 0002 holding a device, an admin user and an audit entry upgrades to
/// 0003 in place: the device has no labels, the admin user the role `admin` (all it could do
/// before roles), the entry no target or source; and the new tables work.
async fn upgrade_from_0002(url: &str, backend: &str) {
    let inserts = [
        "INSERT INTO devices (client_id, username, password_hash, scram_verifier, cert_identity, enabled, \
         created_at) VALUES ('dev-old', 'olduser', 'hash', NULL, 'CN=dev-old', TRUE, 7)",
        "INSERT INTO admin_users (username, password_hash, created_at) VALUES ('root', '$argon2id$old', 8)",
        "INSERT INTO audit_log (at, actor, action, detail) VALUES (9, 'cli', 'device.add', '{}')",
    ];
    old_database(url, backend, &["0001_initial.sql", "0002_session_owner.sql"], &inserts).await;

    assert_eq!(tern_store::migrate(url, &support::options()).await.expect("migrate"), vec![3, 4, 5, 6]);
    let db = tern_store::connect(url, &support::options()).await.expect("connect");
    let old_device = Device {
        client_id: "dev-old".into(),
        username: Some("olduser".into()),
        password_hash: Some("hash".into()),
        scram_verifier: None,
        cert_identity: Some("CN=dev-old".into()),
        enabled: true,
        created_at: 7,
        labels: BTreeMap::new(),
        limits: DeviceLimits::default(),
    };
    assert_eq!(db.device_by_client_id("dev-old").await.expect("get"), Some(old_device.clone()));
    assert_eq!(db.device_by_username("olduser").await.expect("get"), Some(old_device.clone()));
    let root = AdminUser {
        username: "root".into(),
        password_hash: "$argon2id$old".into(),
        role: "admin".into(),
        created_at: 8,
    };
    assert_eq!(db.list_admin_users().await.expect("list"), vec![root.clone()]);
    let entries = db.recent_audit(10).await.expect("audit");
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].target.as_deref(), entries[0].source.as_deref()), (None, None));

    let labelled = Device { labels: labels(&[("site", "berlin")]), ..old_device };
    db.update_device(&labelled).await.expect("update");
    let query =
        DeviceQuery { label: Some(("site".into(), "berlin".into())), limit: 10, ..DeviceQuery::default() };
    assert_eq!(db.query_devices(&query).await.expect("query"), vec![labelled]);
    assert_eq!(db.init_setting("k", "v").await.expect("init"), "v");
    db.add_refresh_token(&token("t", "f", "root", 100)).await.expect("token");
    assert!(db.remove_admin_user("root").await.expect("remove"));
    assert_eq!(db.use_refresh_token("t").await.expect("use"), None);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_0002_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    upgrade_from_0002(&format!("sqlite://{}/tern.db", dir.path().display()), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_0002_postgres() {
    let (admin_url, name, url) = support::create_postgres_database().await;
    upgrade_from_0002(&url, "postgres").await;
    support::drop_postgres_database(&admin_url, &name).await;
}

// --- Directory ------------------------------------------------------------------------------

fn device(client_id: &str, username: Option<&str>) -> Device {
    Device {
        client_id: client_id.into(),
        username: username.map(Into::into),
        password_hash: Some(format!("$argon2id$v=19$m=19456,t=2,p=1${client_id}")),
        scram_verifier: None,
        cert_identity: None,
        enabled: true,
        created_at: 1_700_000_000_000,
        labels: BTreeMap::new(),
        limits: DeviceLimits::default(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn admin(username: &str, role: &str) -> AdminUser {
    AdminUser {
        username: username.into(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${username}"),
        role: role.into(),
        created_at: 1_700_000_000_000,
    }
}

fn token(id: &str, family: &str, username: &str, expires_at: i64) -> RefreshToken {
    RefreshToken {
        id: id.into(),
        family: family.into(),
        username: username.into(),
        issued_at: 1_000,
        expires_at,
        uses: 0,
    }
}

async fn devices(t: &TestDb) {
    let db = &t.db;
    let v0 = db.directory_version().await.expect("version");
    let a = device("dev-a", Some("alice"));
    let b = Device {
        scram_verifier: Some("SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy".into()),
        cert_identity: Some("CN=dev-b".into()),
        password_hash: None,
        enabled: false,
        ..device("dev-b", None)
    };
    let c = device("dev-c", None);
    db.add_device(&a).await.expect("add a");
    let v1 = db.directory_version().await.expect("version");
    assert_ne!(v1, v0, "adding a device changes the version");
    db.add_device(&c).await.expect("add c");
    db.add_device(&b).await.expect("add b (a second device without user name)");
    let v2 = db.directory_version().await.expect("version");
    assert!(v2 != v1);

    assert_eq!(db.device_by_client_id("dev-b").await.expect("get"), Some(b.clone()));
    assert_eq!(db.device_by_username("alice").await.expect("get"), Some(a.clone()));
    assert_eq!(db.device_by_username("nobody").await.expect("get"), None);
    assert_eq!(db.device_by_client_id("nobody").await.expect("get"), None);
    assert_eq!(db.list_devices().await.expect("list"), vec![a.clone(), b.clone(), c.clone()]);

    let dup_id = db.add_device(&device("dev-a", Some("other"))).await;
    assert!(matches!(dup_id, Err(StoreError::Conflict(_))), "{dup_id:?}");
    let dup_user = db.add_device(&device("dev-d", Some("alice"))).await;
    assert!(matches!(dup_user, Err(StoreError::Conflict(_))), "{dup_user:?}");
    assert_eq!(db.directory_version().await.expect("version"), v2, "failed changes leave the version");
    assert_eq!(db.list_devices().await.expect("list").len(), 3);

    let renamed = Device { username: Some("alice2".into()), enabled: false, ..a.clone() };
    db.update_device(&renamed).await.expect("update");
    let v3 = db.directory_version().await.expect("version");
    assert_ne!(v3, v2, "updating a device changes the version");
    assert_eq!(db.device_by_username("alice").await.expect("get"), None);
    assert_eq!(db.device_by_username("alice2").await.expect("get"), Some(renamed.clone()));
    let taken = db.update_device(&Device { username: Some("alice2".into()), ..c.clone() }).await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    let missing = db.update_device(&device("nobody", None)).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
    assert_eq!(db.directory_version().await.expect("version"), v3);

    assert!(db.remove_device("dev-a").await.expect("remove"));
    let v4 = db.directory_version().await.expect("version");
    assert_ne!(v4, v3, "removing a device changes the version");
    assert!(!db.remove_device("dev-a").await.expect("remove again"));
    assert_eq!(db.directory_version().await.expect("version"), v4, "removing nothing changes nothing");
    db.add_device(&device("dev-e", Some("alice"))).await.expect("the old user name is free again");
    assert_eq!(db.list_devices().await.expect("list").len(), 3);
}

async fn acl_rules(t: &TestDb) {
    let db = &t.db;
    let v0 = db.directory_version().await.expect("version");
    let rules = [
        AclRule {
            id: 0,
            client_id: Some("dev-a".into()),
            username: None,
            permission: Permission::Allow,
            action: AclAction::Publish,
            topic: "devices/%c/#".into(),
            max_qos: Some(1),
            allow_retain: Some(false),
        },
        AclRule {
            id: 0,
            client_id: None,
            username: Some("ops".into()),
            permission: Permission::Deny,
            action: AclAction::Subscribe,
            topic: "$SYS/#".into(),
            max_qos: None,
            allow_retain: None,
        },
        AclRule {
            id: 0,
            client_id: Some("dev-b".into()),
            username: Some("bob".into()),
            permission: Permission::Allow,
            action: AclAction::All,
            topic: "#".into(),
            max_qos: Some(2),
            allow_retain: Some(true),
        },
    ];
    let mut ids = Vec::new();
    let mut versions = vec![v0];
    for r in &rules {
        ids.push(db.add_acl_rule(r).await.expect("add rule"));
        versions.push(db.directory_version().await.expect("version"));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert!(versions.windows(2).all(|w| w[0] != w[1]), "each rule changes the version: {versions:?}");
    let expected: Vec<AclRule> =
        rules.iter().zip(&ids).map(|(r, id)| AclRule { id: *id, ..r.clone() }).collect();
    assert_eq!(db.list_acl_rules().await.expect("list"), expected);

    assert!(db.remove_acl_rule(ids[1]).await.expect("remove"));
    let v = db.directory_version().await.expect("version");
    assert_ne!(v, versions[3]);
    assert!(!db.remove_acl_rule(ids[1]).await.expect("remove again"));
    assert_eq!(db.directory_version().await.expect("version"), v);
    assert_eq!(db.list_acl_rules().await.expect("list"), vec![expected[0].clone(), expected[2].clone()]);
    let newest = db.add_acl_rule(&rules[1]).await.expect("add again");
    assert!(newest > ids[2], "ids are not reused");
}

async fn admin_users_and_audit_log(t: &TestDb) {
    let db = &t.db;
    assert_eq!(db.admin_user("root").await.expect("get"), None);
    let admin = AdminUser {
        username: "root".into(),
        password_hash: "$argon2id$1".into(),
        role: "admin".into(),
        created_at: 5,
    };
    db.put_admin_user(&admin).await.expect("put");
    assert_eq!(db.admin_user("root").await.expect("get"), Some(admin.clone()));
    let changed = AdminUser { password_hash: "$argon2id$2".into(), role: "viewer".into(), ..admin };
    db.put_admin_user(&changed).await.expect("replace");
    assert_eq!(db.admin_user("root").await.expect("get"), Some(changed));

    assert_eq!(db.recent_audit(10).await.expect("audit"), Vec::new());
    let mut entries = Vec::new();
    for (i, action) in ["device.add", "acl.add", "device.remove"].into_iter().enumerate() {
        let entry = AuditEntry {
            id: 0,
            at: 1_700_000_000_000 + i as i64,
            actor: if i == 1 { "cli".into() } else { "root".into() },
            action: action.into(),
            target: (i != 1).then(|| format!("device:dev-{i}")),
            source: (i == 2).then(|| "2001:db8::7".to_owned()),
            detail: format!(r#"{{"n":{i},"text":"ü \" quoted"}}"#),
        };
        let id = db.append_audit(&entry).await.expect("append");
        entries.push(AuditEntry { id, ..entry });
    }
    assert!(entries[0].id < entries[1].id && entries[1].id < entries[2].id);
    let recent = db.recent_audit(2).await.expect("audit");
    assert_eq!(recent, vec![entries[2].clone(), entries[1].clone()], "newest first");
    assert_eq!(db.recent_audit(100).await.expect("audit").len(), 3);
    assert_eq!(db.recent_audit(0).await.expect("audit"), Vec::new());
}

/// A device's limits come back as written (only the ones set), through every read, and an
/// update replaces or clears them; a row written before 0004 reads as no limits.
async fn device_limits(t: &TestDb) {
    let db = &t.db;
    let limits = DeviceLimits {
        publish_rate: Some(0),
        publish_bytes_rate: Some(u64::from(u32::MAX) + 1),
        max_subscriptions: Some(3),
        max_retained: Some(0),
        ..DeviceLimits::default()
    };
    let d = Device { limits: limits.clone(), ..device("lim-1", Some("lim-user")) };
    db.add_device(&d).await.expect("add");
    assert_eq!(db.device_by_client_id("lim-1").await.expect("get").map(|d| d.limits), Some(limits.clone()));
    assert_eq!(db.device_by_username("lim-user").await.expect("get").map(|d| d.limits), Some(limits));
    let listed = db.list_devices().await.expect("list");
    assert!(listed.iter().any(|x| x.client_id == "lim-1" && x.limits.max_subscriptions == Some(3)));
    let cleared = Device { limits: DeviceLimits::default(), ..d };
    db.update_device(&cleared).await.expect("update");
    assert_eq!(db.device_by_client_id("lim-1").await.expect("get"), Some(cleared));
    // The persister's write probe commits and changes nothing.
    let version = db.directory_version().await.expect("version");
    db.ping_write().await.expect("write probe");
    assert_eq!(db.directory_version().await.expect("version"), version);
}

/// Labels come back exactly as written, through every read, and an update replaces them.
async fn device_labels(t: &TestDb) {
    let db = &t.db;
    let tricky = labels(&[
        ("site", "berlin"),
        ("note", r#"he said "a:b", then \ and \" and \\"#),
        ("quote\"key:", "{\"x\":1}"),
        ("ort", "München 🚀"),
        ("empty", ""),
        ("", "empty key"),
        ("control", "tab\tnewline\nnul-free"),
    ]);
    let a = Device { labels: tricky.clone(), ..device("dev-a", Some("alice")) };
    db.add_device(&a).await.expect("add");
    db.add_device(&device("dev-b", None)).await.expect("add without labels");
    assert_eq!(db.device_by_client_id("dev-a").await.expect("get"), Some(a.clone()));
    assert_eq!(db.device_by_username("alice").await.expect("get"), Some(a.clone()));
    assert_eq!(db.list_devices().await.expect("list"), vec![a.clone(), device("dev-b", None)]);
    let all = DeviceQuery { limit: 10, ..DeviceQuery::default() };
    assert_eq!(db.query_devices(&all).await.expect("query"), vec![a.clone(), device("dev-b", None)]);

    let relabelled = Device { labels: labels(&[("site", "paris")]), ..a.clone() };
    let v = db.directory_version().await.expect("version");
    db.update_device(&relabelled).await.expect("update");
    assert_ne!(db.directory_version().await.expect("version"), v, "a label change is a directory change");
    assert_eq!(db.device_by_client_id("dev-a").await.expect("get"), Some(relabelled.clone()));
    let cleared = Device { labels: BTreeMap::new(), ..relabelled };
    db.update_device(&cleared).await.expect("update");
    assert_eq!(db.device_by_client_id("dev-a").await.expect("get"), Some(cleared.clone()));

    // NUL cannot be filtered alike on both backends (see rows::encode_labels): refused.
    let nul = Device { labels: labels(&[("k", "a\0b")]), ..device("dev-nul", None) };
    assert!(matches!(db.add_device(&nul).await, Err(StoreError::Other(_))));
    let nul_key = Device { labels: labels(&[("k\0", "v")]), ..cleared.clone() };
    assert!(matches!(db.update_device(&nul_key).await, Err(StoreError::Other(_))));
    assert_eq!(db.device_by_client_id("dev-nul").await.expect("get"), None);
    assert_eq!(db.device_by_client_id("dev-a").await.expect("get"), Some(cleared));
}

/// `query_devices`: each filter alone and combined, cursor paging to the end, and label
/// matches that are exact (no match on a key or value that merely contains the pair's text).
async fn device_queries(t: &TestDb) {
    let db = &t.db;
    let tricky_value = r#"he said "a:b" \ ok"#;
    let fleet = [
        Device {
            labels: labels(&[("site", "berlin"), ("tier", "gold")]),
            ..device("alpha-1", Some("Op-Alice"))
        },
        Device { enabled: false, labels: labels(&[("site", "berlin")]), ..device("alpha-2", None) },
        Device { labels: labels(&[("site", "paris")]), ..device("beta-1", Some("bob")) },
        Device { labels: labels(&[("note", tricky_value)]), ..device("Gamma", None) },
        // Near misses for the label ("note", tricky_value): the pair's text starting at an
        // escaped quote inside a longer key; the value with a suffix; the value with a prefix;
        // the pair's text inside a value; the value under another key.
        Device { labels: labels(&[("x\"note", tricky_value)]), ..device("miss-1", None) },
        Device { labels: labels(&[("note", &format!("{tricky_value}!"))]), ..device("miss-2", None) },
        Device { labels: labels(&[("note", &format!("!{tricky_value}"))]), ..device("miss-3", None) },
        Device {
            labels: labels(&[("other", &format!(r#""note":"{tricky_value}""#))]),
            ..device("miss-4", None)
        },
        Device { labels: labels(&[("notes", tricky_value)]), ..device("miss-5", None) },
    ];
    for d in &fleet {
        db.add_device(d).await.expect("add");
    }
    let ids = |devices: Vec<Device>| devices.into_iter().map(|d| d.client_id).collect::<Vec<_>>();
    let run = |query: DeviceQuery| async move { ids(db.query_devices(&query).await.expect("query")) };
    let q = DeviceQuery { limit: 100, ..DeviceQuery::default() };

    let everything = run(q.clone()).await;
    assert_eq!(
        everything,
        ["Gamma", "alpha-1", "alpha-2", "beta-1", "miss-1", "miss-2", "miss-3", "miss-4", "miss-5"],
        "bytewise client-id order on both backends"
    );

    // device_client_ids: every client id, in pages, with the same order as the cursor.
    let mut listed = Vec::new();
    let mut after = String::new();
    loop {
        let page = db.device_client_ids(&after, 4).await.expect("list ids").expect("supported");
        let full = page.len() == 4;
        listed.extend(page);
        if !full {
            break;
        }
        after = listed.last().cloned().unwrap_or_default();
    }
    assert_eq!(listed, everything, "paged client ids");

    // search: client id or user name, case-insensitive, plain text (no wildcards).
    let search = |s: &str| DeviceQuery { search: Some(s.into()), ..q.clone() };
    assert_eq!(run(search("ALPHA")).await, ["alpha-1", "alpha-2"]);
    assert_eq!(run(search("alice")).await, ["alpha-1"], "matches the user name");
    assert_eq!(run(search("BoB")).await, ["beta-1"]);
    assert_eq!(run(search("gam")).await, ["Gamma"]);
    assert_eq!(run(search("-1")).await, ["alpha-1", "beta-1", "miss-1"]);
    assert_eq!(run(search("zzz")).await, Vec::<String>::new(), "no device has it");
    assert_eq!(run(search("a%1")).await, Vec::<String>::new(), "% is not a wildcard");
    assert_eq!(run(search("alpha_1")).await, Vec::<String>::new(), "_ is not a wildcard");
    assert_eq!(run(search("berlin")).await, Vec::<String>::new(), "labels are not searched");
    assert_eq!(run(search("")).await, everything, "an empty search matches everything");

    // enabled.
    let enabled = |e: bool| DeviceQuery { enabled: Some(e), ..q.clone() };
    assert_eq!(run(enabled(false)).await, ["alpha-2"]);
    assert_eq!(run(enabled(true)).await.len(), everything.len() - 1);

    // label: exact key and exact value.
    let label = |k: &str, v: &str| DeviceQuery { label: Some((k.into(), v.into())), ..q.clone() };
    assert_eq!(run(label("site", "berlin")).await, ["alpha-1", "alpha-2"]);
    assert_eq!(run(label("tier", "gold")).await, ["alpha-1"], "not only the first pair");
    assert_eq!(run(label("site", "Berlin")).await, Vec::<String>::new(), "values are case-sensitive");
    assert_eq!(run(label("site", "ber")).await, Vec::<String>::new(), "no partial values");
    assert_eq!(run(label("ite", "berlin")).await, Vec::<String>::new(), "no partial keys");
    assert_eq!(run(label("note", tricky_value)).await, ["Gamma"], "exact, and none of the near misses");
    assert_eq!(run(label("x\"note", tricky_value)).await, ["miss-1"]);
    assert_eq!(run(label("missing", "x")).await, Vec::<String>::new());

    // after: a strict cursor.
    let after = |a: &str| DeviceQuery { after: Some(a.into()), ..q.clone() };
    assert_eq!(run(after("alpha-2")).await, everything[3..].to_vec());
    assert_eq!(run(after("alpha")).await, everything[1..].to_vec(), "a cursor need not exist");
    assert_eq!(run(after("")).await, everything, "the empty cursor is before everything");
    assert_eq!(run(after("zzz")).await, Vec::<String>::new());

    // Combined.
    let combined = DeviceQuery {
        search: Some("ALPHA".into()),
        enabled: Some(true),
        label: Some(("site".into(), "berlin".into())),
        ..q.clone()
    };
    assert_eq!(run(combined.clone()).await, ["alpha-1"]);
    assert_eq!(run(DeviceQuery { enabled: Some(false), ..combined.clone() }).await, ["alpha-2"]);
    assert_eq!(run(DeviceQuery { after: Some("alpha-1".into()), ..combined }).await, Vec::<String>::new());
    let berlin_after = DeviceQuery { after: Some("alpha-1".into()), ..label("site", "berlin") };
    assert_eq!(run(berlin_after).await, ["alpha-2"]);

    // Paging to the end, two at a time, unfiltered and filtered.
    for filter in [q.clone(), search("-"), enabled(true)] {
        let expected = run(filter.clone()).await;
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = run(DeviceQuery { after: cursor.clone(), limit: 2, ..filter.clone() }).await;
            assert!(page.len() <= 2);
            if page.is_empty() {
                break;
            }
            cursor = page.last().cloned();
            seen.extend(page);
        }
        assert_eq!(seen, expected, "pages of {filter:?}");
    }
    assert_eq!(run(DeviceQuery { limit: 0, ..q.clone() }).await, Vec::<String>::new());
}

/// Cluster mode: a node loads only the sessions it owns (and every retained entry), and a
/// session taken over from another node loads alone, with the messages its deliveries need.
/// SQLite refuses both.
async fn cluster_scoped_loads(t: &TestDb) {
    let db = &t.db;
    apply(
        db,
        vec![
            StoreOp::PutSession(session("mine")),
            StoreOp::PutSession(session("theirs")),
            StoreOp::PutSubscription(subscription("mine", "a/#")),
            StoreOp::PutSubscription(subscription("theirs", "b/#")),
            StoreOp::PutMessage(message(1, "a/1")),
            StoreOp::PutMessage(message(2, "b/1")),
            StoreOp::PutMessage(message(3, "r")),
            StoreOp::PutDelivery(delivery("mine", 1, 1)),
            StoreOp::PutDelivery(delivery("theirs", 1, 2)),
            StoreOp::PutInbound { client_id: "theirs".into(), packet_id: 7 },
            StoreOp::PutRetained { topic: "r".into(), message_id: 3, client_id: None },
        ],
    )
    .await;
    if t.url.starts_with("sqlite:") {
        assert!(db.set_cluster_node("n1").is_err(), "SQLite cannot be shared by cluster nodes");
        assert!(db.load_sessions(&["mine".into()]).await.is_err());
        return;
    }
    raw_execute(&t.url, "INSERT INTO session_nodes VALUES ('mine', 'n1', 1), ('theirs', 'n2', 1)").await;

    let one = db.load_sessions(&["theirs".into()]).await.expect("load_sessions");
    assert_eq!(one.sessions, vec![session("theirs")]);
    assert_eq!(one.subscriptions, vec![subscription("theirs", "b/#")]);
    assert_eq!(one.deliveries, vec![delivery("theirs", 1, 2)]);
    assert_eq!(one.inbound, vec![("theirs".to_string(), 7)]);
    assert_eq!(one.messages, vec![message(2, "b/1")]);
    assert!(one.retained.is_empty(), "a taken-over session brings no retained entries");
    assert_eq!(db.load_sessions(&[]).await.expect("empty").sessions, Vec::new());

    db.set_cluster_node("n1").expect("postgres");
    let mine = load(db).await;
    assert_eq!(mine.sessions, vec![session("mine")]);
    assert_eq!(mine.subscriptions, vec![subscription("mine", "a/#")]);
    assert_eq!(mine.deliveries, vec![delivery("mine", 1, 1)]);
    assert!(mine.inbound.is_empty());
    assert_eq!(mine.retained, vec![("r".to_string(), 3, None)]);
    assert_eq!(mine.messages, vec![message(1, "a/1"), message(3, "r")]);
}

/// Runs `statement` on the test database behind the store's back (to plant what the store never
/// writes).
async fn raw_execute(url: &str, statement: &str) {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::query(statement).execute(&mut conn).await.expect(statement);
        conn.close().await.expect("close");
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query(statement).execute(&mut conn).await.expect(statement);
        conn.close().await.expect("close");
    }
}

/// A labels column that is not a JSON object of strings fails the read with `Other`.
async fn bad_labels_are_decode_errors(t: &TestDb) {
    let db = &t.db;
    db.add_device(&device("dev-a", Some("alice"))).await.expect("add");
    for bad in ["not json", "[]", r#"{"a":1}"#, r#"{"a":null}"#, ""] {
        raw_execute(&t.url, &format!("UPDATE devices SET labels = '{bad}' WHERE client_id = 'dev-a'")).await;
        let by_id = db.device_by_client_id("dev-a").await;
        assert!(matches!(&by_id, Err(StoreError::Other(m)) if m.contains("labels")), "{bad:?}: {by_id:?}");
        let by_name = db.device_by_username("alice").await;
        assert!(matches!(by_name, Err(StoreError::Other(_))), "{bad:?}: {by_name:?}");
        assert!(matches!(db.list_devices().await, Err(StoreError::Other(_))), "{bad:?}");
        let all = DeviceQuery { limit: 10, ..DeviceQuery::default() };
        assert!(matches!(db.query_devices(&all).await, Err(StoreError::Other(_))), "{bad:?}");
    }
    raw_execute(&t.url, "UPDATE devices SET labels = '{}' WHERE client_id = 'dev-a'").await;
    assert_eq!(db.device_by_client_id("dev-a").await.expect("get"), Some(device("dev-a", Some("alice"))));
}

/// `update_acl_rule` replaces every field and changes the directory version; an unknown id is
/// `false` and changes nothing.
async fn acl_rule_updates(t: &TestDb) {
    let db = &t.db;
    let rule = AclRule {
        id: 0,
        client_id: Some("dev-a".into()),
        username: None,
        permission: Permission::Allow,
        action: AclAction::Publish,
        topic: "devices/%c/#".into(),
        max_qos: Some(1),
        allow_retain: Some(false),
    };
    let id = db.add_acl_rule(&rule).await.expect("add");
    let other = db.add_acl_rule(&AclRule { topic: "other/#".into(), ..rule.clone() }).await.expect("add");
    let v = db.directory_version().await.expect("version");
    let changed = AclRule {
        id,
        client_id: None,
        username: Some("ops".into()),
        permission: Permission::Deny,
        action: AclAction::All,
        topic: "$SYS/#".into(),
        max_qos: None,
        allow_retain: None,
    };
    assert!(db.update_acl_rule(&changed).await.expect("update"));
    let v2 = db.directory_version().await.expect("version");
    assert_ne!(v2, v, "an update changes the version");
    let list = db.list_acl_rules().await.expect("list");
    assert_eq!(list, vec![changed.clone(), AclRule { id: other, topic: "other/#".into(), ..rule.clone() }]);

    let back = AclRule { id, ..rule };
    assert!(db.update_acl_rule(&back).await.expect("update back"));
    assert_eq!(db.list_acl_rules().await.expect("list")[0], back);
    let v3 = db.directory_version().await.expect("version");
    assert_ne!(v3, v2);

    assert!(!db.update_acl_rule(&AclRule { id: id + 1000, ..changed }).await.expect("update unknown"));
    assert_eq!(db.directory_version().await.expect("version"), v3, "nothing changed");
    let bad = db.update_acl_rule(&AclRule { max_qos: Some(3), ..back.clone() }).await;
    assert!(matches!(bad, Err(StoreError::Other(_))), "QoS 3 violates a CHECK: {bad:?}");
    assert_eq!(db.directory_version().await.expect("version"), v3, "a failed update changes nothing");
    assert_eq!(db.list_acl_rules().await.expect("list")[0], back);
}

/// Adding (with conflicts), listing, replacing and removing admin users; removing one takes its
/// refresh tokens and nobody else's.
async fn admin_user_accounts(t: &TestDb) {
    let db = &t.db;
    assert_eq!(db.list_admin_users().await.expect("list"), Vec::new());
    for user in
        [admin("root", "admin"), admin("zed", "viewer"), admin("alice", "operator"), admin("Bob", "viewer")]
    {
        db.add_admin_user(&user).await.expect("add");
    }
    let dup = db.add_admin_user(&admin("root", "viewer")).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    assert_eq!(db.admin_user("root").await.expect("get"), Some(admin("root", "admin")), "unchanged");
    let bad_role = db.add_admin_user(&admin("eve", "superuser")).await;
    assert!(matches!(bad_role, Err(StoreError::Other(_))), "{bad_role:?}");
    let names: Vec<String> =
        db.list_admin_users().await.expect("list").into_iter().map(|u| u.username).collect();
    assert_eq!(names, ["Bob", "alice", "root", "zed"], "bytewise name order");
    assert_eq!(db.admin_user("alice").await.expect("get"), Some(admin("alice", "operator")));

    let demoted =
        AdminUser { role: "viewer".into(), password_hash: "$argon2id$new".into(), ..admin("root", "") };
    db.put_admin_user(&demoted).await.expect("put replaces");
    assert_eq!(db.admin_user("root").await.expect("get"), Some(demoted.clone()));
    let bad_put = db.put_admin_user(&admin("root", "nobody")).await;
    assert!(matches!(bad_put, Err(StoreError::Other(_))), "{bad_put:?}");
    assert_eq!(db.admin_user("root").await.expect("get"), Some(demoted));

    db.add_refresh_token(&token("a1", "fa", "alice", 10_000)).await.expect("token");
    db.add_refresh_token(&token("a2", "fb", "alice", 10_000)).await.expect("token");
    db.add_refresh_token(&token("r1", "fr", "root", 10_000)).await.expect("token");
    assert!(db.remove_admin_user("alice").await.expect("remove"));
    assert_eq!(db.admin_user("alice").await.expect("get"), None);
    assert_eq!(db.use_refresh_token("a1").await.expect("use"), None, "alice's tokens are gone");
    assert_eq!(db.use_refresh_token("a2").await.expect("use"), None);
    assert_eq!(db.use_refresh_token("r1").await.expect("use").map(|t| t.uses), Some(1), "root's stays");
    assert!(!db.remove_admin_user("alice").await.expect("remove again"));
    assert_eq!(db.list_admin_users().await.expect("list").len(), 3);
    db.add_admin_user(&admin("alice", "admin")).await.expect("the name is free again");
}

async fn api_keys(t: &TestDb) {
    let db = &t.db;
    let k1 = ApiKey {
        id: "tk_b1".into(),
        name: "CI deploys".into(),
        secret_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        role: "operator".into(),
        created_by: "root".into(),
        created_at: 1_700_000_000_000,
        last_used_at: None,
        expires_at: Some(1_800_000_000_000),
    };
    let k2 = ApiKey {
        id: "tk_a2".into(),
        name: "dashboard ü".into(),
        role: "viewer".into(),
        last_used_at: Some(5),
        expires_at: None,
        ..k1.clone()
    };
    assert_eq!(db.list_api_keys().await.expect("list"), Vec::new());
    db.add_api_key(&k1).await.expect("add");
    db.add_api_key(&k2).await.expect("add");
    let dup = db.add_api_key(&ApiKey { name: "other".into(), ..k1.clone() }).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    let bad_role = db.add_api_key(&ApiKey { id: "tk_c".into(), role: "root".into(), ..k1.clone() }).await;
    assert!(matches!(bad_role, Err(StoreError::Other(_))), "{bad_role:?}");
    assert_eq!(db.api_key("tk_b1").await.expect("get"), Some(k1.clone()));
    assert_eq!(db.api_key("tk_zz").await.expect("get"), None);
    assert_eq!(db.list_api_keys().await.expect("list"), vec![k2.clone(), k1.clone()], "ordered by id");

    db.touch_api_key("tk_b1", 1_700_000_060_000).await.expect("touch");
    let touched = ApiKey { last_used_at: Some(1_700_000_060_000), ..k1 };
    assert_eq!(db.api_key("tk_b1").await.expect("get"), Some(touched.clone()));
    db.touch_api_key("tk_zz", 1).await.expect("touching an unknown key is no error");
    assert!(db.remove_api_key("tk_a2").await.expect("remove"));
    assert!(!db.remove_api_key("tk_a2").await.expect("remove again"));
    assert_eq!(db.list_api_keys().await.expect("list"), vec![touched]);
}

/// Uses are counted atomically (1, then 2); families and users are revoked; expired tokens are
/// swept.
async fn refresh_tokens(t: &TestDb) {
    let db = &t.db;
    let t1 = RefreshToken { uses: 5, ..token("t1", "f1", "root", 5_000) };
    db.add_refresh_token(&t1).await.expect("add");
    db.add_refresh_token(&token("t2", "f1", "root", 5_000)).await.expect("add");
    db.add_refresh_token(&token("t3", "f2", "root", 5_000)).await.expect("add");
    db.add_refresh_token(&token("t4", "f3", "alice", 5_000)).await.expect("add");
    let dup = db.add_refresh_token(&token("t1", "f9", "root", 5_000)).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");

    let first = db.use_refresh_token("t1").await.expect("use");
    assert_eq!(first, Some(RefreshToken { uses: 1, ..t1.clone() }), "stored with 0 uses, whatever it said");
    let second = db.use_refresh_token("t1").await.expect("use again");
    assert_eq!(second.map(|t| t.uses), Some(2), "presented again");
    assert_eq!(db.use_refresh_token("nope").await.expect("use"), None);

    // Concurrent presentations of one token each get a different count.
    db.add_refresh_token(&token("hot", "f4", "root", 5_000)).await.expect("add");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let db = t.db.clone();
        tasks.push(tokio::spawn(async move { db.use_refresh_token("hot").await }));
    }
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.expect("task").expect("use").expect("known").uses);
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=8).collect::<Vec<i64>>());

    assert!(db.login_alive("f1").await.expect("alive"));
    assert!(!db.login_alive("no-such-family").await.expect("alive"));
    assert_eq!(db.revoke_refresh_family("f1").await.expect("revoke"), 2);
    assert!(!db.login_alive("f1").await.expect("alive after revoke"));
    assert_eq!(db.use_refresh_token("t2").await.expect("use"), None);
    assert_eq!(db.revoke_refresh_family("f1").await.expect("revoke again"), 0);
    assert_eq!(db.revoke_refresh_tokens_of("root").await.expect("revoke"), 2, "t3 and hot");
    assert_eq!(db.revoke_refresh_tokens_of("root").await.expect("revoke again"), 0);
    assert_eq!(db.use_refresh_token("t4").await.expect("use").map(|t| t.uses), Some(1), "alice's stays");

    db.add_refresh_token(&token("old", "f5", "bob", 100)).await.expect("add");
    db.add_refresh_token(&token("older", "f5", "bob", 99)).await.expect("add");
    db.add_refresh_token(&token("now", "f6", "bob", 200)).await.expect("add");
    assert_eq!(db.sweep_refresh_tokens(200).await.expect("sweep"), 2, "expired before now");
    assert_eq!(db.sweep_refresh_tokens(200).await.expect("sweep again"), 0);
    assert_eq!(db.use_refresh_token("now").await.expect("use").map(|t| t.uses), Some(1), "expires at now");
    assert_eq!(db.use_refresh_token("old").await.expect("use"), None);
    assert_eq!(db.sweep_refresh_tokens(i64::MAX).await.expect("sweep all"), 2, "t4 and now");
}

/// `init_setting` keeps the first value, also when several processes race to set it.
async fn settings(t: &TestDb) {
    let db = &t.db;
    assert_eq!(db.setting("signing_key").await.expect("get"), None);
    assert_eq!(db.init_setting("signing_key", "first").await.expect("init"), "first");
    assert_eq!(db.init_setting("signing_key", "second").await.expect("init again"), "first");
    assert_eq!(db.setting("signing_key").await.expect("get"), Some("first".into()));
    assert_eq!(db.init_setting("other", "").await.expect("init"), "", "an empty value is a value");
    assert_eq!(db.init_setting("other", "x").await.expect("init again"), "");

    let mut tasks = Vec::new();
    for i in 0..8 {
        let db = t.db.clone();
        tasks.push(tokio::spawn(async move { db.init_setting("race", &format!("value-{i}")).await }));
    }
    let mut values = Vec::new();
    for task in tasks {
        values.push(task.await.expect("task").expect("init"));
    }
    let winner = db.setting("race").await.expect("get").expect("set");
    assert!(values.iter().all(|v| *v == winner), "every racer sees the winner {winner:?}: {values:?}");
}

/// `query_audit`: each filter, the `before_id` cursor, limits, and combinations.
async fn audit_queries(t: &TestDb) {
    let db = &t.db;
    let rows = [
        (1000, "root", "device.add", Some("device:a"), Some("10.0.0.1")),
        (2000, "cli", "acl.add", Some("acl:1"), None),
        (3000, "root", "device.remove", Some("device:a"), Some("10.0.0.1")),
        (4000, "alice", "device_x.add", Some("device:b"), Some("2001:db8::1")),
        (5000, "root", "login", None, Some("192.0.2.7")),
    ];
    let mut entries = Vec::new();
    for (at, actor, action, target, source) in rows {
        let entry = AuditEntry {
            id: 0,
            at,
            actor: actor.into(),
            action: action.into(),
            target: target.map(Into::into),
            source: source.map(Into::into),
            detail: "{}".into(),
        };
        let id = db.append_audit(&entry).await.expect("append");
        entries.push(AuditEntry { id, ..entry });
    }
    let newest_first: Vec<AuditEntry> = entries.iter().rev().cloned().collect();
    assert_eq!(db.recent_audit(10).await.expect("recent"), newest_first, "target and source round-trip");

    let id = |i: usize| entries[i].id;
    let run = |query: AuditQuery| async move {
        db.query_audit(&query).await.expect("query").into_iter().map(|e| e.id).collect::<Vec<i64>>()
    };
    let q = AuditQuery { limit: 100, ..AuditQuery::default() };
    assert_eq!(db.query_audit(&q).await.expect("query"), newest_first, "no filter: everything");
    assert_eq!(run(AuditQuery { limit: 2, ..q.clone() }).await, [id(4), id(3)]);
    assert_eq!(run(AuditQuery { limit: 0, ..q.clone() }).await, Vec::<i64>::new());

    let actor = |a: &str| AuditQuery { actor: Some(a.into()), ..q.clone() };
    assert_eq!(run(actor("root")).await, [id(4), id(2), id(0)]);
    assert_eq!(run(actor("Root")).await, Vec::<i64>::new(), "actors are exact");

    let prefix = |p: &str| AuditQuery { action_prefix: Some(p.into()), ..q.clone() };
    assert_eq!(run(prefix("device.")).await, [id(2), id(0)]);
    assert_eq!(run(prefix("device_")).await, [id(3)], "_ is not a wildcard");
    assert_eq!(run(prefix("device")).await, [id(3), id(2), id(0)]);
    assert_eq!(run(prefix("%")).await, Vec::<i64>::new(), "% is not a wildcard");
    assert_eq!(run(prefix("device.add.more")).await, Vec::<i64>::new(), "longer than the action");
    assert_eq!(run(prefix("")).await.len(), 5);

    let target = |t: &str| AuditQuery { target: Some(t.into()), ..q.clone() };
    assert_eq!(run(target("device:a")).await, [id(2), id(0)]);
    assert_eq!(run(target("device:")).await, Vec::<i64>::new(), "targets are exact");

    assert_eq!(run(AuditQuery { since: Some(2000), ..q.clone() }).await, [id(4), id(3), id(2), id(1)]);
    assert_eq!(
        run(AuditQuery { until: Some(3000), ..q.clone() }).await,
        [id(1), id(0)],
        "until is exclusive"
    );
    assert_eq!(run(AuditQuery { since: Some(2000), until: Some(4000), ..q.clone() }).await, [id(2), id(1)]);
    assert_eq!(run(AuditQuery { since: Some(6000), ..q.clone() }).await, Vec::<i64>::new());

    assert_eq!(run(AuditQuery { before_id: Some(id(2)), ..q.clone() }).await, [id(1), id(0)]);
    assert_eq!(run(AuditQuery { before_id: Some(id(0)), ..q.clone() }).await, Vec::<i64>::new());
    assert_eq!(run(AuditQuery { before_id: Some(i64::MAX), ..q.clone() }).await.len(), 5);

    let combined = AuditQuery {
        actor: Some("root".into()),
        action_prefix: Some("device.".into()),
        target: Some("device:a".into()),
        since: Some(1000),
        until: Some(5000),
        ..q.clone()
    };
    assert_eq!(run(combined.clone()).await, [id(2), id(0)]);
    assert_eq!(run(AuditQuery { before_id: Some(id(2)), ..combined.clone() }).await, [id(0)]);
    assert_eq!(run(AuditQuery { since: Some(1001), ..combined }).await, [id(2)]);

    // Paging with the cursor, two at a time, to the end.
    for filter in [q.clone(), actor("root")] {
        let expected = run(filter.clone()).await;
        let mut seen = Vec::new();
        let mut before_id = None;
        loop {
            let page = run(AuditQuery { before_id, limit: 2, ..filter.clone() }).await;
            if page.is_empty() {
                break;
            }
            before_id = page.last().copied();
            seen.extend(page);
        }
        assert_eq!(seen, expected, "pages of {filter:?}");
    }
}

// --- Unreachable databases (outside the chapter macro: each backend fails its own way) -------

fn fast_fail() -> StoreOptions {
    StoreOptions { acquire_timeout: 2, connect_timeout: 2, min_connections: 0, ..support::options() }
}

/// Connecting to a closed port fails at once with `Unavailable`.
#[tokio::test]
async fn postgres_closed_port_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let url = format!("postgres://tern:secret@127.0.0.1:{port}/tern");
    let started = Instant::now();
    let err = tern_store::connect(&url, &fast_fail()).await.expect_err("nothing listens there");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(!err.to_string().contains("secret"), "the password leaked: {err}");
    let err = tern_store::migrate(&url, &fast_fail()).await.expect_err("nothing listens there");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

/// A server that accepts TCP but never answers costs `connect_timeout`, then `Unavailable`.
#[tokio::test]
async fn postgres_silent_server_is_unavailable_after_connect_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("postgres://tern@{}/tern", listener.local_addr().expect("addr"));
    let started = Instant::now();
    let err = tern_store::connect(&url, &fast_fail()).await.expect_err("it never answers");
    let took = started.elapsed();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(5), "took {took:?}");
    drop(listener);
}

/// A pool whose server goes away reports `Unavailable` within `acquire_timeout` on every call,
/// and recovers when the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_unavailable_then_recovers() {
    let (admin_url, name, direct_url) = support::create_postgres_database().await;
    tern_store::migrate(&direct_url, &support::options()).await.expect("migrate");
    let target = support::postgres_addr(&direct_url);
    let proxy = support::Proxy::start("127.0.0.1:0".parse().expect("addr"), target).await;
    let url = support::with_address(&direct_url, proxy.addr);
    let options = StoreOptions { acquire_timeout: 1, ..fast_fail() };
    let db = tern_store::connect(&url, &options).await.expect("connect through the proxy");
    db.apply(&[StoreOp::PutSession(session("x"))]).await.expect("apply");

    proxy.cut().await;
    for attempt in 0..2 {
        let started = Instant::now();
        let results = [
            db.apply(&[StoreOp::PutSession(session("y"))]).await.err(),
            db.load().await.err(),
            db.ping().await.err(),
            db.sweep(0).await.err(),
            db.directory_version().await.err(),
        ];
        for r in results {
            assert!(matches!(r, Some(StoreError::Unavailable(_))), "attempt {attempt}: {r:?}");
        }
        // Five calls, each bounded by acquire_timeout (1 s).
        assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    }

    let back = support::Proxy::start(proxy.addr, target).await;
    let mut recovered = false;
    for _ in 0..50 {
        if db.ping().await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the pool reconnects when the server is back");
    db.apply(&[StoreOp::PutSession(session("z"))]).await.expect("apply after recovery");
    let ids: Vec<String> = db.load().await.expect("load").sessions.into_iter().map(|s| s.client_id).collect();
    assert_eq!(ids, vec!["x".to_owned(), "z".to_owned()]);
    db.close().await;
    back.cut().await;
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await.expect("admin");
    let _ =
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut admin).await;
}

/// A SQLite path that cannot be created is `Unavailable` (an I/O error), not a panic.
#[tokio::test]
async fn sqlite_unusable_path_is_unavailable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let url = format!("sqlite://{}/sub/tern.db", file.display());
    let err = tern_store::connect(&url, &fast_fail()).await.expect_err("a file is in the way");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

/// An in-memory SQLite database works (one connection for the pool's life).
#[tokio::test]
async fn sqlite_in_memory() {
    let db = tern_store::connect("sqlite::memory:", &support::options()).await.expect("connect");
    db.apply(&[StoreOp::PutSession(session("m"))]).await.expect("apply");
    assert_eq!(db.load().await.expect("load").sessions, vec![session("m")]);
    assert_eq!(
        tern_store::migrate("sqlite::memory:", &support::options()).await.expect("migrate"),
        Vec::<i64>::new()
    );
}

/// An unknown URL scheme is a configuration error.
#[tokio::test]
async fn unsupported_url_is_other() {
    let err =
        tern_store::connect("mysql://u:pw@localhost/db", &support::options()).await.expect_err("unsupported");
    assert!(matches!(&err, StoreError::Other(m) if !m.contains("pw@")), "{err:?}");
}

/// Connections the server terminates (57P01 admin shutdown) fail with `Unavailable` and are
/// replaced at once: a broken connection is closed, not handed to the next caller, and no
/// idle time is needed before the pool recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_terminated_connections_are_unavailable_then_replaced() {
    let t = TestDb::postgres().await;
    let db = &t.db;
    // Two connections in the pool, both idle.
    let (a, b) = tokio::join!(db.load(), db.load());
    a.expect("load");
    b.expect("load");
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&t.url).await.expect("admin");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'tern'",
    )
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert!(!killed.is_empty(), "the pool's connections are visible in pg_stat_activity");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut failures = 0;
    let mut recovered = false;
    for _ in 0..=killed.len() {
        match db.apply(&[StoreOp::PutSession(session("after"))]).await {
            Ok(()) => {
                recovered = true;
                break;
            }
            Err(e) => {
                assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
                failures += 1;
            }
        }
    }
    assert!(failures >= 1, "the first call runs into a terminated connection");
    assert!(recovered, "each broken connection fails once and is replaced ({failures} failures)");
    assert_eq!(db.load().await.expect("load").sessions, vec![session("after")]);
    drop(admin);
    t.finish().await;
}
