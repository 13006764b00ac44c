//! Cluster bookkeeping in PostgreSQL: node registration and leases, session ownership with
//! epochs, and the adoption of a dead node's sessions (migrations/postgres/0006_cluster.sql).
//!
//! Times come from the database clock, so nodes' clocks need not agree.

use sqlx::{PgPool, Row};

/// The database clock in ms since the Unix epoch, as SQL.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// This node's registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// Its number (message id prefix).
    pub node_no: u16,
    /// Its starts so far, this one included.
    pub incarnation: i64,
}

/// A node's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Node id.
    pub node_id: String,
    /// Node number.
    pub node_no: u16,
    /// Starts so far.
    pub incarnation: i64,
    /// Start time (ms).
    pub started_at: i64,
    /// Whether its lease has run out (database clock).
    pub expired: bool,
    /// The node that adopted its sessions.
    pub adopted_by: Option<String>,
    /// Advertised MQTT address.
    pub mqtt_addr: String,
    /// Advertised admin address.
    pub admin_addr: String,
}

/// Registers (or re-registers) node `node`: a new incarnation with a fresh lease; the node
/// keeps its number. Sessions no node owns (a database used by a single broker before)
/// become this node's.
pub async fn register(
    pool: &PgPool,
    node: &str,
    lease_ms: i64,
    mqtt_addr: &str,
    admin_addr: &str,
) -> Result<Registration, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Serializes registrations, so that two new nodes never pick the same number.
    sqlx::query("LOCK TABLE cluster_nodes IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
    let row = sqlx::query(&format!(
        "UPDATE cluster_nodes SET incarnation = incarnation + 1, started_at = {NOW_MS}, \
         lease_until = {NOW_MS} + $2, adopted_by = NULL, mqtt_addr = $3, admin_addr = $4 \
         WHERE node_id = $1 RETURNING node_no, incarnation"
    ))
    .bind(node)
    .bind(lease_ms)
    .bind(mqtt_addr)
    .bind(admin_addr)
    .fetch_optional(&mut *tx)
    .await?;
    let reg = if let Some(r) = row {
        Registration { node_no: r.get::<i32, _>(0) as u16, incarnation: r.get(1) }
    } else {
        let no: i32 = sqlx::query_scalar("SELECT COALESCE(MAX(node_no), 0) + 1 FROM cluster_nodes")
            .fetch_one(&mut *tx)
            .await?;
        if no > 32767 {
            return Err(sqlx::Error::Protocol("more than 32767 cluster node ids registered".into()));
        }
        sqlx::query(&format!(
            "INSERT INTO cluster_nodes (node_id, node_no, incarnation, started_at, lease_until, mqtt_addr, admin_addr) \
             VALUES ($1, $2, 1, {NOW_MS}, {NOW_MS} + $3, $4, $5)"
        ))
        .bind(node)
        .bind(no)
        .bind(lease_ms)
        .bind(mqtt_addr)
        .bind(admin_addr)
        .execute(&mut *tx)
        .await?;
        Registration { node_no: no as u16, incarnation: 1 }
    };
    sqlx::query(
        "INSERT INTO session_nodes (client_id, node_id, epoch) SELECT s.client_id, $1, 1 FROM sessions s \
         WHERE NOT EXISTS (SELECT 1 FROM session_nodes o WHERE o.client_id = s.client_id) \
         ON CONFLICT (client_id) DO NOTHING",
    )
    .bind(node)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(reg)
}

/// Renews this node's lease; `false` when the row says this incarnation was replaced or
/// adopted (the node must stop serving).
pub async fn renew(pool: &PgPool, node: &str, incarnation: i64, lease_ms: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!(
        "UPDATE cluster_nodes SET lease_until = {NOW_MS} + $3 \
         WHERE node_id = $1 AND incarnation = $2 AND adopted_by IS NULL"
    ))
    .bind(node)
    .bind(incarnation)
    .bind(lease_ms)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives up this node's lease at a clean shutdown (its sessions stay its own: it comes back
/// with them, or another node adopts them once the lease has run out).
pub async fn expire_now(pool: &PgPool, node: &str, incarnation: i64) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE cluster_nodes SET lease_until = {NOW_MS} WHERE node_id = $1 AND incarnation = $2"
    ))
    .bind(node)
    .bind(incarnation)
    .execute(pool)
    .await
    .map(drop)
}

/// Every node's row.
pub async fn nodes(pool: &PgPool) -> Result<Vec<NodeRow>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT node_id, node_no, incarnation, started_at, lease_until < {NOW_MS}, adopted_by, mqtt_addr, admin_addr \
         FROM cluster_nodes ORDER BY node_id"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| NodeRow {
            node_id: r.get(0),
            node_no: r.get::<i32, _>(1) as u16,
            incarnation: r.get(2),
            started_at: r.get(3),
            expired: r.get(4),
            adopted_by: r.get(5),
            mqtt_addr: r.get(6),
            admin_addr: r.get(7),
        })
        .collect())
}

/// Adopts dead node `dead`'s sessions, if its lease ran out and nobody adopted them yet:
/// marks it adopted and moves its sessions to `me` in one transaction (so exactly one node
/// wins, and publishes their wills). Returns the client ids taken, `None` if not adopted.
pub async fn adopt(pool: &PgPool, dead: &str, me: &str) -> Result<Option<Vec<String>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let won = sqlx::query(&format!(
        "UPDATE cluster_nodes SET adopted_by = $2 \
         WHERE node_id = $1 AND adopted_by IS NULL AND lease_until < {NOW_MS}"
    ))
    .bind(dead)
    .bind(me)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !won {
        tx.rollback().await?;
        return Ok(None);
    }
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE session_nodes SET node_id = $2, epoch = epoch + 1 WHERE node_id = $1 RETURNING client_id",
    )
    .bind(dead)
    .bind(me)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(ids))
}

/// The owner of a client id's session, making `me` the owner when there is none: (owner,
/// epoch). When `me` owns it already, the epoch grows (so that forgetting an earlier
/// session of the same id, see [`forget`], cannot remove this claim).
pub async fn owner_or_claim(pool: &PgPool, client_id: &str, me: &str) -> Result<(String, i64), sqlx::Error> {
    for _ in 0..3 {
        let row = sqlx::query(
            "WITH up AS (INSERT INTO session_nodes (client_id, node_id, epoch) VALUES ($1, $2, 1) \
             ON CONFLICT (client_id) DO UPDATE SET epoch = session_nodes.epoch + 1 \
             WHERE session_nodes.node_id = $2 RETURNING node_id, epoch) \
             SELECT node_id, epoch FROM up UNION ALL \
             SELECT node_id, epoch FROM session_nodes WHERE client_id = $1 LIMIT 1",
        )
        .bind(client_id)
        .bind(me)
        .fetch_optional(pool)
        .await?;
        if let Some(r) = row {
            return Ok((r.get(0), r.get(1)));
        }
        // Inserted concurrently by a transaction our statement's snapshot did not see.
    }
    Err(sqlx::Error::RowNotFound)
}

/// Moves a session's ownership from `from` to `me`; whether it was still `from`'s.
pub async fn take(pool: &PgPool, client_id: &str, from: &str, me: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE session_nodes SET node_id = $3, epoch = epoch + 1 WHERE client_id = $1 AND node_id = $2",
    )
    .bind(client_id)
    .bind(from)
    .bind(me)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether node `node`'s lease ran out (or it is unknown).
pub async fn lease_expired(pool: &PgPool, node: &str) -> Result<bool, sqlx::Error> {
    let expired: Option<bool> = sqlx::query_scalar(&format!(
        "SELECT lease_until < {NOW_MS} OR adopted_by IS NOT NULL FROM cluster_nodes WHERE node_id = $1"
    ))
    .bind(node)
    .fetch_optional(pool)
    .await?;
    Ok(expired.unwrap_or(true))
}

/// Forgets ownership records of ended sessions: (client id, epoch of the claim that
/// created the session), where `me` still owns them at that epoch.
pub async fn forget(pool: &PgPool, ended: &[(String, i64)], me: &str) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = ended.iter().map(|(id, _)| id.as_str()).collect();
    let epochs: Vec<i64> = ended.iter().map(|(_, e)| *e).collect();
    sqlx::query(
        "DELETE FROM session_nodes o USING UNNEST($1::TEXT[], $2::BIGINT[]) AS e(client_id, epoch) \
         WHERE o.client_id = e.client_id AND o.epoch = e.epoch AND o.node_id = $3",
    )
    .bind(&ids)
    .bind(&epochs)
    .bind(me)
    .execute(pool)
    .await
    .map(drop)
}

/// The owner of a client id's session, if any.
pub async fn owner(pool: &PgPool, client_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT node_id FROM session_nodes WHERE client_id = $1")
        .bind(client_id)
        .fetch_optional(pool)
        .await
}
