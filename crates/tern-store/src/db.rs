//! [`Db`]: a connection pool to either backend, implementing the broker's `Store` and
//! `DirectoryStore`; [`connect`] and [`migrate`].

use std::fmt;
use std::future::Future;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use tern_broker::store::{
    AclRule, AdminUser, ApiKey, AuditEntry, AuditQuery, Device, DeviceQuery, DirectoryStore, RefreshToken,
    Snapshot, Store, StoreError, StoreFuture, StoreOp, UnixMillis,
};

use crate::error::{self, context};
use crate::options::{StoreOptions, redact_url};
use crate::{migrations, pg, sqlite};

/// A pool of connections to PostgreSQL or SQLite. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Db {
    backend: Backend,
    /// In cluster mode, the node whose sessions `load` reads (`set_cluster_node`).
    node: std::sync::OnceLock<String>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (size, idle) = match &self.backend {
            Backend::Sqlite(pool) => (pool.size(), pool.num_idle()),
            Backend::Postgres(pool) => (pool.size(), pool.num_idle()),
        };
        f.debug_struct("Db")
            .field("backend", &self.backend_name())
            .field("size", &size)
            .field("idle", &idle)
            .field("node", &self.node.get())
            .finish()
    }
}

/// Which backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    fn of(url: &str) -> Result<Kind, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Kind::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Kind::Sqlite)
        } else {
            Err(StoreError::Other(format!(
                "unsupported database URL {:?}: expected sqlite://path/to/file.db or postgres://user:password@host/db",
                redact_url(url)
            )))
        }
    }
}

/// Runs `future` (opening the first connection) within `limit`, mapping its error.
async fn within<T>(
    limit: Duration,
    future: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.map_err(error::map),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no connection within {} s (connect_timeout)",
            limit.as_secs()
        ))),
    }
}

/// Opens one connection (bounded by `connect_timeout`), applies the missing migrations, then
/// opens the pool. Errors carry the URL without its password.
async fn open(
    database_url: &str,
    options: &StoreOptions,
    with_pool: bool,
) -> Result<(Option<Db>, Vec<i64>), StoreError> {
    let shown = redact_url(database_url);
    let result = async {
        match Kind::of(database_url)? {
            Kind::Postgres => {
                let connect = pg::connect_options(database_url).map_err(error::map)?;
                let mut conn = within(options.connect_timeout(), pg::connect_one(&connect)).await?;
                let applied =
                    pg::migrate(&mut conn, migrations::POSTGRES).await.map_err(error::map_migrate)?;
                // Closing politely may fail if the server just went away; the pool finds out.
                let _ = conn.close().await;
                let db = if with_pool {
                    Some(Db {
                        backend: Backend::Postgres(pg::pool(connect, options).await.map_err(error::map)?),
                        node: std::sync::OnceLock::new(),
                    })
                } else {
                    None
                };
                Ok((db, applied))
            }
            Kind::Sqlite => {
                let connect = sqlite::connect_options(database_url, options).map_err(error::map)?;
                if sqlite::is_memory(database_url) {
                    if !with_pool {
                        // An in-memory database lives as long as its connection: nothing to do.
                        return Ok((None, Vec::new()));
                    }
                    let pool = sqlite::pool(connect, options, true).await.map_err(error::map)?;
                    let mut conn = pool.acquire().await.map_err(error::map)?;
                    let applied =
                        sqlite::migrate(&mut conn, migrations::SQLITE).await.map_err(error::map_migrate)?;
                    drop(conn);
                    return Ok((
                        Some(Db { backend: Backend::Sqlite(pool), node: std::sync::OnceLock::new() }),
                        applied,
                    ));
                }
                sqlite::create_parent_dir(&connect).map_err(|e| error::map(sqlx::Error::Io(e)))?;
                let mut conn = within(options.connect_timeout(), sqlite::connect_one(&connect)).await?;
                let applied =
                    sqlite::migrate(&mut conn, migrations::SQLITE).await.map_err(error::map_migrate)?;
                let _ = conn.close().await;
                let db = if with_pool {
                    Some(Db {
                        backend: Backend::Sqlite(
                            sqlite::pool(connect, options, false).await.map_err(error::map)?,
                        ),
                        node: std::sync::OnceLock::new(),
                    })
                } else {
                    None
                };
                Ok((db, applied))
            }
        }
    }
    .await;
    result.map_err(|e| context(e, &shown))
}

/// Connects to `database_url` (`sqlite://...` or `postgres://...`), applies missing migrations
/// and returns the pool. An unreachable database is `StoreError::Unavailable` after at most
/// `connect_timeout` (the caller retries with backoff).
pub async fn connect(database_url: &str, options: &StoreOptions) -> Result<Db, StoreError> {
    let (db, applied) = open(database_url, options, true).await?;
    let db = db.ok_or_else(|| StoreError::Other("no pool opened".into()))?;
    if !applied.is_empty() {
        tracing::info!(backend = db.backend_name(), ?applied, "database migrated");
    }
    Ok(db)
}

/// Applies missing migrations (for `tern migrate`); returns the versions applied now (empty
/// when the schema was current). Creates a SQLite file if missing.
pub async fn migrate(database_url: &str, options: &StoreOptions) -> Result<Vec<i64>, StoreError> {
    open(database_url, options, false).await.map(|(_, applied)| applied)
}

impl Db {
    /// "sqlite" or "postgres".
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Cluster mode: `load` reads only the sessions node `node` owns (and every retained
    /// entry). Refused on SQLite, which cannot be shared by several brokers.
    pub fn set_cluster_node(&self, node: &str) -> Result<(), StoreError> {
        if !matches!(self.backend, Backend::Postgres(_)) {
            return Err(StoreError::Other(
                "cluster mode needs PostgreSQL (database.url = \"postgres://...\")".into(),
            ));
        }
        let _ = self.node.set(node.to_owned());
        Ok(())
    }

    /// The PostgreSQL pool (cluster bookkeeping runs its own statements on it).
    pub fn pg_pool(&self) -> Option<sqlx::PgPool> {
        match &self.backend {
            Backend::Postgres(pool) => Some(pool.clone()),
            Backend::Sqlite(_) => None,
        }
    }

    /// Closes every connection; later calls fail with `Unavailable`.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(pool) => pool.close().await,
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

/// Runs `$body` with `$conn` bound to a connection of `$db`'s pool and `$b` naming that
/// backend's module (`pg` or `sqlite`); maps errors. A connection whose statement failed
/// because the connection broke is closed at once (sqlx would otherwise ping it on release
/// first, find it dead, and close it then).
macro_rules! on_conn {
    ($db:expr, |$conn:ident, $b:ident| $body:expr) => {
        match &$db.backend {
            Backend::Sqlite(pool) => {
                use crate::sqlite as $b;
                on_conn!(@run pool, |$conn| $body)
            }
            Backend::Postgres(pool) => {
                use crate::pg as $b;
                on_conn!(@run pool, |$conn| $body)
            }
        }
    };
    (@run $pool:expr, |$conn:ident| $body:expr) => {{
        match $pool.acquire().await {
            Err(e) => Err(error::map(e)),
            Ok(mut pooled) => {
                let result = async {
                    let $conn = &mut *pooled;
                    Ok::<_, sqlx::Error>($body)
                }
                .await;
                if let Err(e) = &result
                    && error::breaks_connection(e)
                {
                    pooled.close_on_drop();
                }
                result.map_err(error::map)
            }
        }
    }};
}

/// `on_conn!` inside a write transaction (`BEGIN IMMEDIATE` on SQLite), committed after `$body`.
macro_rules! write_tx {
    ($db:expr, |$conn:ident, $b:ident| $body:expr) => {
        on_conn!($db, |pooled, $b| {
            let mut tx = $b::begin_write(pooled).await?;
            let out = {
                let $conn = &mut *tx;
                $body
            };
            tx.commit().await?;
            out
        })
    };
}

impl Store for Db {
    fn apply<'a>(&'a self, ops: &'a [StoreOp]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if ops.is_empty() {
                return Ok(());
            }
            on_conn!(self, |conn, b| b::apply_batch(conn, ops).await?)
        })
    }

    fn load(&self) -> StoreFuture<'_, Snapshot> {
        Box::pin(async move {
            match (self.node.get(), &self.backend) {
                (Some(node), Backend::Postgres(pool)) => {
                    on_conn!(@run pool, |conn| crate::pg::load_node_snapshot(conn, node).await?)
                }
                _ => on_conn!(self, |conn, b| b::load_snapshot(conn).await?),
            }
        })
    }

    fn load_sessions<'a>(&'a self, client_ids: &'a [String]) -> StoreFuture<'a, Snapshot> {
        Box::pin(async move {
            match &self.backend {
                Backend::Postgres(pool) => {
                    on_conn!(@run pool, |conn| crate::pg::load_sessions_snapshot(conn, client_ids).await?)
                }
                Backend::Sqlite(_) => Err(StoreError::Other("sqlite cannot load single sessions".into())),
            }
        })
    }

    fn sweep(&self, now: UnixMillis) -> StoreFuture<'_, u64> {
        Box::pin(async move { on_conn!(self, |conn, b| b::sweep_all(conn, now).await?) })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move { on_conn!(self, |conn, b| b::ping(conn).await?) })
    }

    fn ping_write(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move { on_conn!(self, |conn, b| b::ping_write(conn).await?) })
    }

    fn pool_connections(&self) -> Option<(u32, u32)> {
        Some(match &self.backend {
            Backend::Sqlite(pool) => (pool.size(), pool.num_idle() as u32),
            Backend::Postgres(pool) => (pool.size(), pool.num_idle() as u32),
        })
    }

    fn backend(&self) -> &'static str {
        self.backend_name()
    }
}

impl DirectoryStore for Db {
    fn add_device<'a>(&'a self, device: &'a Device) -> StoreFuture<'a, ()> {
        Box::pin(async move { write_tx!(self, |conn, b| b::add_device(conn, device).await?) })
    }

    fn update_device<'a>(&'a self, device: &'a Device) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if write_tx!(self, |conn, b| b::update_device(conn, device).await?)? {
                Ok(())
            } else {
                Err(StoreError::NotFound(format!("device {:?}", device.client_id)))
            }
        })
    }

    fn remove_device<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move { write_tx!(self, |conn, b| b::remove_device(conn, client_id).await?) })
    }

    fn device_by_client_id<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<Device>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::device_by_client_id(conn, client_id).await?) })
    }

    fn device_by_username<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<Device>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::device_by_username(conn, username).await?) })
    }

    fn list_devices(&self) -> StoreFuture<'_, Vec<Device>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::list_devices(conn).await?) })
    }

    fn query_devices<'a>(&'a self, query: &'a DeviceQuery) -> StoreFuture<'a, Vec<Device>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::query_devices(conn, query).await?) })
    }

    fn device_client_ids<'a>(&'a self, after: &'a str, limit: u32) -> StoreFuture<'a, Option<Vec<String>>> {
        Box::pin(
            async move { on_conn!(self, |conn, b| Some(b::device_client_ids(conn, after, limit).await?)) },
        )
    }

    fn add_acl_rule<'a>(&'a self, rule: &'a AclRule) -> StoreFuture<'a, i64> {
        Box::pin(async move { write_tx!(self, |conn, b| b::add_acl_rule(conn, rule).await?) })
    }

    fn remove_acl_rule(&self, id: i64) -> StoreFuture<'_, bool> {
        Box::pin(async move { write_tx!(self, |conn, b| b::remove_acl_rule(conn, id).await?) })
    }

    fn list_acl_rules(&self) -> StoreFuture<'_, Vec<AclRule>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::list_acl_rules(conn).await?) })
    }

    fn update_acl_rule<'a>(&'a self, rule: &'a AclRule) -> StoreFuture<'a, bool> {
        Box::pin(async move { write_tx!(self, |conn, b| b::update_acl_rule(conn, rule).await?) })
    }

    fn directory_version(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move { on_conn!(self, |conn, b| b::directory_version(conn).await?) })
    }

    fn put_admin_user<'a>(&'a self, user: &'a AdminUser) -> StoreFuture<'a, ()> {
        Box::pin(async move { on_conn!(self, |conn, b| b::put_admin_user(conn, user).await?) })
    }

    fn add_admin_user<'a>(&'a self, user: &'a AdminUser) -> StoreFuture<'a, ()> {
        Box::pin(async move { on_conn!(self, |conn, b| b::add_admin_user(conn, user).await?) })
    }

    fn admin_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<AdminUser>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::admin_user(conn, username).await?) })
    }

    fn list_admin_users(&self) -> StoreFuture<'_, Vec<AdminUser>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::list_admin_users(conn).await?) })
    }

    fn remove_admin_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move { write_tx!(self, |conn, b| b::remove_admin_user(conn, username).await?) })
    }

    fn add_api_key<'a>(&'a self, key: &'a ApiKey) -> StoreFuture<'a, ()> {
        Box::pin(async move { on_conn!(self, |conn, b| b::add_api_key(conn, key).await?) })
    }

    fn api_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ApiKey>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::api_key(conn, id).await?) })
    }

    fn list_api_keys(&self) -> StoreFuture<'_, Vec<ApiKey>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::list_api_keys(conn).await?) })
    }

    fn remove_api_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move { on_conn!(self, |conn, b| b::remove_api_key(conn, id).await?) })
    }

    fn touch_api_key<'a>(&'a self, id: &'a str, at: UnixMillis) -> StoreFuture<'a, ()> {
        Box::pin(async move { on_conn!(self, |conn, b| b::touch_api_key(conn, id, at).await?) })
    }

    fn add_refresh_token<'a>(&'a self, token: &'a RefreshToken) -> StoreFuture<'a, ()> {
        Box::pin(async move { on_conn!(self, |conn, b| b::add_refresh_token(conn, token).await?) })
    }

    fn use_refresh_token<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<RefreshToken>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::use_refresh_token(conn, id).await?) })
    }

    fn login_alive<'a>(&'a self, family: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move { on_conn!(self, |conn, b| b::login_alive(conn, family).await?) })
    }

    fn revoke_refresh_family<'a>(&'a self, family: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move { on_conn!(self, |conn, b| b::revoke_refresh_family(conn, family).await?) })
    }

    fn revoke_refresh_tokens_of<'a>(&'a self, username: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move { on_conn!(self, |conn, b| b::revoke_refresh_tokens_of(conn, username).await?) })
    }

    fn sweep_refresh_tokens(&self, now: UnixMillis) -> StoreFuture<'_, u64> {
        Box::pin(async move { on_conn!(self, |conn, b| b::sweep_refresh_tokens(conn, now).await?) })
    }

    fn setting<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::setting(conn, name).await?) })
    }

    fn init_setting<'a>(&'a self, name: &'a str, value: &'a str) -> StoreFuture<'a, String> {
        Box::pin(async move { write_tx!(self, |conn, b| b::init_setting(conn, name, value).await?) })
    }

    fn append_audit<'a>(&'a self, entry: &'a AuditEntry) -> StoreFuture<'a, i64> {
        Box::pin(async move { on_conn!(self, |conn, b| b::append_audit(conn, entry).await?) })
    }

    fn recent_audit(&self, limit: u32) -> StoreFuture<'_, Vec<AuditEntry>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::recent_audit(conn, limit).await?) })
    }

    fn query_audit<'a>(&'a self, query: &'a AuditQuery) -> StoreFuture<'a, Vec<AuditEntry>> {
        Box::pin(async move { on_conn!(self, |conn, b| b::query_audit(conn, query).await?) })
    }
}
