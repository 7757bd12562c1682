//! The statements on a send's path (look-ups, claims, marks) and what their rows mean.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::PgLedger;
#[cfg(doc)]
use crate::ledger::Ledger;
use crate::ledger::{decode_values, Claim, KeyState};
use crate::metrics::SentPoint;

/// Looks up keys: `= ANY` walks each primary key once per distinct key (the array sorted); only
/// the keys the ledger knows come back (none, in a backfill).
pub(super) const STATES: &str = "SELECT run_key, 'sent' FROM sent_metrics WHERE run_key = ANY($1::text[])
     UNION ALL
     SELECT run_key, reason FROM skipped_runs WHERE run_key = ANY($1::text[])";

/// Looks up keys in `sent_metrics` alone ([`Ledger::states_ahead`]).
pub(super) const STATES_SENT: &str = "SELECT run_key, 'sent' FROM sent_metrics WHERE run_key = ANY($1::text[])";

/// What was sent to points, as ($1 timestamps, $2 point keys).
pub(super) const SENT_POINTS: &str =
    "SELECT s.point_key, s.gauges FROM unnest($1::bigint[], $2::bigint[]) AS p(completed_at, point_key)
     JOIN sent_metrics s ON s.completed_at = p.completed_at AND s.point_key = p.point_key";

/// Claims points ($1 timestamps, $2 point keys, sorted) for owner $3 until $4, at $5: a point is
/// ours if nobody holds it, we do already, or its holder's lease ended. Sorted, concurrent
/// claims lock rows in one order, so they never deadlock.
pub(super) const CLAIM: &str = "INSERT INTO claims (completed_at, point_key, owner, expires_at)
         SELECT c, p, $3, $4 FROM unnest($1::bigint[], $2::bigint[]) AS u(c, p) ORDER BY c, p
         ON CONFLICT (completed_at, point_key) DO UPDATE SET owner = excluded.owner,
             expires_at = excluded.expires_at
         WHERE claims.owner = excluded.owner OR claims.expires_at < $5
         RETURNING completed_at, point_key";

/// Every kind of write a send makes, on every table (`check`, then rolled back).
pub(super) const CHECK_WRITES: &str =
    "INSERT INTO sent_metrics (run_key, point_key, completed_at, sent_at) VALUES ('workflow-metrics check', 0, 0, 0);
     DELETE FROM sent_metrics WHERE run_key = 'workflow-metrics check';
     INSERT INTO skipped_runs (run_key, reason, completed_at, recorded_at) VALUES ('workflow-metrics check', 'too_old', 0, 0)
         ON CONFLICT (run_key) DO UPDATE SET recorded_at = 0;
     DELETE FROM skipped_runs WHERE run_key = 'workflow-metrics check';
     INSERT INTO cursors (scope, cursor, saved_at) VALUES ('workflow-metrics check', '', 0)
         ON CONFLICT (scope) DO UPDATE SET saved_at = 0;
     INSERT INTO claims (completed_at, point_key, owner, expires_at) VALUES (0, 0, 'workflow-metrics check', 0)
         ON CONFLICT (completed_at, point_key) DO UPDATE SET expires_at = 0;
     DELETE FROM claims WHERE owner = 'workflow-metrics check';";

impl PgLedger {
    pub(super) fn expires(&self, now_ms: i64) -> i64 {
        now_ms + i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 2)
    }

    /// The state of each key, in order, from the rows of [`STATES`].
    pub(super) fn states_from(&mut self, keys: &[&str], rows: &[tokio_postgres::Row]) -> Vec<KeyState> {
        let mut states = vec![KeyState::Unknown; keys.len()];
        if rows.is_empty() {
            return states;
        }
        let mut known: HashMap<&str, KeyState> = HashMap::with_capacity(rows.len());
        for row in rows {
            let state = known.entry(row.get::<_, &str>(0)).or_insert(KeyState::Unknown);
            let reason = row.get::<_, &str>(1);
            if reason != "sent" {
                self.may_have_skipped.store(true, Ordering::Relaxed);
            }
            *state = match (*state, reason) {
                (KeyState::Sent, _) | (_, "sent") => KeyState::Sent,
                (_, "dead") => KeyState::Dead,
                _ => KeyState::SkippedTooOld,
            };
        }
        for (state, key) in states.iter_mut().zip(keys) {
            if let Some(found) = known.get(key) {
                *state = *found;
            }
        }
        states
    }
}

/// Distinct points as the two arrays [`SENT_POINTS`] takes.
pub(super) fn distinct_points(points: impl Iterator<Item = (i64, i64)>) -> (Vec<i64>, Vec<i64>) {
    let mut seen = foldhash::HashSet::default();
    points.filter(|(_, point_key)| seen.insert(*point_key)).unzip()
}

/// Claims sorted and without duplicates, as the two arrays [`CLAIM`] takes.
pub(super) fn sorted_claims(claims: &[Claim]) -> (Vec<i64>, Vec<i64>) {
    let mut points: Vec<(i64, i64)> = claims.iter().map(|claim| (claim.timestamp, claim.point_key)).collect();
    points.sort_unstable();
    points.dedup();
    points.into_iter().unzip()
}

/// For each claim, whether the rows [`CLAIM`] returned grant it.
pub(super) fn granted_from(claims: &[Claim], rows: &[tokio_postgres::Row]) -> Vec<bool> {
    let granted: foldhash::HashSet<(i64, i64)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    claims.iter().map(|claim| granted.contains(&(claim.timestamp, claim.point_key))).collect()
}

/// What was sent to each point, from the rows of [`SENT_POINTS`].
pub(super) fn sent_from(rows: &[tokio_postgres::Row]) -> HashMap<i64, SentPoint> {
    let mut sent: HashMap<i64, SentPoint> = HashMap::new();
    for row in rows {
        let (gauges, tallies) = decode_values(row.get::<_, Option<&[u8]>>(1));
        sent.entry(row.get(0)).or_default().add(1, &gauges, &tallies);
    }
    sent
}

/// Marks items ($1 keys, $2 point keys, $3 timestamps, $5 values) as sent at $4, skipping
/// those already marked.
pub(super) const MARK: &str = "INSERT INTO sent_metrics (run_key, point_key, completed_at, sent_at, gauges)
     SELECT k, p, c, $4, g FROM unnest($1::text[], $2::bigint[], $3::bigint[], $5::bytea[]) AS u(k, p, c, g)
     ON CONFLICT (run_key) DO NOTHING";

/// Writes marked items with one `COPY ... FROM STDIN BINARY`.
pub(super) async fn copy_sent(
    client: &Client,
    keys: &[&str],
    point_keys: &[i64],
    timestamps: &[i64],
    now_ms: i64,
    values: &[Option<Vec<u8>>],
) -> Result<(), tokio_postgres::Error> {
    let sink = client
        .copy_in("COPY sent_metrics (run_key, point_key, completed_at, sent_at, gauges) FROM STDIN BINARY")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT8, Type::INT8, Type::INT8, Type::BYTEA]);
    let mut writer = std::pin::pin!(writer);
    for (((key, point_key), timestamp), value) in keys.iter().zip(point_keys).zip(timestamps).zip(values) {
        let row: [&(dyn ToSql + Sync); 5] = [key, point_key, timestamp, &now_ms, value];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await.map(drop)
}
