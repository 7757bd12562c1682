//! Reads workflow-run JSON files and standard input into raw records, streaming.
//!
//! This module owns file and stdin reading; `shapes` owns the JSON shape detection. It never
//! holds a whole input in memory: every top-level value, array element and `workflow_runs`
//! element is handed to a sink as soon as it has been read, so a 1 GB `gh api --paginate` dump
//! costs one run of memory. It knows nothing of metrics, the ledger or HTTP.
//!
//! Accepted shapes, detected from the content and freely mixed in one stream of JSON values:
//! - `{"total_count":N,"workflow_runs":[...]}` (REST list body), several back to back
//!   (`gh api --paginate`), or an array of them (`gh api --paginate --slurp`);
//! - a run object, an array of run objects, NDJSON of run objects;
//! - the `workflow_run` event payload (`{"action":..,"workflow_run":{..},"repository":{..}}`), and
//!   a dump of the `github` context where that payload sits under `"event"`;
//! - `gh run list --json` / `gh run view --json` rows (camelCase fields).
//!
//! Field values are read leniently (see [`Scalar`]): a field of the wrong type does not abort
//! the file, it makes that one record invalid later, at validation. Only broken JSON syntax stops
//! the reading of a file.

use std::fmt;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::{self, DeserializeSeed};

use super::{Input, Source, SourceEvent};
use crate::model::{validate_job, validate_run, RawJob, RawRun, Validated};

mod shapes;

use shapes::ValueSeed;

/// The shapes named in every "not a recognised shape" message.
pub const ACCEPTED_SHAPES: &str = "a REST runs list body ({\"total_count\",\"workflow_runs\"}, \
    also back to back or in an array as gh api --paginate [--slurp] prints them), a run object, \
    an array or NDJSON of run objects, a workflow_run event payload, a github context dump, \
    gh run list/view --json rows, or (with --jobs) a jobs list body ({\"total_count\",\"jobs\"}), \
    a job object or a workflow_job event payload";

/// One item read from an input: a run, or a value that could not be taken as one.
#[derive(Debug)]
pub enum Record {
    Run(Box<RawRun>),
    /// A job (a jobs API object, also as a `workflow_job` payload carries it).
    Job(Box<RawJob>),
    /// A value that is not a run (wrong shape); the reading goes on.
    Unrecognised {
        origin: String,
        reason: String,
    },
}

/// What the sink answers: go on reading, or stop (the consumer has gone).
pub type SinkResult = Result<(), Stop>;

/// The consumer asked the reader to stop.
#[derive(Debug)]
pub struct Stop;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {input}: {source}")]
    Open {
        input: Input,
        #[source]
        source: io::Error,
    },
    #[error("{input} is a directory, not a JSON file")]
    Directory { input: Input },
    #[error("{input} is empty: expected {ACCEPTED_SHAPES}")]
    Empty { input: Input },
    #[error("{input}: {message}")]
    Syntax { input: Input, message: String },
    #[error("{input}: reading stopped")]
    Stopped { input: Input },
}

/// Counts of what one input held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub values: u64,
    pub records: u64,
}

/// The inputs named on the command line (or `$GITHUB_EVENT_PATH`), read one after the other.
pub struct FileSource {
    inputs: Vec<Input>,
    /// `--repo owner/name`, for records that name no repository.
    default_repo: Option<(String, String)>,
}

impl FileSource {
    pub fn new(inputs: Vec<Input>, default_repo: Option<(String, String)>) -> FileSource {
        FileSource { inputs, default_repo }
    }
}

impl Source for FileSource {
    fn describe(&self) -> Vec<String> {
        self.inputs.iter().map(ToString::to_string).collect()
    }

    fn size(&self) -> Option<u64> {
        self.inputs.iter().map(input_size).sum()
    }

    fn run(&mut self, bytes_read: &AtomicU64, emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>) {
        for input in &self.inputs {
            let default_repo = self.default_repo.as_ref();
            let mut sink = |record: Record| -> SinkResult {
                emit(SourceEvent::Item(match record {
                    Record::Run(raw) => validate_run(&raw, default_repo),
                    Record::Job(raw) => validate_job(&raw),
                    Record::Unrecognised { origin, reason } => Validated::Invalid { origin, reason },
                }))
            };
            match read_input_counted(input, bytes_read, &mut sink) {
                Ok(_) => {}
                Err(SourceError::Stopped { .. }) => return,
                Err(error) => {
                    let failed = SourceEvent::InputFailed { input: input.to_string(), message: error.to_string() };
                    if emit(failed).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads one input to its end, handing each record to `sink`.
///
/// # Errors
/// The input cannot be opened, is a directory, is empty, or is not valid JSON (the message names
/// the line and column). Records handed over before a syntax error stay handed over.
pub fn read_input(input: &Input, sink: &mut dyn FnMut(Record) -> SinkResult) -> Result<ReadStats, SourceError> {
    read_input_counted(input, &AtomicU64::new(0), sink)
}

/// As [`read_input`], adding the bytes read to `bytes_read` as it goes (for a progress bar).
///
/// # Errors
/// As [`read_input`].
pub fn read_input_counted(
    input: &Input,
    bytes_read: &AtomicU64,
    sink: &mut dyn FnMut(Record) -> SinkResult,
) -> Result<ReadStats, SourceError> {
    match input {
        Input::Stdin => read_from(input, Counted { inner: io::stdin().lock(), bytes_read }, sink),
        // Response bodies are read with `read_from`; there is nothing to open.
        Input::Remote(_) => Err(SourceError::Directory { input: input.clone() }),
        Input::File(path) => {
            let file = open_file(input, path)?;
            read_from(input, Counted { inner: file, bytes_read }, sink)
        }
    }
}

/// The size of an input, if it is a file.
pub fn input_size(input: &Input) -> Option<u64> {
    match input {
        Input::Stdin | Input::Remote(_) => None,
        Input::File(path) => std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len()),
    }
}

struct Counted<'a, R> {
    inner: R,
    bytes_read: &'a AtomicU64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.bytes_read.fetch_add(read as u64, Ordering::Relaxed);
        Ok(read)
    }
}

fn open_file(input: &Input, path: &Path) -> Result<std::fs::File, SourceError> {
    let open_error = |source| SourceError::Open { input: input.clone(), source };
    let metadata = std::fs::metadata(path).map_err(open_error)?;
    if metadata.is_dir() {
        return Err(SourceError::Directory { input: input.clone() });
    }
    std::fs::File::open(path).map_err(open_error)
}

/// Reads JSON values from any reader; the unit tests and the fuzz target call this directly.
///
/// # Errors
/// As [`read_input`].
pub fn read_from<R: Read>(
    input: &Input,
    reader: R,
    sink: &mut dyn FnMut(Record) -> SinkResult,
) -> Result<ReadStats, SourceError> {
    let reader = BufReader::with_capacity(256 * 1024, reader);
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let label = input.to_string();
    let mut stats = ReadStats::default();
    let mut stopped = false;
    loop {
        // `end` only peeks: it tells whether anything but white space is left.
        match deserializer.end() {
            Ok(()) => break,
            Err(error) if error.is_io() => return Err(syntax(input, &error)),
            Err(_) => {}
        }
        stats.values += 1;
        let mut context = Context { label: &label, sink, records: 0, stopped: &mut stopped };
        let seed = ValueSeed { context: &mut context, position: Position::Top(stats.values) };
        let result = seed.deserialize(&mut deserializer);
        stats.records += context.records;
        match result {
            Ok(()) => {}
            Err(_) if stopped => return Err(SourceError::Stopped { input: input.clone() }),
            Err(error) => return Err(syntax(input, &error)),
        }
    }
    if stats.values == 0 {
        return Err(SourceError::Empty { input: input.clone() });
    }
    Ok(stats)
}

fn syntax(input: &Input, error: &serde_json::Error) -> SourceError {
    let message = if error.is_io() {
        format!("read error: {error}")
    } else if error.is_eof() {
        format!("truncated JSON: {error}")
    } else {
        format!("invalid JSON: {error}")
    };
    SourceError::Syntax { input: input.clone(), message }
}

pub(super) struct Context<'a, 'b> {
    label: &'a str,
    sink: &'b mut dyn FnMut(Record) -> SinkResult,
    records: u64,
    stopped: &'b mut bool,
}

impl Context<'_, '_> {
    pub(super) fn emit<E: de::Error>(&mut self, record: Record) -> Result<(), E> {
        self.records += 1;
        (self.sink)(record).map_err(|Stop| {
            *self.stopped = true;
            E::custom("stopped by the consumer")
        })
    }
}

/// Where a value stands in its input; rendered only for messages.
#[derive(Clone, Copy)]
pub(super) enum Position<'p> {
    /// The n-th top-level value (1-based).
    Top(u64),
    /// Element `index` (0-based) of an array at `parent`.
    Element { parent: &'p Position<'p>, index: u64 },
    /// A field of the object at `parent`.
    Field { parent: &'p Position<'p>, name: &'static str },
}

impl fmt::Display for Position<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Top(n) => write!(f, "value {n}"),
            Position::Element { parent, index } => write!(f, "{parent}[{index}]"),
            Position::Field { parent, name } => write!(f, "{parent}.{name}"),
        }
    }
}

impl Context<'_, '_> {
    pub(super) fn origin(&self, position: &Position<'_>) -> String {
        format!("{} {}", self.label, position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scalar;

    fn read(text: &str) -> Result<Vec<Record>, SourceError> {
        let mut records = Vec::new();
        read_from(&Input::File("t.json".into()), text.as_bytes(), &mut |record| {
            records.push(record);
            Ok(())
        })?;
        Ok(records)
    }

    fn ids(text: &str) -> Vec<String> {
        read(text)
            .expect("valid input")
            .into_iter()
            .map(|record| match record {
                Record::Run(run) => format!("{:?}", run.id.expect("an id")),
                Record::Job(job) => format!("job {:?}", job.id.expect("an id")),
                Record::Unrecognised { origin, .. } => format!("bad {origin}"),
            })
            .collect()
    }

    #[test]
    fn reads_list_bodies_back_to_back_and_slurped() {
        let page = r#"{"total_count":2,"workflow_runs":[{"id":1},{"id":2}]}"#;
        assert_eq!(ids(&format!("{page}{page}")), ["UInt(1)", "UInt(2)", "UInt(1)", "UInt(2)"]);
        assert_eq!(ids(&format!("[{page},\n{page}]")).len(), 4);
    }

    #[test]
    fn reads_ndjson_arrays_and_single_objects() {
        assert_eq!(ids("{\"id\":1}\n{\"id\":2}\n"), ["UInt(1)", "UInt(2)"]);
        assert_eq!(ids("[{\"id\":3},{\"databaseId\":4}]"), ["UInt(3)", "UInt(4)"]);
        assert_eq!(ids(" {\"id\":5} "), ["UInt(5)"]);
    }

    #[test]
    fn event_payload_and_github_context_yield_the_inner_run() {
        let payload = r#"{"action":"completed","workflow_run":{"id":7,"name":""},
            "workflow":{"name":"test","id":1},"repository":{"full_name":"o/r"}}"#;
        let records = read(payload).unwrap();
        let Record::Run(run) = &records[0] else { panic!("not a run") };
        assert_eq!(run.id, Some(Scalar::UInt(7)));
        assert_eq!(run.workflow_name, Some(Scalar::Str("test".into())));
        assert_eq!(run.repository.as_ref().unwrap().full_name.as_deref(), Some("o/r"));
        assert_eq!(run.origin, "t.json value 1.workflow_run");

        let context = format!(r#"{{"repository":"o/x","event_name":"workflow_run","event":{payload}}}"#);
        let records = read(&context).unwrap();
        assert_eq!(records.len(), 1);
        let Record::Run(run) = &records[0] else { panic!("not a run") };
        assert_eq!(run.repository.as_ref().unwrap().full_name.as_deref(), Some("o/r"));
    }

    #[test]
    fn wrong_types_are_kept_for_validation_not_fatal() {
        let records = read(r#"[{"id":"x","run_attempt":{"a":[1]}},{"id":1e400}]"#);
        // 1e400 is out of range for f64: serde_json rejects it as invalid JSON.
        assert!(matches!(records, Err(SourceError::Syntax { .. })));
        let records = read(r#"[{"id":"x","run_attempt":{"a":[1]}},{"id":99999999999999999999999}]"#).unwrap();
        let Record::Run(run) = &records[0] else { panic!() };
        assert_eq!(run.id, Some(Scalar::Str("x".into())));
        assert_eq!(run.attempt, Some(Scalar::Composite("an object")));
        let Record::Run(run) = &records[1] else { panic!() };
        assert!(matches!(run.id, Some(Scalar::Float(_))));
    }

    #[test]
    fn unrecognised_values_name_their_position() {
        let records = read(r#"{"total_count":1,"workflow_runs":[{"foo":1},5]} [1]"#).unwrap();
        let origins: Vec<_> = records
            .iter()
            .map(|record| match record {
                Record::Unrecognised { origin, .. } => origin.as_str(),
                Record::Run(_) => "run",
                Record::Job(_) => "job",
            })
            .collect();
        assert_eq!(
            origins,
            ["t.json value 1.workflow_runs[0]", "t.json value 1.workflow_runs[1]", "t.json value 2[0]"]
        );
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let error = read("[{\"id\":1},\n{\"id\":").unwrap_err().to_string();
        assert!(error.starts_with("t.json: truncated JSON"), "{error}");
        assert!(error.contains("line 2"), "{error}");
        let error = read("{\"id\":1} }").unwrap_err().to_string();
        assert!(error.contains("invalid JSON"), "{error}");
        assert!(matches!(read("  \n"), Err(SourceError::Empty { .. })));
    }

    #[test]
    fn gh_rows_are_marked_camel() {
        let records =
            read(r#"[{"attempt":2,"conclusion":"","createdAt":"0001-01-01T00:00:00Z","databaseId":9}]"#).unwrap();
        let Record::Run(run) = &records[0] else { panic!() };
        assert!(run.gh_shape);
        assert_eq!(run.attempt, Some(Scalar::UInt(2)));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(read(&deep), Err(SourceError::Syntax { .. })));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut sink = |_record: Record| Ok(());
        let result = read_from(&Input::Stdin, &b"{\"id\":1,\"name\":\"\xff\"}"[..], &mut sink);
        assert!(matches!(result, Err(SourceError::Syntax { .. })));
    }
}
