//! Marks made beside the pipeline, on a ledger with a sibling (PostgreSQL: a second connection):
//! the items of an accepted request go to a task that marks them, while the pipeline goes on
//! claiming, looking up and sending. The request's points stay in flight, and its items
//! unsettled (no cursor passes them), until the task says they are marked.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;

use super::Pipeline;
use crate::ledger::{Ledger, LedgerError, SentItem};
use crate::metrics::Planned;

/// Marks waiting in the task taken together, in one statement.
const MARKS_PER_STATEMENT: usize = 4;

/// The items of one accepted request, to mark.
pub(super) struct MarkJob {
    runs: Vec<Planned>,
}

/// Items the task marked, or failed to.
pub(super) struct MarkDone {
    runs: Vec<Planned>,
    result: Result<(), Arc<LedgerError>>,
}

/// The marking task, while it runs.
pub(super) struct Marker {
    jobs: UnboundedSender<MarkJob>,
    task: JoinHandle<()>,
}

/// Starts the task marking on `ledger` (a sibling of the pipeline's); its answers come on the
/// receiver, in the order the jobs were given.
pub(super) fn spawn(ledger: Box<dyn Ledger>) -> (Marker, UnboundedReceiver<MarkDone>) {
    let (jobs, receiver) = mpsc::unbounded_channel();
    let (done, answers) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(ledger, receiver, done));
    (Marker { jobs, task }, answers)
}

async fn run(mut ledger: Box<dyn Ledger>, mut jobs: UnboundedReceiver<MarkJob>, done: UnboundedSender<MarkDone>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MARKS_PER_STATEMENT {
            let Ok(job) = jobs.try_recv() else { break };
            batch.push(job);
        }
        let items: Vec<SentItem<'_>> = batch.iter().flat_map(|job| sent_items(&job.runs)).collect();
        let result = ledger.mark_sent(&items, Utc::now().timestamp_millis()).await.map_err(Arc::new);
        drop(items);
        for job in batch {
            // The pipeline gone (it waits for every answer, so only on a panic): nothing to tell.
            let _ = done.send(MarkDone { runs: job.runs, result: result.clone() });
        }
    }
}

/// What the ledger records of each item sent.
pub(super) fn sent_items(runs: &[Planned]) -> impl Iterator<Item = SentItem<'_>> {
    runs.iter().map(|planned| SentItem {
        key: planned.item.key(),
        point_key: planned.point_key,
        timestamp: planned.timestamp,
        gauges: planned.gauges,
        tallies: planned.tallies,
    })
}

impl Pipeline<'_> {
    /// Hands the items of an accepted request to the marking task, when there is one; else
    /// gives them back, to be marked inline.
    pub(super) fn mark_beside(&mut self, runs: Vec<Planned>) -> Option<Vec<Planned>> {
        let Some(marker) = &self.marker else { return Some(runs) };
        match marker.jobs.send(MarkJob { runs }) {
            Ok(()) => {
                self.marking += 1;
                None
            }
            // The task is gone (a panic): marked inline instead.
            Err(mpsc::error::SendError(job)) => Some(job.runs),
        }
    }

    /// The marking task answered: the items' points land, and the items are settled as sent,
    /// or (the ledger failed) counted as failed, and the invocation halts.
    pub(super) async fn marked(&mut self, done: MarkDone) {
        self.marking -= 1;
        self.land(&done.runs);
        match done.result {
            Ok(()) => self.settle_delivered(&done.runs).await,
            Err(error) => {
                // Datadog has the points; the next invocation resends them, identical.
                self.summary.failed += done.runs.len() as u64;
                self.ledger_failed(&error);
            }
        }
    }

    /// Waits for every answer of the marking task, then ends it (before the claims are given
    /// back: its marks are what frees them).
    pub(super) async fn stop_marking(&mut self) {
        while self.marking > 0 {
            match self.marks_done.recv().await {
                Some(done) => self.marked(done).await,
                None => {
                    // The task panicked: what it held is not known to be marked.
                    tracing::error!("the marking task ended abnormally");
                    self.marking = 0;
                }
            }
        }
        if let Some(marker) = self.marker.take() {
            drop(marker.jobs);
            let _ = marker.task.await;
        }
    }
}
