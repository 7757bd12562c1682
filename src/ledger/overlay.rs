//! The dry run's ledger, for any backend: reads see the real ledger (read-only) and the dry
//! run's own record together; writes go to the record alone. The real ledger is never written,
//! whatever it is, and a dry run shows exactly what a live run would send and skip.

use std::collections::HashMap;

use async_trait::async_trait;

use super::{Counts, DeadLetter, ExportRow, KeyState, Ledger, LedgerError, SentItem, SkipReason, SkippedItem};
use crate::metrics::SentPoint;

pub struct Overlay {
    /// The real ledger, `None` when there is none yet. Only read.
    base: Option<Box<dyn Ledger>>,
    /// Where the dry run's writes go: memory, or the user's `--dry-run-record` file.
    record: Box<dyn Ledger>,
}

impl Overlay {
    pub fn new(base: Option<Box<dyn Ledger>>, record: Box<dyn Ledger>) -> Overlay {
        Overlay { base, record }
    }
}

#[async_trait]
impl Ledger for Overlay {
    fn schema_version(&self) -> i64 {
        self.base.as_ref().map_or_else(|| self.record.schema_version(), |base| base.schema_version())
    }

    fn describe(&self) -> String {
        match &self.base {
            Some(base) => format!("{} (read-only) + {}", base.describe(), self.record.describe()),
            None => self.record.describe(),
        }
    }

    async fn states(&mut self, keys: &[&str]) -> Result<Vec<KeyState>, LedgerError> {
        let mut states = self.record.states(keys).await?;
        if let Some(base) = &mut self.base {
            // Sent wins over skipped; otherwise the record (newer) wins over the base.
            for (state, base_state) in states.iter_mut().zip(base.states(keys).await?) {
                if base_state == KeyState::Sent || *state == KeyState::Unknown {
                    *state = base_state;
                }
            }
        }
        Ok(states)
    }

    async fn sent_points(&mut self, points: &[(i64, i64)]) -> Result<HashMap<i64, SentPoint>, LedgerError> {
        let mut sent = self.record.sent_points(points).await?;
        if let Some(base) = &mut self.base {
            for (point_key, point) in base.sent_points(points).await? {
                sent.entry(point_key).or_default().add(point.count, &point.gauges, &point.tallies);
            }
        }
        Ok(sent)
    }

    async fn mark_sent(&mut self, items: &[SentItem<'_>], now_ms: i64) -> Result<(), LedgerError> {
        self.record.mark_sent(items, now_ms).await
    }

    async fn unmark(&mut self, keys: &[&str]) -> Result<(), LedgerError> {
        self.record.unmark(keys).await
    }

    async fn record_skipped(
        &mut self,
        items: &[SkippedItem<'_>],
        reason: SkipReason<'_>,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        self.record.record_skipped(items, reason, now_ms).await
    }

    async fn dead_letters(&mut self) -> Result<Vec<DeadLetter>, LedgerError> {
        let mut letters = self.record.dead_letters().await?;
        if let Some(base) = &mut self.base {
            letters.extend(base.dead_letters().await?);
            letters.sort_by(|a, b| (a.recorded_at, &a.key).cmp(&(b.recorded_at, &b.key)));
        }
        Ok(letters)
    }

    /// Frees the dry run's own dead letters; the real ledger's stay as they are.
    async fn requeue(&mut self, keys: Option<&[String]>) -> Result<usize, LedgerError> {
        self.record.requeue(keys).await
    }

    async fn keys(&mut self, state: KeyState) -> Result<Vec<String>, LedgerError> {
        let mut keys = self.record.keys(state).await?;
        if let Some(base) = &mut self.base {
            keys.extend(base.keys(state).await?);
            keys.sort_unstable();
            keys.dedup();
        }
        Ok(keys)
    }

    async fn counts(&mut self) -> Result<Counts, LedgerError> {
        let mut counts = self.record.counts().await?;
        if let Some(base) = &mut self.base {
            let base = base.counts().await?;
            counts.sent += base.sent;
            counts.too_old += base.too_old;
            counts.dead += base.dead;
        }
        Ok(counts)
    }

    async fn cursor(&mut self, scope: &str) -> Result<Option<String>, LedgerError> {
        if let Some(cursor) = self.record.cursor(scope).await? {
            return Ok(Some(cursor));
        }
        match &mut self.base {
            Some(base) => base.cursor(scope).await,
            None => Ok(None),
        }
    }

    /// The record's cursors over the real ledger's.
    async fn cursors(&mut self, prefix: &str) -> Result<HashMap<String, String>, LedgerError> {
        let mut cursors = match &mut self.base {
            Some(base) => base.cursors(prefix).await?,
            None => HashMap::new(),
        };
        cursors.extend(self.record.cursors(prefix).await?);
        Ok(cursors)
    }

    async fn save_cursor(&mut self, scope: &str, cursor: &str, now_ms: i64) -> Result<(), LedgerError> {
        self.record.save_cursor(scope, cursor, now_ms).await
    }

    async fn verify(&mut self) -> Result<(), LedgerError> {
        if let Some(base) = &mut self.base {
            base.verify().await?;
        }
        self.record.verify().await
    }

    /// The real ledger's rows and the overlay's, merged in key order (a key in both once).
    async fn sent_rows(&mut self, after: Option<&str>, limit: usize) -> Result<Vec<ExportRow>, LedgerError> {
        let mut rows = self.record.sent_rows(after, limit).await?;
        if let Some(base) = &mut self.base {
            rows.extend(base.sent_rows(after, limit).await?);
        }
        Ok(merged(rows, limit))
    }

    async fn skipped_rows(&mut self) -> Result<Vec<ExportRow>, LedgerError> {
        let mut rows = self.record.skipped_rows().await?;
        if let Some(base) = &mut self.base {
            rows.extend(base.skipped_rows().await?);
        }
        Ok(merged(rows, usize::MAX))
    }
}

/// Rows sorted by key, the first of each key kept (the overlay's own come first), at most `limit`.
fn merged(mut rows: Vec<ExportRow>, limit: usize) -> Vec<ExportRow> {
    let key = |row: &ExportRow| match row {
        ExportRow::Sent { key, .. } | ExportRow::Skipped { key, .. } => key.clone(),
        ExportRow::Cursor { scope, .. } => scope.clone(),
    };
    rows.sort_by_key(key);
    rows.dedup_by(|later, earlier| key(later) == key(earlier));
    rows.truncate(limit);
    rows
}
