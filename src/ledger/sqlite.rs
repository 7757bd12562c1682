//! The SQLite ledger, the embedded default: one file, WAL, `rusqlite`.
//!
//! Tables (schema version 5, tracked by `PRAGMA user_version`):
//! - `sent_metrics`: one row per item key Datadog confirmed with a 2xx; `point_key` and
//!   `completed_at` (the point's timestamp) let a later request sum its counts on top of items
//!   already sent, and `gauges` keep its gauge values and tallies (`super::encode_values`) so
//!   that the point is written with the largest gauges and summed tallies (see
//!   `metrics::SeriesSpec::series`);
//! - `skipped_runs`: items recorded apart from the sent ones, with a reason, so they are not
//!   reconsidered on every invocation: `too_old` (outside Datadog's window) and `dead` (Datadog
//!   answered 400 for that item alone; `detail` keeps the error, `ledger requeue` frees it);
//! - `cursors`: where each source scope (a repository) may resume.
//!
//! Overlapping invocations: a live (writing) ledger is held by one process at a time, through an
//! exclusive lock on `<ledger>.lock` (`File::try_lock`, flock on Unix). Another invocation waits
//! for it (up to `--lock-timeout`), then sees what the first one sent. The kernel releases the
//! lock of a process that dies, even by `kill -9`, so nothing stays stuck. (Schema 2 had per-run
//! claims for this; schema 4 drops them: the lock costs nothing per run.)
//!
//! Migrations are an ordered list applied inside one exclusive transaction; old entries are never
//! edited. Look-ups of a batch are one query over an `rarray` of keys (one bound parameter, no
//! SQLite variable limit), marks are one transaction per confirmed request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use super::{
    decode_values, encode_values, Counts, DeadLetter, ExportRow, KeyState, Ledger, LedgerError, SentItem, SkipReason,
    SkippedItem, VALUES_BYTES,
};
use crate::metrics::SentPoint;

/// Ordered migrations; entry N takes the schema from version N to N+1.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE sent_metrics (
         run_key      TEXT PRIMARY KEY,
         point_key    INTEGER NOT NULL,
         completed_at INTEGER NOT NULL,
         sent_at      INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX sent_metrics_point_key ON sent_metrics (point_key);
     CREATE TABLE skipped_runs (
         run_key      TEXT PRIMARY KEY,
         reason       TEXT NOT NULL,
         completed_at INTEGER NOT NULL,
         recorded_at  INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // 2: dead letters keep Datadog's error; claims keep overlapping invocations apart.
    "ALTER TABLE skipped_runs ADD COLUMN detail TEXT;
     CREATE TABLE claims (
         run_key    TEXT PRIMARY KEY,
         owner      TEXT NOT NULL,
         claimed_at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX claims_owner ON claims (owner);",
    // 3: point look-ups by (completed_at, point_key): runs arrive roughly in time order, so the
    // index grows at a few places instead of at a random page per run.
    "DROP INDEX sent_metrics_point_key;
     CREATE INDEX sent_metrics_point ON sent_metrics (completed_at, point_key);",
    // 4: per-run claims give way to the ledger lock.
    "DROP TABLE claims;",
    // 5: the gauge values of each sent item (little-endian f64s in its family's order, NaN for
    // none), so that a later item at the same point sends the largest; cursors of sources.
    "ALTER TABLE sent_metrics ADD COLUMN gauges BLOB;
     CREATE TABLE cursors (
         scope    TEXT PRIMARY KEY,
         cursor   TEXT NOT NULL,
         saved_at INTEGER NOT NULL
     ) WITHOUT ROWID;",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A ledger in one SQLite file (or in memory, for a dry run's own record).
pub struct SqliteLedger {
    connection: Connection,
    path: PathBuf,
    /// The exclusive lock on `<ledger>.lock`, held as long as this value lives.
    _lock: Option<std::fs::File>,
}

impl SqliteLedger {
    /// Opens (creating it and its folder if needed) and migrates the ledger at `path`, holding
    /// its lock.
    ///
    /// # Errors
    /// The folder cannot be created, the file is not a SQLite database, its schema is newer than
    /// this binary's, or another invocation holds it past `lock_timeout`.
    pub fn open(path: &Path, lock_timeout: Duration) -> Result<SqliteLedger, LedgerError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| LedgerError::CreateDir { path: parent.to_owned(), source })?;
        }
        let lock = lock(path, lock_timeout)?;
        let mut connection = Connection::open(path).map_err(|source| open_error(path, source))?;
        configure(&connection).map_err(|source| open_error(path, source))?;
        migrate(&mut connection, path)?;
        rusqlite::vtab::array::load_module(&connection).map_err(|source| open_error(path, source))?;
        Ok(SqliteLedger { connection, path: path.to_owned(), _lock: Some(lock) })
    }

    /// An empty ledger in memory (a dry run's record when it keeps none).
    ///
    /// # Errors
    /// SQLite cannot allocate it.
    pub fn open_in_memory() -> Result<SqliteLedger, LedgerError> {
        let path = Path::new(":memory:");
        let mut connection = Connection::open_in_memory().map_err(|source| open_error(path, source))?;
        migrate(&mut connection, path)?;
        rusqlite::vtab::array::load_module(&connection).map_err(|source| open_error(path, source))?;
        Ok(SqliteLedger { connection, path: path.to_owned(), _lock: None })
    }

    /// Opens an existing ledger read-only: no lock, no migration, nothing created. `None` when
    /// there is no file at `path`.
    ///
    /// # Errors
    /// The file is not a SQLite database, or its schema is not this binary's.
    pub fn open_read_only(path: &Path) -> Result<Option<SqliteLedger>, LedgerError> {
        if !path.exists() {
            return Ok(None);
        }
        let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| open_error(path, source))?;
        connection.busy_timeout(Duration::from_secs(30)).map_err(|source| open_error(path, source))?;
        let found: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|source| open_error(path, source))?;
        let shown = path.display().to_string();
        if found > SCHEMA_VERSION {
            return Err(LedgerError::TooNew { path: shown, found });
        }
        if found < SCHEMA_VERSION {
            return Err(LedgerError::NeedsMigration { path: shown, found });
        }
        rusqlite::vtab::array::load_module(&connection).map_err(|source| open_error(path, source))?;
        Ok(Some(SqliteLedger { connection, path: path.to_owned(), _lock: None }))
    }

    fn query_error(&self, action: &'static str, source: rusqlite::Error) -> LedgerError {
        LedgerError::Query { path: self.path.display().to_string(), action, source: Box::new(source) }
    }
}

fn open_error(path: &Path, source: rusqlite::Error) -> LedgerError {
    LedgerError::Open { path: path.display().to_string(), source: Box::new(source) }
}

fn text_array<'k>(keys: impl Iterator<Item = &'k str>) -> Rc<Vec<Value>> {
    Rc::new(keys.map(|key| Value::Text(key.to_owned())).collect())
}

#[async_trait]
impl Ledger for SqliteLedger {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn schema_version(&self) -> i64 {
        SCHEMA_VERSION
    }

    async fn states(&mut self, keys: &[&str]) -> Result<Vec<KeyState>, LedgerError> {
        let array = text_array(keys.iter().copied());
        let query = || -> rusqlite::Result<Vec<KeyState>> {
            // Only the keys the ledger knows come back (none, in a backfill): the rest are unknown.
            let mut statement = self.connection.prepare_cached(
                "SELECT k.rowid, 'sent' FROM rarray(?1) AS k
                   WHERE EXISTS (SELECT 1 FROM sent_metrics s WHERE s.run_key = k.value)
                 UNION ALL
                 SELECT k.rowid, t.reason FROM rarray(?1) AS k JOIN skipped_runs t ON t.run_key = k.value",
            )?;
            let mut states = vec![KeyState::Unknown; keys.len()];
            let mut rows = statement.query([array.clone()])?;
            while let Some(row) = rows.next()? {
                // rarray rowids count from 1, in the order given.
                let index = usize::try_from(row.get::<_, i64>(0)? - 1).unwrap_or(usize::MAX);
                let Some(state) = states.get_mut(index) else { continue };
                *state = match (*state, row.get_ref(1)?.as_str()?) {
                    (KeyState::Sent, _) | (_, "sent") => KeyState::Sent,
                    (_, "dead") => KeyState::Dead,
                    _ => KeyState::SkippedTooOld,
                };
            }
            Ok(states)
        };
        query().map_err(|source| self.query_error("looking up keys", source))
    }

    async fn sent_points(&mut self, points: &[(i64, i64)]) -> Result<HashMap<i64, SentPoint>, LedgerError> {
        let query = || -> rusqlite::Result<HashMap<i64, SentPoint>> {
            // One read transaction for all the look-ups: one file lock instead of one per point.
            let transaction = self.connection.unchecked_transaction()?;
            let mut statement = transaction
                .prepare_cached("SELECT gauges FROM sent_metrics WHERE completed_at = ?1 AND point_key = ?2")?;
            let mut seen = foldhash::HashSet::default();
            let mut sent = HashMap::new();
            for (timestamp, point_key) in points {
                if !seen.insert(*point_key) {
                    continue;
                }
                let mut rows = statement.query([timestamp, point_key])?;
                let mut point = SentPoint::default();
                while let Some(row) = rows.next()? {
                    let (gauges, tallies) = decode_values(row.get_ref(0)?.as_blob_or_null()?);
                    point.add(1, &gauges, &tallies);
                }
                if point.count > 0 {
                    sent.insert(*point_key, point);
                }
            }
            drop(statement);
            transaction.commit()?;
            Ok(sent)
        };
        query().map_err(|source| self.query_error("reading sent points", source))
    }

    async fn mark_sent(&mut self, items: &[SentItem<'_>], now_ms: i64) -> Result<(), LedgerError> {
        let write = |connection: &mut Connection| -> rusqlite::Result<()> {
            let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut insert = transaction.prepare_cached(
                    "INSERT INTO sent_metrics (run_key, point_key, completed_at, sent_at, gauges) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (run_key) DO NOTHING",
                )?;
                let mut blob = [0u8; VALUES_BYTES];
                for item in items {
                    insert.execute(params![
                        item.key,
                        item.point_key,
                        item.timestamp,
                        now_ms,
                        encode_values(&item.gauges, &item.tallies, &mut blob)
                    ])?;
                }
                // Sent now: no longer skipped. One statement for the whole request (none when there
                // are no skipped items, the usual case).
                let any_skipped: bool = transaction
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM skipped_runs)")?
                    .query_row([], |row| row.get(0))?;
                if any_skipped {
                    transaction
                        .prepare_cached("DELETE FROM skipped_runs WHERE run_key IN (SELECT value FROM rarray(?1))")?
                        .execute([text_array(items.iter().map(|item| item.key))])?;
                }
            }
            transaction.commit()
        };
        write(&mut self.connection).map_err(|source| self.query_error("marking items as sent", source))
    }

    async fn unmark(&mut self, keys: &[&str]) -> Result<(), LedgerError> {
        self.connection
            .execute(
                "DELETE FROM sent_metrics WHERE run_key IN (SELECT value FROM rarray(?1))",
                [text_array(keys.iter().copied())],
            )
            .map(drop)
            .map_err(|source| self.query_error("unmarking items", source))
    }

    async fn record_skipped(
        &mut self,
        items: &[SkippedItem<'_>],
        reason: SkipReason<'_>,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        let (reason_text, detail, action) = reason.columns();
        let write = |connection: &mut Connection| -> rusqlite::Result<()> {
            let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                // A dead letter replaces any record (with the newest error); a too-old record
                // keeps whatever was recorded first.
                let mut insert = transaction.prepare_cached(
                    "INSERT INTO skipped_runs (run_key, reason, completed_at, recorded_at, detail) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (run_key) DO UPDATE SET reason = excluded.reason, recorded_at = excluded.recorded_at,
                         detail = excluded.detail
                     WHERE excluded.reason = 'dead'",
                )?;
                for item in items {
                    insert.execute(params![item.key, reason_text, item.completed_at, now_ms, detail])?;
                }
            }
            transaction.commit()
        };
        write(&mut self.connection).map_err(|source| self.query_error(action, source))
    }

    async fn dead_letters(&mut self) -> Result<Vec<DeadLetter>, LedgerError> {
        let query = || -> rusqlite::Result<Vec<DeadLetter>> {
            let mut statement = self.connection.prepare(
                "SELECT run_key, recorded_at, COALESCE(detail, '') FROM skipped_runs WHERE reason = 'dead' ORDER BY recorded_at, run_key",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(DeadLetter { key: row.get(0)?, recorded_at: row.get(1)?, detail: row.get(2)? })
            })?;
            rows.collect()
        };
        query().map_err(|source| self.query_error("listing dead letters", source))
    }

    async fn requeue(&mut self, keys: Option<&[String]>) -> Result<usize, LedgerError> {
        let result = match keys {
            None => self.connection.execute("DELETE FROM skipped_runs WHERE reason = 'dead'", []),
            Some(keys) => self.connection.execute(
                "DELETE FROM skipped_runs WHERE reason = 'dead' AND run_key IN (SELECT value FROM rarray(?1))",
                [text_array(keys.iter().map(String::as_str))],
            ),
        };
        result.map_err(|source| self.query_error("requeueing dead letters", source))
    }

    async fn keys(&mut self, state: KeyState) -> Result<Vec<String>, LedgerError> {
        let query = || -> rusqlite::Result<Vec<String>> {
            let mut statement = match state.reason() {
                Some(_) => {
                    self.connection.prepare("SELECT run_key FROM skipped_runs WHERE reason = ?1 ORDER BY run_key")?
                }
                None if state == KeyState::Sent => {
                    self.connection.prepare("SELECT run_key FROM sent_metrics WHERE ?1 IS NULL ORDER BY run_key")?
                }
                None => return Ok(Vec::new()),
            };
            let rows = statement.query_map([state.reason()], |row| row.get(0))?;
            rows.collect()
        };
        query().map_err(|source| self.query_error("listing keys", source))
    }

    async fn counts(&mut self) -> Result<Counts, LedgerError> {
        self.connection
            .query_row(
                "SELECT (SELECT COUNT(*) FROM sent_metrics),
                        (SELECT COUNT(*) FROM skipped_runs WHERE reason = 'too_old'),
                        (SELECT COUNT(*) FROM skipped_runs WHERE reason = 'dead')",
                [],
                |row| Ok(Counts { sent: row.get(0)?, too_old: row.get(1)?, dead: row.get(2)? }),
            )
            .map_err(|source| self.query_error("counting rows", source))
    }

    async fn size_bytes(&mut self) -> Result<Option<u64>, LedgerError> {
        self.connection
            .query_row("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|bytes| u64::try_from(bytes).ok())
            .map_err(|source| self.query_error("reading the ledger's size", source))
    }

    async fn cursor(&mut self, scope: &str) -> Result<Option<String>, LedgerError> {
        let query = || -> rusqlite::Result<Option<String>> {
            let mut statement = self.connection.prepare_cached("SELECT cursor FROM cursors WHERE scope = ?1")?;
            let mut rows = statement.query([scope])?;
            rows.next()?.map(|row| row.get(0)).transpose()
        };
        query().map_err(|source| self.query_error("reading a cursor", source))
    }

    async fn cursors(&mut self, prefix: &str) -> Result<HashMap<String, String>, LedgerError> {
        let query = || -> rusqlite::Result<HashMap<String, String>> {
            // `substr` rather than LIKE: scopes may hold `_` and `%`.
            let mut statement = self
                .connection
                .prepare_cached("SELECT scope, cursor FROM cursors WHERE substr(scope, 1, length(?1)) = ?1")?;
            let rows = statement.query_map([prefix], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        };
        query().map_err(|source| self.query_error("reading cursors", source))
    }

    async fn save_cursor(&mut self, scope: &str, cursor: &str, now_ms: i64) -> Result<(), LedgerError> {
        self.connection
            .execute(
                "INSERT INTO cursors (scope, cursor, saved_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope) DO UPDATE SET cursor = excluded.cursor, saved_at = excluded.saved_at",
                params![scope, cursor, now_ms],
            )
            .map(drop)
            .map_err(|source| self.query_error("saving a cursor", source))
    }

    async fn sent_rows(&mut self, after: Option<&str>, limit: usize) -> Result<Vec<ExportRow>, LedgerError> {
        let query = || -> rusqlite::Result<Vec<ExportRow>> {
            let mut statement = self.connection.prepare_cached(
                "SELECT run_key, point_key, completed_at, sent_at, gauges FROM sent_metrics
                 WHERE run_key > ?1 ORDER BY run_key LIMIT ?2",
            )?;
            let rows =
                statement.query_map(params![after.unwrap_or(""), i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
                    let (gauges, tallies) = decode_values(row.get_ref(4)?.as_blob_or_null()?);
                    Ok(ExportRow::Sent {
                        key: row.get(0)?,
                        point_key: row.get(1)?,
                        timestamp: row.get(2)?,
                        sent_at: row.get(3)?,
                        gauges,
                        tallies,
                    })
                })?;
            rows.collect()
        };
        query().map_err(|source| self.query_error("exporting sent items", source))
    }

    async fn skipped_rows(&mut self) -> Result<Vec<ExportRow>, LedgerError> {
        let query = || -> rusqlite::Result<Vec<ExportRow>> {
            let mut statement = self.connection.prepare(
                "SELECT run_key, reason, completed_at, recorded_at, detail FROM skipped_runs ORDER BY run_key",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(ExportRow::Skipped {
                    key: row.get(0)?,
                    reason: row.get(1)?,
                    completed_at: row.get(2)?,
                    recorded_at: row.get(3)?,
                    detail: row.get(4)?,
                })
            })?;
            rows.collect()
        };
        query().map_err(|source| self.query_error("exporting skipped items", source))
    }

    async fn verify(&mut self) -> Result<(), LedgerError> {
        let result: String = self
            .connection
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .map_err(|source| self.query_error("checking integrity", source))?;
        if result == "ok" {
            Ok(())
        } else {
            Err(LedgerError::Damaged { path: self.describe(), detail: result })
        }
    }
}

/// Takes the exclusive lock on `<ledger>.lock`, waiting up to `timeout` for another invocation
/// to let go of it.
fn lock(path: &Path, timeout: Duration) -> Result<std::fs::File, LedgerError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| LedgerError::LockFile { lock: lock_path.clone(), source })?;
    let started = Instant::now();
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if started.elapsed() >= timeout {
                    return Err(LedgerError::Busy {
                        path: path.display().to_string(),
                        lock: lock_path,
                        waited_seconds: started.elapsed().as_secs(),
                    });
                }
                if !said {
                    tracing::warn!(ledger = %path.display(), "another invocation holds the ledger; waiting for it");
                    said = true;
                }
                // A blocking lock cannot time out; polling can, and the wait is not on a hot path.
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(LedgerError::LockFile { lock: lock_path, source });
            }
        }
    }
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    // Another invocation may hold the write lock for one short transaction: wait for it.
    connection.busy_timeout(std::time::Duration::from_secs(30))?;
    // WAL: readers never block the writer. NORMAL is durable against a crash of this process;
    // a power loss may forget the last marks, and those runs are resent with identical points.
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints (copying the WAL into the database, with an fsync) every 16k pages instead of
    // 1k: a backfill marks a million runs, and each checkpoint stalls the pipeline.
    connection.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    // 4 MiB of page cache (the default is 2 MiB) holds the B-trees' inner pages of a million-item
    // ledger, without letting memory grow with it (see the README's performance section).
    connection.pragma_update(None, "cache_size", -4096)?;
    Ok(())
}

fn migrate(connection: &mut Connection, path: &Path) -> Result<(), LedgerError> {
    let migrate_error = |source| open_error(path, source);
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Exclusive).map_err(migrate_error)?;
    let found: i64 = transaction.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(migrate_error)?;
    let too_new = || LedgerError::TooNew { path: path.display().to_string(), found };
    if found > SCHEMA_VERSION {
        return Err(too_new());
    }
    let start = usize::try_from(found).map_err(|_| too_new())?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(start) {
        transaction.execute_batch(migration).map_err(migrate_error)?;
        transaction.pragma_update(None, "user_version", index + 1).map_err(migrate_error)?;
    }
    transaction.commit().map_err(migrate_error)
}

#[cfg(test)]
mod tests {
    //! What only the SQLite backend does: files, versions, the lock, migrations. The behaviour
    //! every backend shares is in `conformance.rs`.
    use super::*;
    use crate::ledger::Overlay;

    fn sent(key: &str, point_key: i64) -> SentItem<'_> {
        SentItem { key, point_key, timestamp: 100, gauges: [Some(1.5), None, None], tallies: [0; 2] }
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path).unwrap().query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap()
    }

    #[tokio::test]
    async fn reopening_keeps_rows_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ledger.db");
        SqliteLedger::open(&path, Duration::ZERO).unwrap().mark_sent(&[sent("a", 1)], 0).await.unwrap();
        let mut ledger = SqliteLedger::open(&path, Duration::ZERO).unwrap();
        assert_eq!(ledger.counts().await.unwrap().sent, 1);
        assert_eq!(ledger.sent_points(&[(100, 1)]).await.unwrap()[&1].gauges[0], Some(1.5));
        assert_eq!(user_version(&path), SCHEMA_VERSION);
    }

    #[test]
    fn refuses_newer_schema_and_non_databases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(SqliteLedger::open(&path, Duration::ZERO), Err(LedgerError::TooNew { found: 99, .. })));
        assert!(matches!(SqliteLedger::open_read_only(&path), Err(LedgerError::TooNew { found: 99, .. })));
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"this is not a database, just text that is long enough to be a header").unwrap();
        let error = SqliteLedger::open(&junk, Duration::ZERO).err().expect("not a database");
        assert!(format!("{error}").contains("junk.db"));
    }

    #[tokio::test]
    async fn a_dry_run_reads_the_real_ledger_and_writes_nothing_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        SqliteLedger::open(&path, Duration::ZERO).unwrap().mark_sent(&[sent("a", 1)], 0).await.unwrap();
        let before = std::fs::read(&path).unwrap();
        let base = SqliteLedger::open_read_only(&path).unwrap().expect("the ledger exists");
        let mut dry = Overlay::new(Some(Box::new(base)), Box::new(SqliteLedger::open_in_memory().unwrap()));
        assert_eq!(dry.states(&["a", "b"]).await.unwrap(), [KeyState::Sent, KeyState::Unknown]);
        dry.mark_sent(&[sent("b", 1)], 0).await.unwrap();
        assert_eq!(dry.states(&["b"]).await.unwrap(), [KeyState::Sent]);
        assert_eq!(dry.sent_points(&[(100, 1)]).await.unwrap()[&1].count, 2);
        // Sent in the real ledger wins over skipped in the dry run's record.
        dry.record_skipped(&[SkippedItem { key: "a", completed_at: 1 }], SkipReason::Dead { detail: "x" }, 0)
            .await
            .unwrap();
        assert_eq!(dry.states(&["a"]).await.unwrap(), [KeyState::Sent]);
        drop(dry);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(SqliteLedger::open(&path, Duration::ZERO).unwrap().counts().await.unwrap().sent, 1);
        // No ledger yet: reading it creates nothing.
        let missing = dir.path().join("none/ledger.db");
        assert!(SqliteLedger::open_read_only(&missing).unwrap().is_none());
        assert!(!missing.exists() && !missing.parent().unwrap().exists());
    }

    #[test]
    fn reading_an_old_schema_asks_for_a_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        Connection::open(&path).unwrap().execute_batch(MIGRATIONS[0]).unwrap();
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 1).unwrap();
        assert!(matches!(SqliteLedger::open_read_only(&path), Err(LedgerError::NeedsMigration { found: 1, .. })));
    }

    #[test]
    fn one_writer_at_a_time_and_the_lock_goes_with_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let first = SqliteLedger::open(&path, Duration::ZERO).unwrap();
        let error = SqliteLedger::open(&path, Duration::from_millis(120)).err().expect("held by the first");
        assert!(matches!(error, LedgerError::Busy { .. }), "{error}");
        // Readers (dry runs, `ledger list`) do not wait.
        SqliteLedger::open_read_only(&path).unwrap().expect("exists");
        drop(first);
        SqliteLedger::open(&path, Duration::ZERO).unwrap();
    }

    #[tokio::test]
    async fn migrates_a_version_1_ledger_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let connection = Connection::open(&path).unwrap();
            connection.execute_batch(MIGRATIONS[0]).unwrap();
            connection.pragma_update(None, "user_version", 1).unwrap();
            connection.execute("INSERT INTO sent_metrics VALUES ('old', 1, 2, 3)", []).unwrap();
        }
        let mut ledger = SqliteLedger::open(&path, Duration::ZERO).unwrap();
        assert_eq!(ledger.states(&["old"]).await.unwrap(), [KeyState::Sent]);
        // Rows from before gauges were kept count, with no gauge known.
        assert_eq!(
            ledger.sent_points(&[(2, 1)]).await.unwrap()[&1],
            SentPoint { count: 1, gauges: [None; 3], tallies: [0; 2] }
        );
        ledger
            .record_skipped(&[SkippedItem { key: "d", completed_at: 1 }], SkipReason::Dead { detail: "x" }, 0)
            .await
            .unwrap();
        assert_eq!(user_version(&path), SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn verify_finds_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let mut ledger = SqliteLedger::open(&path, Duration::ZERO).unwrap();
            let keys: Vec<String> = (0..5000).map(|i| format!("o/r:{i}:1")).collect();
            let items: Vec<SentItem<'_>> = keys.iter().map(|key| sent(key, 1)).collect();
            ledger.mark_sent(&items, 0).await.unwrap();
            ledger.verify().await.unwrap();
        }
        // Overwrite a page in the middle of the B-tree with garbage.
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 8 * 4096, "{} bytes", bytes.len());
        bytes[5 * 4096..6 * 4096].fill(0x5a);
        std::fs::write(&path, bytes).unwrap();
        let error = match SqliteLedger::open_read_only(&path).unwrap().expect("exists").verify().await {
            Ok(()) => panic!("a damaged ledger verified"),
            Err(error) => error,
        };
        assert!(matches!(error, LedgerError::Damaged { .. } | LedgerError::Query { .. }), "{error}");
    }
}
