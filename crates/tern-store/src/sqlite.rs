//! SQLite adapter: the database file and its pragmas (WAL, synchronous, busy timeout), write
//! transactions that take the write lock up front, and `apply` with multi-row statements for
//! the hot operations (see `plan.rs`). The rest is the shared code of `shared.rs`.
//!
//! Multi-row statements matter more than they would in-process: sqlx runs each SQLite
//! connection on its own thread, so every statement is a round trip between threads.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous as Sync,
};
use sqlx::{Connection, SqliteConnection, Transaction};

use crate::options::{SqliteSynchronous, StoreOptions};
use crate::plan::{DeliveryEffects, Plan, Step};

crate::shared::backend_fns!(SqliteConnection);

/// `query_devices`: `$1` after, `$2` enabled, `$3` search, `$4` label needle, `$5` label key,
/// `$6` label value, `$7` limit; a NULL filter is off.
///
/// - The cursor is a range on the primary key even when absent (every text is `>= ''`), so
///   SQLite seeks to it instead of filtering every earlier row; `<>` makes it strict.
/// - `search`: `instr`, not `LIKE` (no wildcards to escape); `lower()` folds ASCII letters
///   only (no ICU), and the PostgreSQL twin does the same.
/// - `label`: the needle is the pair as serde_json writes it (`"key":"value"`, see
///   `rows::label_needle`). The labels column is serde_json's canonical text of the whole map,
///   which writes every pair that way, so containing the needle is a cheap necessary test. It
///   is not sufficient: a `"` inside a key is written `\"`, and the needle may start at that
///   quote (the labels `{"x\"k":"v"}`, key `x"k`, contain `"k":"v"`). So the decoded pairs of
///   the rows that pass (`json_each`) decide.
pub(crate) const QUERY_DEVICES: &str = "SELECT client_id, username, password_hash, scram_verifier, \
     cert_identity, enabled, created_at, labels, limits FROM devices \
     WHERE client_id >= COALESCE($1, '') AND ($1 IS NULL OR client_id <> $1) \
     AND ($2 IS NULL OR enabled = $2) \
     AND ($3 IS NULL OR instr(lower(client_id), lower($3)) > 0 OR instr(lower(username), lower($3)) > 0) \
     AND ($4 IS NULL OR (instr(labels, $4) > 0 \
     AND EXISTS (SELECT 1 FROM json_each(devices.labels) AS l WHERE l.key = $5 AND l.value = $6))) \
     ORDER BY client_id LIMIT $7";

/// Connection settings: creates the file if missing; WAL journal; `synchronous` as configured;
/// `busy_timeout`; foreign keys enforced (the schema has none today, see the migrations, but a
/// later one may).
pub(crate) fn connect_options(
    url: &str,
    options: &StoreOptions,
) -> Result<SqliteConnectOptions, sqlx::Error> {
    let synchronous = match options.sqlite_synchronous {
        SqliteSynchronous::Full => Sync::Full,
        SqliteSynchronous::Normal => Sync::Normal,
    };
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(Duration::from_secs(options.sqlite_busy_timeout))
        // Negative: a size in KiB rather than in pages. Each pooled connection fills its own
        // cache over hours, which a soak saw as RSS growth (8 connections x SQLite's 2 MB).
        .pragma("cache_size", format!("-{}", options.sqlite_cache_kib.max(64)))
        .foreign_keys(true))
}

/// Whether the URL names an in-memory database (one per connection: the pool keeps exactly
/// one connection forever).
pub(crate) fn is_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Creates the database file's parent directory if it is missing.
pub(crate) fn create_parent_dir(connect: &SqliteConnectOptions) -> std::io::Result<()> {
    match connect.get_filename().parent() {
        Some(parent) if parent != Path::new("") => std::fs::create_dir_all(parent),
        _ => Ok(()),
    }
}

/// The pool (`Db::connect` has opened the file once already).
pub(crate) async fn pool(
    connect: SqliteConnectOptions,
    options: &StoreOptions,
    memory: bool,
) -> Result<SqlitePool, sqlx::Error> {
    // No ping before use: an open SQLite file does not go away like a server connection.
    let pool = SqlitePoolOptions::new().test_before_acquire(false).acquire_timeout(options.acquire_timeout());
    let pool = if memory {
        pool.max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None)
    } else {
        pool.max_connections(options.max_connections())
            .min_connections(options.min_connections())
            .idle_timeout(options.idle_timeout())
            .max_lifetime(options.max_lifetime())
    };
    pool.connect_with(connect).await
}

/// One connection, for migrations and the reachability check.
pub(crate) async fn connect_one(connect: &SqliteConnectOptions) -> Result<SqliteConnection, sqlx::Error> {
    SqliteConnection::connect_with(connect).await
}

/// A write transaction holding the write lock from its start (`BEGIN IMMEDIATE`), so it waits
/// up to `busy_timeout` for other writers instead of failing when it upgrades from reading.
pub(crate) async fn begin_write(
    conn: &mut SqliteConnection,
) -> Result<Transaction<'_, sqlx::Sqlite>, sqlx::Error> {
    conn.begin_with("BEGIN IMMEDIATE").await
}

/// Applies a batch in one transaction: message bodies first, then the planned steps.
pub(crate) async fn apply_batch(conn: &mut SqliteConnection, ops: &[StoreOp]) -> Result<(), sqlx::Error> {
    let plan = Plan::new(ops);
    let mut tx = begin_write(conn).await?;
    for chunk in chunks(&plan.messages) {
        let sql = values_sql(
            "INSERT INTO messages (id, topic, payload, qos, retain, properties, expires_at, created_at)",
            8,
            chunk.len(),
            "ON CONFLICT (id) DO NOTHING",
        );
        let mut query = sqlx::query(&sql);
        for m in chunk {
            query = query
                .bind(m.id)
                .bind(&m.topic)
                .bind(m.payload.as_slice())
                .bind(i16::from(m.qos))
                .bind(m.retain)
                .bind(m.properties.as_slice())
                .bind(m.expires_at)
                .bind(m.created_at);
        }
        query.execute(&mut *tx).await?;
    }
    for step in &plan.steps {
        match step {
            Step::Op(op) => apply_op(&mut tx, op).await?,
            Step::Deliveries(effects) => apply_delivery_effects(&mut tx, effects).await?,
        }
    }
    tx.commit().await
}

/// Runs folded delivery effects (distinct keys, so their order does not matter).
async fn apply_delivery_effects(
    conn: &mut SqliteConnection,
    e: &DeliveryEffects<'_>,
) -> Result<(), sqlx::Error> {
    for chunk in chunks(&e.deletes) {
        // `(client_id = ? AND seq = ?) OR ...`: SQLite searches the primary key once per
        // term; `(client_id, seq) IN (VALUES ...)` would scan the table.
        let mut sql = String::from("DELETE FROM deliveries WHERE ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str("(client_id = ? AND seq = ?)");
        }
        let mut query = sqlx::query(&sql);
        for (client_id, seq) in chunk {
            query = query.bind(*client_id).bind(*seq);
        }
        query.execute(&mut *conn).await?;
    }
    for chunk in chunks(&e.set_state) {
        let sql = values_sql(
            "UPDATE deliveries SET state = k.column3 FROM (",
            3,
            chunk.len(),
            ") AS k WHERE deliveries.client_id = k.column1 AND deliveries.seq = k.column2",
        );
        let mut query = sqlx::query(&sql);
        for (client_id, seq, state) in chunk {
            query = query.bind(*client_id).bind(*seq).bind(i16::from(*state));
        }
        query.execute(&mut *conn).await?;
    }
    for chunk in chunks(&e.upserts) {
        let sql = values_sql(
            "INSERT INTO deliveries (client_id, seq, message_id, qos, retain, subscription_ids, state)",
            7,
            chunk.len(),
            "ON CONFLICT (client_id, seq) DO UPDATE SET message_id = excluded.message_id, qos = excluded.qos, \
             retain = excluded.retain, subscription_ids = excluded.subscription_ids, state = excluded.state",
        );
        let mut query = sqlx::query(&sql);
        for (d, state) in chunk {
            query = query
                .bind(&d.client_id)
                .bind(d.seq)
                .bind(d.message_id)
                .bind(i16::from(d.qos))
                .bind(d.retain)
                .bind(rows::encode_ids(&d.subscription_ids))
                .bind(i16::from(*state));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Rows per statement. A few fixed sizes (the largest that fits, repeatedly) keep the number
/// of distinct statement texts, and so of cached prepared statements, small; 128 rows of 8
/// columns stay far below SQLite's 32766 parameters.
const CHUNK_SIZES: [usize; 4] = [128, 32, 8, 1];

fn chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let size = CHUNK_SIZES.iter().copied().find(|&s| s <= rest.len())?;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// `{head} VALUES (?, .., ?), (..), .. {tail}` for `rows` rows of `columns` parameters.
///
/// Anonymous `?` parameters, not `$N`: sqlx asks SQLite for every parameter's name when it
/// binds, and SQLite finds a name by a linear search, so `$N` costs O(n²) per statement
/// (two thirds of the CPU time of a 500-message batch before this change).
fn values_sql(head: &str, columns: usize, rows: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * columns * 3 + 16);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('?');
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(tail);
    sql
}

/// `sweep` in one write transaction (SQLite has one writer at a time: nothing can race it).
pub(crate) async fn sweep_all(conn: &mut SqliteConnection, now: UnixMillis) -> Result<u64, sqlx::Error> {
    let mut tx = begin_write(conn).await?;
    let deleted = sweep(&mut tx, now).await?;
    tx.commit().await?;
    Ok(deleted)
}

/// `load` in one read transaction (one WAL snapshot).
pub(crate) async fn load_snapshot(conn: &mut SqliteConnection) -> Result<Snapshot, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let snapshot = load(&mut tx).await?;
    tx.commit().await?;
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_use_few_sizes() {
        let rows: Vec<usize> = (0..500).collect();
        let sizes: Vec<usize> = chunks(&rows).map(<[usize]>::len).collect();
        assert_eq!(sizes, vec![128, 128, 128, 32, 32, 32, 8, 8, 1, 1, 1, 1]);
        assert_eq!(sizes.iter().sum::<usize>(), 500);
        assert_eq!(chunks(&rows[..0]).count(), 0);
    }

    #[test]
    fn builds_values_lists() {
        assert_eq!(
            values_sql("INSERT INTO t (a, b)", 2, 2, "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) ON CONFLICT DO NOTHING"
        );
    }
}
