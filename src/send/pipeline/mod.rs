//! The `send` pipeline: sources → ledger filter → plan → requests → ledger marks, with the run
//! log written along the way. Reads top to bottom, one comment per stage; the request itself is
//! in `request.rs`, the progress bar, signals and summary beside it.
//!
//! Invariants kept here:
//! - an item is marked sent only after the 2xx of the request that carried it (with
//!   `--at-most-once`: just before its request, and unmarked again if the request fails);
//! - all series of one item travel in one request, and so do items that share a point;
//! - two requests writing the same point are never in flight together, and a request writes a
//!   point on top of what the ledger says earlier requests delivered to it (counts summed, the
//!   largest gauges), so the input's order does not matter;
//! - one live invocation at a time holds a SQLite ledger (see `ledger`), and on a shared one
//!   (PostgreSQL) items are sent only under a claim on their points (`claims.rs`), so
//!   overlapping invocations never send the same item;
//! - input is read on its own thread into bounded chunks, and at most `--concurrency` requests
//!   are in flight, so memory does not grow with the input.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use foldhash::{HashMap as FastMap, HashSet as FastSet};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub(super) mod claims;
mod lookahead;
mod marker;
mod outcome;

use super::checkpoints::Checkpoints;
use super::pending::PendingKeys;
use super::progress::Progress;
use super::request::{Delivery, RequestTask};
use super::signals::{self, Shutdown};
use super::summary::{peak_rss_bytes, Summary};
use crate::config::SendConfig;
use crate::datadog::Client;
use crate::error::{send_exit_code, Halt};
use crate::ledger::{self, KeyState, Ledger, LedgerError, SkipReason, SkippedItem};
use crate::metrics::{self, Age, Planned, SentPoint};
use crate::model::{Item, Quota, Validated};
use crate::runlog::{self, RunLog};
use crate::source::github::{GithubClient, GithubSource};
use crate::source::{self, FileSource, Message, Source};
use lookahead::Incoming;

/// Invalid records reported on stderr one by one before they are only counted.
const WARN_LIMIT: u64 = 10;

/// Items waiting for points other invocations hold, past which they are looked up again.
const CONTENDED_LIMIT: usize = 8_192;

/// Requests whose ledger work the pipeline does inline before the tasks beside it take over (a
/// ledger with siblings): each sibling is a connection to open, which a cron pass of a few
/// requests would wait for and gain nothing from.
const INLINE_REQUESTS: u64 = 2;

/// Chunks the pipeline looks up itself before the look-up ahead begins (as above).
const INLINE_CHUNKS: usize = 2;

/// How often points another invocation holds are asked for again (a shared ledger).
const CLAIM_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs the whole `send` over the inputs of `config`: reads, filters, converts, posts, marks, logs.
///
/// # Errors
/// Only what happens before the pipeline starts (ledger cannot be opened, client cannot be built);
/// later problems are counted in the returned summary.
pub async fn send(config: &SendConfig, log: &mut RunLog) -> Result<Summary, crate::Error> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    if !config.inputs.is_empty() {
        sources.push(Box::new(FileSource::new(config.inputs.clone(), config.default_repo.clone())));
    }
    if let Some(github) = &config.github {
        let client =
            GithubClient::new(&github.api_url, github.auth.clone(), config.endpoint.request_timeout, github.max_wait)
                .map_err(|error| crate::Error::Source(error.to_string()))?;
        let repositories = github.repositories.clone();
        let source = GithubSource::new(client, repositories, github.since, github.rescan, config.retry.clone())
            .with_jobs(config.jobs);
        sources.push(Box::new(source));
    }
    send_from(config, log, sources).await
}

/// As [`send`], over the given sources instead of the inputs of `config`.
///
/// # Errors
/// As [`send`].
pub async fn send_from(
    config: &SendConfig,
    log: &mut RunLog,
    mut sources: Vec<Box<dyn Source>>,
) -> Result<Summary, crate::Error> {
    let started = Instant::now();
    // Stage 1 begins first when it can: sources that keep no cursors (files, standard input) are
    // read on their own thread while the ledger opens, which for a database (connecting,
    // authenticating) takes about as long as reading a cron pass's input.
    let (sender, receiver) = mpsc::channel::<Message>(4);
    let total_bytes = sources.iter().map(|source| source.size()).sum();
    let mut progress = Progress::new(config.progress, total_bytes);
    let early_reader = sources
        .iter()
        .all(|source| source.scope_prefix().is_none())
        .then(|| source::spawn_reader(std::mem::take(&mut sources), progress.bytes_read.clone(), sender.clone()));
    // Stage 0: open the ledger (a dry run reads it and writes only to memory or its own record),
    // the client (none in a dry run), and listen for SIGINT/SIGTERM.
    let mut ledger = if config.dry_run {
        ledger::open_dry_run(&config.ledger, config.dry_run_record.as_deref()).await?
    } else {
        ledger::open(&config.ledger, config.lock_timeout).await?
    };
    // Sources that keep cursors resume from what the ledger kept (a dry run: its record first).
    for source in &mut sources {
        if let Some(prefix) = source.scope_prefix() {
            if let Some(locks) = ledger.scope_locks() {
                source.share_scopes(locks);
            }
            source.resume(ledger.cursors(&prefix).await?);
        }
    }
    let client = match &config.api_key {
        Some(key) if !config.dry_run => {
            Some(Arc::new(Client::new(&config.endpoint.base_url, key.clone(), config.endpoint.request_timeout)?))
        }
        _ => None,
    };
    let signals = signals::listen();
    // A shared ledger with a sibling (PostgreSQL): chunks are looked up on it on their way in.
    let lookahead = if ledger.shared() { ledger.sibling() } else { None };
    // A ledger with a sibling (PostgreSQL): accepted items are marked on it, beside the pipeline.
    let sibling = if config.marks_before_request() { None } else { ledger.sibling() };
    let (marker, marks_done) = match sibling {
        Some(sibling) => {
            let (marker, answers) = marker::spawn(sibling);
            (Some(marker), answers)
        }
        None => (None, mpsc::unbounded_channel().1),
    };
    // A shared ledger with a sibling: request tasks claim their items' points on it.
    let claimer = if ledger.shared() && !config.marks_before_request() {
        ledger.sibling().map(claims::Claimer::spawn)
    } else {
        None
    };
    let mut pipeline = Pipeline {
        config,
        ledger,
        client,
        log,
        summary: Summary { dry_run: config.dry_run, ..Summary::default() },
        buffer: Vec::new(),
        pending_keys: PendingKeys::default(),
        checkpoints: Checkpoints::default(),
        quota: None,
        split_queue: VecDeque::new(),
        inflight: JoinSet::new(),
        inflight_items: HashMap::new(),
        inflight_counts: FastMap::default(),
        deferred: Vec::new(),
        contended: Vec::new(),
        contended_since: FastMap::default(),
        contended_limit: CONTENDED_LIMIT,
        retrying: false,
        marker,
        claimer,
        marks_done,
        preview: config.dry_run.then(super::Preview::default),
        marking: 0,
        next_request: 1,
        planner: metrics::Planner::new(config.spec.clone()),
        spec: Arc::new(config.spec.clone()),
        consecutive_failures: 0,
        signals: signals.clone(),
        halt: None,
        warned: 0,
    };

    // Stage 1: read the sources on their own thread, in bounded chunks of validated items
    // (already begun above unless a source resumes from the ledger's cursors).
    let reader = match early_reader {
        // The reader holds the only other sender: the input ends when it does.
        Some(reader) => {
            drop(sender);
            reader
        }
        None => source::spawn_reader(sources, progress.bytes_read.clone(), sender),
    };
    let requested = lookahead::Requested { jobs: config.jobs, steps: config.steps };
    let mut receiver = lookahead::spawn(lookahead, requested, INLINE_CHUNKS, receiver);

    // Stages 2-6 run as input arrives and requests complete.
    let mut input_done = false;
    let mut signals = signals;
    let mut timings = Timings::default();
    loop {
        let mark = Instant::now();
        pipeline.dispatch_ready(input_done).await;
        timings.dispatch += mark.elapsed();
        let drained = pipeline.buffer.is_empty()
            && pipeline.split_queue.is_empty()
            && pipeline.deferred.is_empty()
            && pipeline.contended.is_empty();
        if pipeline.inflight.is_empty() && pipeline.marking == 0 && (pipeline.halt.is_some() || (input_done && drained))
        {
            break;
        }
        let can_read = !input_done && pipeline.halt.is_none() && pipeline.buffer.len() < config.batch_size;
        let mark = Instant::now();
        tokio::select! {
            changed = signals.changed(), if pipeline.halt.is_none() => {
                if changed.is_ok() {
                    if let Some(code) = *signals.borrow() {
                        pipeline.stop_on_signal(code);
                    }
                }
            }
            // Points another invocation held: asked for again once the input is read and what was
            // free is on its way (by then their holder has mostly sent them), then now and then.
            () = tokio::time::sleep(CLAIM_RETRY),
                if !pipeline.contended.is_empty() && pipeline.halt.is_none() && input_done
                    && pipeline.buffer.is_empty() && pipeline.split_queue.is_empty() => {
                pipeline.retry_contended().await;
            }
            Some(done) = pipeline.inflight.join_next(), if !pipeline.inflight.is_empty() => {
                timings.waiting += mark.elapsed();
                let mark = Instant::now();
                pipeline.complete(done).await;
                timings.complete += mark.elapsed();
            }
            Some(done) = pipeline.marks_done.recv(), if pipeline.marking > 0 => {
                timings.waiting += mark.elapsed();
                let mark = Instant::now();
                pipeline.marked(done).await;
                timings.complete += mark.elapsed();
            }
            incoming = receiver.recv(), if can_read => {
                let (message, known) = match incoming {
                    Some(Incoming::LookedUp(items, known)) => (Some(Message::Items(items)), Some(known)),
                    Some(Incoming::Message(message)) => (Some(message), None),
                    None => (None, None),
                };
                match message {
                None => input_done = true,
                Some(Message::Items(items)) => {
                    timings.waiting += mark.elapsed();
                    let mark = Instant::now();
                    pipeline.take(items, known).await;
                    timings.take += mark.elapsed();
                }
                Some(Message::InputFailed { input, message }) => {
                    pipeline.log.input_error(&input, &message);
                    tracing::error!(input = %input, error = %message, "input not read to its end");
                    pipeline.summary.errors.push(message);
                }
                // What it did not yield is fetched next time: not sent, so exit 1.
                Some(Message::Unavailable { input, message }) => {
                    pipeline.log.input_error(&input, &message);
                    tracing::error!(input = %input, error = %message, "source unavailable");
                    pipeline.summary.unavailable += 1;
                    pipeline.summary.errors.push(message);
                }
                Some(Message::Log(line)) => pipeline.log.note(&line),
                Some(Message::Usage(usage)) => {
                    pipeline.summary.github_requests += usage.requests;
                    pipeline.summary.github_not_modified += usage.not_modified;
                    if let Some(quota) = usage.quota {
                        pipeline.summary.github_quota_remaining = Some(quota.remaining);
                        pipeline.summary.github_quota_reset =
                            DateTime::from_timestamp(quota.reset, 0).map(runlog::iso_millis);
                        pipeline.quota = Some(quota);
                    }
                }
                Some(Message::Fatal { input, message }) => {
                    pipeline.log.input_error(&input, &message);
                    pipeline.halt = Some(Halt::Config(message));
                }
                // Kept as a cursor once every item read before it is settled.
                Some(Message::Checkpoint(checkpoint)) => {
                    pipeline.checkpoints.checkpoint(checkpoint);
                    pipeline.save_cursors().await;
                }
                }
            }
        }
        progress.update(&pipeline.summary);
        if matches!(pipeline.halt, Some(Halt::Signal(_))) {
            pipeline.drain_within_grace().await;
            break;
        }
    }
    progress.finish();
    tracing::info!(
        take_ms = timings.take.as_millis() as u64,
        dispatch_ms = timings.dispatch.as_millis() as u64,
        complete_ms = timings.complete.as_millis() as u64,
        waiting_ms = timings.waiting.as_millis() as u64,
        "pipeline task time"
    );
    // Dropping the receiver tells the reader thread to stop, if it has not finished.
    drop(receiver);
    if reader.join().is_err() {
        // A panic on the reader thread: what it did not hand over is not sent, and saying
        // "everything sent" would be a lie.
        pipeline.summary.unavailable += 1;
        pipeline.summary.errors.push("reading the inputs stopped unexpectedly (a bug: see stderr)".to_owned());
    }

    if let Some(quota) = pipeline.quota.take() {
        pipeline.send_quota(&quota).await;
    }
    let mut summary = pipeline.finish().await;
    summary.elapsed_seconds = started.elapsed().as_secs_f64();
    summary.peak_rss_bytes = peak_rss_bytes();
    Ok(summary)
}

/// Where the pipeline task spent its time (shown with -v): filtering chunks, counting and
/// starting requests, marking, and waiting for input or answers.
#[derive(Default)]
struct Timings {
    take: std::time::Duration,
    dispatch: std::time::Duration,
    complete: std::time::Duration,
    waiting: std::time::Duration,
}

struct Pipeline<'a> {
    config: &'a SendConfig,
    ledger: Box<dyn Ledger>,
    client: Option<Arc<Client>>,
    log: &'a mut RunLog,
    summary: Summary,
    /// Planned items not yet in a request.
    buffer: Vec<Planned>,
    /// Keys in `buffer` or in flight: an item read twice is sent once.
    pending_keys: PendingKeys,
    /// Sources' checkpoints waiting for the items before them to settle.
    checkpoints: Checkpoints,
    /// The GitHub token's quota, sent as gauges once the sources are done.
    quota: Option<Quota>,
    /// Halves of requests Datadog found too large (413) or bad (400), to send again.
    split_queue: VecDeque<Vec<Planned>>,
    inflight: JoinSet<Delivery>,
    /// The items of each request in flight, by request number.
    inflight_items: HashMap<u64, Arc<Vec<Planned>>>,
    /// Items per point key in flight. An item whose point key is in flight waits in `deferred`
    /// until that request has landed: Datadog keeps the last value written, so two requests
    /// carrying one point must not race.
    inflight_counts: FastMap<i64, u32>,
    deferred: Vec<Planned>,
    /// A shared ledger: items whose points another invocation holds, since when, waiting for
    /// them (up to `--claim-wait`).
    contended: Vec<(Instant, Vec<Planned>)>,
    /// How many items may wait in `contended` before they are looked up again.
    contended_limit: usize,
    /// When each point in `contended` was first found held once retries began.
    contended_since: FastMap<i64, Instant>,
    /// The task marking accepted items beside the pipeline (a ledger with a sibling), its
    /// answers, and how many requests' items it has yet to answer for.
    marker: Option<marker::Marker>,
    marks_done: mpsc::UnboundedReceiver<marker::MarkDone>,
    /// A dry run's preview for a person.
    preview: Option<super::Preview>,
    /// The task claiming on a sibling of the ledger for request tasks (a shared ledger).
    claimer: Option<claims::Claimer>,
    marking: usize,
    /// Whether retries of contended items began (the wait is counted from then: an early item
    /// of a long input must not time out while the input is still being read).
    retrying: bool,
    planner: metrics::Planner,
    /// Number of the next request (numbers of requests split before posting are not reused).
    next_request: u64,
    spec: Arc<metrics::SeriesSpec>,
    consecutive_failures: u32,
    signals: Shutdown,
    halt: Option<Halt>,
    warned: u64,
}

impl Pipeline<'_> {
    /// Stages 2-4 for one chunk of records: sort out what is not an item, filter against the
    /// ledger, plan.
    async fn take(&mut self, records: Vec<Validated>, known: Option<FastMap<Box<str>, KeyState>>) {
        let now_ms = Utc::now().timestamp_millis();
        let now = now_ms.div_euclid(1000);
        let chunk = self.checkpoints.chunk_started();
        // Stage 2: keep each completed item (validated on the reader thread), or count why not.
        let mut completed = Vec::with_capacity(records.len());
        for record in records {
            self.summary.records += 1;
            match record {
                Validated::Completed(item) => {
                    let start = completed.len();
                    self.requested(item, &mut completed);
                    // Items read twice (in this invocation) go out once.
                    let mut index = start;
                    while index < completed.len() {
                        if self.pending_keys.contains(completed[index].key()) {
                            let item = completed.remove(index);
                            self.summary.duplicates += 1;
                            self.skip("duplicate", item.key(), None);
                        } else {
                            index += 1;
                        }
                    }
                }
                Validated::NotCompleted { key, status } => {
                    self.summary.not_completed += 1;
                    self.skip("not_completed", &key, Some(&format!("status={status}")));
                }
                Validated::Invalid { origin, reason } => self.invalid(&origin, &reason),
                Validated::Fatal { origin, reason } => {
                    self.summary.invalid += 1;
                    self.log.invalid(&origin, &reason);
                    self.halt = Some(Halt::Input(format!("{origin}: {reason}")));
                    return;
                }
            }
        }
        // The same item twice in one chunk: the first stays.
        let first: Vec<bool> = {
            let mut seen = FastSet::with_capacity_and_hasher(completed.len(), Default::default());
            completed.iter().map(|item| seen.insert(item.key())).collect()
        };
        if first.contains(&false) {
            let mut first = first.into_iter();
            completed.retain(|item| {
                let keep = first.next().unwrap_or(true);
                if !keep {
                    self.summary.duplicates += 1;
                    self.skip("duplicate", item.key(), None);
                }
                keep
            });
        }
        if completed.is_empty() {
            return;
        }

        // Stage 3: one ledger query for the chunk (or its answer, looked up ahead): skip what
        // was sent or recorded before.
        let states = match known {
            Some(known) => {
                completed.iter().map(|item| known.get(item.key()).copied().unwrap_or(KeyState::Unknown)).collect()
            }
            None => {
                let keys: Vec<&str> = completed.iter().map(Item::key).collect();
                match self.ledger.states(&keys).await {
                    Ok(states) => states,
                    Err(error) => return self.ledger_failed(&error),
                }
            }
        };
        let max_age = i64::try_from(self.config.max_age.as_secs()).unwrap_or(i64::MAX);
        let retry_old = self.config.historical || self.config.stamp_now;
        let mut too_old: Vec<(Box<str>, i64)> = Vec::new();
        for (item, state) in completed.into_iter().zip(states) {
            match state {
                KeyState::Sent => {
                    self.summary.already_sent += 1;
                    self.skip("already_sent", item.key(), None);
                    continue;
                }
                KeyState::Dead => {
                    self.summary.dead_before += 1;
                    self.skip("dead_letter", item.key(), None);
                    continue;
                }
                KeyState::SkippedTooOld if !retry_old => {
                    self.summary.too_old_before += 1;
                    self.skip("too_old_before", item.key(), None);
                    continue;
                }
                KeyState::SkippedTooOld | KeyState::Unknown => {}
            }
            // Stage 4: place the item in Datadog's intake window.
            let completed_at = item.completed_at();
            let timestamp = match metrics::age(completed_at, now, max_age) {
                Age::Fresh => completed_at,
                Age::TooOld if self.config.historical => completed_at,
                Age::TooOld if self.config.stamp_now => now,
                Age::TooOld => {
                    self.summary.too_old += 1;
                    self.skip("too_old", item.key(), Some(&format!("completed_at={completed_at}")));
                    too_old.push((item.key().into(), completed_at));
                    continue;
                }
                Age::Future => {
                    let reason = format!("completed_at {completed_at} is more than 10 minutes in the future");
                    self.invalid(item.key(), &reason);
                    continue;
                }
            };
            self.pending_keys.insert(item.key());
            let mut planned = self.planner.plan(item, timestamp);
            planned.chunk = chunk;
            self.checkpoints.add(chunk);
            self.buffer.push(planned);
        }
        if !too_old.is_empty() {
            let rows: Vec<SkippedItem<'_>> =
                too_old.iter().map(|(key, completed_at)| SkippedItem { key, completed_at: *completed_at }).collect();
            if let Err(error) = self.ledger.record_skipped(&rows, SkipReason::TooOld, now_ms).await {
                self.ledger_failed(&error);
            }
        }
    }

    /// Stage 5: starts requests while there is room: split halves first, then full batches, then
    /// (once the input is read) the rest.
    async fn dispatch_ready(&mut self, input_done: bool) {
        // Items being marked count too: a ledger slower than Datadog holds the requests back.
        while self.halt.is_none()
            && self.inflight.len() + self.marking < self.config.concurrency * 2
            && self.inflight.len() < self.config.concurrency
        {
            let batch = if let Some(batch) = self.split_queue.pop_front() {
                batch
            } else if self.buffer.len() >= self.config.batch_size || (input_done && !self.buffer.is_empty()) {
                let take = self.buffer.len().min(self.config.batch_size);
                self.buffer.drain(..take).collect()
            } else {
                return;
            };
            self.dispatch(batch).await;
        }
    }

    /// Works out what earlier requests delivered to the points of one batch, and starts its
    /// request task.
    async fn dispatch(&mut self, batch: Vec<Planned>) {
        let now_ms = Utc::now().timestamp_millis();
        // Items whose point is being written by a request in flight wait for it to land, so
        // what the ledger says was delivered to their points is complete.
        let (items, blocked): (Vec<Planned>, Vec<Planned>) =
            batch.into_iter().partition(|planned| !self.inflight_counts.contains_key(&planned.point_key));
        self.deferred.extend(blocked);
        if items.is_empty() || self.halt.is_some() {
            return;
        }
        // Points are written on top of what earlier requests delivered to them (counts summed,
        // the largest gauges), wherever those items stood in the input. A shared ledger: the
        // points are claimed first, and the items looked up again once claimed.
        let (items, before) = if self.claimer.is_some() && self.beside(self.next_request) {
            // Claimed by the request task, beside the pipeline.
            (items, HashMap::new())
        } else if self.ledger.shared() {
            match self.claim(items, now_ms).await {
                Some((items, before)) if !items.is_empty() => (items, before),
                _ => return,
            }
        } else {
            let points: Vec<(i64, i64)> = items.iter().map(|planned| (planned.timestamp, planned.point_key)).collect();
            match self.ledger.sent_points(&points).await {
                Ok(sent) => (items, sent),
                Err(error) => return self.abandon(items, &error).await,
            }
        };
        let before: FastMap<i64, SentPoint> = before.into_iter().collect();
        // --at-most-once: marked before the request, so a crash loses the items instead of
        // resending them.
        if self.config.marks_before_request() {
            if let Err(error) = self.mark(&items, now_ms).await {
                return self.abandon(items, &error).await;
            }
        }
        for planned in &items {
            *self.inflight_counts.entry(planned.point_key).or_default() += 1;
        }
        let number = self.next_request;
        self.next_request += 1;
        let items = Arc::new(items);
        self.inflight_items.insert(number, items.clone());
        let task = RequestTask {
            number,
            items,
            before,
            spec: self.spec.clone(),
            compression: self.config.compression,
            distributions: self.config.distributions,
            policy: self.config.retry.clone(),
            client: self.client.clone(),
            signals: self.signals.clone(),
            log_detail: self.config.log_detail,
            claim: self.claimer.clone().filter(|_| self.beside(number)).map(|claimer| (claimer, now_ms)),
        };
        self.inflight.spawn(task.run());
    }

    /// Whether the ledger work of request `number` is done beside the pipeline (by siblings).
    fn beside(&self, number: u64) -> bool {
        number > INLINE_REQUESTS
    }

    fn stop_on_signal(&mut self, code: i32) {
        tracing::warn!(code, "signal received: no new requests; waiting for those in flight");
        self.log.note(&format!("note: signal received, stopping (exit code {code})"));
        self.halt = Some(Halt::Signal(code));
    }

    /// After a signal: requests in flight get `--shutdown-grace` to finish; the rest are abandoned
    /// unmarked.
    async fn drain_within_grace(&mut self) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
        while !self.inflight.is_empty() {
            match tokio::time::timeout_at(deadline, self.inflight.join_next()).await {
                Ok(Some(done)) => self.complete(done).await,
                Ok(None) => break,
                Err(_) => {
                    self.inflight.abort_all();
                    while self.inflight.join_next().await.is_some() {}
                    break;
                }
            }
        }
        // What Datadog accepted is marked, however long the grace.
        self.stop_marking().await;
    }

    /// The items of a record that were asked for: a run; a job with `--jobs`, and its steps as
    /// items of their own with `--steps`. A job not asked for is counted and logged.
    fn requested(&mut self, item: Item, into: &mut Vec<Item>) {
        match item {
            Item::Job(mut job) => {
                if !self.config.jobs {
                    self.summary.not_requested += 1;
                    self.skip("not_requested", &job.key, Some("pass --jobs"));
                    return;
                }
                let steps = std::mem::take(&mut job.steps);
                into.push(Item::Job(job));
                if self.config.steps {
                    into.extend(steps.into_iter().map(|step| Item::Step(Box::new(step))));
                }
            }
            item => into.push(item),
        }
    }

    /// An item skipped: in the run log, and in a dry run's preview.
    fn skip(&mut self, reason: &str, key: &str, detail: Option<&str>) {
        self.log.skip(reason, key, detail);
        if let Some(preview) = &mut self.preview {
            preview.skipped(key, reason, detail);
        }
    }

    fn invalid(&mut self, origin: &str, reason: &str) {
        self.summary.invalid += 1;
        if self.warned < WARN_LIMIT {
            tracing::warn!(record = %origin, "skipping invalid record: {reason}");
        }
        self.warned += 1;
        self.log.invalid(origin, reason);
    }

    fn ledger_failed(&mut self, error: &LedgerError) {
        let message = crate::error_chain(error);
        tracing::error!(error = %message, "ledger failed; stopping");
        self.halt = Some(Halt::Ledger(message));
    }

    async fn finish(mut self) -> Summary {
        self.stop_marking().await;
        // Runs planned or in flight but never confirmed (halted) are not sent.
        let abandoned: Vec<Planned> = self
            .inflight_items
            .drain()
            .flat_map(|(_, flight)| Arc::try_unwrap(flight).unwrap_or_else(|shared| (*shared).clone()))
            .chain(self.split_queue.drain(..).flatten())
            .chain(self.deferred.drain(..))
            .chain(self.buffer.drain(..))
            .collect();
        self.summary.failed += abandoned.len() as u64;
        self.let_go(&abandoned).await;
        if let Err(error) = self.ledger.release_all().await {
            tracing::warn!(error = %crate::error_chain(&error), "could not release claims; they lapse with their lease");
        }
        self.summary.preview = self.preview.as_ref().and_then(super::Preview::render);
        let summary = &mut self.summary;
        let bad_input = summary.invalid > 0 || summary.dead_letters > 0 || !summary.errors.is_empty();
        summary.exit_code = send_exit_code(self.halt.as_ref(), summary.failed + summary.unavailable, bad_input);
        summary.stopped = self.halt.as_ref().map(Halt::describe);
        self.summary
    }
}
