//! A shared ledger (PostgreSQL): items are sent only under a claim on their points. Points another
//! invocation holds wait (`contended`) and are asked for again once the input is read; items it
//! sent meanwhile are settled as already sent, never sent twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{Pipeline, CONTENDED_LIMIT};
use crate::ledger::{Claim, ClaimedLookUp, KeyState, Ledger, LedgerError};
use crate::metrics::{Planned, SentPoint};

/// What becomes of an item once its point is claimed and it is looked up again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::send) enum Fate {
    /// Claimed, and still unknown to the ledger: sent.
    Send,
    /// Sent (or dead-lettered) by another invocation since it was first looked up: settled.
    Settled,
    /// Its point is another invocation's: it waits.
    Held,
}

/// The fate of each item of a claimed batch, in order.
pub(in crate::send) fn fates(found: &ClaimedLookUp) -> Vec<Fate> {
    found
        .granted
        .iter()
        .zip(&found.states)
        .map(|(granted, state)| match state {
            KeyState::Sent | KeyState::Dead => Fate::Settled,
            _ if *granted => Fate::Send,
            _ => Fate::Held,
        })
        .collect()
}

/// Claims made by request tasks, beside the pipeline, on a sibling of its ledger (PostgreSQL:
/// a connection of their own), one batch after the other.
#[derive(Clone)]
pub(in crate::send) struct Claimer {
    jobs: mpsc::UnboundedSender<ClaimJob>,
}

struct ClaimJob {
    items: Arc<Vec<Planned>>,
    now_ms: i64,
    reply: oneshot::Sender<Result<ClaimedLookUp, LedgerError>>,
}

impl Claimer {
    /// Starts the task claiming on `ledger`; it ends with the last handle.
    pub(super) fn spawn(mut ledger: Box<dyn Ledger>) -> Claimer {
        let (jobs, mut receiver) = mpsc::unbounded_channel::<ClaimJob>();
        tokio::spawn(async move {
            while let Some(job) = receiver.recv().await {
                let claims: Vec<Claim> = job
                    .items
                    .iter()
                    .map(|planned| Claim { timestamp: planned.timestamp, point_key: planned.point_key })
                    .collect();
                let keys: Vec<&str> = job.items.iter().map(|planned| planned.item.key()).collect();
                let found = ledger.claim_and_look_up(&claims, &keys, job.now_ms).await;
                let _ = job.reply.send(found);
            }
        });
        Claimer { jobs }
    }

    /// Claims the points of `items` and looks them up again ([`Ledger::claim_and_look_up`]).
    pub(in crate::send) async fn claim(
        &self,
        items: Arc<Vec<Planned>>,
        now_ms: i64,
    ) -> Result<ClaimedLookUp, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let gone = || LedgerError::TaskEnded("claiming task");
        self.jobs.send(ClaimJob { items, now_ms, reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl Pipeline<'_> {
    /// Claims the points of `items` in the shared ledger, and looks them up again. Items whose
    /// points another invocation holds wait in `contended`; items it sent meanwhile (found again
    /// in the ledger) are settled as already sent. What is left to send and what was sent to
    /// their points, or `None` when the ledger failed.
    pub(super) async fn claim(
        &mut self,
        items: Vec<Planned>,
        now_ms: i64,
    ) -> Option<(Vec<Planned>, HashMap<i64, SentPoint>)> {
        let claims: Vec<Claim> =
            items.iter().map(|planned| Claim { timestamp: planned.timestamp, point_key: planned.point_key }).collect();
        let found = {
            let keys: Vec<&str> = items.iter().map(|planned| planned.item.key()).collect();
            self.ledger.claim_and_look_up(&claims, &keys, now_ms).await
        };
        let found = match found {
            Ok(found) => found,
            Err(error) => {
                self.abandon(items, &error).await;
                return None;
            }
        };
        // Another invocation may have sent or recorded some of them between the first look-up
        // and the claim (held or not): they are settled here, not sent twice.
        let (mut claimed, mut held, mut settled) = (Vec::new(), Vec::new(), Vec::new());
        for (planned, fate) in items.into_iter().zip(fates(&found)) {
            match fate {
                Fate::Settled => settled.push(planned),
                Fate::Send => claimed.push(planned),
                Fate::Held => held.push(planned),
            }
        }
        self.settle_elsewhere(settled).await;
        for planned in &claimed {
            self.contended_since.remove(&planned.point_key);
        }
        if !self.contend(held).await {
            // The ledger failed (the invocation halts): what was claimed is not sent either.
            self.summary.failed += claimed.len() as u64;
            self.let_go(&claimed).await;
            return None;
        }
        Some((claimed, found.sent))
    }

    /// Items whose points another invocation holds wait in `contended`. False when the ledger
    /// failed while looking up what waits (the invocation halts).
    pub(super) async fn contend(&mut self, held: Vec<Planned>) -> bool {
        if held.is_empty() {
            return true;
        }
        // The wait counts from when a point was first found held, however often it is retried.
        let now = Instant::now();
        let since = held
            .iter()
            .map(|planned| *self.contended_since.entry(planned.point_key).or_insert(now))
            .min()
            .unwrap_or(now);
        self.log.note(&format!("note: {} item(s) wait for points another invocation holds", held.len()));
        self.contended.push((since, held));
        // Memory stays bounded: past a few batches, what waits is looked up again, and what
        // its holders sent meanwhile is settled.
        if self.contended.iter().map(|(_, items)| items.len()).sum::<usize>() > self.contended_limit {
            for (since, waiting) in std::mem::take(&mut self.contended) {
                let Some(waiting) = self.settle_sent_elsewhere(waiting).await else { return false };
                if !waiting.is_empty() {
                    self.contended.push((since, waiting));
                }
            }
            // Looked up again only once as many more wait: the cost stays linear.
            let waiting: usize = self.contended.iter().map(|(_, items)| items.len()).sum();
            self.contended_limit = waiting + CONTENDED_LIMIT;
        }
        true
    }

    /// Items another invocation sent (or dead-lettered) since they were looked up are settled as
    /// already sent; the others are given back, or `None` when the ledger failed. (Recorded too
    /// old by another invocation: this one planned it to send, with --historical, --stamp-now
    /// or its own clock.)
    async fn settle_sent_elsewhere(&mut self, items: Vec<Planned>) -> Option<Vec<Planned>> {
        if items.is_empty() {
            return Some(items);
        }
        let keys: Vec<&str> = items.iter().map(|planned| planned.item.key()).collect();
        let states = match self.ledger.states(&keys).await {
            Ok(states) => states,
            Err(error) => {
                self.abandon(items, &error).await;
                return None;
            }
        };
        let mut states = states.into_iter();
        let (items, settled): (Vec<Planned>, Vec<Planned>) =
            items.into_iter().partition(|_| !matches!(states.next(), Some(KeyState::Sent | KeyState::Dead)));
        self.settle_elsewhere(settled).await;
        Some(items)
    }

    /// Items another invocation sent meanwhile: counted as already sent, and no longer waited for.
    pub(super) async fn settle_elsewhere(&mut self, settled: Vec<Planned>) {
        if settled.is_empty() {
            return;
        }
        for planned in &settled {
            self.summary.already_sent += 1;
            self.skip("already_sent", planned.item.key(), Some("by another invocation"));
            self.pending_keys.remove(planned.item.key());
            self.checkpoints.settle(planned.chunk);
            self.contended_since.remove(&planned.point_key);
        }
        self.save_cursors().await;
    }

    /// Items that waited for points another invocation held are tried again; those that waited
    /// longer than `--claim-wait` are left to it (unsettled: no cursor moves past them).
    pub(super) async fn retry_contended(&mut self) {
        // What this invocation marked is free for others first: two invocations waiting for
        // each other's points would otherwise both wait until --claim-wait.
        if let Err(error) = self.ledger.release_marked().await {
            return self.ledger_failed(&error);
        }
        if !self.retrying {
            self.retrying = true;
            self.contended_since.clear();
            let now = Instant::now();
            for (since, _) in &mut self.contended {
                *since = now;
            }
        }
        let wait = self.config.claim_wait;
        for (since, items) in std::mem::take(&mut self.contended) {
            if since.elapsed() >= wait {
                self.summary.claimed_elsewhere += items.len() as u64;
                for planned in &items {
                    self.skip("claimed_elsewhere", planned.item.key(), None);
                    self.pending_keys.remove(planned.item.key());
                    self.contended_since.remove(&planned.point_key);
                }
                tracing::warn!(items = items.len(), "points held by another invocation past --claim-wait: left to it");
            } else {
                self.split_queue.push_back(items);
            }
        }
        // Re-queued items are claimed again as they are dispatched.
        self.dispatch_ready(false).await;
    }
}
