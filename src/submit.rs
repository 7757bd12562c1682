//! The `send` pipeline: source → metrics → ledger → datadog → ledger, with the run log written
//! along the way. Reads top to bottom, one comment per stage.
//!
//! Invariants kept here:
//! - a run is marked sent only after the 2xx of the request that carried it;
//! - all series of one run travel in one request, and so do runs whose counts are summed;
//! - input is read on its own thread into bounded chunks, so memory does not grow with the input.

use std::collections::HashSet;
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::SendConfig;
use crate::datadog::{self, Client, DatadogError};
use crate::error::exit_code;
use crate::ledger::{KeyState, Ledger, LedgerError, SentRun};
use crate::metrics::{self, Age, Planned, Validated};
use crate::runlog::{RequestLine, RunLog};
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
    /// Runs in requests that failed: not marked, sent by a later invocation.
    pub failed: u64,
    pub requests: u64,
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
    /// Records that are not valid runs (skipped, reported).
    pub invalid: u64,
    /// Inputs that could not be read to their end, and other errors, one message each.
    pub errors: Vec<String>,
    /// Why the invocation stopped early, if it did.
    pub stopped: Option<String>,
    pub exit_code: i32,
    pub log_file: Option<String>,
    pub elapsed_seconds: f64,
}

/// Why sending stopped before the input ran out.
enum Halt {
    Auth(String),
    Ledger(String),
    Input(String),
}

/// Runs the whole `send`: reads, filters, converts, posts, marks, logs.
///
/// # Errors
/// Only what happens before the pipeline starts (ledger cannot be opened, client cannot be built);
/// later problems are counted in the returned summary.
pub async fn send(config: &SendConfig, log: &mut RunLog) -> Result<Summary, crate::Error> {
    let started = Instant::now();
    // Stage 0: open the ledger (a dry run reads it and writes only to memory or its own record)
    // and the client (none in a dry run).
    let ledger = if config.dry_run {
        Ledger::open_dry_run(&config.ledger, config.dry_run_record.as_deref())?
    } else {
        Ledger::open(&config.ledger)?
    };
    let client = match &config.api_key {
        Some(key) if !config.dry_run => {
            Some(Client::new(&config.endpoint.base_url, key.clone(), config.endpoint.request_timeout)?)
        }
        _ => None,
    };
    let mut pipeline = Pipeline {
        config,
        ledger,
        client,
        log,
        summary: Summary { dry_run: config.dry_run, ..Summary::default() },
        buffer: Vec::new(),
        pending_keys: HashSet::new(),
        halt: None,
        warned: 0,
    };

    // Stage 1: read the inputs on their own thread, in bounded chunks.
    let (sender, mut receiver) = mpsc::channel::<Message>(4);
    let inputs = config.inputs.clone();
    let reader = std::thread::spawn(move || read_all(&inputs, &sender));

    // Stages 2-5 per chunk: validate, filter against the ledger, plan, send full batches.
    while let Some(message) = receiver.recv().await {
        match message {
            Message::Records(records) => pipeline.take(records).await,
            Message::InputFailed(error) => {
                pipeline.log.input_error(&error.input, &error.message);
                tracing::error!(input = %error.input, error = %error.message, "input not read to its end");
                pipeline.summary.errors.push(error.message);
            }
        }
        if pipeline.halt.is_some() {
            break;
        }
    }
    // Dropping the receiver tells the reader thread to stop, if it has not finished.
    drop(receiver);
    let _ = reader.join();

    // Stage 6: send what is left, then close the summary.
    if pipeline.halt.is_none() {
        pipeline.flush().await;
    }
    let mut summary = pipeline.finish();
    summary.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

enum Message {
    Records(Vec<Record>),
    InputFailed(InputError),
}

struct InputError {
    input: String,
    message: String,
}

fn read_all(inputs: &[Input], sender: &mpsc::Sender<Message>) {
    for input in inputs {
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut sink = |record: Record| -> SinkResult {
            chunk.push(record);
            if chunk.len() >= CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                sender.blocking_send(Message::Records(full)).map_err(|_| Stop)?;
            }
            Ok(())
        };
        let result = source::read_input(input, &mut sink);
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

struct Pipeline<'a> {
    config: &'a SendConfig,
    ledger: Ledger,
    client: Option<Client>,
    log: &'a mut RunLog,
    summary: Summary,
    /// Planned runs not yet sent.
    buffer: Vec<Planned>,
    /// Keys in `buffer`: a run read twice is sent once.
    pending_keys: HashSet<String>,
    halt: Option<Halt>,
    warned: u64,
}

impl Pipeline<'_> {
    async fn take(&mut self, records: Vec<Record>) {
        let now_ms = Utc::now().timestamp_millis();
        let now = now_ms.div_euclid(1000);
        // Stage 2: validate each record into a completed run, or count why not.
        let mut completed = Vec::with_capacity(records.len());
        let mut seen_in_chunk = HashSet::new();
        for record in records {
            self.summary.records += 1;
            let raw = match record {
                Record::Run(raw) => raw,
                Record::Unrecognised { origin, reason } => {
                    self.invalid(&origin, &reason);
                    continue;
                }
            };
            match metrics::validate(&raw, self.config.default_repo.as_ref()) {
                Validated::Completed(run) => {
                    if self.pending_keys.contains(&run.key) || !seen_in_chunk.insert(run.key.clone()) {
                        self.summary.duplicates += 1;
                        self.log.skip("duplicate", &run.key, None);
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
        if completed.is_empty() {
            return;
        }

        // Stage 3: one ledger query for the chunk: skip what was sent or recorded before.
        let keys: Vec<&str> = completed.iter().map(|run| run.key.as_str()).collect();
        let states = match self.ledger.states(&keys) {
            Ok(states) => states,
            Err(error) => return self.ledger_failed(&error),
        };
        let max_age = i64::try_from(self.config.max_age.as_secs()).unwrap_or(i64::MAX);
        let mut too_old = Vec::new();
        for (run, state) in completed.into_iter().zip(states) {
            let retry_old = self.config.historical || self.config.stamp_now;
            match state {
                KeyState::Sent => {
                    self.summary.already_sent += 1;
                    self.log.skip("already_sent", &run.key, None);
                    continue;
                }
                KeyState::SkippedTooOld if !retry_old => {
                    self.summary.too_old_before += 1;
                    self.log.skip("too_old_before", &run.key, None);
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
                    self.log.skip("too_old", &run.key, Some(&format!("completed_at={}", run.completed_at)));
                    too_old.push((run.key, run.completed_at));
                    continue;
                }
                Age::Future => {
                    let reason = format!("completed_at {} is more than 10 minutes in the future", run.completed_at);
                    self.invalid(&run.key, &reason);
                    continue;
                }
            };
            self.pending_keys.insert(run.key.clone());
            self.buffer.push(self.config.spec.plan(run, timestamp));
        }
        if !too_old.is_empty() {
            let rows: Vec<(&str, i64)> = too_old.iter().map(|(key, at)| (key.as_str(), *at)).collect();
            if let Err(error) = self.ledger.record_too_old(&rows, now_ms) {
                return self.ledger_failed(&error);
            }
        }

        // Stage 5: send full batches.
        if self.buffer.len() >= self.config.batch_size {
            self.flush().await;
        }
    }

    /// Sends everything in the buffer, in requests of at most `batch_size` runs.
    async fn flush(&mut self) {
        while !self.buffer.is_empty() && self.halt.is_none() {
            let take = self.buffer.len().min(self.config.batch_size);
            let batch: Vec<Planned> = self.buffer.drain(..take).collect();
            self.send_batch(batch).await;
        }
        self.pending_keys.clear();
    }

    /// Builds, sizes, posts and marks one batch, splitting it while it exceeds Datadog's limits.
    async fn send_batch(&mut self, batch: Vec<Planned>) {
        let mut queue = vec![batch];
        while let Some(runs) = queue.pop() {
            if self.halt.is_some() {
                return;
            }
            // Counts are summed on top of the runs with the same point key sent before.
            let point_keys: Vec<i64> = runs.iter().map(|planned| planned.point_key).collect();
            let sent_before = match self.ledger.sent_counts(&point_keys) {
                Ok(counts) => counts,
                Err(error) => return self.ledger_failed(&error),
            };
            let series = self.config.spec.series(&runs, &|point_key| sent_before.get(&point_key).copied().unwrap_or(0));
            let raw = datadog::encode_series(&series);
            let compressed = if raw.len() <= datadog::MAX_RAW_BYTES {
                match self.config.compression.compress(&raw) {
                    Ok(compressed) => Some(compressed),
                    Err(error) => {
                        self.summary.errors.push(format!("compression failed: {error}"));
                        self.summary.failed += runs.len() as u64;
                        continue;
                    }
                }
            } else {
                None
            };
            let Some(compressed) = compressed.filter(|body| body.len() <= datadog::MAX_COMPRESSED_BYTES) else {
                match metrics::split_in_two(runs) {
                    Ok((first, second)) => {
                        queue.push(second);
                        queue.push(first);
                    }
                    Err(runs) => {
                        let message = format!("{} run(s) make a request larger than Datadog accepts", runs.len());
                        self.summary.errors.push(message);
                        self.summary.failed += runs.len() as u64;
                    }
                }
                continue;
            };
            self.post(&runs, &series, raw.len(), compressed).await;
        }
    }

    async fn post(&mut self, runs: &[Planned], series: &[metrics::Series], raw_bytes: usize, body: Vec<u8>) {
        self.summary.requests += 1;
        let number = self.summary.requests;
        for planned in runs {
            self.log.send(&planned.run.key, planned.timestamp, planned.timestamp != planned.run.completed_at);
        }
        for one in series {
            self.log.series(number, one);
        }
        let keys: Vec<&str> = runs.iter().map(|planned| planned.run.key.as_str()).collect();
        let compressed_bytes = body.len();
        let mut line = RequestLine {
            number,
            keys: &keys,
            raw_bytes,
            compressed_bytes,
            status: "dry-run",
            attempts: 0,
            error: None,
        };
        let outcome = match &self.client {
            None => Ok(None),
            Some(client) => client.post_series(body, self.config.compression).await.map(Some),
        };
        let status_text;
        let error_text;
        match outcome {
            Ok(accepted) => {
                if let Some(accepted) = &accepted {
                    status_text = accepted.status.to_string();
                    line.status = &status_text;
                    line.attempts = 1;
                }
                // Marked only now, after the 2xx (or, in a dry run, in the dry run's own record).
                let sent: Vec<SentRun<'_>> = runs
                    .iter()
                    .map(|planned| SentRun {
                        run_key: &planned.run.key,
                        point_key: planned.point_key,
                        completed_at: planned.timestamp,
                    })
                    .collect();
                let marked = self.ledger.mark_sent(&sent, Utc::now().timestamp_millis());
                self.log.request(&line);
                if let Err(error) = marked {
                    // Datadog has the points; the next invocation resends them, identical.
                    self.summary.failed += runs.len() as u64;
                    return self.ledger_failed(&error);
                }
                if self.config.dry_run {
                    self.summary.would_send += runs.len() as u64;
                } else {
                    self.summary.sent += runs.len() as u64;
                }
                self.summary.series += series.len() as u64;
                self.summary.points += series.iter().map(|one| one.points.len() as u64).sum::<u64>();
                self.summary.raw_bytes += raw_bytes as u64;
                self.summary.compressed_bytes += compressed_bytes as u64;
            }
            Err(error) => {
                status_text = error.status().map_or_else(|| "error".to_owned(), |status| status.to_string());
                error_text = error.to_string();
                line.status = &status_text;
                line.attempts = 1;
                line.error = Some(&error_text);
                self.log.request(&line);
                self.summary.failed += runs.len() as u64;
                self.request_failed(&error);
            }
        }
    }

    fn request_failed(&mut self, error: &DatadogError) {
        tracing::error!(error = %error, "request failed; its runs stay unmarked");
        if error.is_auth() {
            self.halt = Some(Halt::Auth(format!("Datadog rejected the API key: {error}")));
        } else {
            self.summary.errors.push(error.to_string());
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
        // Runs planned but never posted (halted) are not sent: count them as failed.
        self.summary.failed += self.buffer.len() as u64;
        let summary = &mut self.summary;
        summary.exit_code = match &self.halt {
            Some(Halt::Auth(_)) => exit_code::AUTH,
            Some(Halt::Ledger(_)) => exit_code::LEDGER,
            Some(Halt::Input(_)) => exit_code::INPUT,
            None if summary.invalid > 0 || !summary.errors.is_empty() && summary.failed == 0 => exit_code::INPUT,
            None if summary.failed > 0 => exit_code::PARTIAL,
            None => exit_code::OK,
        };
        summary.stopped = self.halt.map(|halt| match halt {
            Halt::Auth(message) | Halt::Ledger(message) | Halt::Input(message) => message,
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
        let skipped: Vec<String> = [
            (self.already_sent, "already sent"),
            (self.not_completed, "not completed"),
            (self.duplicates, "duplicate"),
            (self.too_old, "too old"),
            (self.too_old_before, "too old before"),
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
