//! The SQLite ledger of runs already handled. The only module that knows SQL.
//!
//! Tables (schema version 1, tracked by `PRAGMA user_version`):
//! - `sent_metrics`: one row per run key Datadog confirmed with a 2xx; `point_key` lets a later
//!   request sum its counts on top of runs already sent (see `metrics::SeriesSpec::series`).
//! - `skipped_runs`: runs recorded apart from the sent ones, with a reason, so they are not
//!   reconsidered on every invocation: `too_old` (outside Datadog's window) and `dead` (Datadog
//!   answered 400 for that run alone; `detail` keeps the error, `ledger requeue` frees it).
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
//!
//! A dry run opens an in-memory database (or the user's separate dry-run record) as `main` and
//! attaches the real ledger read-only as `base`: reads see both, writes only touch `main`, so the
//! real ledger is never written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

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
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("failed to create the ledger folder {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to open ledger at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("ledger at {path} has schema version {found}, newer than this binary knows ({SCHEMA_VERSION}); upgrade workflow-metrics")]
    TooNew { path: PathBuf, found: i64 },
    #[error("ledger at {path} has schema version {found}; a dry run does not migrate it: run `workflow-metrics check` once to upgrade it")]
    NeedsMigration { path: PathBuf, found: i64 },
    #[error("ledger at {path} is held by another invocation (lock file {lock}); gave up after {waited_seconds}s (--lock-timeout)")]
    Busy { path: PathBuf, lock: PathBuf, waited_seconds: u64 },
    #[error("cannot create the lock file {lock} of the ledger")]
    LockFile {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger at {path}: {action} failed")]
    Query {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

/// What the ledger knows of one run key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Unknown,
    Sent,
    SkippedTooOld,
    Dead,
}

/// A dead letter: a run Datadog rejected on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub run_key: String,
    pub recorded_at: i64,
    pub detail: String,
}

/// A run confirmed by Datadog, to be marked.
#[derive(Clone, Debug)]
pub struct SentRun<'a> {
    pub run_key: &'a str,
    pub point_key: i64,
    pub completed_at: i64,
}

pub struct Ledger {
    connection: Connection,
    path: PathBuf,
    dry_run: bool,
    /// The exclusive lock on `<ledger>.lock`, held as long as this value lives.
    _lock: Option<std::fs::File>,
}

impl Ledger {
    /// Opens (creating it and its folder if needed) and migrates the ledger at `path`.
    ///
    /// # Errors
    /// The folder cannot be created, the file is not a SQLite database, or its schema is newer
    /// than this binary's.
    pub fn open(path: &Path, lock_timeout: Duration) -> Result<Ledger, LedgerError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| LedgerError::CreateDir { path: parent.to_owned(), source })?;
        }
        let lock = lock(path, lock_timeout)?;
        let mut ledger = Ledger::open_unlocked(path)?;
        ledger._lock = Some(lock);
        Ok(ledger)
    }

    fn open_unlocked(path: &Path) -> Result<Ledger, LedgerError> {
        let open_error = |source| LedgerError::Open { path: path.to_owned(), source };
        let mut connection = Connection::open(path).map_err(open_error)?;
        configure(&connection).map_err(open_error)?;
        migrate(&mut connection, path)?;
        create_views(&connection, false).map_err(open_error)?;
        Ok(Ledger { connection, path: path.to_owned(), dry_run: false, _lock: None })
    }

    /// Opens the ledger for a dry run: the real ledger at `path` is attached read-only (if it
    /// exists) and every write goes to `record` (a separate file kept between dry runs) or to
    /// memory.
    ///
    /// # Errors
    /// As [`Ledger::open`]; also a real ledger whose schema is older than this binary's.
    pub fn open_dry_run(path: &Path, record: Option<&Path>) -> Result<Ledger, LedgerError> {
        let mut ledger = match record {
            Some(record) => Ledger::open(record, Duration::ZERO)?,
            None => {
                let open_error = |source| LedgerError::Open { path: PathBuf::from(":memory:"), source };
                let mut connection = Connection::open_in_memory().map_err(open_error)?;
                migrate(&mut connection, Path::new(":memory:"))?;
                Ledger { connection, path: path.to_owned(), dry_run: true, _lock: None }
            }
        };
        ledger.dry_run = true;
        ledger.path = path.to_owned();
        let open_error = |source| LedgerError::Open { path: path.to_owned(), source };
        let has_base = path.exists();
        if has_base {
            let uri = format!("file:{}?mode=ro", uri_path(path));
            ledger.connection.execute("ATTACH DATABASE ?1 AS base", [uri]).map_err(open_error)?;
            let found: i64 =
                ledger.connection.query_row("PRAGMA base.user_version", [], |row| row.get(0)).map_err(open_error)?;
            if found > SCHEMA_VERSION {
                return Err(LedgerError::TooNew { path: path.to_owned(), found });
            }
            if found < SCHEMA_VERSION {
                return Err(LedgerError::NeedsMigration { path: path.to_owned(), found });
            }
        }
        create_views(&ledger.connection, has_base).map_err(open_error)?;
        Ok(ledger)
    }

    /// What the ledger knows of each key, in the order given: one query for the whole batch.
    ///
    /// # Errors
    /// The query fails (locked beyond the busy timeout, disk error).
    pub fn states(&self, keys: &[&str]) -> Result<Vec<KeyState>, LedgerError> {
        let array: Rc<Vec<Value>> = Rc::new(keys.iter().map(|key| Value::Text((*key).to_owned())).collect());
        let query = || -> rusqlite::Result<Vec<KeyState>> {
            // Only the keys the ledger knows come back (none, in a backfill): the rest are unknown.
            let mut statement = self.connection.prepare_cached(
                "SELECT k.rowid, 'sent' FROM rarray(?1) AS k
                   WHERE EXISTS (SELECT 1 FROM temp.all_sent s WHERE s.run_key = k.value)
                 UNION ALL
                 SELECT k.rowid, (SELECT t.reason FROM temp.all_skipped t WHERE t.run_key = k.value LIMIT 1) AS reason
                   FROM rarray(?1) AS k
                   WHERE EXISTS (SELECT 1 FROM temp.all_skipped t WHERE t.run_key = k.value)",
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
        query().map_err(|source| self.query_error("looking up run keys", source))
    }

    /// How many sent runs share each point, given as (timestamp, point key): one indexed
    /// look-up per distinct point.
    ///
    /// # Errors
    /// The query fails.
    pub fn sent_counts(&self, points: &[(i64, i64)]) -> Result<HashMap<i64, u32>, LedgerError> {
        let query = || -> rusqlite::Result<HashMap<i64, u32>> {
            // One read transaction for all the look-ups: one file lock instead of one per point.
            let transaction = self.connection.unchecked_transaction()?;
            let mut statement = transaction
                .prepare_cached("SELECT COUNT(*) FROM temp.all_sent WHERE completed_at = ?1 AND point_key = ?2")?;
            let mut seen = foldhash::HashSet::default();
            let mut counts = HashMap::new();
            for (timestamp, point_key) in points {
                if !seen.insert(*point_key) {
                    continue;
                }
                let count: u32 = statement.query_row([timestamp, point_key], |row| row.get(0))?;
                if count > 0 {
                    counts.insert(*point_key, count);
                }
            }
            drop(statement);
            transaction.commit()?;
            Ok(counts)
        };
        query().map_err(|source| self.query_error("counting sent points", source))
    }

    /// Marks the runs of one confirmed request as sent, in one transaction.
    ///
    /// # Errors
    /// The transaction fails; then none of the runs is marked.
    pub fn mark_sent(&mut self, runs: &[SentRun<'_>], now_ms: i64) -> Result<(), LedgerError> {
        write_sent(&mut self.connection, runs, now_ms)
            .map_err(|source| self.query_error("marking runs as sent", source))
    }

    /// Records runs too old for Datadog's intake window, apart from the sent ones.
    ///
    /// # Errors
    /// The transaction fails; then none is recorded.
    pub fn record_too_old(&mut self, runs: &[(&str, i64)], now_ms: i64) -> Result<(), LedgerError> {
        write_too_old(&mut self.connection, runs, now_ms)
            .map_err(|source| self.query_error("recording too-old runs", source))
    }

    /// Undoes `mark_sent` for runs whose request failed (`--at-most-once` marks before sending).
    ///
    /// # Errors
    /// The statement fails; the runs then stay marked (lost, never duplicated).
    pub fn unmark(&mut self, keys: &[&str]) -> Result<(), LedgerError> {
        let array: Rc<Vec<Value>> = Rc::new(keys.iter().map(|key| Value::Text((*key).to_owned())).collect());
        self.connection
            .execute("DELETE FROM main.sent_metrics WHERE run_key IN (SELECT value FROM rarray(?1))", [array])
            .map(drop)
            .map_err(|source| self.query_error("unmarking runs", source))
    }

    /// Records runs Datadog rejected (400) as dead letters with its error, never as sent.
    ///
    /// # Errors
    /// The transaction fails; then none is recorded.
    pub fn record_dead(&mut self, runs: &[(&str, i64)], detail: &str, now_ms: i64) -> Result<(), LedgerError> {
        write_dead(&mut self.connection, runs, detail, now_ms)
            .map_err(|source| self.query_error("recording dead letters", source))
    }

    /// The dead letters, oldest first.
    ///
    /// # Errors
    /// The query fails.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, LedgerError> {
        let query = || -> rusqlite::Result<Vec<DeadLetter>> {
            let mut statement = self.connection.prepare(
                "SELECT run_key, recorded_at, COALESCE(detail, '') FROM main.skipped_runs WHERE reason = 'dead' ORDER BY recorded_at, run_key",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(DeadLetter { run_key: row.get(0)?, recorded_at: row.get(1)?, detail: row.get(2)? })
            })?;
            rows.collect()
        };
        query().map_err(|source| self.query_error("listing dead letters", source))
    }

    /// Frees dead letters so the next invocation sends them again: the given keys, or all.
    /// Returns how many were freed.
    ///
    /// # Errors
    /// The statement fails.
    pub fn requeue(&mut self, keys: Option<&[String]>) -> Result<usize, LedgerError> {
        let result = match keys {
            None => self.connection.execute("DELETE FROM main.skipped_runs WHERE reason = 'dead'", []),
            Some(keys) => {
                let array: Rc<Vec<Value>> = Rc::new(keys.iter().map(|key| Value::Text(key.clone())).collect());
                self.connection.execute(
                    "DELETE FROM main.skipped_runs WHERE reason = 'dead' AND run_key IN (SELECT value FROM rarray(?1))",
                    [array],
                )
            }
        };
        result.map_err(|source| self.query_error("requeueing dead letters", source))
    }

    /// Row counts, for `check` and tests.
    ///
    /// # Errors
    /// The query fails.
    pub fn counts(&self) -> Result<(u64, u64), LedgerError> {
        self.connection
            .query_row(
                "SELECT (SELECT COUNT(*) FROM temp.all_sent), (SELECT COUNT(*) FROM temp.all_skipped)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(|source| self.query_error("counting rows", source))
    }

    fn query_error(&self, action: &'static str, source: rusqlite::Error) -> LedgerError {
        LedgerError::Query { path: self.path.clone(), action, source }
    }
}

fn write_sent(connection: &mut Connection, runs: &[SentRun<'_>], now_ms: i64) -> rusqlite::Result<()> {
    let keys: Rc<Vec<Value>> = Rc::new(runs.iter().map(|run| Value::Text(run.run_key.to_owned())).collect());
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = transaction.prepare_cached(
            "INSERT INTO main.sent_metrics (run_key, point_key, completed_at, sent_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (run_key) DO NOTHING",
        )?;
        for run in runs {
            insert.execute(params![run.run_key, run.point_key, run.completed_at, now_ms])?;
        }
        // Sent now: no longer too old. One statement for the whole request (none when there are
        // no skipped runs, the usual case).
        let any_skipped: bool = transaction
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM main.skipped_runs)")?
            .query_row([], |row| row.get(0))?;
        if any_skipped {
            transaction
                .prepare_cached("DELETE FROM main.skipped_runs WHERE run_key IN (SELECT value FROM rarray(?1))")?
                .execute([keys])?;
        }
    }
    transaction.commit()
}

fn write_too_old(connection: &mut Connection, runs: &[(&str, i64)], now_ms: i64) -> rusqlite::Result<()> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = transaction.prepare_cached(
            "INSERT INTO main.skipped_runs (run_key, reason, completed_at, recorded_at) VALUES (?1, 'too_old', ?2, ?3)
             ON CONFLICT (run_key) DO NOTHING",
        )?;
        for (run_key, completed_at) in runs {
            insert.execute(params![run_key, completed_at, now_ms])?;
        }
    }
    transaction.commit()
}

fn write_dead(connection: &mut Connection, runs: &[(&str, i64)], detail: &str, now_ms: i64) -> rusqlite::Result<()> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = transaction.prepare_cached(
            "INSERT INTO main.skipped_runs (run_key, reason, completed_at, recorded_at, detail) VALUES (?1, 'dead', ?2, ?3, ?4)
             ON CONFLICT (run_key) DO UPDATE SET reason = 'dead', recorded_at = ?3, detail = ?4",
        )?;
        for (run_key, completed_at) in runs {
            insert.execute(params![run_key, completed_at, now_ms, detail])?;
        }
    }
    transaction.commit()
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
                        path: path.to_owned(),
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
    // 4 MiB of page cache (the default is 2 MiB) holds the B-trees' inner pages of a million-run
    // ledger; 8 MiB was no faster and made a 1M-run send's peak RSS grow past a 100k-run one's.
    connection.pragma_update(None, "cache_size", -4096)?;
    Ok(())
}

fn migrate(connection: &mut Connection, path: &Path) -> Result<(), LedgerError> {
    let migrate_error = |source| LedgerError::Open { path: path.to_owned(), source };
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Exclusive).map_err(migrate_error)?;
    let found: i64 = transaction.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(migrate_error)?;
    if found > SCHEMA_VERSION {
        return Err(LedgerError::TooNew { path: path.to_owned(), found });
    }
    let start = usize::try_from(found).map_err(|_| LedgerError::TooNew { path: path.to_owned(), found })?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(start) {
        transaction.execute_batch(migration).map_err(migrate_error)?;
        transaction.pragma_update(None, "user_version", index + 1).map_err(migrate_error)?;
    }
    transaction.commit().map_err(migrate_error)
}

fn create_views(connection: &Connection, has_base: bool) -> rusqlite::Result<()> {
    rusqlite::vtab::array::load_module(connection)?;
    let (sent, skipped) = if has_base {
        (
            "SELECT run_key, point_key, completed_at FROM main.sent_metrics
             UNION ALL SELECT run_key, point_key, completed_at FROM base.sent_metrics",
            "SELECT run_key, reason FROM main.skipped_runs UNION ALL SELECT run_key, reason FROM base.skipped_runs",
        )
    } else {
        (
            "SELECT run_key, point_key, completed_at FROM main.sent_metrics",
            "SELECT run_key, reason FROM main.skipped_runs",
        )
    };
    connection.execute_batch(&format!(
        "CREATE TEMP VIEW IF NOT EXISTS all_sent AS {sent};
         CREATE TEMP VIEW IF NOT EXISTS all_skipped AS {skipped};"
    ))
}

/// A path as a SQLite URI path: `?` and `#` and `%` escaped.
fn uri_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            '%' => out.push_str("%25"),
            other => out.push(other),
        }
    }
    out
}

/// Opens an existing ledger read-only without migrating it; used by tests and `check`.
///
/// # Errors
/// The file cannot be opened as a SQLite database.
pub fn open_read_only(path: &Path) -> Result<Connection, LedgerError> {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| LedgerError::Open { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent<'a>(key: &'a str, point_key: i64) -> SentRun<'a> {
        SentRun { run_key: key, point_key, completed_at: 100 }
    }

    #[test]
    fn marks_and_looks_up_in_bulk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ledger.db");
        let mut ledger = Ledger::open(&path, Duration::ZERO).unwrap();
        ledger.mark_sent(&[sent("a", 1), sent("b", 1), sent("c", 2)], 0).unwrap();
        ledger.record_too_old(&[("d", 5)], 0).unwrap();
        // More keys than SQLite's default variable limit (32766): one parameter all the same.
        let many: Vec<String> = (0..40_000).map(|i| format!("k{i}")).collect();
        let mut keys: Vec<&str> = many.iter().map(String::as_str).collect();
        keys.extend(["a", "d", "zz"]);
        let states = ledger.states(&keys).unwrap();
        assert_eq!(states.len(), keys.len());
        assert_eq!(&states[40_000..], [KeyState::Sent, KeyState::SkippedTooOld, KeyState::Unknown]);
        assert_eq!(
            ledger.sent_counts(&[(100, 1), (100, 2), (100, 3), (100, 1), (99, 2)]).unwrap(),
            HashMap::from([(1, 2), (2, 1)])
        );
        // Marking a too-old run as sent moves it.
        ledger.mark_sent(&[sent("d", 9)], 0).unwrap();
        assert_eq!(ledger.counts().unwrap(), (4, 0));
    }

    #[test]
    fn marks_many_rows_and_ignores_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger.db"), Duration::ZERO).unwrap();
        let keys: Vec<String> = (0..601).map(|i| format!("o/r:{i}:1")).collect();
        let runs: Vec<SentRun<'_>> = keys.iter().map(|key| sent(key, 7)).collect();
        ledger.mark_sent(&runs[..300], 0).unwrap();
        ledger.mark_sent(&runs, 0).unwrap();
        assert_eq!(ledger.counts().unwrap(), (601, 0));
        assert_eq!(ledger.sent_counts(&[(100, 7)]).unwrap(), HashMap::from([(7, 601)]));
    }

    #[test]
    fn reopening_keeps_rows_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        Ledger::open(&path, Duration::ZERO).unwrap().mark_sent(&[sent("a", 1)], 0).unwrap();
        let ledger = Ledger::open(&path, Duration::ZERO).unwrap();
        assert_eq!(ledger.counts().unwrap(), (1, 0));
        let version: i64 = open_read_only(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn refuses_newer_schema_and_non_databases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(Ledger::open(&path, Duration::ZERO), Err(LedgerError::TooNew { found: 99, .. })));
        assert!(matches!(Ledger::open_dry_run(&path, None), Err(LedgerError::TooNew { found: 99, .. })));
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"this is not a database, just text that is long enough to be a header").unwrap();
        let error = Ledger::open(&junk, Duration::ZERO).err().expect("not a database");
        assert!(format!("{error}").contains("junk.db"));
    }

    #[test]
    fn dry_run_reads_the_real_ledger_and_writes_nothing_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        Ledger::open(&path, Duration::ZERO).unwrap().mark_sent(&[sent("a", 1)], 0).unwrap();
        let before = std::fs::read(&path).unwrap();
        let mut dry = Ledger::open_dry_run(&path, None).unwrap();
        assert_eq!(dry.states(&["a", "b"]).unwrap(), [KeyState::Sent, KeyState::Unknown]);
        dry.mark_sent(&[sent("b", 1)], 0).unwrap();
        assert_eq!(dry.states(&["b"]).unwrap(), [KeyState::Sent]);
        assert_eq!(dry.sent_counts(&[(100, 1)]).unwrap(), HashMap::from([(1, 2)]));
        drop(dry);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(Ledger::open(&path, Duration::ZERO).unwrap().counts().unwrap(), (1, 0));
        // No ledger yet: a dry run must not create one.
        let missing = dir.path().join("none/ledger.db");
        Ledger::open_dry_run(&missing, None).unwrap();
        assert!(!missing.exists() && !missing.parent().unwrap().exists());
    }

    #[test]
    fn one_writer_at_a_time_and_the_lock_goes_with_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let first = Ledger::open(&path, Duration::ZERO).unwrap();
        let error = Ledger::open(&path, Duration::from_millis(120)).err().expect("held by the first");
        assert!(matches!(error, LedgerError::Busy { .. }), "{error}");
        // Dry runs only read: they do not wait.
        Ledger::open_dry_run(&path, None).unwrap();
        drop(first);
        Ledger::open(&path, Duration::ZERO).unwrap();
    }

    #[test]
    fn dead_letters_are_skipped_until_requeued() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger.db"), Duration::ZERO).unwrap();
        ledger.record_dead(&[("a", 10), ("b", 11)], "{\"errors\":[\"bad\"]}", 5).unwrap();
        assert_eq!(ledger.states(&["a", "c"]).unwrap(), [KeyState::Dead, KeyState::Unknown]);
        let dead = ledger.dead_letters().unwrap();
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].detail, "{\"errors\":[\"bad\"]}");
        assert_eq!(ledger.requeue(Some(&["a".to_owned()])).unwrap(), 1);
        assert_eq!(ledger.states(&["a", "b"]).unwrap(), [KeyState::Unknown, KeyState::Dead]);
        assert_eq!(ledger.requeue(None).unwrap(), 1);
        assert!(ledger.dead_letters().unwrap().is_empty());
        // Sent wins over skipped (a dry run's record can hold a key its base has skipped), and
        // every position of a batch gets its own state.
        ledger.record_dead(&[("s", 1)], "x", 0).unwrap();
        ledger.connection.execute("INSERT INTO sent_metrics VALUES ('s', 1, 1, 1)", []).unwrap();
        ledger.record_too_old(&[("o", 1)], 0).unwrap();
        assert_eq!(
            ledger.states(&["x", "s", "o", "b", "s"]).unwrap(),
            [KeyState::Unknown, KeyState::Sent, KeyState::SkippedTooOld, KeyState::Unknown, KeyState::Sent]
        );
    }

    #[test]
    fn migrates_a_version_1_ledger_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let connection = Connection::open(&path).unwrap();
            connection.execute_batch(MIGRATIONS[0]).unwrap();
            connection.pragma_update(None, "user_version", 1).unwrap();
            connection.execute("INSERT INTO sent_metrics VALUES ('old', 1, 2, 3)", []).unwrap();
        }
        let mut ledger = Ledger::open(&path, Duration::ZERO).unwrap();
        assert_eq!(ledger.states(&["old"]).unwrap(), [KeyState::Sent]);
        ledger.record_dead(&[("d", 1)], "x", 0).unwrap();
        let version: i64 = open_read_only(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
