//! Plans a batch for the batched `apply` of both backends: the hot operations (message bodies
//! and delivery changes) become a few multi-row statements instead of one statement each, with
//! the same end state as applying every operation in order.
//!
//! Why the reordering is safe:
//! - No operation deletes a message body (only `sweep` does), and nothing in the schema
//!   references a body by foreign key, so every `PutMessage` can run first; the first body of
//!   an id wins, as it would in order ("ignored if the id exists").
//! - Delivery operations on one key (client id, seq) fold into one effect: `Upsert(d)`,
//!   `SetState(s)` (applies only if the row exists) or `Delete`. Effects on different keys
//!   commute, so each kind runs as one statement.
//! - Delivery operations commute with every other operation except `DeleteSession`, which
//!   deletes the session's deliveries: other operations touch other tables (no foreign keys),
//!   so they run in place while delivery effects accumulate, and pending effects are flushed
//!   before each `DeleteSession`.

use std::collections::{BTreeMap, HashSet};

use tern_broker::store::{StoreOp, StoredDelivery, StoredMessage};

/// A planned batch.
#[derive(Debug, Default)]
pub(crate) struct Plan<'a> {
    /// Message bodies to insert first: the first occurrence of each id, in batch order.
    pub(crate) messages: Vec<&'a StoredMessage>,
    /// What follows, in order.
    pub(crate) steps: Vec<Step<'a>>,
}

/// One step after the message bodies.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// One operation, applied with its own statement.
    Op(&'a StoreOp),
    /// Folded delivery changes, on distinct keys.
    Deliveries(DeliveryEffects<'a>),
}

/// The net delivery changes of a run of operations, each key in exactly one list, keys sorted.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DeliveryEffects<'a> {
    /// Insert or replace: the delivery and the state to store.
    pub(crate) upserts: Vec<(&'a StoredDelivery, u8)>,
    /// Change the state if the row exists: (client id, seq, state).
    pub(crate) set_state: Vec<(&'a str, i64, u8)>,
    /// Delete: (client id, seq).
    pub(crate) deletes: Vec<(&'a str, i64)>,
}

#[derive(Debug, Clone, Copy)]
enum Effect<'a> {
    Upsert(&'a StoredDelivery, u8),
    SetState(u8),
    Delete,
}

impl<'a> Plan<'a> {
    /// Plans `ops`.
    pub(crate) fn new(ops: &'a [StoreOp]) -> Plan<'a> {
        let mut plan = Plan::default();
        let mut seen_messages = HashSet::new();
        let mut pending: BTreeMap<(&'a str, i64), Effect<'a>> = BTreeMap::new();
        for op in ops {
            match op {
                StoreOp::PutMessage(m) => {
                    if seen_messages.insert(m.id) {
                        plan.messages.push(m);
                    }
                }
                StoreOp::PutDelivery(d) => {
                    pending.insert((d.client_id.as_str(), d.seq), Effect::Upsert(d, d.state));
                }
                StoreOp::SetDeliveryState { client_id, seq, state } => {
                    let key = (client_id.as_str(), *seq);
                    let next = match pending.get(&key) {
                        Some(Effect::Upsert(d, _)) => Effect::Upsert(d, *state),
                        Some(Effect::Delete) => Effect::Delete,
                        Some(Effect::SetState(_)) | None => Effect::SetState(*state),
                    };
                    pending.insert(key, next);
                }
                StoreOp::DeleteDelivery { client_id, seq } => {
                    pending.insert((client_id.as_str(), *seq), Effect::Delete);
                }
                StoreOp::DeleteSession { .. } => {
                    flush(&mut plan.steps, &mut pending);
                    plan.steps.push(Step::Op(op));
                }
                StoreOp::PutSession(_)
                | StoreOp::PutSubscription(_)
                | StoreOp::DeleteSubscription { .. }
                | StoreOp::PutInbound { .. }
                | StoreOp::DeleteInbound { .. }
                | StoreOp::PutRetained { .. }
                | StoreOp::DeleteRetained { .. } => plan.steps.push(Step::Op(op)),
            }
        }
        flush(&mut plan.steps, &mut pending);
        plan
    }
}

fn flush<'a>(steps: &mut Vec<Step<'a>>, pending: &mut BTreeMap<(&'a str, i64), Effect<'a>>) {
    if pending.is_empty() {
        return;
    }
    let mut effects = DeliveryEffects::default();
    for ((client_id, seq), effect) in std::mem::take(pending) {
        match effect {
            Effect::Upsert(d, state) => effects.upserts.push((d, state)),
            Effect::SetState(state) => effects.set_state.push((client_id, seq, state)),
            Effect::Delete => effects.deletes.push((client_id, seq)),
        }
    }
    steps.push(Step::Deliveries(effects));
}

#[cfg(test)]
mod tests {
    use tern_broker::store::StoredSession;

    use super::*;

    fn delivery(client_id: &str, seq: i64, message_id: i64) -> StoredDelivery {
        StoredDelivery {
            client_id: client_id.into(),
            seq,
            message_id,
            qos: 1,
            retain: false,
            subscription_ids: vec![],
            state: 0,
        }
    }

    fn message(id: i64, topic: &str) -> StoredMessage {
        StoredMessage {
            id,
            topic: topic.into(),
            payload: vec![],
            qos: 1,
            retain: false,
            properties: vec![],
            expires_at: None,
            created_at: 0,
        }
    }

    fn session(client_id: &str) -> StoredSession {
        StoredSession {
            client_id: client_id.into(),
            expiry_interval: 60,
            protocol: 5,
            disconnected_at: None,
            will: None,
            will_at: None,
            last_seq: 0,
            owner: None,
        }
    }

    fn set(client_id: &str, seq: i64, state: u8) -> StoreOp {
        StoreOp::SetDeliveryState { client_id: client_id.into(), seq, state }
    }

    fn delete(client_id: &str, seq: i64) -> StoreOp {
        StoreOp::DeleteDelivery { client_id: client_id.into(), seq }
    }

    #[test]
    fn interleaved_publishes_become_two_statements() {
        let mut ops = Vec::new();
        for i in 0..100 {
            ops.push(StoreOp::PutMessage(message(i, "t")));
            ops.push(StoreOp::PutDelivery(delivery("a", i, i)));
        }
        let plan = Plan::new(&ops);
        assert_eq!(plan.messages.len(), 100);
        assert_eq!(plan.steps.len(), 1);
        let Step::Deliveries(effects) = &plan.steps[0] else { panic!("{plan:?}") };
        assert_eq!(effects.upserts.len(), 100);
        assert!(effects.set_state.is_empty() && effects.deletes.is_empty());
    }

    #[test]
    fn folds_operations_on_one_key_in_order() {
        let d1 = delivery("a", 1, 10);
        let d1b = delivery("a", 1, 11);
        let ops = vec![
            StoreOp::PutDelivery(d1.clone()),
            delete("a", 1), // put, delete -> delete
            StoreOp::PutDelivery(delivery("a", 2, 10)),
            set("a", 2, 1), // put, set -> put with state 1
            delete("a", 3),
            StoreOp::PutDelivery(d1b.clone()), // (a,3) stays deleted; (a,1) now d1b
            set("a", 4, 1),
            set("a", 4, 0), // set, set -> last set
            delete("a", 5),
            set("a", 5, 1), // delete, set -> delete
            StoreOp::PutDelivery(delivery("a", 6, 10)),
            StoreOp::PutDelivery(delivery("a", 6, 12)), // put, put -> last put
        ];
        let plan = Plan::new(&ops);
        let [Step::Deliveries(effects)] = plan.steps.as_slice() else { panic!("{plan:?}") };
        let upserts: Vec<(i64, i64, u8)> =
            effects.upserts.iter().map(|(d, s)| (d.seq, d.message_id, *s)).collect();
        assert_eq!(upserts, vec![(1, 11, 0), (2, 10, 1), (6, 12, 0)]);
        assert_eq!(effects.set_state, vec![("a", 4, 0)]);
        assert_eq!(effects.deletes, vec![("a", 3), ("a", 5)]);
    }

    #[test]
    fn delete_session_is_a_barrier_and_first_message_wins() {
        let ops = vec![
            StoreOp::PutDelivery(delivery("a", 1, 1)),
            StoreOp::PutRetained { topic: "t".into(), message_id: 1, client_id: None },
            StoreOp::DeleteSession { client_id: "a".into() },
            StoreOp::PutSession(session("a")),
            StoreOp::PutMessage(message(1, "first")),
            StoreOp::PutDelivery(delivery("a", 1, 1)),
            StoreOp::PutMessage(message(1, "second")),
        ];
        let plan = Plan::new(&ops);
        assert_eq!(plan.messages.len(), 1);
        assert_eq!(plan.messages[0].topic, "first");
        let kinds: Vec<&str> = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::Op(StoreOp::PutRetained { .. }) => "retained",
                Step::Op(StoreOp::DeleteSession { .. }) => "delete-session",
                Step::Op(StoreOp::PutSession(_)) => "put-session",
                Step::Deliveries(_) => "deliveries",
                Step::Op(_) => "other",
            })
            .collect();
        assert_eq!(kinds, ["retained", "deliveries", "delete-session", "put-session", "deliveries"]);

        // Without a DeleteSession, all delivery changes of the batch are one step.
        let ops = vec![
            StoreOp::PutSession(session("a")),
            StoreOp::PutDelivery(delivery("a", 1, 1)),
            StoreOp::PutSession(session("b")),
            StoreOp::PutDelivery(delivery("b", 1, 1)),
        ];
        let plan = Plan::new(&ops);
        assert_eq!(plan.steps.len(), 3, "{plan:?}");
        assert!(matches!(&plan.steps[2], Step::Deliveries(e) if e.upserts.len() == 2));
    }
}
