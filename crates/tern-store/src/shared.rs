//! The operations whose SQL is the same on both backends, written once and compiled once per
//! backend: `backend_fns!(PgConnection)` in `pg.rs`, `backend_fns!(SqliteConnection)` in
//! `sqlite.rs`. (A macro rather than functions generic over `sqlx::Database`: the generic
//! versions need a dozen higher-ranked `Encode`/`Executor` bounds on every function, and the
//! `Any` driver has no arrays for PostgreSQL's batched inserts; see docs/persistence.md.)
//!
//! Every function takes a connection (a pooled one or an open transaction); the caller owns
//! the transaction boundaries. Unsigned values are bound as the next wider signed type
//! (PostgreSQL has no unsigned integers): u8 -> i16, u16 -> i32, u32 -> i64.

macro_rules! backend_fns {
    ($Conn:ty) => {
        use tern_broker::store::{
            AclRule, AdminUser, ApiKey, AuditEntry, AuditQuery, Device, DeviceQuery, RefreshToken, Snapshot,
            StoreOp, StoredDelivery, StoredMessage, StoredSession, StoredSubscription, UnixMillis,
        };

        use crate::{rows, sql};

        /// Applies the embedded migrations of `list` that are missing; returns their versions.
        pub(crate) async fn migrate(
            conn: &mut $Conn,
            list: &'static [crate::migrations::Embedded],
        ) -> Result<Vec<i64>, sqlx::migrate::MigrateError> {
            use sqlx::migrate::Migrate;
            let migrator = crate::migrations::migrator(list).await?;
            // Hold the migration lock (re-entrant) while reading what is applied, so that a
            // concurrent migrator cannot interleave; `run` takes and releases it once more.
            conn.lock().await?;
            conn.ensure_migrations_table().await?;
            let before: Vec<i64> = conn.list_applied_migrations().await?.iter().map(|m| m.version).collect();
            migrator.run(&mut *conn).await?;
            conn.unlock().await?;
            Ok(migrator.iter().map(|m| m.version).filter(|v| !before.contains(v)).collect())
        }

        /// Applies one operation (its own statement).
        pub(crate) async fn apply_op(conn: &mut $Conn, op: &StoreOp) -> Result<(), sqlx::Error> {
            match op {
                StoreOp::PutSession(s) => put_session(conn, s).await,
                StoreOp::DeleteSession { client_id } => {
                    for statement in sql::DELETE_SESSION {
                        sqlx::query(statement).bind(client_id).execute(&mut *conn).await?;
                    }
                    Ok(())
                }
                StoreOp::PutSubscription(s) => put_subscription(conn, s).await,
                StoreOp::DeleteSubscription { client_id, filter } => sqlx::query(sql::DELETE_SUBSCRIPTION)
                    .bind(client_id)
                    .bind(filter)
                    .execute(&mut *conn)
                    .await
                    .map(drop),
                StoreOp::PutMessage(m) => put_message(conn, m).await,
                StoreOp::PutDelivery(d) => put_delivery(conn, d, d.state).await,
                StoreOp::SetDeliveryState { client_id, seq, state } => sqlx::query(sql::SET_DELIVERY_STATE)
                    .bind(client_id)
                    .bind(seq)
                    .bind(i16::from(*state))
                    .execute(&mut *conn)
                    .await
                    .map(drop),
                StoreOp::DeleteDelivery { client_id, seq } => sqlx::query(sql::DELETE_DELIVERY)
                    .bind(client_id)
                    .bind(seq)
                    .execute(&mut *conn)
                    .await
                    .map(drop),
                StoreOp::PutInbound { client_id, packet_id } => sqlx::query(sql::PUT_INBOUND)
                    .bind(client_id)
                    .bind(i32::from(*packet_id))
                    .execute(&mut *conn)
                    .await
                    .map(drop),
                StoreOp::DeleteInbound { client_id, packet_id } => sqlx::query(sql::DELETE_INBOUND)
                    .bind(client_id)
                    .bind(i32::from(*packet_id))
                    .execute(&mut *conn)
                    .await
                    .map(drop),
                StoreOp::PutRetained { topic, message_id, client_id } => sqlx::query(sql::PUT_RETAINED)
                    .bind(topic)
                    .bind(message_id)
                    .bind(client_id.as_deref())
                    .execute(&mut *conn)
                    .await
                    .map(drop),
                StoreOp::DeleteRetained { topic } => {
                    sqlx::query(sql::DELETE_RETAINED).bind(topic).execute(&mut *conn).await.map(drop)
                }
            }
        }

        async fn put_session(conn: &mut $Conn, s: &StoredSession) -> Result<(), sqlx::Error> {
            sqlx::query(sql::PUT_SESSION)
                .bind(&s.client_id)
                .bind(i64::from(s.expiry_interval))
                .bind(i16::from(s.protocol))
                .bind(s.disconnected_at)
                .bind(s.will.as_deref())
                .bind(s.will_at)
                .bind(s.last_seq)
                .bind(s.owner.as_deref())
                .execute(&mut *conn)
                .await
                .map(drop)
        }

        async fn put_subscription(conn: &mut $Conn, s: &StoredSubscription) -> Result<(), sqlx::Error> {
            sqlx::query(sql::PUT_SUBSCRIPTION)
                .bind(&s.client_id)
                .bind(&s.filter)
                .bind(i16::from(s.options))
                .bind(s.subscription_id.map(i64::from))
                .execute(&mut *conn)
                .await
                .map(drop)
        }

        /// Inserts a message body unless its id exists.
        pub(crate) async fn put_message(conn: &mut $Conn, m: &StoredMessage) -> Result<(), sqlx::Error> {
            sqlx::query(sql::PUT_MESSAGE)
                .bind(m.id)
                .bind(&m.topic)
                .bind(m.payload.as_slice())
                .bind(i16::from(m.qos))
                .bind(m.retain)
                .bind(m.properties.as_slice())
                .bind(m.expires_at)
                .bind(m.created_at)
                .execute(&mut *conn)
                .await
                .map(drop)
        }

        /// Inserts or replaces a delivery, with `state` instead of `d.state`.
        pub(crate) async fn put_delivery(
            conn: &mut $Conn,
            d: &StoredDelivery,
            state: u8,
        ) -> Result<(), sqlx::Error> {
            sqlx::query(sql::PUT_DELIVERY)
                .bind(&d.client_id)
                .bind(d.seq)
                .bind(d.message_id)
                .bind(i16::from(d.qos))
                .bind(d.retain)
                .bind(rows::encode_ids(&d.subscription_ids))
                .bind(i16::from(state))
                .execute(&mut *conn)
                .await
                .map(drop)
        }

        /// Reads the whole broker state (the caller runs it in one read transaction).
        pub(crate) async fn load(conn: &mut $Conn) -> Result<Snapshot, sqlx::Error> {
            let sessions = sqlx::query(sql::LOAD_SESSIONS).fetch_all(&mut *conn).await?;
            let subscriptions = sqlx::query(sql::LOAD_SUBSCRIPTIONS).fetch_all(&mut *conn).await?;
            let deliveries = sqlx::query(sql::LOAD_DELIVERIES).fetch_all(&mut *conn).await?;
            let inbound = sqlx::query(sql::LOAD_INBOUND).fetch_all(&mut *conn).await?;
            let retained = sqlx::query(sql::LOAD_RETAINED).fetch_all(&mut *conn).await?;
            let messages = sqlx::query(sql::LOAD_MESSAGES).fetch_all(&mut *conn).await?;
            Ok(Snapshot {
                sessions: sessions.iter().map(rows::session).collect::<Result<_, _>>()?,
                subscriptions: subscriptions.iter().map(rows::subscription).collect::<Result<_, _>>()?,
                deliveries: deliveries.iter().map(rows::delivery).collect::<Result<_, _>>()?,
                inbound: inbound.iter().map(rows::inbound).collect::<Result<_, _>>()?,
                retained: retained.iter().map(rows::retained).collect::<Result<_, _>>()?,
                messages: messages.iter().map(rows::message).collect::<Result<_, _>>()?,
            })
        }

        /// Deletes rows of sessions that no longer exist, expired deliveries and retained
        /// entries, then unreferenced messages; returns the rows deleted (the caller runs it in
        /// one write transaction).
        pub(crate) async fn sweep(conn: &mut $Conn, now: UnixMillis) -> Result<u64, sqlx::Error> {
            let mut orphans = 0;
            for statement in sql::SWEEP_ORPHANED_SESSION_ROWS {
                orphans += sqlx::query(statement).execute(&mut *conn).await?.rows_affected();
            }
            let deliveries = sqlx::query(sql::SWEEP_EXPIRED_DELIVERIES)
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            let retained =
                sqlx::query(sql::SWEEP_EXPIRED_RETAINED).bind(now).execute(&mut *conn).await?.rows_affected();
            let messages =
                sqlx::query(sql::SWEEP_ORPHANED_MESSAGES).execute(&mut *conn).await?.rows_affected();
            Ok(orphans + deliveries + retained + messages)
        }

        /// A round trip to the database.
        pub(crate) async fn ping(conn: &mut $Conn) -> Result<(), sqlx::Error> {
            sqlx::query("SELECT 1").execute(&mut *conn).await.map(drop)
        }

        /// Commits a write that changes nothing (the directory version set to itself).
        pub(crate) async fn ping_write(conn: &mut $Conn) -> Result<(), sqlx::Error> {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::query(sql::TOUCH_DIRECTORY_VERSION).execute(&mut *tx).await?;
            tx.commit().await
        }

        async fn bump_directory_version(conn: &mut $Conn) -> Result<(), sqlx::Error> {
            sqlx::query(sql::BUMP_DIRECTORY_VERSION).execute(&mut *conn).await.map(drop)
        }

        /// Inserts a device and bumps the directory version.
        pub(crate) async fn add_device(conn: &mut $Conn, d: &Device) -> Result<(), sqlx::Error> {
            sqlx::query(sql::ADD_DEVICE)
                .bind(&d.client_id)
                .bind(d.username.as_deref())
                .bind(d.password_hash.as_deref())
                .bind(d.scram_verifier.as_deref())
                .bind(d.cert_identity.as_deref())
                .bind(d.enabled)
                .bind(d.created_at)
                .bind(rows::encode_labels(&d.labels)?)
                .bind(rows::encode_limits(&d.limits)?)
                .execute(&mut *conn)
                .await?;
            bump_directory_version(conn).await
        }

        /// Replaces a device's fields; returns whether it existed (the version is bumped if so).
        pub(crate) async fn update_device(conn: &mut $Conn, d: &Device) -> Result<bool, sqlx::Error> {
            let updated = sqlx::query(sql::UPDATE_DEVICE)
                .bind(&d.client_id)
                .bind(d.username.as_deref())
                .bind(d.password_hash.as_deref())
                .bind(d.scram_verifier.as_deref())
                .bind(d.cert_identity.as_deref())
                .bind(d.enabled)
                .bind(d.created_at)
                .bind(rows::encode_labels(&d.labels)?)
                .bind(rows::encode_limits(&d.limits)?)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if updated > 0 {
                bump_directory_version(conn).await?;
            }
            Ok(updated > 0)
        }

        /// Deletes a device; returns whether it existed (the version is bumped if so).
        pub(crate) async fn remove_device(conn: &mut $Conn, client_id: &str) -> Result<bool, sqlx::Error> {
            let removed =
                sqlx::query(sql::REMOVE_DEVICE).bind(client_id).execute(&mut *conn).await?.rows_affected();
            if removed > 0 {
                bump_directory_version(conn).await?;
            }
            Ok(removed > 0)
        }

        pub(crate) async fn device_by_client_id(
            conn: &mut $Conn,
            client_id: &str,
        ) -> Result<Option<Device>, sqlx::Error> {
            let row =
                sqlx::query(sql::DEVICE_BY_CLIENT_ID).bind(client_id).fetch_optional(&mut *conn).await?;
            row.as_ref().map(rows::device).transpose()
        }

        pub(crate) async fn device_by_username(
            conn: &mut $Conn,
            username: &str,
        ) -> Result<Option<Device>, sqlx::Error> {
            let row = sqlx::query(sql::DEVICE_BY_USERNAME).bind(username).fetch_optional(&mut *conn).await?;
            row.as_ref().map(rows::device).transpose()
        }

        pub(crate) async fn list_devices(conn: &mut $Conn) -> Result<Vec<Device>, sqlx::Error> {
            let found = sqlx::query(sql::LIST_DEVICES).fetch_all(&mut *conn).await?;
            found.iter().map(rows::device).collect()
        }

        /// Client ids of devices after `after`, in order, `limit` at most.
        pub(crate) async fn device_client_ids(
            conn: &mut $Conn,
            after: &str,
            limit: u32,
        ) -> Result<Vec<String>, sqlx::Error> {
            let found = sqlx::query(sql::DEVICE_CLIENT_IDS)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
            found.iter().map(|r| rows::RowGet::text(r, 0)).collect()
        }

        /// Devices matching `q` (`QUERY_DEVICES` is the backend module's own statement).
        pub(crate) async fn query_devices(
            conn: &mut $Conn,
            q: &DeviceQuery,
        ) -> Result<Vec<Device>, sqlx::Error> {
            let needle = q.label.as_ref().map(|(key, value)| rows::label_needle(key, value)).transpose()?;
            let found = sqlx::query(QUERY_DEVICES)
                .bind(q.after.as_deref())
                .bind(q.enabled)
                .bind(q.search.as_deref())
                .bind(needle)
                .bind(q.label.as_ref().map(|(key, _)| key.as_str()))
                .bind(q.label.as_ref().map(|(_, value)| value.as_str()))
                .bind(i64::from(q.limit))
                .fetch_all(&mut *conn)
                .await?;
            found.iter().map(rows::device).collect()
        }

        /// Inserts an ACL rule, bumps the directory version, returns the rule's id.
        pub(crate) async fn add_acl_rule(conn: &mut $Conn, r: &AclRule) -> Result<i64, sqlx::Error> {
            let row = sqlx::query(sql::ADD_ACL_RULE)
                .bind(r.client_id.as_deref())
                .bind(r.username.as_deref())
                .bind(rows::permission_text(r.permission))
                .bind(rows::action_text(r.action))
                .bind(&r.topic)
                .bind(r.max_qos.map(i16::from))
                .bind(r.allow_retain)
                .fetch_one(&mut *conn)
                .await?;
            let id = rows::RowGet::int(&row, 0)?;
            bump_directory_version(conn).await?;
            Ok(id)
        }

        /// Deletes an ACL rule; returns whether it existed (the version is bumped if so).
        pub(crate) async fn remove_acl_rule(conn: &mut $Conn, id: i64) -> Result<bool, sqlx::Error> {
            let removed =
                sqlx::query(sql::REMOVE_ACL_RULE).bind(id).execute(&mut *conn).await?.rows_affected();
            if removed > 0 {
                bump_directory_version(conn).await?;
            }
            Ok(removed > 0)
        }

        /// Replaces an ACL rule's fields; returns whether it existed (the version is bumped if so).
        pub(crate) async fn update_acl_rule(conn: &mut $Conn, r: &AclRule) -> Result<bool, sqlx::Error> {
            let updated = sqlx::query(sql::UPDATE_ACL_RULE)
                .bind(r.id)
                .bind(r.client_id.as_deref())
                .bind(r.username.as_deref())
                .bind(rows::permission_text(r.permission))
                .bind(rows::action_text(r.action))
                .bind(&r.topic)
                .bind(r.max_qos.map(i16::from))
                .bind(r.allow_retain)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if updated > 0 {
                bump_directory_version(conn).await?;
            }
            Ok(updated > 0)
        }

        pub(crate) async fn list_acl_rules(conn: &mut $Conn) -> Result<Vec<AclRule>, sqlx::Error> {
            let found = sqlx::query(sql::LIST_ACL_RULES).fetch_all(&mut *conn).await?;
            found.iter().map(rows::acl_rule).collect()
        }

        pub(crate) async fn directory_version(conn: &mut $Conn) -> Result<i64, sqlx::Error> {
            let row = sqlx::query(sql::DIRECTORY_VERSION).fetch_one(&mut *conn).await?;
            rows::RowGet::int(&row, 0)
        }

        /// Inserts or replaces an admin user.
        pub(crate) async fn put_admin_user(conn: &mut $Conn, u: &AdminUser) -> Result<(), sqlx::Error> {
            sqlx::query(sql::PUT_ADMIN_USER)
                .bind(&u.username)
                .bind(&u.password_hash)
                .bind(&u.role)
                .bind(u.created_at)
                .execute(&mut *conn)
                .await
                .map(drop)
        }

        /// Inserts an admin user (a taken name is a unique violation: `Conflict`).
        pub(crate) async fn add_admin_user(conn: &mut $Conn, u: &AdminUser) -> Result<(), sqlx::Error> {
            sqlx::query(sql::ADD_ADMIN_USER)
                .bind(&u.username)
                .bind(&u.password_hash)
                .bind(&u.role)
                .bind(u.created_at)
                .execute(&mut *conn)
                .await
                .map(drop)
        }

        pub(crate) async fn admin_user(
            conn: &mut $Conn,
            username: &str,
        ) -> Result<Option<AdminUser>, sqlx::Error> {
            let row = sqlx::query(sql::ADMIN_USER).bind(username).fetch_optional(&mut *conn).await?;
            row.as_ref().map(rows::admin_user).transpose()
        }

        pub(crate) async fn list_admin_users(conn: &mut $Conn) -> Result<Vec<AdminUser>, sqlx::Error> {
            let found = sqlx::query(sql::LIST_ADMIN_USERS).fetch_all(&mut *conn).await?;
            found.iter().map(rows::admin_user).collect()
        }

        /// Deletes an admin user and its refresh tokens (the caller runs it in one write
        /// transaction); returns whether the user existed.
        pub(crate) async fn remove_admin_user(conn: &mut $Conn, username: &str) -> Result<bool, sqlx::Error> {
            revoke_refresh_tokens_of(conn, username).await?;
            let removed =
                sqlx::query(sql::REMOVE_ADMIN_USER).bind(username).execute(&mut *conn).await?.rows_affected();
            Ok(removed > 0)
        }

        pub(crate) async fn add_api_key(conn: &mut $Conn, k: &ApiKey) -> Result<(), sqlx::Error> {
            sqlx::query(sql::ADD_API_KEY)
                .bind(&k.id)
                .bind(&k.name)
                .bind(&k.secret_hash)
                .bind(&k.role)
                .bind(&k.created_by)
                .bind(k.created_at)
                .bind(k.last_used_at)
                .bind(k.expires_at)
                .execute(&mut *conn)
                .await
                .map(drop)
        }

        pub(crate) async fn api_key(conn: &mut $Conn, id: &str) -> Result<Option<ApiKey>, sqlx::Error> {
            let row = sqlx::query(sql::API_KEY).bind(id).fetch_optional(&mut *conn).await?;
            row.as_ref().map(rows::api_key).transpose()
        }

        pub(crate) async fn list_api_keys(conn: &mut $Conn) -> Result<Vec<ApiKey>, sqlx::Error> {
            let found = sqlx::query(sql::LIST_API_KEYS).fetch_all(&mut *conn).await?;
            found.iter().map(rows::api_key).collect()
        }

        pub(crate) async fn remove_api_key(conn: &mut $Conn, id: &str) -> Result<bool, sqlx::Error> {
            let removed =
                sqlx::query(sql::REMOVE_API_KEY).bind(id).execute(&mut *conn).await?.rows_affected();
            Ok(removed > 0)
        }

        pub(crate) async fn touch_api_key(
            conn: &mut $Conn,
            id: &str,
            at: UnixMillis,
        ) -> Result<(), sqlx::Error> {
            sqlx::query(sql::TOUCH_API_KEY).bind(id).bind(at).execute(&mut *conn).await.map(drop)
        }

        pub(crate) async fn add_refresh_token(conn: &mut $Conn, t: &RefreshToken) -> Result<(), sqlx::Error> {
            sqlx::query(sql::ADD_REFRESH_TOKEN)
                .bind(&t.id)
                .bind(&t.family)
                .bind(&t.username)
                .bind(t.issued_at)
                .bind(t.expires_at)
                .execute(&mut *conn)
                .await
                .map(drop)
        }

        /// Counts one use of a token and returns it after that (one atomic statement).
        pub(crate) async fn use_refresh_token(
            conn: &mut $Conn,
            id: &str,
        ) -> Result<Option<RefreshToken>, sqlx::Error> {
            let row = sqlx::query(sql::USE_REFRESH_TOKEN).bind(id).fetch_optional(&mut *conn).await?;
            row.as_ref().map(rows::refresh_token).transpose()
        }

        pub(crate) async fn login_alive(conn: &mut $Conn, family: &str) -> Result<bool, sqlx::Error> {
            let row = sqlx::query(sql::LOGIN_ALIVE).bind(family).fetch_one(&mut *conn).await?;
            Ok(rows::RowGet::int(&row, 0)? > 0)
        }

        pub(crate) async fn revoke_refresh_family(
            conn: &mut $Conn,
            family: &str,
        ) -> Result<u64, sqlx::Error> {
            sqlx::query(sql::REVOKE_REFRESH_FAMILY)
                .bind(family)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected())
        }

        pub(crate) async fn revoke_refresh_tokens_of(
            conn: &mut $Conn,
            username: &str,
        ) -> Result<u64, sqlx::Error> {
            sqlx::query(sql::REVOKE_REFRESH_TOKENS_OF)
                .bind(username)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected())
        }

        pub(crate) async fn sweep_refresh_tokens(
            conn: &mut $Conn,
            now: UnixMillis,
        ) -> Result<u64, sqlx::Error> {
            sqlx::query(sql::SWEEP_REFRESH_TOKENS)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected())
        }

        pub(crate) async fn setting(conn: &mut $Conn, name: &str) -> Result<Option<String>, sqlx::Error> {
            let row = sqlx::query(sql::SETTING).bind(name).fetch_optional(&mut *conn).await?;
            row.as_ref().map(|r| rows::RowGet::text(r, 0)).transpose()
        }

        /// Stores `value` unless `name` has one; returns the value in force (the caller runs it
        /// in one write transaction).
        pub(crate) async fn init_setting(
            conn: &mut $Conn,
            name: &str,
            value: &str,
        ) -> Result<String, sqlx::Error> {
            sqlx::query(sql::INIT_SETTING).bind(name).bind(value).execute(&mut *conn).await?;
            let row = sqlx::query(sql::SETTING).bind(name).fetch_one(&mut *conn).await?;
            rows::RowGet::text(&row, 0)
        }

        pub(crate) async fn append_audit(conn: &mut $Conn, e: &AuditEntry) -> Result<i64, sqlx::Error> {
            let row = sqlx::query(sql::APPEND_AUDIT)
                .bind(e.at)
                .bind(&e.actor)
                .bind(&e.action)
                .bind(e.target.as_deref())
                .bind(e.source.as_deref())
                .bind(&e.detail)
                .fetch_one(&mut *conn)
                .await?;
            rows::RowGet::int(&row, 0)
        }

        pub(crate) async fn recent_audit(
            conn: &mut $Conn,
            limit: u32,
        ) -> Result<Vec<AuditEntry>, sqlx::Error> {
            let found = sqlx::query(sql::RECENT_AUDIT).bind(i64::from(limit)).fetch_all(&mut *conn).await?;
            found.iter().map(rows::audit_entry).collect()
        }

        pub(crate) async fn query_audit(
            conn: &mut $Conn,
            q: &AuditQuery,
        ) -> Result<Vec<AuditEntry>, sqlx::Error> {
            let found = sqlx::query(sql::QUERY_AUDIT)
                .bind(q.actor.as_deref())
                .bind(q.action_prefix.as_deref())
                .bind(q.target.as_deref())
                .bind(q.since)
                .bind(q.until)
                .bind(q.before_id)
                .bind(i64::from(q.limit))
                .fetch_all(&mut *conn)
                .await?;
            found.iter().map(rows::audit_entry).collect()
        }
    };
}

pub(crate) use backend_fns;
