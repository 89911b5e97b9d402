//! The database schema and its versioned migrations.
//!
//! Each migration is a numbered SQL file in `migrations/`, applied once, in
//! order, and recorded in the `schema_version` table. Every node runs
//! [`migrate`] when it opens the store; a transaction-scoped advisory lock
//! makes nodes that start together take turns, and PostgreSQL's
//! transactional DDL means a migration is applied whole or not at all.
//!
//! To change the schema, add the next numbered file and a line to
//! [`MIGRATIONS`]; never edit a migration that has shipped.

use tokio_postgres::Client;

use crate::store::StoreError;

/// One schema change.
#[derive(Debug)]
pub struct Migration {
    /// Its number: migrations run in ascending order, each exactly once.
    pub version: i32,
    /// What it does, recorded in `schema_version`.
    pub name: &'static str,
    /// The SQL, run as one batch inside the migration transaction.
    pub sql: &'static str,
}

/// Every migration this release knows, in order. The last one's version is
/// the schema version this release writes.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "queue tables, claim index, complete and cancel",
        sql: include_str!("migrations/0001_queue.sql"),
    },
    Migration {
        version: 2,
        name: "notices owed: entry notice columns, claim index without them, discharge",
        sql: include_str!("migrations/0002_notice_owed.sql"),
    },
    Migration {
        version: 3,
        name: "change feed, node registry, rate buckets",
        sql: include_str!("migrations/0003_cluster.sql"),
    },
    Migration {
        version: 4,
        name: "owed notices: holder and hold time",
        sql: include_str!("migrations/0004_notice_holder.sql"),
    },
];

/// The schema version this release expects.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Advisory lock key held while migrating ("ferrymai" in ASCII): one
/// database-wide number that no other application is likely to use.
const MIGRATION_LOCK: i64 = 0x6665_7272_796d_6169;

/// Brings the schema in the connection's `search_path` up to [`latest`],
/// and returns the version found before.
///
/// Fails with [`StoreError::Engine`] if the database was migrated by a newer
/// release: this one would not know what the newer schema means.
pub async fn migrate(client: &mut Client) -> Result<i32, StoreError> {
    let tx = client.transaction().await.map_err(super::pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(super::pg_error)?;
    // Quiet: "relation already exists, skipping" on every start is noise.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS schema_version (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(super::pg_error)?;
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(super::pg_error)?
        .get(0);
    if found > latest() {
        return Err(StoreError::Engine(format!(
            "the database schema is at version {found}, newer than this release knows ({}); \
             upgrade Ferrymail on this node",
            latest()
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        tx.batch_execute(m.sql).await.map_err(|e| {
            StoreError::Engine(format!(
                "schema migration {} ({}) failed: {}",
                m.version,
                m.name,
                super::pg_error(e)
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(super::pg_error)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "PostgreSQL schema migrated"
        );
    }
    tx.commit().await.map_err(super::pg_error)?;
    Ok(found)
}
