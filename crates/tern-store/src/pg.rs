//! PostgreSQL adapter: connection settings, `apply` with the hot operations as `UNNEST`ed
//! arrays in one statement (see `plan.rs`), and a `sweep` that cannot delete a body a
//! concurrent batch refers to again; the rest is the shared code of `shared.rs`.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres, Transaction};

use crate::options::StoreOptions;
use crate::plan::{DeliveryEffects, Plan, Step};

crate::shared::backend_fns!(PgConnection);

/// `query_devices`, the twin of `sqlite::QUERY_DEVICES` (which explains the cursor and the
/// label test): `strpos` for `instr`, and the key looked up with `->>` on the text as `json`.
/// `lower()` of a parameter would fold by the database's locale while the columns (`COLLATE
/// "C"`) fold ASCII only; the search text gets `COLLATE "C"` too, which also matches SQLite.
/// sqlx declares every parameter's type (`TEXT`, `BOOL`, `INT8`, NULL or not), so none needs
/// a cast.
pub(crate) const QUERY_DEVICES: &str = "SELECT client_id, username, password_hash, scram_verifier, \
     cert_identity, enabled, created_at, labels, limits FROM devices \
     WHERE client_id >= COALESCE($1, '') AND ($1 IS NULL OR client_id <> $1) \
     AND ($2 IS NULL OR enabled = $2) \
     AND ($3 IS NULL OR strpos(lower(client_id), lower($3 COLLATE \"C\")) > 0 \
     OR strpos(lower(username), lower($3 COLLATE \"C\")) > 0) \
     AND ($4 IS NULL OR (strpos(labels, $4) > 0 AND (labels::json ->> $5) = $6)) \
     ORDER BY client_id LIMIT $7";

/// Connection settings from the URL, plus what Tern relies on: `synchronous_commit = on`
/// whatever the server's default (a commit is durable when `apply` returns) and the
/// `application_name` shown in `pg_stat_activity`.
pub(crate) fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?.application_name("tern").options([("synchronous_commit", "on")]))
}

/// The pool (`Db::connect` has checked the server with one connection already).
///
/// A connection is pinged before use only if it sat idle for a second or more (one that died
/// while idle, e.g. across a server restart, is replaced transparently); a batch every few
/// milliseconds does not pay a round trip for it. sqlx pings a connection when it is released,
/// off the caller's path, and closes it if that fails; a connection that breaks in use fails
/// that one call with `Unavailable`, which the broker retries.
pub(crate) async fn pool(connect: PgConnectOptions, options: &StoreOptions) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= Duration::from_secs(1) {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .max_connections(options.max_connections())
        .min_connections(options.min_connections())
        .acquire_timeout(options.acquire_timeout())
        .idle_timeout(options.idle_timeout())
        .max_lifetime(options.max_lifetime())
        .connect_with(connect)
        .await
}

/// A write transaction.
pub(crate) async fn begin_write(conn: &mut PgConnection) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    conn.begin().await
}

/// One connection, for migrations and the reachability check.
pub(crate) async fn connect_one(connect: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect_with(connect).await
}

/// Applies a batch atomically: message bodies first, then the planned steps.
///
/// The common batch (message bodies and delivery changes only: publications and their
/// acknowledgements) is ONE statement, data-modifying CTEs over `UNNEST`ed arrays, run in
/// autocommit: atomic by itself, one round trip. Anything else runs in a transaction.
///
/// The one statement first inserts the bodies and deliveries with plain `INSERT`s
/// ([`Inserts::Plain`]), and only if that hits an existing key (unique violation: nothing was
/// applied) runs again with `ON CONFLICT` ([`Inserts::Upsert`]). Message ids and delivery keys
/// are nearly always new, and `ON CONFLICT` makes PostgreSQL insert speculatively: an index
/// probe before each row, a speculative lock and a second WAL record after it, a third of the
/// statement's CPU time in a profile of 1,400-message batches.
pub(crate) async fn apply_batch(conn: &mut PgConnection, ops: &[StoreOp]) -> Result<(), sqlx::Error> {
    let plan = Plan::new(ops);
    let effects = match plan.steps.as_slice() {
        [] => None,
        [Step::Deliveries(effects)] => Some(effects),
        steps => {
            let mut tx = conn.begin().await?;
            hot_statement(&mut tx, &plan.messages, None, Inserts::Upsert).await?;
            for step in steps {
                match step {
                    Step::Op(op) => apply_op(&mut tx, op).await?,
                    Step::Deliveries(effects) => {
                        hot_statement(&mut tx, &[], Some(effects), Inserts::Upsert).await?;
                    }
                }
            }
            return tx.commit().await;
        }
    };
    if UPSERT_BATCHES.load(Ordering::Relaxed) == 0 {
        match hot_statement(conn, &plan.messages, effects, Inserts::Plain).await {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                // Existing keys (a body stored again, a delivery replaced): the statement
                // failed whole; the next batches are likely to meet them too.
                UPSERT_BATCHES.store(UPSERT_AFTER_CONFLICT, Ordering::Relaxed);
            }
            other => return other,
        }
    } else {
        UPSERT_BATCHES.fetch_sub(1, Ordering::Relaxed);
    }
    hot_statement(conn, &plan.messages, effects, Inserts::Upsert).await
}

/// How the hot statement inserts message bodies and deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inserts {
    /// Plain `INSERT`: fails whole (unique violation) if a key exists.
    Plain,
    /// `INSERT .. ON CONFLICT`: an existing body is kept (and touched), a delivery replaced.
    Upsert,
}

/// Batches to run with [`Inserts::Upsert`] before trying [`Inserts::Plain`] again, after a
/// plain statement met an existing key: a workload that re-stores bodies (e.g. retained
/// messages queued for new sessions) pays a failed statement once per this many batches, not
/// once per batch. Process-wide rather than per pool: it only decides which statement is tried
/// first, never the outcome.
static UPSERT_BATCHES: AtomicU32 = AtomicU32::new(0);

/// See [`UPSERT_BATCHES`].
const UPSERT_AFTER_CONFLICT: u32 = 16;

/// Message bodies; an existing id keeps its body but its row is rewritten unchanged ("touched"),
/// so that a concurrent `sweep` (REPEATABLE READ) that decided to delete it as unreferenced
/// fails with a serialization error instead of deleting a body this batch refers to again.
/// (`ON CONFLICT DO NOTHING` would not conflict with the sweep; ids are distinct here.)
/// With [`Inserts::Plain`] every id is new: no concurrent sweep can have chosen it.
fn messages_cte(p: &mut Params, inserts: Inserts) -> String {
    format!(
        "m AS (INSERT INTO messages (id, topic, payload, qos, retain, properties, expires_at, created_at) \
         SELECT * FROM UNNEST({}::int8[], {}::text[], {}::bytea[], {}::int2[], {}::bool[], {}::bytea[], \
         {}::int8[], {}::int8[]){})",
        p.next(),
        p.next(),
        p.next(),
        p.next(),
        p.next(),
        p.next(),
        p.next(),
        p.next(),
        match inserts {
            Inserts::Plain => "",
            Inserts::Upsert => " ON CONFLICT (id) DO UPDATE SET created_at = messages.created_at",
        }
    )
}

fn delete_deliveries_cte(p: &mut Params) -> String {
    format!(
        "d AS (DELETE FROM deliveries d USING UNNEST({}::text[], {}::int8[]) AS k (client_id, seq) \
         WHERE d.client_id = k.client_id AND d.seq = k.seq)",
        p.next(),
        p.next()
    )
}

fn set_states_cte(p: &mut Params) -> String {
    format!(
        "s AS (UPDATE deliveries d SET state = k.state \
         FROM UNNEST({}::text[], {}::int8[], {}::int2[]) AS k (client_id, seq, state) \
         WHERE d.client_id = k.client_id AND d.seq = k.seq)",
        p.next(),
        p.next(),
        p.next()
    )
}

fn upsert_deliveries_cte(p: &mut Params, inserts: Inserts) -> String {
    format!(
        "u AS (INSERT INTO deliveries (client_id, seq, message_id, qos, retain, subscription_ids, state) \
         SELECT * FROM UNNEST({}::text[], {}::int8[], {}::int8[], {}::int2[], {}::bool[], {}::text[], {}::int2[]){})",
        p.next(),
        p.next(),
        p.next(),
        p.next(),
        p.next(),
        p.next(),
        p.next(),
        match inserts {
            Inserts::Plain => "",
            Inserts::Upsert => {
                " ON CONFLICT (client_id, seq) DO UPDATE SET message_id = excluded.message_id, \
                 qos = excluded.qos, retain = excluded.retain, subscription_ids = excluded.subscription_ids, \
                 state = excluded.state"
            }
        }
    )
}

/// Numbers parameters `$1`, `$2`, ... across the parts of one statement.
#[derive(Debug, Default)]
struct Params(usize);

impl Params {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("${}", self.0)
    }
}

/// Inserts `messages` and applies `effects` in one statement: each non-empty part is a
/// data-modifying CTE. They see the same snapshot and touch distinct rows (message ids are
/// distinct, and each delivery key is in exactly one of the three delivery lists), so the
/// result is the same as running them one after the other.
async fn hot_statement(
    conn: &mut PgConnection,
    messages: &[&StoredMessage],
    effects: Option<&DeliveryEffects<'_>>,
    inserts: Inserts,
) -> Result<(), sqlx::Error> {
    let (deletes, set_state, upserts) =
        effects.map_or((&[][..], &[][..], &[][..]), |e| (&e.deletes[..], &e.set_state[..], &e.upserts[..]));
    let mut params = Params::default();
    let mut ctes = Vec::with_capacity(4);
    if !messages.is_empty() {
        ctes.push(messages_cte(&mut params, inserts));
    }
    if !deletes.is_empty() {
        ctes.push(delete_deliveries_cte(&mut params));
    }
    if !set_state.is_empty() {
        ctes.push(set_states_cte(&mut params));
    }
    if !upserts.is_empty() {
        ctes.push(upsert_deliveries_cte(&mut params, inserts));
    }
    if ctes.is_empty() {
        return Ok(());
    }
    let sql = format!("WITH {} SELECT 1", ctes.join(", "));
    let mut query = sqlx::query(&sql);
    if !messages.is_empty() {
        let n = messages.len();
        let mut ids = Vec::with_capacity(n);
        let mut topics = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut qos = Vec::with_capacity(n);
        let mut retain = Vec::with_capacity(n);
        let mut properties = Vec::with_capacity(n);
        let mut expires_at = Vec::with_capacity(n);
        let mut created_at = Vec::with_capacity(n);
        for m in messages {
            ids.push(m.id);
            topics.push(m.topic.as_str());
            payloads.push(m.payload.as_slice());
            qos.push(i16::from(m.qos));
            retain.push(m.retain);
            properties.push(m.properties.as_slice());
            expires_at.push(m.expires_at);
            created_at.push(m.created_at);
        }
        query = query
            .bind(ids)
            .bind(topics)
            .bind(payloads)
            .bind(qos)
            .bind(retain)
            .bind(properties)
            .bind(expires_at)
            .bind(created_at);
    }
    if !deletes.is_empty() {
        let (clients, seqs): (Vec<&str>, Vec<i64>) = deletes.iter().copied().unzip();
        query = query.bind(clients).bind(seqs);
    }
    if !set_state.is_empty() {
        let clients: Vec<&str> = set_state.iter().map(|k| k.0).collect();
        let seqs: Vec<i64> = set_state.iter().map(|k| k.1).collect();
        let states: Vec<i16> = set_state.iter().map(|k| i16::from(k.2)).collect();
        query = query.bind(clients).bind(seqs).bind(states);
    }
    if !upserts.is_empty() {
        let n = upserts.len();
        let mut clients = Vec::with_capacity(n);
        let mut seqs = Vec::with_capacity(n);
        let mut message_ids = Vec::with_capacity(n);
        let mut qos = Vec::with_capacity(n);
        let mut retain = Vec::with_capacity(n);
        let mut subscription_ids = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        for (d, state) in upserts {
            clients.push(d.client_id.as_str());
            seqs.push(d.seq);
            message_ids.push(d.message_id);
            qos.push(i16::from(d.qos));
            retain.push(d.retain);
            subscription_ids.push(rows::encode_ids(&d.subscription_ids));
            states.push(i16::from(*state));
        }
        query = query
            .bind(clients)
            .bind(seqs)
            .bind(message_ids)
            .bind(qos)
            .bind(retain)
            .bind(subscription_ids)
            .bind(states);
    }
    query.execute(&mut *conn).await.map(drop)
}

/// `sweep` in one REPEATABLE READ transaction: if a batch re-references a body the sweep is
/// deleting (see `messages_cte`), the sweep fails (serialization failure, `Other`) and the
/// next one retries; the batch never ends up pointing at a deleted body.
pub(crate) async fn sweep_all(conn: &mut PgConnection, now: UnixMillis) -> Result<u64, sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ").await?;
    let deleted = sweep(&mut tx, now).await?;
    tx.commit().await?;
    Ok(deleted)
}

/// `load` in one consistent snapshot.
pub(crate) async fn load_snapshot(conn: &mut PgConnection) -> Result<Snapshot, sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let snapshot = load(&mut tx).await?;
    tx.commit().await?;
    Ok(snapshot)
}

// Cluster mode (PostgreSQL only): loads scoped to some sessions or to one node's sessions.

const LOAD_SESSIONS_OF: &str = "SELECT client_id, expiry_interval, protocol, disconnected_at, \
     will, will_at, last_seq, owner FROM sessions WHERE client_id = ANY($1) ORDER BY client_id";
const LOAD_SUBSCRIPTIONS_OF: &str = "SELECT client_id, filter, options, subscription_id FROM subscriptions \
     WHERE client_id = ANY($1) ORDER BY client_id, filter";
const LOAD_DELIVERIES_OF: &str = "SELECT client_id, seq, message_id, qos, retain, subscription_ids, state \
     FROM deliveries WHERE client_id = ANY($1) ORDER BY client_id, seq";
const LOAD_INBOUND_OF: &str =
    "SELECT client_id, packet_id FROM inbound_qos2 WHERE client_id = ANY($1) ORDER BY client_id, packet_id";
const LOAD_MESSAGES_OF: &str = "SELECT m.id, m.topic, m.payload, m.qos, m.retain, m.properties, \
     m.expires_at, m.created_at FROM messages m \
     WHERE m.id IN (SELECT d.message_id FROM deliveries d WHERE d.client_id = ANY($1)) \
     OR ($2 AND m.id IN (SELECT r.message_id FROM retained r)) ORDER BY m.id";
const OWNED_BY: &str = "SELECT client_id FROM session_nodes WHERE node_id = $1";

/// The sessions `ids` (and, with `retained`, every retained entry), in the caller's
/// transaction.
async fn load_of(conn: &mut PgConnection, ids: &[String], retained: bool) -> Result<Snapshot, sqlx::Error> {
    let sessions = sqlx::query(LOAD_SESSIONS_OF).bind(ids).fetch_all(&mut *conn).await?;
    let subscriptions = sqlx::query(LOAD_SUBSCRIPTIONS_OF).bind(ids).fetch_all(&mut *conn).await?;
    let deliveries = sqlx::query(LOAD_DELIVERIES_OF).bind(ids).fetch_all(&mut *conn).await?;
    let inbound = sqlx::query(LOAD_INBOUND_OF).bind(ids).fetch_all(&mut *conn).await?;
    let retained_rows = if retained {
        sqlx::query(crate::sql::LOAD_RETAINED).fetch_all(&mut *conn).await?
    } else {
        Vec::new()
    };
    let messages = sqlx::query(LOAD_MESSAGES_OF).bind(ids).bind(retained).fetch_all(&mut *conn).await?;
    Ok(Snapshot {
        sessions: sessions.iter().map(crate::rows::session).collect::<Result<_, _>>()?,
        subscriptions: subscriptions.iter().map(crate::rows::subscription).collect::<Result<_, _>>()?,
        deliveries: deliveries.iter().map(crate::rows::delivery).collect::<Result<_, _>>()?,
        inbound: inbound.iter().map(crate::rows::inbound).collect::<Result<_, _>>()?,
        retained: retained_rows.iter().map(crate::rows::retained).collect::<Result<_, _>>()?,
        messages: messages.iter().map(crate::rows::message).collect::<Result<_, _>>()?,
    })
}

/// Sessions `ids` in one consistent snapshot (no retained entries).
pub(crate) async fn load_sessions_snapshot(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Snapshot, sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let snapshot = load_of(&mut tx, ids, false).await?;
    tx.commit().await?;
    Ok(snapshot)
}

/// The sessions node `node` owns, and every retained entry, in one consistent snapshot.
pub(crate) async fn load_node_snapshot(conn: &mut PgConnection, node: &str) -> Result<Snapshot, sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let ids: Vec<String> = sqlx::query_scalar(OWNED_BY).bind(node).fetch_all(&mut *tx).await?;
    let snapshot = load_of(&mut tx, &ids, true).await?;
    tx.commit().await?;
    Ok(snapshot)
}
