//! The schema migrations of `migrations/postgres` and `migrations/sqlite`, embedded in the
//! binary and applied with sqlx's migrator (table `_sqlx_migrations`, the same bookkeeping as
//! `sqlx migrate run --source migrations/<backend>`).
//!
//! A new migration is a new file in BOTH folders plus a line in each list below; the test at
//! the bottom fails if a folder and its list disagree.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// One migration: version, description (the file name after `<version>_`), SQL.
pub(crate) type Embedded = (i64, &'static str, &'static str);

/// PostgreSQL migrations, in version order.
pub(crate) const POSTGRES: &[Embedded] = &[
    (1, "initial", include_str!("../../../migrations/postgres/0001_initial.sql")),
    (2, "session_owner", include_str!("../../../migrations/postgres/0002_session_owner.sql")),
    (3, "admin", include_str!("../../../migrations/postgres/0003_admin.sql")),
    (4, "quotas", include_str!("../../../migrations/postgres/0004_quotas.sql")),
    (
        5,
        "drop_deliveries_message_id",
        include_str!("../../../migrations/postgres/0005_drop_deliveries_message_id.sql"),
    ),
    (6, "cluster", include_str!("../../../migrations/postgres/0006_cluster.sql")),
];

/// SQLite migrations, in version order.
pub(crate) const SQLITE: &[Embedded] = &[
    (1, "initial", include_str!("../../../migrations/sqlite/0001_initial.sql")),
    (2, "session_owner", include_str!("../../../migrations/sqlite/0002_session_owner.sql")),
    (3, "admin", include_str!("../../../migrations/sqlite/0003_admin.sql")),
    (4, "quotas", include_str!("../../../migrations/sqlite/0004_quotas.sql")),
    (
        5,
        "drop_deliveries_message_id",
        include_str!("../../../migrations/sqlite/0005_drop_deliveries_message_id.sql"),
    ),
    (6, "cluster", include_str!("../../../migrations/sqlite/0006_cluster.sql")),
];

/// A `MigrationSource` over an embedded list.
#[derive(Debug)]
struct Source(&'static [Embedded]);

impl MigrationSource<'static> for Source {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The migrator for one backend's list.
pub(crate) async fn migrator(list: &'static [Embedded]) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Source(list)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(folder: &str, list: &[Embedded]) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations").join(folder);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| std::path::Path::new(name).extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> =
            list.iter().map(|(version, description, _)| format!("{version:04}_{description}.sql")).collect();
        assert_eq!(files, embedded, "migrations/{folder} and the embedded list in migrations.rs differ");
        for (file, (_, _, sql)) in files.iter().zip(list) {
            assert_eq!(std::fs::read_to_string(dir.join(file)).unwrap(), *sql);
        }
    }

    #[test]
    fn embedded_lists_match_the_folders() {
        check("postgres", POSTGRES);
        check("sqlite", SQLITE);
        assert_eq!(
            POSTGRES.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            SQLITE.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
            "both backends need the same migration versions"
        );
    }
}
