//! Stage 6 of the pipeline: what a request's outcome means. A 2xx marks its items (and may free
//! a checkpoint), a 400 or 413 splits it down to the items Datadog refuses (dead letters), other
//! failures leave the items unmarked for the next invocation, and a ledger failure halts. The
//! GitHub quota's own request, and the cursors settled items free, are here too.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;

use super::claims::Fate;
use super::Pipeline;
use crate::datadog::{self, DatadogError};
use crate::error::Halt;
use crate::ledger::{Claim, LedgerError, SentItem, SkipReason, SkippedItem};
use crate::metrics::{self, Planned};
use crate::model::{Entity, Quota};
use crate::retry;
use crate::runlog::RequestLine;
use crate::send::request::{Delivery, Failure};

impl Pipeline<'_> {
    /// Stage 6: a request finished (or its task failed).
    pub(super) async fn complete(&mut self, done: Result<Delivery, tokio::task::JoinError>) {
        match done {
            Ok(delivery) => self.complete_delivery(delivery).await,
            // A request task panicked or was aborted: its runs are found by elimination in
            // `drain_within_grace`/`finish`; nothing here is marked.
            Err(error) => tracing::error!(error = %error, "request task ended abnormally"),
        }
    }

    pub(super) async fn complete_delivery(&mut self, mut delivery: Delivery) {
        let Some(flight) = self.inflight_items.remove(&delivery.number) else { return };
        // The task has ended, so this is the last reference.
        let mut runs = Arc::try_unwrap(flight).unwrap_or_else(|shared| (*shared).clone());
        // Claimed by the task: what was settled or held elsewhere was not in the request.
        if let Some(claimed) = delivery.claimed.take() {
            let Some(sent) = self.claimed(runs, claimed).await else { return };
            runs = sent;
        }
        // Accepted items marked beside the pipeline land once marked; the others land now.
        let marked_beside = delivery.result.is_ok() && self.beside(delivery.number) && self.marker.is_some();
        if !marked_beside {
            self.land(&runs);
        }
        let (error, status) = match delivery.result {
            Err(Failure::TooLarge) => {
                if self.config.marks_before_request() {
                    self.unmark(&runs).await;
                }
                return self.split_or_give_up(runs, "too large for one request").await;
            }
            Err(Failure::Http(error)) => (Some(error), 0),
            Ok(status) => (None, status),
        };
        self.summary.requests += 1;
        self.summary.retries += u64::from(delivery.attempts.saturating_sub(1));
        self.log.block(&delivery.log);
        let keys = metrics::keys(&runs);
        let status_text = match &error {
            Some(error) => error.status().map_or_else(|| "error".to_owned(), |status| status.to_string()),
            None if self.config.dry_run => "dry-run".to_owned(),
            None if delivery.series == 0 => "none-chosen".to_owned(),
            None => status.to_string(),
        };
        let error_text = error.as_ref().map(ToString::to_string);
        self.log.request(&RequestLine {
            number: delivery.number,
            keys: &keys,
            raw_bytes: delivery.raw_bytes,
            compressed_bytes: delivery.compressed_bytes,
            status: &status_text,
            attempts: delivery.attempts,
            error: error_text.as_deref(),
        });
        drop(keys);
        match error {
            None => {
                self.summary.series += delivery.series;
                self.summary.points += delivery.points;
                self.summary.raw_bytes += delivery.raw_bytes as u64;
                self.summary.compressed_bytes += delivery.compressed_bytes as u64;
                self.delivered(runs, marked_beside).await;
            }
            Some(error) => self.undelivered(runs, &error, delivery.cancelled).await,
        }
    }

    /// The items of a request whose task claimed them: those settled or held elsewhere land
    /// now (and are settled, or wait); what is left is what the request carried, or `None`
    /// when it carried nothing (or the claim failed: the invocation halts).
    async fn claimed(&mut self, runs: Vec<Planned>, claimed: Result<Vec<Fate>, LedgerError>) -> Option<Vec<Planned>> {
        let fates = match claimed {
            Ok(fates) => fates,
            Err(error) => {
                self.land(&runs);
                self.abandon(runs, &error).await;
                return None;
            }
        };
        let (mut sent, mut held, mut settled) = (Vec::new(), Vec::new(), Vec::new());
        for (planned, fate) in runs.into_iter().zip(fates) {
            match fate {
                Fate::Send => sent.push(planned),
                Fate::Held => held.push(planned),
                Fate::Settled => settled.push(planned),
            }
        }
        self.land(&held);
        self.land(&settled);
        for planned in &sent {
            self.contended_since.remove(&planned.point_key);
        }
        self.settle_elsewhere(settled).await;
        // A failure here halts the invocation; what the request carried is still marked.
        self.contend(held).await;
        (!sent.is_empty()).then_some(sent)
    }

    /// The points of a request that finished (and whose items are marked, if it was accepted)
    /// are free: items that waited for them may go now (first in line).
    pub(super) fn land(&mut self, runs: &[Planned]) {
        if !self.deferred.is_empty() {
            let deferred = std::mem::take(&mut self.deferred);
            self.buffer.splice(0..0, deferred);
        }
        for planned in runs {
            if let Some(count) = self.inflight_counts.get_mut(&planned.point_key) {
                *count -= 1;
                if *count == 0 {
                    self.inflight_counts.remove(&planned.point_key);
                }
            }
        }
    }

    /// Marks the runs of a confirmed request (in a dry run: in the dry run's own record), inline
    /// or (`beside`) by the marking task (`marker.rs`).
    pub(super) async fn delivered(&mut self, runs: Vec<Planned>, beside: bool) {
        self.consecutive_failures = 0;
        if !self.config.marks_before_request() {
            let runs = if beside {
                let Some(runs) = self.mark_beside(runs) else { return };
                runs
            } else {
                runs
            };
            if let Err(error) = self.mark(&runs, Utc::now().timestamp_millis()).await {
                // Datadog has the points; the next invocation resends them, identical.
                self.summary.failed += runs.len() as u64;
                if beside {
                    self.land(&runs);
                }
                return self.ledger_failed(&error);
            }
            if beside {
                self.land(&runs);
            }
            return self.settle_delivered(&runs).await;
        }
        self.settle_delivered(&runs).await;
    }

    /// Items marked as sent: counted, settled, and the cursors they free saved.
    pub(super) async fn settle_delivered(&mut self, runs: &[Planned]) {
        let count = runs.len() as u64;
        if self.config.dry_run {
            self.summary.would_send += count;
        } else {
            self.summary.sent += count;
        }
        for planned in runs {
            if let Some(preview) = &mut self.preview {
                preview.would_send(&planned.item);
            }
            self.pending_keys.remove(planned.item.key());
            self.checkpoints.settle(planned.chunk);
            match planned.item.entity() {
                Entity::WorkflowRun => {}
                Entity::Job => self.summary.jobs += 1,
                Entity::Step => self.summary.steps += 1,
            }
        }
        self.save_cursors().await;
    }

    /// The GitHub token's quota as three gauges, in a request of their own (int128's
    /// `api_rate_limit` metrics). A failure is reported, and changes no exit code: the next pass
    /// sends the quota again.
    pub(super) async fn send_quota(&mut self, quota: &Quota) {
        let series = metrics::quota_series(&self.config.spec, quota, Utc::now().timestamp());
        let mut line = format!(
            "quota resource={} limit={} remaining={} used={}",
            quota.resource, quota.limit, quota.remaining, quota.used
        );
        let status = match (&self.client, &self.halt) {
            (None, _) => "dry-run".to_owned(),
            (Some(_), Some(halt)) => format!("not-sent ({})", halt.describe()),
            (Some(client), None) => match datadog::encode_compressed(&series, self.config.compression) {
                Err(_) => "too-large".to_owned(),
                Ok(body) => {
                    let body = Bytes::from(body.compressed);
                    let compression = self.config.compression;
                    let mut shutdown = self.signals.clone();
                    let outcome = retry::retry(&self.config.retry, 0, "quota request", &mut shutdown, || {
                        client.post_series(body.clone(), compression)
                    })
                    .await;
                    match outcome.result {
                        Ok(accepted) => accepted.status.to_string(),
                        Err(error) => {
                            tracing::warn!(error = %error, "the GitHub quota gauges were not sent");
                            format!("error: {error}")
                        }
                    }
                }
            },
        };
        line.push_str(&format!(" status={status}"));
        self.log.note(&line);
    }

    /// Saves the cursors of the checkpoints whose items are all settled (in a dry run, in its
    /// own record). Nothing after a halt: what the halt cut short is not settled.
    pub(super) async fn save_cursors(&mut self) {
        if self.halt.is_some() {
            return;
        }
        let now_ms = Utc::now().timestamp_millis();
        for checkpoint in self.checkpoints.ready() {
            if let Err(error) = self.ledger.save_cursor(&checkpoint.scope, &checkpoint.cursor, now_ms).await {
                return self.ledger_failed(&error);
            }
            self.log.note(&format!("cursor {} {}", checkpoint.scope, checkpoint.cursor));
        }
    }

    pub(super) async fn mark(&mut self, items: &[Planned], now_ms: i64) -> Result<(), LedgerError> {
        let sent: Vec<SentItem<'_>> = super::marker::sent_items(items).collect();
        self.ledger.mark_sent(&sent, now_ms).await
    }

    pub(super) async fn undelivered(&mut self, runs: Vec<Planned>, error: &DatadogError, cancelled: bool) {
        // 400 and 413: the request itself is at fault. Halve it until the culprits stand alone:
        // they become dead letters (400) and every other run is sent.
        if !cancelled && matches!(error.status(), Some(400 | 413)) {
            if self.config.marks_before_request() {
                self.unmark(&runs).await;
            }
            return self.split_or_give_up(runs, &error.to_string()).await;
        }
        tracing::error!(error = %error, runs = runs.len(), "request failed; its runs stay unmarked");
        self.summary.failed += runs.len() as u64;
        self.let_go(&runs).await;
        if cancelled {
            return;
        }
        if error.is_auth() {
            self.halt = Some(Halt::Auth(format!("Datadog rejected the API key: {error}")));
            return;
        }
        self.summary.errors.push(error.to_string());
        self.consecutive_failures += 1;
        if self.consecutive_failures >= self.config.circuit_breaker {
            self.halt = Some(Halt::Breaker(format!(
                "{} consecutive requests failed after their retries; the rest is left for the next invocation",
                self.consecutive_failures
            )));
        }
    }

    /// Forgets runs that were not delivered (with --at-most-once: unmarks them), so that the next
    /// invocation sends them.
    pub(super) async fn let_go(&mut self, runs: &[Planned]) {
        for planned in runs {
            self.pending_keys.remove(planned.item.key());
        }
        if self.config.marks_before_request() {
            self.unmark(runs).await;
        }
        // A shared ledger: their points are free for others again, without waiting for the lease.
        if self.ledger.shared() && !runs.is_empty() {
            let claims: Vec<Claim> = runs
                .iter()
                .map(|planned| Claim { timestamp: planned.timestamp, point_key: planned.point_key })
                .collect();
            if let Err(error) = self.ledger.release(&claims).await {
                tracing::warn!(error = %crate::error_chain(&error), "could not release claims; they lapse with their lease");
            }
        }
    }

    pub(super) async fn unmark(&mut self, runs: &[Planned]) {
        let keys = metrics::keys(runs);
        if let Err(error) = self.ledger.unmark(&keys).await {
            tracing::error!(error = %crate::error_chain(&error), "could not unmark runs whose request failed (--at-most-once): they are lost");
        }
    }

    pub(super) async fn split_or_give_up(&mut self, runs: Vec<Planned>, reason: &str) {
        match metrics::split_in_two(runs) {
            Ok((first, second)) => {
                self.split_queue.push_front(second);
                self.split_queue.push_front(first);
            }
            Err(runs) => {
                // One run (or runs summed into one point) that Datadog will never take.
                let rows: Vec<SkippedItem<'_>> = runs
                    .iter()
                    .map(|planned| SkippedItem { key: planned.item.key(), completed_at: planned.timestamp })
                    .collect();
                let result = if self.config.dry_run {
                    Ok(())
                } else {
                    let dead = SkipReason::Dead { detail: reason };
                    self.ledger.record_skipped(&rows, dead, Utc::now().timestamp_millis()).await
                };
                drop(rows);
                for planned in &runs {
                    self.skip("dead_letter", planned.item.key(), Some(&format!("reason={reason}")));
                    self.pending_keys.remove(planned.item.key());
                    if result.is_ok() {
                        self.checkpoints.settle(planned.chunk);
                    }
                }
                tracing::error!(runs = runs.len(), reason, "runs rejected by Datadog recorded as dead letters");
                self.summary.dead_letters += runs.len() as u64;
                match result {
                    Ok(()) => self.save_cursors().await,
                    Err(error) => self.ledger_failed(&error),
                }
            }
        }
    }

    /// The runs of a request that could not start (ledger failure while preparing it).
    pub(super) async fn abandon(&mut self, runs: Vec<Planned>, error: &LedgerError) {
        self.summary.failed += runs.len() as u64;
        self.let_go(&runs).await;
        self.ledger_failed(error);
    }
}
