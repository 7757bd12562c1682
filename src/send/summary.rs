//! What one `send` did: counted as it goes, printed as the closing line on stderr, or as JSON
//! with `--output json`.

use serde::Serialize;

/// What one `send` did; printed as the closing line, or as JSON with `--output json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    /// A dry run's table for a person (`preview.rs`); not in the JSON.
    #[serde(skip)]
    pub preview: Option<String>,
    /// Records read from the inputs (runs and values that were not runs).
    pub records: u64,
    /// Jobs and steps among the items sent (or that a dry run would send).
    pub jobs: u64,
    pub steps: u64,
    /// Items (runs, jobs, steps) Datadog confirmed (live) ...
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
    /// Jobs read while `--jobs` was not given.
    pub not_requested: u64,
    pub duplicates: u64,
    /// Items whose points another live invocation sharing the ledger (PostgreSQL) held longer
    /// than `--claim-wait`: left to it, unsettled (no cursor moves past them).
    pub claimed_elsewhere: u64,
    /// Completed longer ago than --max-age, recorded by this invocation.
    pub too_old: u64,
    /// Recorded as too old by an earlier invocation.
    pub too_old_before: u64,
    /// Dead letters from earlier invocations, skipped until requeued.
    pub dead_before: u64,
    /// Records that are not valid runs (skipped, reported).
    pub invalid: u64,
    /// Requests made to GitHub's API (`--github`), those answered `304` (free of quota), and
    /// the quota left with its reset time, as GitHub said last.
    pub github_requests: u64,
    pub github_not_modified: u64,
    pub github_quota_remaining: Option<u64>,
    pub github_quota_reset: Option<String>,
    /// Remote sources (GitHub repositories) that could not be fetched to the end: what they did
    /// not yield is fetched by the next invocation.
    pub unavailable: u64,
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

/// `VmHWM` of `/proc/self/status`: the peak resident set size so far.
pub(super) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Summary {
    /// The closing line on stderr.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        let (verb, count) = if self.dry_run { ("dry run: would send", self.would_send) } else { ("sent", self.sent) };
        if self.jobs + self.steps == 0 {
            parts.push(format!("{verb} {count} run(s) in {} request(s)", self.requests));
        } else {
            let runs = count.saturating_sub(self.jobs + self.steps);
            parts.push(format!(
                "{verb} {count} item(s) ({runs} run(s), {} job(s), {} step(s)) in {} request(s)",
                self.jobs, self.steps, self.requests
            ));
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
            (self.not_requested, "job(s) not asked for (--jobs)"),
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
        if self.claimed_elsewhere > 0 {
            parts.push(format!(
                "{} item(s) left to another invocation that holds their points (claimed in the shared ledger)",
                self.claimed_elsewhere
            ));
        }
        if self.github_requests > 0 {
            let mut github =
                format!("GitHub: {} request(s), {} unchanged (304)", self.github_requests, self.github_not_modified);
            if let (Some(remaining), Some(reset)) = (self.github_quota_remaining, &self.github_quota_reset) {
                github.push_str(&format!(", quota {remaining} left until {reset}"));
            }
            parts.push(github);
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
