//! One Datadog request, done on a runtime worker: build the series of its items (summed on top
//! of what earlier requests delivered), encode and compress them, format its run-log lines, post
//! with retries. With `--distributions`, the same items' distribution points follow in a second
//! post, only once the series were accepted: the request succeeds when both did. The pipeline
//! decides what goes in it and what its outcome means.

use std::sync::Arc;

use bytes::Bytes;
use foldhash::HashMap as FastMap;

use super::pipeline::claims::{fates, Claimer, Fate};
use super::signals::Shutdown;
use crate::cli::LogDetail;
use crate::datadog::{self, Client, Compression, DatadogError};
use crate::ledger::LedgerError;
use crate::metrics::{self, Planned, SentPoint};
use crate::model::Entity;
use crate::retry::{self, RetryPolicy};
use crate::runlog;

/// What a request task reports back.
pub(super) struct Delivery {
    pub(super) number: u64,
    pub(super) attempts: u32,
    pub(super) result: Result<u16, Failure>,
    /// Given up because of a shutdown signal.
    pub(super) cancelled: bool,
    /// The request's `send` and `series` lines for the run log.
    pub(super) log: String,
    pub(super) raw_bytes: usize,
    pub(super) compressed_bytes: usize,
    pub(super) series: u64,
    pub(super) points: u64,
    /// Claimed by the task (a shared ledger with a sibling): the fate of each of the request's
    /// items, only those sent being in the request; or the ledger failed, and nothing was sent.
    pub(super) claimed: Option<Result<Vec<Fate>, LedgerError>>,
}

pub(super) enum Failure {
    /// Over Datadog's size limits once encoded: to be split before anything is sent.
    TooLarge,
    Http(DatadogError),
}

/// One request's work, done on a runtime worker: build the series (counts summed on top of
/// `before`), encode, compress, format its log lines, post with retries.
pub(super) struct RequestTask {
    pub(super) number: u64,
    pub(super) items: Arc<Vec<Planned>>,
    /// What earlier requests delivered to the points of this request.
    pub(super) before: FastMap<i64, SentPoint>,
    pub(super) spec: Arc<metrics::SeriesSpec>,
    pub(super) compression: Compression,
    /// `--distributions`: post the items' distribution points after their series.
    pub(super) distributions: bool,
    pub(super) policy: RetryPolicy,
    /// `None` in a dry run: everything but the post.
    pub(super) client: Option<Arc<Client>>,
    pub(super) signals: Shutdown,
    pub(super) log_detail: LogDetail,
    /// Claim the items' points first (and take `before` from the claim's look-up).
    pub(super) claim: Option<(Claimer, i64)>,
}

impl Delivery {
    /// A request that posted nothing (all its items settled or held elsewhere, or the claim
    /// failed).
    fn nothing(number: u64, claimed: Option<Result<Vec<Fate>, LedgerError>>) -> Delivery {
        Delivery {
            number,
            attempts: 0,
            result: Ok(0),
            cancelled: false,
            log: String::new(),
            raw_bytes: 0,
            compressed_bytes: 0,
            series: 0,
            points: 0,
            claimed,
        }
    }
}

impl RequestTask {
    pub(super) async fn run(mut self) -> Delivery {
        let number = self.number;
        let mut claimed = None;
        if let Some((claimer, now_ms)) = self.claim.take() {
            match claimer.claim(self.items.clone(), now_ms).await {
                Err(error) => return Delivery::nothing(number, Some(Err(error))),
                Ok(found) => {
                    let fates = fates(&found);
                    self.before = found.sent.into_iter().collect();
                    if fates.iter().any(|fate| *fate != Fate::Send) {
                        let kept = self.items.iter().zip(&fates).filter(|(_, fate)| **fate == Fate::Send);
                        self.items = Arc::new(kept.map(|(planned, _)| planned.clone()).collect());
                    }
                    if self.items.is_empty() {
                        return Delivery::nothing(number, Some(Ok(fates)));
                    }
                    claimed = Some(Ok(fates));
                }
            }
        }
        let mut series =
            self.spec.series(&self.items, &|point_key| self.before.get(&point_key).copied().unwrap_or_default());
        let encoded = datadog::encode_compressed(&series, self.compression);
        let (raw_bytes, compressed_bytes) = match &encoded {
            Ok(body) => (body.raw_bytes, body.compressed.len()),
            Err(too_large) => (too_large.raw_bytes, too_large.compressed_bytes),
        };
        // Datadog documents deflate for this endpoint, whatever --compression says.
        let distributions = if self.distributions { self.spec.distributions(&self.items) } else { Vec::new() };
        let distributions_body = (!distributions.is_empty())
            .then(|| datadog::encode_distributions(&distributions, Compression::Deflate))
            .transpose();
        let mut delivery = Delivery {
            number,
            attempts: 0,
            result: Err(Failure::TooLarge),
            cancelled: false,
            log: String::new(),
            raw_bytes,
            compressed_bytes,
            series: series.len() as u64,
            points: series.iter().map(|one| one.points.len() as u64).sum(),
            claimed,
        };
        let (Ok(body), Ok(distributions_body)) = (encoded, distributions_body) else { return delivery };
        let body = body.compressed;
        delivery.series += distributions.len() as u64;
        delivery.points += distributions.iter().map(|one| one.points.len() as u64).sum::<u64>();
        series.extend(distributions);
        if self.log_detail != LogDetail::Requests {
            // Sized once from the body (the series lines take about what its JSON takes, the
            // compact ones a third), not grown by doubling: these are megabytes per request.
            let series_bytes = if self.log_detail == LogDetail::Full { raw_bytes } else { raw_bytes / 3 };
            delivery.log.reserve(series_bytes + self.items.len() * 64);
            for planned in self.items.iter() {
                let stamped = planned.timestamp != planned.item.completed_at();
                runlog::format_send(&mut delivery.log, planned.item.key(), planned.timestamp, stamped);
            }
            if self.log_detail == LogDetail::Full {
                for one in &series {
                    runlog::format_series(&mut delivery.log, number, one);
                }
            } else {
                let strip = metrics::family(Entity::WorkflowRun).metric_prefix(&self.spec.prefix);
                runlog::by_tag_set(&series, |group| runlog::format_points(&mut delivery.log, number, group, &strip));
            }
        }
        let nothing_chosen = series.is_empty();
        drop(series);
        match self.client {
            None => delivery.result = Ok(0),
            // `--metrics` chose none of these items' metrics: nothing to post.
            Some(_) if nothing_chosen => delivery.result = Ok(0),
            Some(client) => {
                let body = Bytes::from(body);
                let compression = self.compression;
                let mut outcome = retry::retry(&self.policy, number, "request", &mut self.signals, || {
                    client.post_series(body.clone(), compression)
                })
                .await;
                if let (Ok(_), Some(distributions)) = (&outcome.result, distributions_body) {
                    let body = Bytes::from(distributions.compressed);
                    let second = retry::retry(&self.policy, number, "distributions", &mut self.signals, || {
                        client.post_distributions(body.clone(), Compression::Deflate)
                    })
                    .await;
                    outcome = retry::Outcome {
                        attempts: outcome.attempts + second.attempts,
                        cancelled: second.cancelled,
                        result: second.result,
                    };
                }
                delivery.attempts = outcome.attempts;
                delivery.result = outcome.result.map(|accepted| accepted.status).map_err(Failure::Http);
                delivery.cancelled = outcome.cancelled;
            }
        }
        delivery
    }
}
