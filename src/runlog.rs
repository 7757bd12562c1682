//! The run log: one file per invocation, `log/YYYY-MM-DDTHH-mm-ss-sssZ.log` (UTC start time), in a
//! stable line format documented in the README. A product artifact, not tracing output.
//!
//! Every line is `<word> <fields>`; fields are `name=value`, values never contain spaces except
//! in the last field of a line (`error=`, `reason=`), which runs to the end of the line.
//! The API key is never given to this module, so it cannot be written here.
//!
//! A write error (a full disk) does not stop the sending: the ledger is what counts. The first
//! error is kept, later writes are skipped, and `finish` reports it (exit code 1).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::metrics::Series;

/// The format version written on the first line.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RunLogError {
    #[error("cannot create the run log in {dir}")]
    Create {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the run log {path} is incomplete: writing failed")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub struct RunLog {
    path: PathBuf,
    out: BufWriter<File>,
    error: Option<io::Error>,
    line: String,
}

/// What the header says.
pub struct Header<'a> {
    pub dry_run: bool,
    pub started: DateTime<Utc>,
    pub inputs: &'a [String],
    pub ledger: &'a str,
    pub endpoint: &'a str,
    pub options: &'a str,
}

impl RunLog {
    /// Creates `dir` if needed and a new log file named after `started`.
    ///
    /// # Errors
    /// The folder or the file cannot be created.
    pub fn create(dir: &Path, started: DateTime<Utc>) -> Result<RunLog, RunLogError> {
        let create_error = |source| RunLogError::Create { dir: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(create_error)?;
        let stem = started.format("%Y-%m-%dT%H-%M-%S-%3fZ").to_string();
        // Two invocations in the same millisecond: the second gets a numbered name.
        for attempt in 0..100 {
            let name = if attempt == 0 { format!("{stem}.log") } else { format!("{stem}.{attempt}.log") };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(RunLog {
                        path,
                        out: BufWriter::with_capacity(256 * 1024, file),
                        error: None,
                        line: String::new(),
                    })
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(create_error(error)),
            }
        }
        Err(create_error(io::Error::new(io::ErrorKind::AlreadyExists, "too many run logs in one millisecond")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&mut self, header: &Header<'_>) {
        self.write_line(|line| {
            let _ = writeln!(line, "workflow-metrics run log, format {FORMAT_VERSION}");
            let _ = writeln!(line, "mode: {}", if header.dry_run { "DRY RUN" } else { "LIVE" });
            let _ = writeln!(line, "version: {}", env!("CARGO_PKG_VERSION"));
            let _ = writeln!(line, "started: {}", iso_millis(header.started));
            let _ = writeln!(line, "inputs: {}", header.inputs.join(", "));
            let _ = writeln!(line, "ledger: {}", header.ledger);
            let _ = writeln!(line, "endpoint: {}", header.endpoint);
            let _ = write!(line, "options: {}", header.options);
        });
    }

    /// `skip <reason> <run key> [detail]`.
    pub fn skip(&mut self, reason: &str, key: &str, detail: Option<&str>) {
        self.write_line(|line| {
            let _ = write!(line, "skip {reason} {key}");
            if let Some(detail) = detail {
                let _ = write!(line, " {detail}");
            }
        });
    }

    /// `invalid <origin> reason=<text>`.
    pub fn invalid(&mut self, origin: &str, reason: &str) {
        self.write_line(|line| {
            let _ = write!(line, "invalid {} reason={reason}", origin.replace(' ', "_"));
        });
    }

    /// `input <name> error=<text>` for an input that could not be read to its end.
    pub fn input_error(&mut self, input: &str, error: &str) {
        self.write_line(|line| {
            let _ = write!(line, "input {} error={error}", input.replace(' ', "_"));
        });
    }

    /// Lines formatted elsewhere (by [`format_send`], [`format_points`] and [`format_series`], in
    /// request tasks).
    pub fn block(&mut self, text: &str) {
        if self.error.is_some() || text.is_empty() {
            return;
        }
        if let Err(error) = self.out.write_all(text.as_bytes()) {
            self.error = Some(error);
        }
    }

    /// `request <n> runs=<n> raw_bytes=<n> compressed_bytes=<n> status=<s> attempts=<n> keys=<k,...> [error=<text>]`.
    pub fn request(&mut self, request: &RequestLine<'_>) {
        self.write_line(|line| {
            let _ = write!(
                line,
                "request {} runs={} raw_bytes={} compressed_bytes={} status={} attempts={} keys={}",
                request.number,
                request.keys.len(),
                request.raw_bytes,
                request.compressed_bytes,
                request.status,
                request.attempts,
                request.keys.join(",")
            );
            if let Some(error) = request.error {
                let _ = write!(line, " error={}", error.replace('\n', " "));
            }
        });
    }

    /// A free line (`summary: ...`, `note: ...`).
    pub fn note(&mut self, text: &str) {
        self.write_line(|line| line.push_str(text));
    }

    /// Flushes the file.
    ///
    /// # Errors
    /// Any write failed along the way, or the final flush.
    pub fn finish(mut self) -> Result<PathBuf, RunLogError> {
        if self.error.is_none() {
            // Flushed, not fsynced: the ledger is the durable record; an fsync of a backfill's
            // gigabyte of log cost seconds at the end of every large run.
            if let Err(error) = self.out.flush() {
                self.error = Some(error);
            }
        }
        match self.error.take() {
            None => Ok(self.path),
            Some(source) => Err(RunLogError::Write { path: self.path, source }),
        }
    }

    fn write_line(&mut self, fill: impl FnOnce(&mut String)) {
        if self.error.is_some() {
            return;
        }
        self.line.clear();
        fill(&mut self.line);
        self.line.push('\n');
        if let Err(error) = self.out.write_all(self.line.as_bytes()) {
            self.error = Some(error);
        }
    }
}

/// `send <run key> timestamp=<epoch> [stamped=now]`, with its newline.
pub fn format_send(out: &mut String, key: &str, timestamp: i64, stamped: bool) {
    let _ = write!(out, "send {key} timestamp={timestamp}");
    if stamped {
        out.push_str(" stamped=now");
    }
    out.push('\n');
}

/// `series request=<n> metric=<m> type=<t> unit=<u|-> points=<epoch>/<iso>=<value>,... tags=<t,...>`,
/// with its newline.
pub fn format_series(out: &mut String, request: u64, series: &Series) {
    let _ = write!(
        out,
        "series request={request} metric={} type={} unit={} points=",
        series.metric,
        series.kind.name(),
        series.unit.unwrap_or("-")
    );
    for (index, (timestamp, value)) in series.points.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let _ = write!(out, "{timestamp}/");
        match DateTime::from_timestamp(*timestamp, 0) {
            Some(time) => {
                let _ = write!(out, "{}", time.format("%Y-%m-%dT%H:%M:%SZ"));
            }
            None => out.push('-'),
        }
        let _ = write!(out, "={value}");
    }
    end_with_tags(out, &series.tags);
}

/// The compact form: one line per tag set, carrying all its series,
/// `points request=<n> <metric>=<epoch>=<value>,... ... tags=<t,...>`, with its newline. Metric
/// names are given without `strip` (`<prefix>.workflow_run.`), which the header's options name.
/// `series` must share one tag set (as [`crate::metrics::SeriesSpec::series`] lays them out).
pub fn format_points(out: &mut String, request: u64, series: &[Series], strip: &str) {
    let Some(first) = series.first() else { return };
    let _ = write!(out, "points request={request}");
    for one in series {
        out.push(' ');
        out.push_str(one.metric.strip_prefix(strip).unwrap_or(&one.metric));
        for (index, (timestamp, value)) in one.points.iter().enumerate() {
            out.push(if index == 0 { '=' } else { ',' });
            let _ = write!(out, "{timestamp}={value}");
        }
    }
    end_with_tags(out, &first.tags);
}

/// ` tags=<t,...>` and the newline.
fn end_with_tags(out: &mut String, tags: &[String]) {
    out.push_str(" tags=");
    for (index, tag) in tags.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(tag);
    }
    out.push('\n');
}

/// Calls `each` with every stretch of consecutive series that share one tag set.
pub fn by_tag_set<'s>(series: &'s [Series], mut each: impl FnMut(&'s [Series])) {
    let mut start = 0;
    for index in 1..=series.len() {
        if index == series.len() || !std::sync::Arc::ptr_eq(&series[index].tags, &series[start].tags) {
            each(&series[start..index]);
            start = index;
        }
    }
}

/// One request as the log records it.
pub struct RequestLine<'a> {
    pub number: u64,
    pub keys: &'a [&'a str],
    pub raw_bytes: usize,
    pub compressed_bytes: usize,
    /// The HTTP status, `dry-run`, or `error` for a transport failure.
    pub status: &'a str,
    pub attempts: u32,
    pub error: Option<&'a str>,
}

/// `2026-11-22T19:40:14.123Z`.
pub fn iso_millis(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}
