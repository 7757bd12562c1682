//! The ledger: what was sent, skipped and dead-lettered, and where each source may resume. The
//! only module that knows SQL.
//!
//! [`Ledger`] is the seam: callers use its domain methods and never see a connection. It is an
//! async trait because the pipeline is async and a networked backend (PostgreSQL) is too; the
//! SQLite backend answers at once. Opening a live ledger takes its lock (one writer at a time);
//! a dry run wraps the real ledger, opened read-only, in an [`Overlay`] that keeps its own
//! writes apart, so the real ledger is never written whatever the backend.
//!
//! Backends: `sqlite` (the embedded default: one writer at a time, through a lock file) and
//! `postgres` (one database many invocations share: each claims the points it sends). Every
//! backend passes the same conformance suite (`conformance.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use crate::metrics::{Gauges, SentPoint, Tallies, MAX_GAUGES, MAX_TALLIES};

#[cfg(test)]
mod conformance;
pub mod inspect;
mod overlay;
pub mod postgres;
pub mod sqlite;

pub use overlay::Overlay;
pub use postgres::{PgLedger, PgTarget, PG_SCHEMA_VERSION};
pub use sqlite::{SqliteLedger, SCHEMA_VERSION};

/// What the ledger knows of one item key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Unknown,
    Sent,
    SkippedTooOld,
    Dead,
}

impl KeyState {
    /// The `reason` column of a state recorded apart from the sent ones.
    pub(crate) fn reason(self) -> Option<&'static str> {
        match self {
            KeyState::SkippedTooOld => Some("too_old"),
            KeyState::Dead => Some("dead"),
            KeyState::Sent | KeyState::Unknown => None,
        }
    }
}

/// Why an item is recorded without being sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason<'a> {
    /// Completed longer ago than Datadog's intake window (`--max-age`). Recording it again keeps
    /// the first record; a dead letter stays dead.
    TooOld,
    /// Datadog rejected it on its own (400), with Datadog's error: skipped until requeued.
    Dead { detail: &'a str },
}

impl<'a> SkipReason<'a> {
    /// The `reason` column, the `detail` column, and what recording it is called in errors.
    pub(crate) fn columns(self) -> (&'static str, Option<&'a str>, &'static str) {
        match self {
            SkipReason::TooOld => ("too_old", None, "recording too-old items"),
            SkipReason::Dead { detail } => ("dead", Some(detail), "recording dead letters"),
        }
    }
}

/// An item confirmed by Datadog, to be marked.
#[derive(Clone, Debug)]
pub struct SentItem<'a> {
    pub key: &'a str,
    pub point_key: i64,
    /// The timestamp of its points (its completion time, or the send time when stamped).
    pub timestamp: i64,
    /// Its gauge values, so that a later item at the same point sends the largest.
    pub gauges: Gauges,
    /// Its tallies, so that a later item at the same point sends their sums.
    pub tallies: Tallies,
}

/// Bytes of an item's stored values: its gauges, then its tallies.
pub const VALUES_BYTES: usize = 8 * MAX_GAUGES + 4 * MAX_TALLIES;

/// An item's values as every backend stores them (one blob): `MAX_GAUGES` little-endian f64s,
/// NaN where there is none, then, only when one is not zero, `MAX_TALLIES` little-endian u32s;
/// `None` (NULL) when there is nothing at all. Encoded on the stack: this runs once per marked
/// item. Blobs written before tallies existed (gauges only) read as tallies of zero.
pub fn encode_values<'b>(gauges: &Gauges, tallies: &Tallies, out: &'b mut [u8; VALUES_BYTES]) -> Option<&'b [u8]> {
    let any_tally = tallies.iter().any(|tally| *tally > 0);
    if gauges.iter().all(Option::is_none) && !any_tally {
        return None;
    }
    let (gauge_bytes, tally_bytes) = out.split_at_mut(8 * MAX_GAUGES);
    for (slot, gauge) in gauge_bytes.chunks_exact_mut(8).zip(gauges) {
        slot.copy_from_slice(&gauge.unwrap_or(f64::NAN).to_le_bytes());
    }
    if !any_tally {
        return Some(&out[..8 * MAX_GAUGES]);
    }
    for (slot, tally) in tally_bytes.chunks_exact_mut(4).zip(tallies) {
        slot.copy_from_slice(&tally.to_le_bytes());
    }
    Some(&out[..])
}

/// The inverse of [`encode_values`].
pub fn decode_values(blob: Option<&[u8]>) -> (Gauges, Tallies) {
    let mut gauges = [None; MAX_GAUGES];
    let mut tallies = [0; MAX_TALLIES];
    if let Some(blob) = blob {
        let (gauge_bytes, tally_bytes) = blob.split_at(blob.len().min(8 * MAX_GAUGES));
        for (slot, bytes) in gauges.iter_mut().zip(gauge_bytes.chunks_exact(8)) {
            let value = f64::from_le_bytes(bytes.try_into().expect("chunks of 8 bytes"));
            *slot = (!value.is_nan()).then_some(value);
        }
        for (slot, bytes) in tallies.iter_mut().zip(tally_bytes.chunks_exact(4)) {
            *slot = u32::from_le_bytes(bytes.try_into().expect("chunks of 4 bytes"));
        }
    }
    (gauges, tallies)
}

/// An item recorded as skipped: its key and completion time.
#[derive(Clone, Copy, Debug)]
pub struct SkippedItem<'a> {
    pub key: &'a str,
    pub completed_at: i64,
}

/// A dead letter: an item Datadog rejected on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub key: String,
    pub recorded_at: i64,
    pub detail: String,
}

/// A point an invocation is about to write: (timestamp, point key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Claim {
    pub timestamp: i64,
    pub point_key: i64,
}

/// What [`Ledger::claim_and_look_up`] found: per claim whether it is held, per key its state,
/// and what was sent to the claimed points.
#[derive(Debug, Default)]
pub struct ClaimedLookUp {
    pub granted: Vec<bool>,
    pub states: Vec<KeyState>,
    pub sent: HashMap<i64, SentPoint>,
}

/// One row of a ledger as `ledger export` writes it (a JSON line) and `ledger import` reads it:
/// how a ledger moves from one backend to another.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExportRow {
    /// An item Datadog confirmed, with its point and the values it delivered there.
    Sent { key: String, point_key: i64, timestamp: i64, sent_at: i64, gauges: Gauges, tallies: Tallies },
    /// An item recorded apart: `too_old`, or `dead` with Datadog's error.
    Skipped { key: String, reason: String, completed_at: i64, recorded_at: i64, detail: Option<String> },
    /// Where a source may resume.
    Cursor { scope: String, cursor: String },
}

/// Rows per state, for `check`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    pub too_old: u64,
    pub dead: u64,
}

/// The ledger seam. Every method is one transaction: it happens whole or not at all.
#[async_trait]
pub trait Ledger: Send {
    /// Where the ledger is, for messages and the run log (never with a password).
    fn describe(&self) -> String;

    /// The version of the schema this backend keeps (for `check`).
    fn schema_version(&self) -> i64;

    /// Whether other invocations may write this ledger at the same time (PostgreSQL): then
    /// items are claimed before they are sent, and looked up again once claimed.
    fn shared(&self) -> bool {
        false
    }

    /// Another handle on this ledger, for work the pipeline runs beside its own (marking what
    /// Datadog accepted while it claims and looks up more): `None` unless the backend gains from
    /// it. PostgreSQL: another connection of the same invocation (its claims are this one's).
    fn sibling(&self) -> Option<Box<dyn Ledger>> {
        None
    }

    /// How many points are claimed at `now_ms` (leases not ended): `ledger stats`. `None` where
    /// there are no claims (SQLite).
    async fn claims_held(&mut self, now_ms: i64) -> Result<Option<u64>, LedgerError> {
        let _ = now_ms;
        Ok(None)
    }

    /// The space the ledger takes, in bytes, if the backend can tell: `ledger stats`.
    async fn size_bytes(&mut self) -> Result<Option<u64>, LedgerError> {
        Ok(None)
    }

    /// What the ledger knows of each key, in the order given, in one round trip.
    async fn states(&mut self, keys: &[&str]) -> Result<Vec<KeyState>, LedgerError>;

    /// As [`Ledger::states`], for a look-up ahead of the pipeline that looks items up again once
    /// it holds their points: a backend may leave out what was recorded since it was opened
    /// (sent, too old, dead; by this invocation or another), when that is cheaper.
    async fn states_ahead(&mut self, keys: &[&str]) -> Result<Vec<KeyState>, LedgerError> {
        self.states(keys).await
    }

    /// What was sent to each point, given as (timestamp, point key); points nothing was sent to
    /// are left out.
    async fn sent_points(&mut self, points: &[(i64, i64)]) -> Result<HashMap<i64, SentPoint>, LedgerError>;

    /// Marks the items of one confirmed request as sent (and no longer skipped). Marking a key
    /// twice keeps the first mark.
    async fn mark_sent(&mut self, items: &[SentItem<'_>], now_ms: i64) -> Result<(), LedgerError>;

    /// Undoes `mark_sent` (`--at-most-once` marks before the request, and unmarks a failure).
    async fn unmark(&mut self, keys: &[&str]) -> Result<(), LedgerError>;

    /// Records items apart from the sent ones, so that they are not reconsidered every time.
    async fn record_skipped(
        &mut self,
        items: &[SkippedItem<'_>],
        reason: SkipReason<'_>,
        now_ms: i64,
    ) -> Result<(), LedgerError>;

    /// The dead letters, oldest first.
    async fn dead_letters(&mut self) -> Result<Vec<DeadLetter>, LedgerError>;

    /// Frees dead letters (the given keys, or all) so the next send sends them; how many.
    async fn requeue(&mut self, keys: Option<&[String]>) -> Result<usize, LedgerError>;

    /// The keys in one state (not `Unknown`), sorted: `ledger list`.
    async fn keys(&mut self, state: KeyState) -> Result<Vec<String>, LedgerError>;

    async fn counts(&mut self) -> Result<Counts, LedgerError>;

    /// Where a source stopped in `scope` (for instance one repository), if it saved a cursor.
    async fn cursor(&mut self, scope: &str) -> Result<Option<String>, LedgerError>;

    /// Every cursor whose scope starts with `prefix`, by scope (a source resuming all its scopes,
    /// which it may learn only as it runs: an organisation's repositories).
    async fn cursors(&mut self, prefix: &str) -> Result<HashMap<String, String>, LedgerError>;

    /// Keeps a source's cursor. Callers save it only once every item before it is settled.
    async fn save_cursor(&mut self, scope: &str, cursor: &str, now_ms: i64) -> Result<(), LedgerError>;

    /// Checks the ledger's own consistency (SQLite: `PRAGMA integrity_check`).
    async fn verify(&mut self) -> Result<(), LedgerError>;

    /// Sent items after the key `after` (none: from the first), in key order, at most `limit`:
    /// `ledger export`, page by page.
    async fn sent_rows(&mut self, after: Option<&str>, limit: usize) -> Result<Vec<ExportRow>, LedgerError>;

    /// Every item recorded apart (too old, dead), in key order: `ledger export`.
    async fn skipped_rows(&mut self) -> Result<Vec<ExportRow>, LedgerError>;

    /// Claims points before their items are sent, so that invocations sharing the ledger never
    /// write one point at once: for each claim, whether this invocation holds it now (it did
    /// already, nobody did, or its holder's lease ended). Marking items releases their points.
    /// A backend with one writer at a time (SQLite, behind its lock) grants every claim.
    async fn claim(&mut self, claims: &[Claim], now_ms: i64) -> Result<Vec<bool>, LedgerError> {
        let _ = now_ms;
        Ok(vec![true; claims.len()])
    }

    /// Claims points (as [`Ledger::claim`]), then looks up the items' keys (as
    /// [`Ledger::states`]) and what was sent to the claimed points (as [`Ledger::sent_points`]).
    /// The look-ups come after the claim: whatever another invocation marked before giving a
    /// point up is seen. A backend that can pipeline does it in one round trip.
    async fn claim_and_look_up(
        &mut self,
        claims: &[Claim],
        keys: &[&str],
        now_ms: i64,
    ) -> Result<ClaimedLookUp, LedgerError> {
        let granted = self.claim(claims, now_ms).await?;
        let states = self.states(keys).await?;
        let points: Vec<(i64, i64)> = claims.iter().map(|claim| (claim.timestamp, claim.point_key)).collect();
        let sent = self.sent_points(&points).await?;
        Ok(ClaimedLookUp { granted, states, sent })
    }

    /// Gives claims back (their items were not sent after all), so that others need not wait
    /// for the lease to end.
    async fn release(&mut self, claims: &[Claim]) -> Result<(), LedgerError> {
        let _ = claims;
        Ok(())
    }

    /// Checks that a send may write what it writes, changing nothing (`check`). SQLite proved
    /// it by opening the file for writing.
    async fn check_writes(&mut self) -> Result<(), LedgerError> {
        Ok(())
    }

    /// Gives back the claims of points whose items this invocation marked (a backend may keep
    /// them a while, to give them back in bulk): before waiting for points others hold, so that
    /// two invocations never wait for each other.
    async fn release_marked(&mut self) -> Result<(), LedgerError> {
        Ok(())
    }

    /// Locks on source scopes for the rest of this invocation, when others may share the
    /// ledger (PostgreSQL: advisory locks on a connection of their own).
    fn scope_locks(&self) -> Option<Box<dyn crate::source::ScopeLocks>> {
        None
    }

    /// Gives back every claim this invocation still holds (its end): items it did not send are
    /// free for others at once rather than when the lease ends.
    async fn release_all(&mut self) -> Result<(), LedgerError> {
        Ok(())
    }
}

/// Where the ledger lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    /// A PostgreSQL database, and how long this invocation's claims last there.
    Postgres {
        target: Box<PgTarget>,
        lease: Duration,
    },
}

impl PartialEq for PgTarget {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for PgTarget {}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres { target, .. } => write!(f, "{target}"),
        }
    }
}

/// Opens (creating and migrating it if needed) the ledger for writing, holding its lock.
///
/// # Errors
/// The ledger cannot be created, opened or migrated, or another invocation holds it past
/// `lock_timeout`.
pub async fn open(location: &Location, lock_timeout: Duration) -> Result<Box<dyn Ledger>, LedgerError> {
    match location {
        Location::Sqlite(path) => Ok(Box::new(SqliteLedger::open(path, lock_timeout)?)),
        Location::Postgres { target, lease } => Ok(Box::new(PgLedger::open(target, *lease).await?)),
    }
}

/// Opens an existing ledger to read it, without its lock, without migrating it, creating
/// nothing: `None` when there is no ledger yet.
///
/// # Errors
/// The ledger is not a ledger, or its schema is not this binary's.
pub async fn open_read_only(location: &Location) -> Result<Option<Box<dyn Ledger>>, LedgerError> {
    match location {
        Location::Sqlite(path) => Ok(SqliteLedger::open_read_only(path)?.map(|ledger| Box::new(ledger) as _)),
        Location::Postgres { target, .. } => {
            Ok(PgLedger::open_read_only(target).await?.map(|ledger| Box::new(ledger) as _))
        }
    }
}

/// The ledger of a dry run: the real one read-only (if it exists) under an overlay that takes
/// the writes, in memory or in `record` (a SQLite file of the dry run's own, kept between dry
/// runs so that the next one shows only what is new).
///
/// # Errors
/// As [`open_read_only`], or the record cannot be opened.
pub async fn open_dry_run(location: &Location, record: Option<&Path>) -> Result<Box<dyn Ledger>, LedgerError> {
    let base = open_read_only(location).await?;
    let record = match record {
        Some(path) => SqliteLedger::open(path, Duration::ZERO)?,
        None => SqliteLedger::open_in_memory()?,
    };
    Ok(Box::new(Overlay::new(base, Box::new(record))))
}

/// Writes exported rows into `ledger` (`ledger import`): sent items marked with the time they
/// were sent, skipped ones recorded with theirs, cursors saved. Rows already there stay as they
/// are (a mark keeps the first; a too-old record does not replace one), so importing twice
/// changes nothing. Returns (sent, skipped, cursors) rows written.
///
/// # Errors
/// The ledger fails (`Ok(Err)`: a skipped row with an unknown reason, nothing of it written).
pub async fn import_rows(
    ledger: &mut dyn Ledger,
    rows: &[ExportRow],
) -> Result<Result<(u64, u64, u64), String>, LedgerError> {
    let (mut sent, mut skipped, mut cursors) = (0, 0, 0);
    let now_ms = chrono::Utc::now().timestamp_millis();
    if let Some(ExportRow::Skipped { reason, .. }) = rows
        .iter()
        .find(|row| matches!(row, ExportRow::Skipped { reason, .. } if reason != "too_old" && reason != "dead"))
    {
        return Ok(Err(format!("a skipped row with reason {reason:?} (expected too_old or dead)")));
    }
    // Consecutive rows of one kind and one time go in one call (a request's items share their
    // `sent_at`), so an import costs about what the sends that made the rows cost.
    let mut at = 0;
    while at < rows.len() {
        match &rows[at] {
            ExportRow::Sent { sent_at, .. } => {
                let group: Vec<SentItem<'_>> = rows[at..]
                    .iter()
                    .map_while(|row| match row {
                        ExportRow::Sent { key, point_key, timestamp, sent_at: when, gauges, tallies }
                            if when == sent_at =>
                        {
                            Some(SentItem {
                                key,
                                point_key: *point_key,
                                timestamp: *timestamp,
                                gauges: *gauges,
                                tallies: *tallies,
                            })
                        }
                        _ => None,
                    })
                    .collect();
                ledger.mark_sent(&group, *sent_at).await?;
                sent += group.len() as u64;
                at += group.len();
            }
            ExportRow::Skipped { reason: first_reason, recorded_at, detail: first_detail, .. } => {
                let reason = match first_reason.as_str() {
                    "too_old" => SkipReason::TooOld,
                    _ => SkipReason::Dead { detail: first_detail.as_deref().unwrap_or("") },
                };
                let group: Vec<SkippedItem<'_>> = rows[at..]
                    .iter()
                    .map_while(|row| match row {
                        ExportRow::Skipped { key, reason, completed_at, recorded_at: when, detail }
                            if when == recorded_at && reason == first_reason && detail == first_detail =>
                        {
                            Some(SkippedItem { key, completed_at: *completed_at })
                        }
                        _ => None,
                    })
                    .collect();
                ledger.record_skipped(&group, reason, *recorded_at).await?;
                skipped += group.len() as u64;
                at += group.len();
            }
            ExportRow::Cursor { scope, cursor } => {
                ledger.save_cursor(scope, cursor, now_ms).await?;
                cursors += 1;
                at += 1;
            }
        }
    }
    Ok(Ok((sent, skipped, cursors)))
}

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
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("ledger at {path} has schema version {found}, newer than this binary knows ({SCHEMA_VERSION}); upgrade workflow-metrics")]
    TooNew { path: String, found: i64 },
    #[error("ledger at {path} has schema version {found}; reading it does not migrate it: run `workflow-metrics check` (or any live send) once to upgrade it")]
    NeedsMigration { path: String, found: i64 },
    #[error("ledger at {path} is held by another invocation (lock file {lock}); gave up after {waited_seconds}s (--lock-timeout)")]
    Busy { path: String, lock: PathBuf, waited_seconds: u64 },
    #[error("cannot create the lock file {lock} of the ledger")]
    LockFile {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger at {path}: {action} failed")]
    Query {
        path: String,
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("there is no ledger at {path}")]
    Missing { path: String },
    #[error("ledger at {path} is damaged: {detail}")]
    Damaged { path: String, detail: String },
    /// A task working on the ledger beside the pipeline ended abnormally (a bug).
    #[error("the ledger's {0} ended abnormally (a bug: see stderr)")]
    TaskEnded(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_round_trip_and_old_blobs_read_as_no_tallies() {
        let mut out = [0u8; VALUES_BYTES];
        assert_eq!(encode_values(&[None; MAX_GAUGES], &[0; MAX_TALLIES], &mut out), None);
        let gauges = [Some(1.5), None, Some(0.0)];
        let blob = encode_values(&gauges, &[0; MAX_TALLIES], &mut out).unwrap().to_vec();
        assert_eq!(blob.len(), 8 * MAX_GAUGES, "no tallies, no tally bytes: the blob of schema 5");
        assert_eq!(decode_values(Some(&blob)), (gauges, [0; MAX_TALLIES]));
        let blob = encode_values(&[None; MAX_GAUGES], &[0, 3], &mut out).unwrap().to_vec();
        assert_eq!(decode_values(Some(&blob)), ([None; MAX_GAUGES], [0, 3]));
        assert_eq!(decode_values(None), ([None; MAX_GAUGES], [0; MAX_TALLIES]));
    }
}
