//! Mapping of sqlx errors to the broker's `StoreError`: unreachable -> `Unavailable`, unique
//! violation -> `Conflict`, missing row -> `NotFound`, anything else -> `Other`.

use sqlx::error::DatabaseError;
use sqlx::migrate::MigrateError;
use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;
use tern_broker::store::StoreError;

/// Maps an sqlx error to a `StoreError`.
pub(crate) fn map(error: sqlx::Error) -> StoreError {
    use sqlx::Error;
    match error {
        Error::Database(db) => map_database(db.as_ref()),
        Error::Io(_) | Error::PoolTimedOut | Error::PoolClosed | Error::WorkerCrashed | Error::Tls(_) => {
            StoreError::Unavailable(error.to_string())
        }
        Error::RowNotFound => StoreError::NotFound(error.to_string()),
        other => StoreError::Other(other.to_string()),
    }
}

/// Whether the connection that returned `error` is unusable (the transport failed, or the server
/// ended the session): it must be closed, not returned to the pool.
///
/// SQLite: after FULL, IOERR and the other environmental errors SQLite may have rolled the whole
/// transaction back by itself; sqlx's ROLLBACK of the dropped transaction then fails and sqlx
/// keeps counting the transaction as open, so every later `BEGIN` on that connection fails with
/// "attempted to call begin_with at non-zero transaction depth" (a disk that filled up once
/// would fail every commit for good). Such a connection is closed; so is one already in that
/// state.
pub(crate) fn breaks_connection(error: &sqlx::Error) -> bool {
    use sqlx::Error;
    match error {
        Error::Io(_)
        | Error::Protocol(_)
        | Error::Tls(_)
        | Error::WorkerCrashed
        | Error::InvalidSavePointStatement => true,
        Error::Database(db) => {
            if db.try_downcast_ref::<PgDatabaseError>().is_some() {
                db.code().is_some_and(|code| postgres_unavailable(&code))
            } else if db.try_downcast_ref::<SqliteError>().is_some() {
                db.code().and_then(|code| code.parse::<i32>().ok()).is_some_and(sqlite_unavailable)
            } else {
                false
            }
        }
        _ => false,
    }
}

fn map_database(db: &dyn DatabaseError) -> StoreError {
    let message = match db.code() {
        Some(code) => format!("{} ({code})", db.message()),
        None => db.message().to_owned(),
    };
    if db.is_unique_violation() {
        return StoreError::Conflict(message);
    }
    let unavailable = if db.try_downcast_ref::<PgDatabaseError>().is_some() {
        db.code().is_some_and(|code| postgres_unavailable(&code))
    } else if db.try_downcast_ref::<SqliteError>().is_some() {
        db.code().and_then(|code| code.parse::<i32>().ok()).is_some_and(sqlite_unavailable)
    } else {
        false
    };
    if unavailable { StoreError::Unavailable(message) } else { StoreError::Other(message) }
}

/// PostgreSQL conditions that mean "the server cannot serve us right now": connection
/// exceptions (08), insufficient resources (53: disk full, out of memory, too many
/// connections), operator intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03
/// cannot connect now, 57P05 idle session timeout) and system errors (58: I/O error).
fn postgres_unavailable(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "58")) || matches!(code, "57P01" | "57P02" | "57P03" | "57P05")
}

/// SQLite primary result codes that are transient or environmental: BUSY (5), LOCKED (6),
/// IOERR (10), FULL (13), CANTOPEN (14).
fn sqlite_unavailable(extended_code: i32) -> bool {
    matches!(extended_code & 0xff, 5 | 6 | 10 | 13 | 14)
}

/// Maps a migration failure.
pub(crate) fn map_migrate(error: MigrateError) -> StoreError {
    match error {
        MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _) => match map(inner) {
            StoreError::Unavailable(m) => StoreError::Unavailable(m),
            other => StoreError::Other(format!("migration failed: {other}")),
        },
        other => StoreError::Other(format!("migration failed: {other}")),
    }
}

/// Prefixes the message of an error with some context (e.g. the redacted URL).
pub(crate) fn context(error: StoreError, what: &str) -> StoreError {
    match error {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("{what}: {m}")),
        StoreError::Conflict(m) => StoreError::Conflict(format!("{what}: {m}")),
        StoreError::NotFound(m) => StoreError::NotFound(format!("{what}: {m}")),
        StoreError::Other(m) => StoreError::Other(format!("{what}: {m}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes() {
        assert!(postgres_unavailable("57P01"));
        assert!(postgres_unavailable("08006"));
        assert!(postgres_unavailable("53300"));
        assert!(!postgres_unavailable("23503"));
        assert!(!postgres_unavailable("42P01"));
        assert!(sqlite_unavailable(5));
        assert!(sqlite_unavailable(517)); // SQLITE_BUSY_SNAPSHOT
        assert!(sqlite_unavailable(3338)); // SQLITE_IOERR_FSYNC
        assert!(!sqlite_unavailable(787)); // SQLITE_CONSTRAINT_FOREIGNKEY
        assert!(!sqlite_unavailable(1));
    }

    #[test]
    fn maps_transport_errors_to_unavailable() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(map(sqlx::Error::Io(refused)), StoreError::Unavailable(_)));
        assert!(matches!(map(sqlx::Error::PoolTimedOut), StoreError::Unavailable(_)));
        assert!(matches!(map(sqlx::Error::PoolClosed), StoreError::Unavailable(_)));
        assert!(matches!(map(sqlx::Error::RowNotFound), StoreError::NotFound(_)));
        assert!(matches!(map(sqlx::Error::Protocol("x".into())), StoreError::Other(_)));
        assert!(breaks_connection(&sqlx::Error::Io(std::io::ErrorKind::UnexpectedEof.into())));
        // sqlx's "attempted to call begin_with at non-zero transaction depth".
        assert!(breaks_connection(&sqlx::Error::InvalidSavePointStatement));
        assert!(!breaks_connection(&sqlx::Error::RowNotFound));
        assert!(!breaks_connection(&sqlx::Error::PoolTimedOut));
    }
}
