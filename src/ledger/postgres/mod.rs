//! The PostgreSQL ledger: one database that many invocations on many machines share
//! (`--ledger postgres://user@host:port/db`), with `tokio-postgres`.
//!
//! Tables (PostgreSQL schema version [`PG_SCHEMA_VERSION`], in `workflow_metrics_schema`): the
//! SQLite ledger's `sent_metrics`, `skipped_runs` and `cursors`, with the same columns (`gauges`
//! is `bytea`, the same blob, see `super::encode_values`), and `claims`: the points (timestamp,
//! point key) an invocation is sending, with its name and when its lease ends. Many writers at
//! once: nothing here takes a lock for the whole invocation. Instead an invocation claims the
//! points of the items it is about to send ([`Ledger::claim`]); a point another live invocation
//! holds is not sent twice, and a claim of an invocation that died (kill -9, a lost machine)
//! lapses when its lease ends. Marked points are given back in bulk (every 16,384 items, and all
//! at the end): whoever claims one next finds its items sent.
//!
//! Every statement is prepared once per connection and batched with `unnest` arrays: one round
//! trip per request of items, never one per item. A lost connection is retried with backoff (all
//! writes are idempotent, so a commit whose answer was lost is safely redone); when the database
//! stays away past the deadline, the error stops the invocation, which records nothing it could
//! not record (see the README's exit codes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

mod connection;
mod queries;
mod target;
pub use schema::PG_SCHEMA_VERSION;
#[cfg(test)]
mod tests;

use connection::PgScopeLocks;
use queries::{
    copy_sent, distinct_points, granted_from, sent_from, sorted_claims, CHECK_WRITES, CLAIM, MARK, SENT_POINTS, STATES,
    STATES_SENT,
};
#[cfg(test)]
pub(crate) use target::testing;
pub use target::{is_url, PgTarget};

use super::{
    decode_values, encode_values, Claim, ClaimedLookUp, Counts, DeadLetter, ExportRow, KeyState, Ledger, LedgerError,
    SentItem, SkipReason, SkippedItem, VALUES_BYTES,
};
use crate::metrics::SentPoint;

/// One connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    async fn prepared(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

/// Runs `$body` (an expression of `Result<T, tokio_postgres::Error>` using `$conn: &mut Conn`) on
/// the ledger's connection, connecting first when there is none, and again (with backoff, up to
/// the reconnect deadline) when the connection is lost. Errors that are not about the connection
/// stand at once. A macro, not a function taking a closure: the futures stay `Send` for
/// `async_trait`.
macro_rules! with_conn {
    ($ledger:ident, $action:expr, |$conn:ident| $body:expr) => {{
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            if $ledger.conn.is_none() {
                match $ledger.connect().await {
                    Ok(conn) => $ledger.conn = Some(conn),
                    Err(error) => match $ledger.retry_after(error, started, &mut wait, $action).await {
                        Ok(()) => continue,
                        Err(error) => break Err(error),
                    },
                }
            }
            let $conn: &mut Conn = $ledger.conn.as_mut().expect("connected above");
            let result: Result<_, tokio_postgres::Error> = async { $body }.await;
            match result {
                Ok(value) => break Ok(value),
                Err(error) => match $ledger.retry_after(error, started, &mut wait, $action).await {
                    Ok(()) => continue,
                    Err(error) => break Err(error),
                },
            }
        }
    }};
}

// After `with_conn!`, which it uses.
mod schema;

/// A ledger in a PostgreSQL database.
pub struct PgLedger {
    target: PgTarget,
    conn: Option<Conn>,
    /// This invocation's name in `claims.owner`: host, process and a random part.
    owner: String,
    /// How long a claim lasts unless its holder marks or releases it first.
    lease: Duration,
    /// How long a lost connection is retried before the error stands.
    reconnect_deadline: Duration,
    /// Points of items marked since claims were last given back (shared with its siblings).
    marked: Arc<Mutex<Vec<Claim>>>,
    /// Claims granted to this invocation less those its releases removed (shared with its
    /// siblings): never fewer than it holds, so at zero its end has nothing to give back and
    /// skips `DELETE ... WHERE owner`, a scan of `claims` (no index on owners, see schema 2),
    /// 18 ms on a cron pass after a backfill left a million dead rows there.
    holding: Arc<AtomicU64>,
    /// A second handle of the same invocation ([`Ledger::sibling`]): it leaves the claims to
    /// the first when dropped.
    is_sibling: bool,
    /// Every claim was given back (`release_all`): nothing left for `drop` to release.
    released_all: bool,
    /// Whether `skipped_runs` may hold keys this invocation marks as sent (it held rows when
    /// the ledger was opened, or this invocation recorded or found some): only then is marking
    /// also a delete there.
    may_have_skipped: Arc<AtomicBool>,
    /// The ledger held no item at all when this invocation opened it (a first backfill).
    empty_at_open: bool,
    /// Locks on source scopes, shared with the sources and held as long as the ledger lives.
    scope_locks: PgScopeLocks,
}

/// Marked points given back in one statement.
const RELEASE_BATCH: usize = 16_384;

impl PgLedger {
    /// Connects, creating and migrating the schema when needed (safe when several invocations
    /// start at once). `lease` is how long this invocation's claims last.
    ///
    /// # Errors
    /// The database cannot be reached past the reconnect deadline, refuses the credentials or
    /// the permissions the schema needs, or holds a newer schema.
    pub async fn open(target: &PgTarget, lease: Duration) -> Result<PgLedger, LedgerError> {
        let mut ledger = PgLedger::new(target, lease);
        ledger.migrate().await?;
        let (skipped, empty) = with_conn!(ledger, "reading the ledger", |conn| {
            let messages = conn
                .client
                .simple_query("SELECT EXISTS (SELECT 1 FROM skipped_runs), NOT EXISTS (SELECT 1 FROM sent_metrics)")
                .await?;
            // Unreadable answers count as the safe side: skipped rows may exist, not empty.
            let values = schema::simple_values(&messages);
            let value = |index: usize| values.get(index).cloned().flatten();
            Ok((value(0).as_deref() != Some("f"), value(1).as_deref() == Some("t")))
        })?;
        ledger.may_have_skipped.store(skipped, Ordering::Relaxed);
        ledger.empty_at_open = empty && !skipped;
        Ok(ledger)
    }

    /// Connects to read: `None` when the database has no ledger yet; nothing created.
    ///
    /// # Errors
    /// As [`PgLedger::open`], or the schema is not this binary's.
    pub async fn open_read_only(target: &PgTarget) -> Result<Option<PgLedger>, LedgerError> {
        let mut ledger = PgLedger::new(target, Duration::ZERO);
        let found = with_conn!(ledger, "reading the schema version", |conn| {
            let exists: bool =
                conn.client.query_one("SELECT to_regclass('workflow_metrics_schema') IS NOT NULL", &[]).await?.get(0);
            if !exists {
                return Ok(None);
            }
            let version: i64 = conn.client.query_one("SELECT version FROM workflow_metrics_schema", &[]).await?.get(0);
            Ok(Some(version))
        })?;
        match found {
            None => Ok(None),
            Some(found) if found > PG_SCHEMA_VERSION => Err(LedgerError::TooNew { path: target.to_string(), found }),
            Some(found) if found < PG_SCHEMA_VERSION => {
                Err(LedgerError::NeedsMigration { path: target.to_string(), found })
            }
            Some(_) => Ok(Some(ledger)),
        }
    }

    fn new(target: &PgTarget, lease: Duration) -> PgLedger {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let owner = format!("{}:{}:{:016x}", host.trim(), std::process::id(), fastrand::u64(..));
        PgLedger {
            target: target.clone(),
            conn: None,
            owner,
            lease,
            reconnect_deadline: Duration::from_secs(60),
            marked: Arc::default(),
            holding: Arc::default(),
            is_sibling: false,
            released_all: false,
            may_have_skipped: Arc::new(AtomicBool::new(true)),
            empty_at_open: false,
            scope_locks: PgScopeLocks::new(target),
        }
    }

    /// Counts `asked` claims as held before they are asked for, so that a claim whose answer
    /// never came (the statement failed after its commit) still counts; the caller takes back
    /// those not granted.
    fn count_claims(&self, asked: usize) -> u64 {
        let asked = asked as u64;
        self.holding.fetch_add(asked, Ordering::Relaxed);
        asked
    }

    /// This invocation's name in `claims.owner`.
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

#[async_trait]
impl Ledger for PgLedger {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    fn schema_version(&self) -> i64 {
        PG_SCHEMA_VERSION
    }

    fn shared(&self) -> bool {
        true
    }

    fn sibling(&self) -> Option<Box<dyn Ledger>> {
        Some(Box::new(PgLedger {
            target: self.target.clone(),
            conn: None,
            owner: self.owner.clone(),
            lease: self.lease,
            reconnect_deadline: self.reconnect_deadline,
            marked: self.marked.clone(),
            holding: self.holding.clone(),
            is_sibling: true,
            released_all: false,
            may_have_skipped: self.may_have_skipped.clone(),
            empty_at_open: self.empty_at_open,
            scope_locks: self.scope_locks.clone(),
        }))
    }

    fn scope_locks(&self) -> Option<Box<dyn crate::source::ScopeLocks>> {
        Some(Box::new(self.scope_locks.clone()))
    }

    async fn states(&mut self, keys: &[&str]) -> Result<Vec<KeyState>, LedgerError> {
        let rows = with_conn!(self, "looking up keys", |conn| {
            let statement = conn.prepared(STATES).await?;
            conn.client.query(&statement, &[&keys]).await
        })?;
        Ok(self.states_from(keys, &rows))
    }

    async fn states_ahead(&mut self, keys: &[&str]) -> Result<Vec<KeyState>, LedgerError> {
        // An empty ledger when this invocation opened it (a first backfill): whatever it holds
        // now was sent since, by this invocation or another, and the look-up after the claim
        // finds it; asking here would cost a query per chunk to find next to nothing.
        if self.empty_at_open {
            return Ok(vec![KeyState::Unknown; keys.len()]);
        }
        // No skipped rows when the ledger was opened, none recorded or found since: sent_metrics
        // alone (a backfill's look-ups find nothing in either table, and this is half the work).
        if self.may_have_skipped.load(Ordering::Relaxed) {
            return self.states(keys).await;
        }
        let rows = with_conn!(self, "looking up keys", |conn| {
            let statement = conn.prepared(STATES_SENT).await?;
            conn.client.query(&statement, &[&keys]).await
        })?;
        Ok(self.states_from(keys, &rows))
    }

    async fn sent_points(&mut self, points: &[(i64, i64)]) -> Result<HashMap<i64, SentPoint>, LedgerError> {
        let (timestamps, point_keys) = distinct_points(points.iter().copied());
        let rows = with_conn!(self, "reading sent points", |conn| {
            let statement = conn.prepared(SENT_POINTS).await?;
            conn.client.query(&statement, &[&timestamps, &point_keys]).await
        })?;
        Ok(sent_from(&rows))
    }

    async fn claim_and_look_up(
        &mut self,
        claims: &[Claim],
        keys: &[&str],
        now_ms: i64,
    ) -> Result<ClaimedLookUp, LedgerError> {
        self.released_all = false;
        let (claimed_at, claimed_keys) = sorted_claims(claims);
        let (timestamps, point_keys) = distinct_points(claims.iter().map(|claim| (claim.timestamp, claim.point_key)));
        let owner = self.owner.clone();
        let expires = self.expires(now_ms);
        let asked = self.count_claims(claimed_at.len());
        let (granted, states, sent) = with_conn!(self, "claiming points", |conn| {
            let claim = conn.prepared(CLAIM).await?;
            let states = conn.prepared(STATES).await?;
            let sent = conn.prepared(SENT_POINTS).await?;
            // One round trip: the statements are sent in this order (`biased`) and run one
            // after the other, each in its own transaction, so the look-ups see what another
            // invocation marked before it gave a point up.
            let claim_params: [&(dyn ToSql + Sync); 5] = [&claimed_at, &claimed_keys, &owner, &expires, &now_ms];
            let states_params: [&(dyn ToSql + Sync); 1] = [&keys];
            let sent_params: [&(dyn ToSql + Sync); 2] = [&timestamps, &point_keys];
            tokio::try_join!(
                biased;
                conn.client.query(&claim, &claim_params),
                conn.client.query(&states, &states_params),
                conn.client.query(&sent, &sent_params),
            )
        })?;
        self.holding.fetch_sub(asked - granted.len() as u64, Ordering::Relaxed);
        Ok(ClaimedLookUp {
            granted: granted_from(claims, &granted),
            states: self.states_from(keys, &states),
            sent: sent_from(&sent),
        })
    }

    async fn mark_sent(&mut self, items: &[SentItem<'_>], now_ms: i64) -> Result<(), LedgerError> {
        let keys: Vec<&str> = items.iter().map(|item| item.key).collect();
        let point_keys: Vec<i64> = items.iter().map(|item| item.point_key).collect();
        let timestamps: Vec<i64> = items.iter().map(|item| item.timestamp).collect();
        let values: Vec<Option<Vec<u8>>> = items
            .iter()
            .map(|item| encode_values(&item.gauges, &item.tallies, &mut [0u8; VALUES_BYTES]).map(<[u8]>::to_vec))
            .collect();
        let unskip = self.may_have_skipped.load(Ordering::Relaxed);
        with_conn!(self, "marking items as sent", |conn| {
            let params: [&(dyn ToSql + Sync); 5] = [&keys, &point_keys, &timestamps, &now_ms, &values];
            if unskip {
                let insert = conn.prepared(MARK).await?;
                // Recorded as skipped before (too old, then sent with --historical): no longer.
                let unskip = conn.prepared("DELETE FROM skipped_runs WHERE run_key = ANY($1::text[])").await?;
                let transaction = conn.client.transaction().await?;
                transaction.execute(&insert, &params).await?;
                transaction.execute(&unskip, &[&keys]).await?;
                return transaction.commit().await;
            }
            // One COPY (a statement, so a transaction of its own): a third less of the server's
            // work than an INSERT from arrays. A key already there (a commit redone after a lost
            // answer, an import run twice) fails it, and the batch is inserted skipping those.
            match copy_sent(&conn.client, &keys, &point_keys, &timestamps, now_ms, &values).await {
                Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    let insert = conn.prepared(MARK).await?;
                    conn.client.execute(&insert, &params).await.map(drop)
                }
                copied => copied,
            }
        })?;
        // Their points are given back in bulk, not one statement per request (the points'
        // items are marked: anyone who claims them next finds them sent).
        let full = {
            let mut marked = self.marked.lock().unwrap_or_else(PoisonError::into_inner);
            marked.extend(items.iter().map(|item| Claim { timestamp: item.timestamp, point_key: item.point_key }));
            (marked.len() >= RELEASE_BATCH).then(|| std::mem::take(&mut *marked))
        };
        if let Some(marked) = full {
            self.release(&marked).await?;
        }
        Ok(())
    }

    async fn unmark(&mut self, keys: &[&str]) -> Result<(), LedgerError> {
        with_conn!(self, "unmarking items", |conn| {
            let statement = conn.prepared("DELETE FROM sent_metrics WHERE run_key = ANY($1::text[])").await?;
            conn.client.execute(&statement, &[&keys]).await.map(drop)
        })
    }

    async fn record_skipped(
        &mut self,
        items: &[SkippedItem<'_>],
        reason: SkipReason<'_>,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        let (reason_text, detail, action) = reason.columns();
        self.may_have_skipped.store(true, Ordering::Relaxed);
        let keys: Vec<&str> = items.iter().map(|item| item.key).collect();
        let completed: Vec<i64> = items.iter().map(|item| item.completed_at).collect();
        with_conn!(self, action, |conn| {
            // A dead letter replaces any record (with the newest error); a too-old record keeps
            // whatever was recorded first.
            let statement = conn
                .prepared(
                    "INSERT INTO skipped_runs (run_key, reason, completed_at, recorded_at, detail)
                     SELECT k, $3, c, $4, $5 FROM unnest($1::text[], $2::bigint[]) AS u(k, c)
                     ON CONFLICT (run_key) DO UPDATE SET reason = excluded.reason, recorded_at = excluded.recorded_at,
                         detail = excluded.detail
                     WHERE excluded.reason = 'dead'",
                )
                .await?;
            conn.client.execute(&statement, &[&keys, &completed, &reason_text, &now_ms, &detail]).await.map(drop)
        })
    }

    async fn dead_letters(&mut self) -> Result<Vec<DeadLetter>, LedgerError> {
        with_conn!(self, "listing dead letters", |conn| {
            let rows = conn
                .client
                .query(
                    "SELECT run_key, recorded_at, COALESCE(detail, '') FROM skipped_runs WHERE reason = 'dead'
                     ORDER BY recorded_at, run_key COLLATE \"C\"",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| DeadLetter { key: row.get(0), recorded_at: row.get(1), detail: row.get(2) })
                .collect())
        })
    }

    async fn requeue(&mut self, keys: Option<&[String]>) -> Result<usize, LedgerError> {
        with_conn!(self, "requeueing dead letters", |conn| {
            let freed = match keys {
                None => conn.client.execute("DELETE FROM skipped_runs WHERE reason = 'dead'", &[]).await?,
                Some(keys) => {
                    conn.client
                        .execute(
                            "DELETE FROM skipped_runs WHERE reason = 'dead' AND run_key = ANY($1::text[])",
                            &[&keys],
                        )
                        .await?
                }
            };
            Ok(usize::try_from(freed).unwrap_or(usize::MAX))
        })
    }

    async fn keys(&mut self, state: KeyState) -> Result<Vec<String>, LedgerError> {
        with_conn!(self, "listing keys", |conn| {
            // Sorted bytewise, as SQLite sorts: the same output from both backends.
            let rows = match state.reason() {
                Some(reason) => {
                    conn.client
                        .query(
                            "SELECT run_key FROM skipped_runs WHERE reason = $1 ORDER BY run_key COLLATE \"C\"",
                            &[&reason],
                        )
                        .await?
                }
                None if state == KeyState::Sent => {
                    conn.client.query("SELECT run_key FROM sent_metrics ORDER BY run_key COLLATE \"C\"", &[]).await?
                }
                None => Vec::new(),
            };
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
    }

    async fn counts(&mut self) -> Result<Counts, LedgerError> {
        with_conn!(self, "counting rows", |conn| {
            let row = conn
                .client
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM sent_metrics),
                            (SELECT COUNT(*) FROM skipped_runs WHERE reason = 'too_old'),
                            (SELECT COUNT(*) FROM skipped_runs WHERE reason = 'dead')",
                    &[],
                )
                .await?;
            let count = |at: usize| u64::try_from(row.get::<_, i64>(at)).unwrap_or(0);
            Ok(Counts { sent: count(0), too_old: count(1), dead: count(2) })
        })
    }

    async fn cursor(&mut self, scope: &str) -> Result<Option<String>, LedgerError> {
        with_conn!(self, "reading a cursor", |conn| {
            let statement = conn.prepared("SELECT cursor FROM cursors WHERE scope = $1").await?;
            Ok(conn.client.query_opt(&statement, &[&scope]).await?.map(|row| row.get(0)))
        })
    }

    async fn cursors(&mut self, prefix: &str) -> Result<HashMap<String, String>, LedgerError> {
        with_conn!(self, "reading cursors", |conn| {
            // `left` rather than LIKE: scopes may hold `_` and `%`.
            let statement =
                conn.prepared("SELECT scope, cursor FROM cursors WHERE left(scope, length($1)) = $1").await?;
            Ok(conn.client.query(&statement, &[&prefix]).await?.iter().map(|row| (row.get(0), row.get(1))).collect())
        })
    }

    async fn save_cursor(&mut self, scope: &str, cursor: &str, now_ms: i64) -> Result<(), LedgerError> {
        with_conn!(self, "saving a cursor", |conn| {
            let statement = conn
                .prepared(
                    "INSERT INTO cursors (scope, cursor, saved_at) VALUES ($1, $2, $3)
                     ON CONFLICT (scope) DO UPDATE SET cursor = excluded.cursor, saved_at = excluded.saved_at",
                )
                .await?;
            conn.client.execute(&statement, &[&scope, &cursor, &now_ms]).await.map(drop)
        })
    }

    async fn verify(&mut self) -> Result<(), LedgerError> {
        // PostgreSQL keeps its own pages whole; what can go wrong is ours: a key both sent and
        // recorded as skipped (marks remove the skipped record in the same transaction).
        let both: i64 = with_conn!(self, "checking consistency", |conn| {
            Ok(conn
                .client
                .query_one("SELECT COUNT(*) FROM sent_metrics s JOIN skipped_runs t USING (run_key)", &[])
                .await?
                .get(0))
        })?;
        if both == 0 {
            Ok(())
        } else {
            Err(LedgerError::Damaged { path: self.describe(), detail: format!("{both} key(s) both sent and skipped") })
        }
    }

    async fn sent_rows(&mut self, after: Option<&str>, limit: usize) -> Result<Vec<ExportRow>, LedgerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = after.unwrap_or("");
        with_conn!(self, "exporting sent items", |conn| {
            // The database's own order, for the comparison and the sort alike: the pages follow
            // the primary key.
            let statement = conn
                .prepared(
                    "SELECT run_key, point_key, completed_at, sent_at, gauges FROM sent_metrics
                     WHERE run_key > $1 ORDER BY run_key LIMIT $2",
                )
                .await?;
            let rows = conn.client.query(&statement, &[&after, &limit]).await?;
            Ok(rows
                .iter()
                .map(|row| {
                    let (gauges, tallies) = decode_values(row.get::<_, Option<&[u8]>>(4));
                    ExportRow::Sent {
                        key: row.get(0),
                        point_key: row.get(1),
                        timestamp: row.get(2),
                        sent_at: row.get(3),
                        gauges,
                        tallies,
                    }
                })
                .collect())
        })
    }

    async fn skipped_rows(&mut self) -> Result<Vec<ExportRow>, LedgerError> {
        with_conn!(self, "exporting skipped items", |conn| {
            let rows = conn
                .client
                .query(
                    "SELECT run_key, reason, completed_at, recorded_at, detail FROM skipped_runs ORDER BY run_key",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| ExportRow::Skipped {
                    key: row.get(0),
                    reason: row.get(1),
                    completed_at: row.get(2),
                    recorded_at: row.get(3),
                    detail: row.get(4),
                })
                .collect())
        })
    }

    async fn claim(&mut self, claims: &[Claim], now_ms: i64) -> Result<Vec<bool>, LedgerError> {
        self.released_all = false;
        let (timestamps, point_keys) = sorted_claims(claims);
        let owner = self.owner.clone();
        let expires = self.expires(now_ms);
        let asked = self.count_claims(timestamps.len());
        let rows = with_conn!(self, "claiming points", |conn| {
            let statement = conn.prepared(CLAIM).await?;
            conn.client.query(&statement, &[&timestamps, &point_keys, &owner, &expires, &now_ms]).await
        })?;
        self.holding.fetch_sub(asked - rows.len() as u64, Ordering::Relaxed);
        Ok(granted_from(claims, &rows))
    }

    async fn check_writes(&mut self) -> Result<(), LedgerError> {
        with_conn!(
            self,
            "checking the permissions a send needs (insert, update, delete on the ledger's tables)",
            |conn| {
                let transaction = conn.client.transaction().await?;
                transaction.batch_execute(CHECK_WRITES).await?;
                transaction.rollback().await
            }
        )
    }

    async fn claims_held(&mut self, now_ms: i64) -> Result<Option<u64>, LedgerError> {
        let held: i64 = with_conn!(self, "counting claims", |conn| {
            Ok(conn.client.query_one("SELECT COUNT(*) FROM claims WHERE expires_at > $1", &[&now_ms]).await?.get(0))
        })?;
        Ok(u64::try_from(held).ok())
    }

    async fn size_bytes(&mut self) -> Result<Option<u64>, LedgerError> {
        let bytes: i64 = with_conn!(self, "reading the ledger's size", |conn| {
            Ok(conn
                .client
                .query_one(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
                     WHERE c.relname IN ('sent_metrics', 'skipped_runs', 'cursors', 'claims', 'workflow_metrics_schema')
                       AND c.relnamespace = current_schema()::regnamespace",
                    &[],
                )
                .await?
                .get(0))
        })?;
        Ok(u64::try_from(bytes).ok())
    }

    async fn release_marked(&mut self) -> Result<(), LedgerError> {
        let marked = std::mem::take(&mut *self.marked.lock().unwrap_or_else(PoisonError::into_inner));
        self.release(&marked).await
    }

    async fn release_all(&mut self) -> Result<(), LedgerError> {
        // The points marked last by their keys (at most a batch, through the primary key), then
        // by owner only what the count says may be left (a claim renewed counts twice, so a
        // claim lost to another invocation's expiry can only leave the count above zero).
        self.release_marked().await?;
        if self.holding.load(Ordering::Relaxed) > 0 {
            let owner = self.owner.clone();
            with_conn!(self, "releasing claims", |conn| {
                conn.client.execute("DELETE FROM claims WHERE owner = $1", &[&owner]).await.map(drop)
            })?;
            self.holding.store(0, Ordering::Relaxed);
        }
        self.released_all = true;
        Ok(())
    }

    async fn release(&mut self, claims: &[Claim]) -> Result<(), LedgerError> {
        let (timestamps, point_keys): (Vec<i64>, Vec<i64>) =
            claims.iter().map(|claim| (claim.timestamp, claim.point_key)).unzip();
        if claims.is_empty() {
            return Ok(());
        }
        let owner = self.owner.clone();
        let released = with_conn!(self, "releasing claims", |conn| {
            // Planned at each call, never cached: a plan made while `claims` was empty joined it
            // by sequential scans, quadratic once it held a million rows (4 s per release at a
            // million runs, found with pg_stat_statements). A deadlock with a claim taken in the
            // other order is retried (`retry_after`).
            conn.client
                .execute(
                    "DELETE FROM claims c USING unnest($1::bigint[], $2::bigint[]) AS p(completed_at, point_key)
                     WHERE c.completed_at = p.completed_at AND c.point_key = p.point_key AND c.owner = $3",
                    &[&timestamps, &point_keys, &owner],
                )
                .await
        })?;
        // Every row this deletes was counted when claimed; saturating all the same.
        let _ =
            self.holding.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| Some(held.saturating_sub(released)));
        Ok(())
    }
}

impl Drop for PgLedger {
    fn drop(&mut self) {
        // Claims still held (an invocation stopped by a signal, or failing) would otherwise wait
        // for their lease: a best-effort release, on the runtime if there is one.
        if self.is_sibling || self.released_all {
            return;
        }
        if let (Some(conn), Ok(runtime)) = (self.conn.take(), tokio::runtime::Handle::try_current()) {
            let owner = self.owner.clone();
            runtime.spawn(async move {
                let _ = conn.client.execute("DELETE FROM claims WHERE owner = $1", &[&owner]).await;
            });
        }
    }
}
