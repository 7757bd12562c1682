//! The `send` pipeline: source → metrics → ledger → datadog → ledger, with the run log written
//! along the way. Reads top to bottom, one comment per stage.
//!
//! Invariants kept here:
//! - a run is marked sent only after the 2xx of the request that carried it (with
//!   `--at-most-once`: just before its request, and unmarked again if the request fails);
//! - all series of one run travel in one request, and so do runs whose counts are summed;
//! - one live invocation at a time holds the ledger (see `ledger`), so overlapping invocations
//!   never send the same run;
//! - input is read on its own thread into bounded chunks, and at most `--concurrency` requests
//!   are in flight, so memory does not grow with the input.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use foldhash::{HashMap as FastMap, HashSet as FastSet};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::cli::LogDetail;
use crate::config::SendConfig;
use crate::datadog::{self, Client, Compression, DatadogError};
use crate::error::exit_code;
use crate::ledger::{KeyState, Ledger, LedgerError, SentRun};
use crate::metrics::{self, Age, Planned, Validated};
use crate::retry::{self, Backoff, RetryPolicy};
use crate::runlog::{self, RequestLine, RunLog};
use crate::source::{self, Input, Record, SinkResult, Stop};

/// Records handed from the reader thread at a time.
const CHUNK: usize = 1024;
/// Invalid records reported on stderr one by one before they are only counted.
const WARN_LIMIT: u64 = 10;

/// What one `send` did; printed as the closing line, or as JSON with `--output json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    /// Records read from the inputs (runs and values that were not runs).
    pub records: u64,
    /// Runs Datadog confirmed (live) ...
    pub sent: u64,
    /// ... or that a live run would send (dry run).
    pub would_send: u64,
    /// Runs not sent because their request failed or the invocation stopped: not marked, so
    /// a later invocation sends them.
    pub failed: u64,
    /// Runs Datadog rejected on their own (400): recorded as dead letters, never as sent.
    pub dead_letters: u64,
    pub requests: u64,
    /// Attempts beyond the first, over all requests.
    pub retries: u64,
    pub series: u64,
    pub points: u64,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    pub already_sent: u64,
    pub not_completed: u64,
    pub duplicates: u64,
    /// Completed longer ago than --max-age, recorded by this invocation.
    pub too_old: u64,
    /// Recorded as too old by an earlier invocation.
    pub too_old_before: u64,
    /// Dead letters from earlier invocations, skipped until requeued.
    pub dead_before: u64,
    /// Records that are not valid runs (skipped, reported).
    pub invalid: u64,
    /// Inputs that could not be read to their end, and other errors, one message each.
    pub errors: Vec<String>,
    /// Why the invocation stopped early, if it did.
    pub stopped: Option<String>,
    pub exit_code: i32,
    pub log_file: Option<String>,
    pub elapsed_seconds: f64,
    /// Peak resident memory of the process (Linux), for the benchmark and curious users.
    pub peak_rss_bytes: Option<u64>,
}

/// Why sending stopped before the input ran out.
enum Halt {
    Auth(String),
    Ledger(String),
    Input(String),
    Breaker(String),
    Signal(i32),
}

/// Runs the whole `send`: reads, filters, converts, posts, marks, logs.
///
/// # Errors
/// Only what happens before the pipeline starts (ledger cannot be opened, client cannot be built);
/// later problems are counted in the returned summary.
pub async fn send(config: &SendConfig, log: &mut RunLog) -> Result<Summary, crate::Error> {
    let started = Instant::now();
    // Stage 0: open the ledger (a dry run reads it and writes only to memory or its own record),
    // the client (none in a dry run), and listen for SIGINT/SIGTERM.
    let ledger = if config.dry_run {
        Ledger::open_dry_run(&config.ledger, config.dry_run_record.as_deref())?
    } else {
        Ledger::open(&config.ledger, config.lock_timeout)?
    };
    let client = match &config.api_key {
        Some(key) if !config.dry_run => {
            Some(Arc::new(Client::new(&config.endpoint.base_url, key.clone(), config.endpoint.request_timeout)?))
        }
        _ => None,
    };
    let signals = listen_for_signals();
    let mut pipeline = Pipeline {
        config,
        ledger,
        client,
        log,
        summary: Summary { dry_run: config.dry_run, ..Summary::default() },
        buffer: Vec::new(),
        pending_keys: FastSet::default(),
        split_queue: VecDeque::new(),
        inflight: JoinSet::new(),
        inflight_runs: HashMap::new(),
        inflight_counts: FastMap::default(),
        deferred: Vec::new(),
        next_request: 1,
        planner: metrics::Planner::new(config.spec.clone()),
        spec: Arc::new(config.spec.clone()),
        consecutive_failures: 0,
        signals: signals.clone(),
        halt: None,
        warned: 0,
    };

    // Stage 1: read the inputs on their own thread, in bounded chunks.
    let (sender, mut receiver) = mpsc::channel::<Message>(4);
    let inputs = config.inputs.clone();
    let default_repo = config.default_repo.clone();
    let mut progress = Progress::new(config);
    let bytes_read = progress.bytes_read.clone();
    let reader = std::thread::spawn(move || read_all(&inputs, default_repo.as_ref(), &bytes_read, &sender));

    // Stages 2-6 run as input arrives and requests complete.
    let mut input_done = false;
    let mut signals = signals;
    let mut timings = Timings::default();
    loop {
        let mark = Instant::now();
        pipeline.dispatch_ready(input_done).await;
        timings.dispatch += mark.elapsed();
        let drained = pipeline.buffer.is_empty() && pipeline.split_queue.is_empty() && pipeline.deferred.is_empty();
        if pipeline.inflight.is_empty() && (pipeline.halt.is_some() || (input_done && drained)) {
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
            Some(done) = pipeline.inflight.join_next(), if !pipeline.inflight.is_empty() => {
                timings.waiting += mark.elapsed();
                let mark = Instant::now();
                pipeline.complete(done);
                timings.complete += mark.elapsed();
            }
            message = receiver.recv(), if can_read => match message {
                None => input_done = true,
                Some(Message::Records(records)) => {
                    timings.waiting += mark.elapsed();
                    let mark = Instant::now();
                    pipeline.take(records);
                    timings.take += mark.elapsed();
                }
                Some(Message::InputFailed(error)) => {
                    pipeline.log.input_error(&error.input, &error.message);
                    tracing::error!(input = %error.input, error = %error.message, "input not read to its end");
                    pipeline.summary.errors.push(error.message);
                }
            },
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
    let _ = reader.join();

    let mut summary = pipeline.finish();
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

/// The progress bar on stderr: input bytes read (with ETA when the inputs are files), runs read,
/// sent and skipped, and the rate. Hidden unless stderr is a terminal, so cron and CI see only the
/// closing summary.
struct Progress {
    bar: ProgressBar,
    bytes_read: Arc<AtomicU64>,
    started: Instant,
    last_drawn: Instant,
}

impl Progress {
    fn new(config: &SendConfig) -> Progress {
        let sizes: Option<Vec<u64>> = config.inputs.iter().map(source::input_size).collect();
        let bar = if !config.progress {
            ProgressBar::hidden()
        } else if let Some(total) = sizes.map(|sizes| sizes.iter().sum()) {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg} ETA {eta}")
                    .expect("the template is valid"),
            );
            bar
        } else {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{spinner} {bytes} {msg}").expect("the template is valid"));
            bar
        };
        let now = Instant::now();
        Progress { bar, bytes_read: Arc::new(AtomicU64::new(0)), started: now, last_drawn: now }
    }

    fn update(&mut self, summary: &Summary) {
        if self.bar.is_hidden() || self.last_drawn.elapsed() < std::time::Duration::from_millis(100) {
            return;
        }
        self.last_drawn = Instant::now();
        self.bar.set_position(self.bytes_read.load(Ordering::Relaxed));
        let skipped = summary.already_sent
            + summary.not_completed
            + summary.duplicates
            + summary.too_old
            + summary.too_old_before
            + summary.dead_before;
        let rate = summary.records as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let sent = if summary.dry_run { summary.would_send } else { summary.sent };
        self.bar.set_message(format!(
            "read {} · sent {sent} · skipped {skipped} · failed {} · {rate:.0} runs/s",
            summary.records, summary.failed
        ));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `VmHWM` of `/proc/self/status`: the peak resident set size so far.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

enum Message {
    /// Records already validated on the reader thread (validation is pure and costs as much
    /// as parsing, so it runs beside the pipeline rather than in it).
    Records(Vec<Validated>),
    InputFailed(InputError),
}

struct InputError {
    input: String,
    message: String,
}

fn read_all(
    inputs: &[Input],
    default_repo: Option<&(String, String)>,
    bytes_read: &AtomicU64,
    sender: &mpsc::Sender<Message>,
) {
    for input in inputs {
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut sink = |record: Record| -> SinkResult {
            chunk.push(match record {
                Record::Run(raw) => metrics::validate(&raw, default_repo),
                Record::Unrecognised { origin, reason } => Validated::Invalid { origin, reason },
            });
            if chunk.len() >= CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                sender.blocking_send(Message::Records(full)).map_err(|_| Stop)?;
            }
            Ok(())
        };
        let result = source::read_input_counted(input, bytes_read, &mut sink);
        if !chunk.is_empty() && sender.blocking_send(Message::Records(chunk)).is_err() {
            return;
        }
        match result {
            Ok(_) => {}
            Err(source::SourceError::Stopped { .. }) => return,
            Err(error) => {
                let message = InputError { input: input.to_string(), message: error.to_string() };
                if sender.blocking_send(Message::InputFailed(message)).is_err() {
                    return;
                }
            }
        }
    }
}

/// The first SIGINT/SIGTERM sets the watched value to the exit code (130/143); a second one ends
/// the process at once. That is safe: runs are marked only after a 2xx, so nothing is lost, and
/// the ledger lock of a dead process is released by the kernel.
fn listen_for_signals() -> watch::Receiver<Option<i32>> {
    let (sender, receiver) = watch::channel(None);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            return;
        };
        let first = tokio::select! {
            _ = interrupt.recv() => 130,
            _ = terminate.recv() => 143,
        };
        let _ = sender.send(Some(first));
        let second = tokio::select! {
            _ = interrupt.recv() => 130,
            _ = terminate.recv() => 143,
        };
        eprintln!("workflow-metrics: second signal, exiting now; unconfirmed runs stay unmarked");
        // The one exit outside `main`: a second signal means "now", whatever is in flight.
        std::process::exit(second);
    });
    receiver
}

/// What a request task reports back.
struct Delivery {
    number: u64,
    attempts: u32,
    result: Result<u16, Failure>,
    /// Given up because of a shutdown signal.
    cancelled: bool,
    /// The request's `send` and `series` lines for the run log.
    log: String,
    raw_bytes: usize,
    compressed_bytes: usize,
    series: u64,
    points: u64,
}

enum Failure {
    /// Over Datadog's size limits once encoded: to be split before anything is sent.
    TooLarge,
    Http(DatadogError),
}

/// One request's work, done on a runtime worker: build the series (counts summed on top of
/// `before`), encode, compress, format its log lines, post with retries.
struct Job {
    number: u64,
    runs: Arc<Vec<Planned>>,
    /// Runs already sent or in flight per point key of this request.
    before: FastMap<i64, u32>,
    spec: Arc<metrics::SeriesSpec>,
    compression: Compression,
    policy: RetryPolicy,
    /// `None` in a dry run: everything but the post.
    client: Option<Arc<Client>>,
    signals: watch::Receiver<Option<i32>>,
    log_detail: LogDetail,
}

impl Job {
    async fn run(self) -> Delivery {
        let number = self.number;
        let series = self.spec.series(&self.runs, &|point_key| self.before.get(&point_key).copied().unwrap_or(0));
        let encoded = datadog::encode_compressed(&series, self.compression);
        let (raw_bytes, compressed_bytes) = match &encoded {
            Ok(body) => (body.raw_bytes, body.compressed.len()),
            Err(too_large) => (too_large.raw_bytes, too_large.compressed_bytes),
        };
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
        };
        let Ok(body) = encoded else { return delivery };
        let body = body.compressed;
        if self.log_detail != LogDetail::Requests {
            for planned in self.runs.iter() {
                let stamped = planned.timestamp != planned.run.completed_at;
                runlog::format_send(&mut delivery.log, planned.run.key(), planned.timestamp, stamped);
            }
            if self.log_detail == LogDetail::Full {
                for one in &series {
                    runlog::format_series(&mut delivery.log, number, one);
                }
            } else {
                let strip = format!("{}.workflow_run.", self.spec.prefix);
                runlog::by_tag_set(&series, |group| runlog::format_points(&mut delivery.log, number, group, &strip));
            }
        }
        drop(series);
        match self.client {
            None => delivery.result = Ok(0),
            Some(client) => {
                let (attempts, result, cancelled) =
                    deliver(client, Bytes::from(body), self.compression, self.policy, number, self.signals).await;
                delivery.attempts = attempts;
                delivery.result = result.map_err(Failure::Http);
                delivery.cancelled = cancelled;
            }
        }
        delivery
    }
}

/// Posts one body, retrying transient failures (408, 429, 5xx, timeouts, refused or reset
/// connections) with backoff and jitter, within the attempt and deadline bounds; honours
/// `Retry-After`/`X-RateLimit-Reset`. Stops waiting at a shutdown signal. Returns the attempts
/// made, the outcome, and whether a signal cut it short.
async fn deliver(
    client: Arc<Client>,
    body: Bytes,
    compression: Compression,
    policy: RetryPolicy,
    number: u64,
    mut signals: watch::Receiver<Option<i32>>,
) -> (u32, Result<u16, DatadogError>, bool) {
    let started = Instant::now();
    let mut backoff = Backoff::new(&policy, number);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match client.post_series(body.clone(), compression).await {
            Ok(accepted) => return (attempts, Ok(accepted.status), false),
            Err(error) => error,
        };
        let remaining = policy.deadline.saturating_sub(started.elapsed());
        let wait = backoff.next().and_then(|delay| retry::next_wait(delay, error.retry_after(), remaining));
        let wait = match wait {
            Some(wait) if error.is_retriable() && attempts < policy.max_attempts && signals.borrow().is_none() => wait,
            _ => return (attempts, Err(error), false),
        };
        tracing::warn!(request = number, attempt = attempts, delay_ms = wait.as_millis() as u64, error = %error, "retrying request");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = signals.changed() => return (attempts, Err(error), true),
        }
    }
}

struct Pipeline<'a> {
    config: &'a SendConfig,
    ledger: Ledger,
    client: Option<Arc<Client>>,
    log: &'a mut RunLog,
    summary: Summary,
    /// Planned runs not yet in a request.
    buffer: Vec<Planned>,
    /// Keys in `buffer` or in flight: a run read twice is sent once.
    pending_keys: FastSet<String>,
    /// Halves of requests Datadog found too large (413) or bad (400), to send again.
    split_queue: VecDeque<Vec<Planned>>,
    inflight: JoinSet<Delivery>,
    /// The runs of each request in flight, by request number.
    inflight_runs: HashMap<u64, InFlight>,
    /// Runs per point key in flight. A run whose point key is in flight waits in `deferred`
    /// until that request has landed: Datadog keeps the last value written, so two requests
    /// carrying counts for one point must not race.
    inflight_counts: FastMap<i64, u32>,
    deferred: Vec<Planned>,
    planner: metrics::Planner,
    /// Number of the next request (numbers of requests split before posting are not reused).
    next_request: u64,
    spec: Arc<metrics::SeriesSpec>,
    consecutive_failures: u32,
    signals: watch::Receiver<Option<i32>>,
    halt: Option<Halt>,
    warned: u64,
}

struct InFlight {
    runs: Arc<Vec<Planned>>,
}

impl Pipeline<'_> {
    /// Stages 2-4 for one chunk of records: validate, filter against the ledger, plan.
    fn take(&mut self, records: Vec<Validated>) {
        let now_ms = Utc::now().timestamp_millis();
        let now = now_ms.div_euclid(1000);
        // Stage 2: validate each record into a completed run, or count why not.
        let mut completed = Vec::with_capacity(records.len());
        for record in records {
            self.summary.records += 1;
            match record {
                Validated::Completed(run) => {
                    if self.pending_keys.contains(run.key()) {
                        self.summary.duplicates += 1;
                        self.log.skip("duplicate", run.key(), None);
                    } else {
                        completed.push(*run);
                    }
                }
                Validated::NotCompleted { key, status } => {
                    self.summary.not_completed += 1;
                    self.log.skip("not_completed", &key, Some(&format!("status={status}")));
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
        // The same run twice in one chunk: the first stays.
        let first: Vec<bool> = {
            let mut seen = FastSet::with_capacity_and_hasher(completed.len(), Default::default());
            completed.iter().map(|run| seen.insert(run.key())).collect()
        };
        if first.contains(&false) {
            let mut first = first.into_iter();
            completed.retain(|run| {
                let keep = first.next().unwrap_or(true);
                if !keep {
                    self.summary.duplicates += 1;
                    self.log.skip("duplicate", run.key(), None);
                }
                keep
            });
        }
        if completed.is_empty() {
            return;
        }

        // Stage 3: one ledger query for the chunk: skip what was sent or recorded before.
        let keys: Vec<&str> = completed.iter().map(|run| run.key()).collect();
        let states = match self.ledger.states(&keys) {
            Ok(states) => states,
            Err(error) => return self.ledger_failed(&error),
        };
        let max_age = i64::try_from(self.config.max_age.as_secs()).unwrap_or(i64::MAX);
        let retry_old = self.config.historical || self.config.stamp_now;
        let mut too_old = Vec::new();
        for (run, state) in completed.into_iter().zip(states) {
            match state {
                KeyState::Sent => {
                    self.summary.already_sent += 1;
                    self.log.skip("already_sent", run.key(), None);
                    continue;
                }
                KeyState::Dead => {
                    self.summary.dead_before += 1;
                    self.log.skip("dead_letter", run.key(), None);
                    continue;
                }
                KeyState::SkippedTooOld if !retry_old => {
                    self.summary.too_old_before += 1;
                    self.log.skip("too_old_before", run.key(), None);
                    continue;
                }
                KeyState::SkippedTooOld | KeyState::Unknown => {}
            }
            // Stage 4: place the run in Datadog's intake window.
            let timestamp = match metrics::age(run.completed_at, now, max_age) {
                Age::Fresh => run.completed_at,
                Age::TooOld if self.config.historical => run.completed_at,
                Age::TooOld if self.config.stamp_now => now,
                Age::TooOld => {
                    self.summary.too_old += 1;
                    self.log.skip("too_old", run.key(), Some(&format!("completed_at={}", run.completed_at)));
                    too_old.push((run.key().to_owned(), run.completed_at));
                    continue;
                }
                Age::Future => {
                    let reason = format!("completed_at {} is more than 10 minutes in the future", run.completed_at);
                    self.invalid(run.key(), &reason);
                    continue;
                }
            };
            self.pending_keys.insert(run.key().to_owned());
            self.buffer.push(self.planner.plan(run, timestamp));
        }
        if !too_old.is_empty() {
            let rows: Vec<(&str, i64)> = too_old.iter().map(|(key, at)| (key.as_str(), *at)).collect();
            if let Err(error) = self.ledger.record_too_old(&rows, now_ms) {
                self.ledger_failed(&error);
            }
        }
    }

    /// Stage 5: starts requests while there is room: split halves first, then full batches, then
    /// (once the input is read) the rest.
    async fn dispatch_ready(&mut self, input_done: bool) {
        while self.halt.is_none() && self.inflight.len() < self.config.concurrency {
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

    /// Claims one batch, works out its counts and starts its request task.
    async fn dispatch(&mut self, batch: Vec<Planned>) {
        let now_ms = Utc::now().timestamp_millis();
        let runs = batch;
        // Runs whose point is being written by a request in flight wait for it to land.
        let (runs, blocked): (Vec<Planned>, Vec<Planned>) =
            runs.into_iter().partition(|planned| !self.inflight_counts.contains_key(&planned.point_key));
        self.deferred.extend(blocked);
        if runs.is_empty() || self.halt.is_some() {
            return;
        }
        // Counts are summed on top of the runs with the same point key sent before.
        let points: Vec<(i64, i64)> = runs.iter().map(|planned| (planned.timestamp, planned.point_key)).collect();
        let sent_before = match self.ledger.sent_counts(&points) {
            Ok(counts) => counts,
            Err(error) => return self.abandon(runs, &error),
        };
        let mut before = FastMap::with_capacity_and_hasher(points.len(), Default::default());
        for (_, point_key) in points {
            let count = sent_before.get(&point_key).copied().unwrap_or(0)
                + self.inflight_counts.get(&point_key).copied().unwrap_or(0);
            if count > 0 {
                before.insert(point_key, count);
            }
        }
        // --at-most-once: marked before the request, so a crash loses the runs instead of
        // resending them.
        if self.config.at_most_once && !self.config.dry_run {
            if let Err(error) = self.mark(&runs, now_ms) {
                return self.abandon(runs, &error);
            }
        }
        for planned in &runs {
            *self.inflight_counts.entry(planned.point_key).or_default() += 1;
        }
        let number = self.next_request;
        self.next_request += 1;
        let runs = Arc::new(runs);
        self.inflight_runs.insert(number, InFlight { runs: runs.clone() });
        let job = Job {
            number,
            runs,
            before,
            spec: self.spec.clone(),
            compression: self.config.compression,
            policy: self.config.retry.clone(),
            client: self.client.clone(),
            signals: self.signals.clone(),
            log_detail: self.config.log_detail,
        };
        self.inflight.spawn(job.run());
    }

    /// Stage 6: a request finished (or its task failed).
    fn complete(&mut self, done: Result<Delivery, tokio::task::JoinError>) {
        match done {
            Ok(delivery) => self.complete_delivery(delivery),
            // A request task panicked or was aborted: its runs are found by elimination in
            // `drain_within_grace`/`finish`; nothing here is marked.
            Err(error) => tracing::error!(error = %error, "request task ended abnormally"),
        }
    }

    fn complete_delivery(&mut self, delivery: Delivery) {
        let Some(flight) = self.inflight_runs.remove(&delivery.number) else { return };
        // Runs that waited for a request to land may go now (first in line).
        if !self.deferred.is_empty() {
            let deferred = std::mem::take(&mut self.deferred);
            self.buffer.splice(0..0, deferred);
        }
        for planned in flight.runs.iter() {
            if let Some(count) = self.inflight_counts.get_mut(&planned.point_key) {
                *count -= 1;
                if *count == 0 {
                    self.inflight_counts.remove(&planned.point_key);
                }
            }
        }
        // The task has ended, so this is the last reference.
        let runs = Arc::try_unwrap(flight.runs).unwrap_or_else(|shared| (*shared).clone());
        let (error, status) = match delivery.result {
            Err(Failure::TooLarge) => {
                if self.config.at_most_once && !self.config.dry_run {
                    self.unmark(&runs);
                }
                return self.split_or_give_up(runs, "too large for one request");
            }
            Err(Failure::Http(error)) => (Some(error), 0),
            Ok(status) => (None, status),
        };
        self.summary.requests += 1;
        self.summary.retries += u64::from(delivery.attempts.saturating_sub(1));
        self.log.block(&delivery.log);
        let keys: Vec<&str> = runs.iter().map(|planned| planned.run.key()).collect();
        let status_text = match &error {
            Some(error) => error.status().map_or_else(|| "error".to_owned(), |status| status.to_string()),
            None if self.config.dry_run => "dry-run".to_owned(),
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
                self.delivered(runs);
            }
            Some(error) => self.undelivered(runs, &error, delivery.cancelled),
        }
    }

    /// Marks the runs of a confirmed request (in a dry run: in the dry run's own record).
    fn delivered(&mut self, runs: Vec<Planned>) {
        self.consecutive_failures = 0;
        if !self.config.at_most_once || self.config.dry_run {
            if let Err(error) = self.mark(&runs, Utc::now().timestamp_millis()) {
                // Datadog has the points; the next invocation resends them, identical.
                self.summary.failed += runs.len() as u64;
                return self.ledger_failed(&error);
            }
        }
        let count = runs.len() as u64;
        if self.config.dry_run {
            self.summary.would_send += count;
        } else {
            self.summary.sent += count;
        }
        for planned in &runs {
            self.pending_keys.remove(planned.run.key());
        }
    }

    fn mark(&mut self, runs: &[Planned], now_ms: i64) -> Result<(), LedgerError> {
        let sent: Vec<SentRun<'_>> = runs
            .iter()
            .map(|planned| SentRun {
                run_key: planned.run.key(),
                point_key: planned.point_key,
                completed_at: planned.timestamp,
            })
            .collect();
        self.ledger.mark_sent(&sent, now_ms)
    }

    fn undelivered(&mut self, runs: Vec<Planned>, error: &DatadogError, cancelled: bool) {
        // 400 and 413: the request itself is at fault. Halve it until the culprits stand alone:
        // they become dead letters (400) and every other run is sent.
        if !cancelled && matches!(error.status(), Some(400 | 413)) {
            if self.config.at_most_once {
                self.unmark(&runs);
            }
            return self.split_or_give_up(runs, &error.to_string());
        }
        tracing::error!(error = %error, runs = runs.len(), "request failed; its runs stay unmarked");
        self.summary.failed += runs.len() as u64;
        self.let_go(&runs);
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
    fn let_go(&mut self, runs: &[Planned]) {
        for planned in runs {
            self.pending_keys.remove(planned.run.key());
        }
        if self.config.at_most_once && !self.config.dry_run {
            self.unmark(runs);
        }
    }

    fn unmark(&mut self, runs: &[Planned]) {
        let keys: Vec<&str> = runs.iter().map(|planned| planned.run.key()).collect();
        if let Err(error) = self.ledger.unmark(&keys) {
            tracing::error!(error = %crate::error_chain(&error), "could not unmark runs whose request failed (--at-most-once): they are lost");
        }
    }

    fn split_or_give_up(&mut self, runs: Vec<Planned>, reason: &str) {
        match metrics::split_in_two(runs) {
            Ok((first, second)) => {
                self.split_queue.push_front(second);
                self.split_queue.push_front(first);
            }
            Err(runs) => {
                // One run (or runs summed into one point) that Datadog will never take.
                let rows: Vec<(&str, i64)> =
                    runs.iter().map(|planned| (planned.run.key(), planned.timestamp)).collect();
                let result = if self.config.dry_run {
                    Ok(())
                } else {
                    self.ledger.record_dead(&rows, reason, Utc::now().timestamp_millis())
                };
                for planned in &runs {
                    self.log.skip("dead_letter", planned.run.key(), Some(&format!("reason={reason}")));
                    self.pending_keys.remove(planned.run.key());
                }
                tracing::error!(runs = runs.len(), reason, "runs rejected by Datadog recorded as dead letters");
                self.summary.dead_letters += runs.len() as u64;
                if let Err(error) = result {
                    self.ledger_failed(&error);
                }
            }
        }
    }

    /// The runs of a request that could not start (ledger failure while preparing it).
    fn abandon(&mut self, runs: Vec<Planned>, error: &LedgerError) {
        self.summary.failed += runs.len() as u64;
        self.let_go(&runs);
        self.ledger_failed(error);
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
                Ok(Some(done)) => self.complete(done),
                Ok(None) => break,
                Err(_) => {
                    self.inflight.abort_all();
                    while self.inflight.join_next().await.is_some() {}
                    break;
                }
            }
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

    fn finish(mut self) -> Summary {
        // Runs planned or in flight but never confirmed (halted) are not sent.
        let abandoned: Vec<Planned> = self
            .inflight_runs
            .drain()
            .flat_map(|(_, flight)| Arc::try_unwrap(flight.runs).unwrap_or_else(|shared| (*shared).clone()))
            .chain(self.split_queue.drain(..).flatten())
            .chain(self.deferred.drain(..))
            .chain(self.buffer.drain(..))
            .collect();
        self.summary.failed += abandoned.len() as u64;
        self.let_go(&abandoned);
        let summary = &mut self.summary;
        summary.exit_code = match &self.halt {
            Some(Halt::Signal(code)) => *code,
            Some(Halt::Auth(_)) => exit_code::AUTH,
            Some(Halt::Ledger(_)) => exit_code::LEDGER,
            Some(Halt::Input(_)) => exit_code::INPUT,
            Some(Halt::Breaker(_)) => exit_code::PARTIAL,
            None if summary.failed > 0 => exit_code::PARTIAL,
            None if summary.invalid > 0 || summary.dead_letters > 0 || !summary.errors.is_empty() => exit_code::INPUT,
            None => exit_code::OK,
        };
        summary.stopped = self.halt.map(|halt| match halt {
            Halt::Auth(message) | Halt::Ledger(message) | Halt::Input(message) | Halt::Breaker(message) => message,
            Halt::Signal(code) => format!("signal (exit code {code})"),
        });
        self.summary
    }
}

impl Summary {
    /// The closing line on stderr.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if self.dry_run {
            parts.push(format!("dry run: would send {} run(s) in {} request(s)", self.would_send, self.requests));
        } else {
            parts.push(format!("sent {} run(s) in {} request(s)", self.sent, self.requests));
        }
        if self.retries > 0 {
            parts.push(format!("{} retries", self.retries));
        }
        let skipped: Vec<String> = [
            (self.already_sent, "already sent"),
            (self.not_completed, "not completed"),
            (self.duplicates, "duplicate"),
            (self.too_old, "too old"),
            (self.too_old_before, "too old before"),
            (self.dead_before, "dead letter before"),
        ]
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, what)| format!("{count} {what}"))
        .collect();
        if !skipped.is_empty() {
            parts.push(format!("skipped {}", skipped.join(", ")));
        }
        if self.invalid > 0 {
            parts.push(format!("{} invalid record(s)", self.invalid));
        }
        if self.dead_letters > 0 {
            parts.push(format!(
                "{} run(s) rejected by Datadog, recorded as dead letters (workflow-metrics ledger dead)",
                self.dead_letters
            ));
        }
        if self.failed > 0 {
            parts.push(format!("{} run(s) NOT sent (left for the next invocation)", self.failed));
        }
        let mut line = parts.join("; ");
        if let Some(stopped) = &self.stopped {
            line.push_str(&format!("; stopped: {stopped}"));
        }
        for error in self.errors.iter().take(3) {
            line.push_str(&format!("; error: {error}"));
        }
        if self.too_old > 0 {
            line.push_str(&format!(
                "; {} run(s) completed longer ago than --max-age were recorded, not sent (Datadog drops points older than 1 hour): \
                 rerun with --historical (accounts with historical ingestion) or --stamp-now (stamp them with the send time) to send them",
                self.too_old
            ));
        }
        if let Some(log) = &self.log_file {
            line.push_str(&format!(" [log: {log}]"));
        }
        line
    }
}
