//! Tern's storage adapters: [`Db`] implements the broker's [`Store`] and [`DirectoryStore`]
//! ports on PostgreSQL (production) and SQLite (the embedded default) with sqlx.
//!
//! [`connect`] opens a pool and applies the schema migrations of `migrations/postgres` or
//! `migrations/sqlite` (embedded in the binary); [`migrate`] only migrates (`tern migrate`).
//! docs/persistence.md describes the schema, the URLs, the options and the measured speed.
//!
//! [`Store`]: tern_broker::store::Store
//! [`DirectoryStore`]: tern_broker::store::DirectoryStore

mod db;
mod error;
mod migrations;
mod options;
mod pg;
mod plan;
mod rows;
mod shared;
mod sql;
mod sqlite;

pub use db::{Db, connect, migrate};
pub use options::{SqliteSynchronous, StoreOptions, redact_url};
