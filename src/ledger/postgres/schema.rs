//! The PostgreSQL ledger's schema: its migrations, and how they are run.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

use super::{Conn, PgLedger};
use crate::ledger::LedgerError;

/// Ordered migrations of the PostgreSQL schema; entry N takes it from version N to N+1. Run in
/// one transaction under an advisory lock, so two invocations starting at once migrate once.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the ledger as SQLite's schema 5 has it, and claims for many writers. Claims are leases
    // of a few minutes: UNLOGGED (no WAL, half the cost of a claim), emptied if the server
    // crashes, when every invocation's connection is gone anyway.
    "CREATE TABLE sent_metrics (
         run_key      text PRIMARY KEY,
         point_key    bigint NOT NULL,
         completed_at bigint NOT NULL,
         sent_at      bigint NOT NULL,
         gauges       bytea
     );
     CREATE INDEX sent_metrics_point ON sent_metrics (completed_at, point_key);
     CREATE TABLE skipped_runs (
         run_key      text PRIMARY KEY,
         reason       text NOT NULL,
         completed_at bigint NOT NULL,
         recorded_at  bigint NOT NULL,
         detail       text
     );
     CREATE TABLE cursors (
         scope    text PRIMARY KEY,
         cursor   text NOT NULL,
         saved_at bigint NOT NULL
     );
     CREATE UNLOGGED TABLE claims (
         completed_at bigint NOT NULL,
         point_key    bigint NOT NULL,
         owner        text NOT NULL,
         expires_at   bigint NOT NULL,
         PRIMARY KEY (completed_at, point_key)
     );
     CREATE INDEX claims_owner ON claims (owner);",
    // 2: claims without an index on their owner: one more index to write at every claim and
    // release (a tenth of a backfill's time on the server) for a statement run once per
    // invocation (`release_all`), over a table that holds only the claims live at the moment.
    "DROP INDEX IF EXISTS claims_owner;",
    // 3: keys compared byte by byte, whatever the database's collation: under a natural-language
    // one (en_US.UTF-8, the default of many servers) every index probe of a look-up and every
    // insert of a mark compared keys through the locale (+10% of the server's time in a backfill
    // even under C.UTF-8), and `ledger list` / `export` ordered keys unlike SQLite's.
    "ALTER TABLE sent_metrics ALTER COLUMN run_key TYPE text COLLATE \"C\";
     ALTER TABLE skipped_runs ALTER COLUMN run_key TYPE text COLLATE \"C\";
     ALTER TABLE cursors ALTER COLUMN scope TYPE text COLLATE \"C\";",
];

/// The PostgreSQL schema version this binary writes.
pub const PG_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock key that serialises migrations: "wfmetric" in ASCII.
const MIGRATION_LOCK: i64 = 0x7766_6d65_7472_6963;

impl PgLedger {
    pub(super) async fn migrate(&mut self) -> Result<(), LedgerError> {
        let target = self.target.to_string();
        // Up to date (the usual case): no DDL, so a role with only the rights to read and write
        // the tables (a schema its DBA created) runs too.
        // One round trip (the simple protocol: no statement to prepare); no table is a first use.
        let current = with_conn!(self, "reading the schema version", |conn| {
            match conn.client.simple_query("SELECT max(version) FROM workflow_metrics_schema").await {
                Ok(messages) => {
                    Ok(simple_values(&messages).into_iter().next().flatten().and_then(|version| version.parse().ok()))
                }
                Err(error) if error.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(None),
                Err(error) => Err(error),
            }
        })?;
        if current == Some(PG_SCHEMA_VERSION) {
            return Ok(());
        }
        let found = with_conn!(self, "creating or migrating the schema", |conn| {
            let transaction = conn.client.transaction().await?;
            transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            transaction
                .batch_execute("CREATE TABLE IF NOT EXISTS workflow_metrics_schema (version bigint NOT NULL)")
                .await?;
            let found: Option<i64> =
                transaction.query_opt("SELECT version FROM workflow_metrics_schema", &[]).await?.map(|row| row.get(0));
            let found = found.unwrap_or(0);
            if found > PG_SCHEMA_VERSION {
                return Ok(found);
            }
            for migration in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
                transaction.batch_execute(migration).await?;
            }
            transaction.execute("DELETE FROM workflow_metrics_schema", &[]).await?;
            transaction
                .execute("INSERT INTO workflow_metrics_schema (version) VALUES ($1)", &[&PG_SCHEMA_VERSION])
                .await?;
            transaction.commit().await?;
            Ok(found)
        })?;
        if found > PG_SCHEMA_VERSION {
            return Err(LedgerError::TooNew { path: target, found });
        }
        Ok(())
    }
}

/// The values of the first row a simple query returned, in order (`None` for NULL).
pub(super) fn simple_values(messages: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => {
                Some((0..row.len()).map(|index| row.get(index).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}
