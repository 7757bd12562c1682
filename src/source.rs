//! Reads workflow-run JSON inputs into raw records, streaming.
//!
//! This module owns file and stdin reading and the JSON shape detection. It never holds a whole
//! input in memory: every top-level value, array element and `workflow_runs` element is handed to
//! a sink as soon as it has been read, so a 1 GB `gh api --paginate` dump costs one run of memory.
//! It knows nothing of metrics, the ledger or HTTP.
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
//! the file, it makes that one record invalid later, in `metrics`. Only broken JSON syntax stops
//! the reading of a file.

use std::fmt;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Where the records come from: a file or standard input (`-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    pub fn from_arg(arg: &str) -> Input {
        if arg == "-" {
            Input::Stdin
        } else {
            Input::File(PathBuf::from(arg))
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Stdin => f.write_str("<stdin>"),
            Input::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The shapes named in every "not a recognised shape" message.
pub const ACCEPTED_SHAPES: &str = "a REST runs list body ({\"total_count\",\"workflow_runs\"}, \
    also back to back or in an array as gh api --paginate [--slurp] prints them), a run object, \
    an array or NDJSON of run objects, a workflow_run event payload, a github context dump, \
    or gh run list/view --json rows";

/// A JSON value read without insisting on its type, so that a wrong type is reported per record.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    /// An object or array where a scalar was expected; the value itself is skipped.
    Composite(&'static str),
}

impl Scalar {
    /// A short description of the JSON type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::UInt(_) => "an integer",
            Scalar::Float(_) => "a non-integer or too large number",
            Scalar::Str(_) => "a string",
            Scalar::Composite(kind) => kind,
        }
    }
}

/// The repository a record names, as far as the record tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepoRef {
    /// `owner/name`, from `full_name` or the `github.repository` string.
    pub full_name: Option<String>,
    pub owner: Option<String>,
    pub name: Option<String>,
}

/// The fields of one workflow run as read, REST (snake_case) and gh (camelCase) names merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawRun {
    /// Where the record stands: file and position, for messages.
    pub origin: String,
    /// True when the record used gh's camelCase names (`""` and year 0001 mean missing).
    pub gh_shape: bool,
    pub id: Option<Scalar>,
    pub attempt: Option<Scalar>,
    /// `name` (REST: the workflow's name; gh: the run's name).
    pub name: Option<Scalar>,
    /// gh's `workflowName`, or the event payload's `workflow.name`.
    pub workflow_name: Option<Scalar>,
    pub workflow_id: Option<Scalar>,
    pub path: Option<Scalar>,
    pub status: Option<Scalar>,
    pub conclusion: Option<Scalar>,
    pub event: Option<Scalar>,
    pub head_branch: Option<Scalar>,
    pub created_at: Option<Scalar>,
    pub run_started_at: Option<Scalar>,
    pub updated_at: Option<Scalar>,
    /// REST: the API URL; gh: the web URL.
    pub url: Option<Scalar>,
    pub html_url: Option<Scalar>,
    pub repository: Option<RepoRef>,
}

/// One item read from an input: a run, or a value that could not be taken as one.
#[derive(Debug)]
pub enum Record {
    Run(Box<RawRun>),
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
        Input::File(path) => {
            let file = open_file(input, path)?;
            read_from(input, Counted { inner: file, bytes_read }, sink)
        }
    }
}

/// The size of an input, if it is a file.
pub fn input_size(input: &Input) -> Option<u64> {
    match input {
        Input::Stdin => None,
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

struct Context<'a, 'b> {
    label: &'a str,
    sink: &'b mut dyn FnMut(Record) -> SinkResult,
    records: u64,
    stopped: &'b mut bool,
}

impl Context<'_, '_> {
    fn emit<E: de::Error>(&mut self, record: Record) -> Result<(), E> {
        self.records += 1;
        (self.sink)(record).map_err(|Stop| {
            *self.stopped = true;
            E::custom("stopped by the consumer")
        })
    }
}

/// Where a value stands in its input; rendered only for messages.
#[derive(Clone, Copy)]
enum Position<'p> {
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
    fn origin(&self, position: &Position<'_>) -> String {
        format!("{} {}", self.label, position)
    }
}

/// A top-level value or an array element: an object (classified), or an array of such values.
struct ValueSeed<'c, 'a, 'b, 'p> {
    context: &'c mut Context<'a, 'b>,
    position: Position<'p>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            let position = Position::Element { parent: &self.position, index };
            if seq.next_element_seed(ValueSeed { context: self.context, position })?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let object = ObjectSeed { context: self.context, position: self.position }.visit_map(map)?;
        match classify(object, &self.context.origin(&self.position)) {
            Some(record) => self.context.emit(record),
            None => Ok(()),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_an_object("null")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.not_an_object("a boolean")
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.not_an_object("a number")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.not_an_object("a number")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.not_an_object("a number")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.not_an_object("a string")
    }
}

impl ValueSeed<'_, '_, '_, '_> {
    fn not_an_object<E: de::Error>(self, kind: &str) -> Result<(), E> {
        let origin = self.context.origin(&self.position);
        let reason = format!("found {kind}; expected {ACCEPTED_SHAPES}");
        self.context.emit(Record::Unrecognised { origin, reason })
    }
}

/// Everything an object may carry, whichever shape it turns out to be.
#[derive(Default)]
struct Object {
    run: RawRun,
    /// `workflow_runs` was present: its elements have been emitted already.
    had_workflow_runs: bool,
    /// `workflow_run` (event payload).
    workflow_run: Option<Box<Object>>,
    /// `event` as an object (github context dump).
    event_object: Option<Box<Object>>,
    /// `workflow` (event payload: object with `name`; github context: a string).
    workflow_name: Option<Scalar>,
    /// Any camelCase-only key of a gh row was seen.
    camel_keys: bool,
}

/// Keys we read; everything else is skipped without being allocated.
enum Key {
    Id,
    DatabaseId,
    RunAttempt,
    Attempt,
    Name,
    WorkflowName,
    WorkflowId,
    WorkflowDatabaseId,
    Path,
    Status,
    Conclusion,
    Event,
    HeadBranch,
    HeadBranchCamel,
    CreatedAt,
    CreatedAtCamel,
    RunStartedAt,
    StartedAt,
    UpdatedAt,
    UpdatedAtCamel,
    Url,
    HtmlUrl,
    Repository,
    WorkflowRuns,
    WorkflowRun,
    Workflow,
    OtherCamel,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "id" => Key::Id,
                    "databaseId" => Key::DatabaseId,
                    "run_attempt" => Key::RunAttempt,
                    "attempt" => Key::Attempt,
                    "name" => Key::Name,
                    "workflowName" => Key::WorkflowName,
                    "workflow_id" => Key::WorkflowId,
                    "workflowDatabaseId" => Key::WorkflowDatabaseId,
                    "path" => Key::Path,
                    "status" => Key::Status,
                    "conclusion" => Key::Conclusion,
                    "event" => Key::Event,
                    "head_branch" => Key::HeadBranch,
                    "headBranch" => Key::HeadBranchCamel,
                    "created_at" => Key::CreatedAt,
                    "createdAt" => Key::CreatedAtCamel,
                    "run_started_at" => Key::RunStartedAt,
                    "startedAt" => Key::StartedAt,
                    "updated_at" => Key::UpdatedAt,
                    "updatedAt" => Key::UpdatedAtCamel,
                    "url" => Key::Url,
                    "html_url" => Key::HtmlUrl,
                    "repository" => Key::Repository,
                    "workflow_runs" => Key::WorkflowRuns,
                    "workflow_run" => Key::WorkflowRun,
                    "workflow" => Key::Workflow,
                    "displayTitle" | "headSha" | "number" => Key::OtherCamel,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

struct ObjectSeed<'c, 'a, 'b, 'p> {
    context: &'c mut Context<'a, 'b>,
    position: Position<'p>,
}

impl ObjectSeed<'_, '_, '_, '_> {
    fn visit_map<'de, A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
        let mut object = Object::default();
        // Duplicate keys: the last one wins, as in most JSON readers.
        while let Some(key) = map.next_key::<Key>()? {
            let run = &mut object.run;
            match key {
                Key::Id => run.id = Some(map.next_value()?),
                Key::DatabaseId => {
                    object.camel_keys = true;
                    run.id = Some(map.next_value()?);
                }
                Key::RunAttempt => run.attempt = Some(map.next_value()?),
                Key::Attempt => {
                    object.camel_keys = true;
                    run.attempt = Some(map.next_value()?);
                }
                Key::Name => run.name = Some(map.next_value()?),
                Key::WorkflowName => {
                    object.camel_keys = true;
                    run.workflow_name = Some(map.next_value()?);
                }
                Key::WorkflowId => run.workflow_id = Some(map.next_value()?),
                Key::WorkflowDatabaseId => {
                    object.camel_keys = true;
                    run.workflow_id = Some(map.next_value()?);
                }
                Key::Path => run.path = Some(map.next_value()?),
                Key::Status => run.status = Some(map.next_value()?),
                Key::Conclusion => run.conclusion = Some(map.next_value()?),
                Key::HeadBranch => run.head_branch = Some(map.next_value()?),
                Key::HeadBranchCamel => {
                    object.camel_keys = true;
                    run.head_branch = Some(map.next_value()?);
                }
                Key::CreatedAt => run.created_at = Some(map.next_value()?),
                Key::CreatedAtCamel => {
                    object.camel_keys = true;
                    run.created_at = Some(map.next_value()?);
                }
                Key::RunStartedAt => run.run_started_at = Some(map.next_value()?),
                Key::StartedAt => {
                    object.camel_keys = true;
                    run.run_started_at = Some(map.next_value()?);
                }
                Key::UpdatedAt => run.updated_at = Some(map.next_value()?),
                Key::UpdatedAtCamel => {
                    object.camel_keys = true;
                    run.updated_at = Some(map.next_value()?);
                }
                Key::Url => run.url = Some(map.next_value()?),
                Key::HtmlUrl => run.html_url = Some(map.next_value()?),
                Key::Repository => run.repository = map.next_value::<RepoField>()?.0,
                Key::Workflow => object.workflow_name = map.next_value::<WorkflowField>()?.0,
                Key::Event => match map.next_value_seed(EventSeed {
                    context: self.context,
                    position: Position::Field { parent: &self.position, name: "event" },
                })? {
                    EventField::Name(value) => run.event = Some(value),
                    EventField::Object(nested) => object.event_object = Some(nested),
                },
                Key::WorkflowRun => {
                    let position = Position::Field { parent: &self.position, name: "workflow_run" };
                    let nested = map.next_value_seed(NestedObjectSeed { context: self.context, position })?;
                    object.workflow_run = nested.map(Box::new);
                }
                Key::WorkflowRuns => {
                    object.had_workflow_runs = true;
                    let position = Position::Field { parent: &self.position, name: "workflow_runs" };
                    map.next_value_seed(RunListSeed { context: self.context, position })?;
                }
                Key::OtherCamel => {
                    object.camel_keys = true;
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        object.run.gh_shape = object.camel_keys;
        Ok(object)
    }
}

/// Decides what an object was, once all of it has been read; `None` for a list body, whose
/// runs went out one by one while it was read.
fn classify(object: Object, origin: &str) -> Option<Record> {
    let Object { mut run, had_workflow_runs, workflow_run, event_object, mut workflow_name, camel_keys: _ } = object;
    // A github context dump: the event payload sits under "event", the repository is a string.
    let (payload, outer_repository) = match (workflow_run, event_object) {
        (Some(nested), _) => (Some((nested, workflow_name.take())), run.repository.take()),
        (None, Some(event)) => {
            let mut event = *event;
            match event.workflow_run.take() {
                Some(nested) => {
                    (Some((nested, event.workflow_name.take())), event.run.repository.or(run.repository.take()))
                }
                None => (None, None),
            }
        }
        (None, None) => (None, None),
    };
    if let Some((nested, payload_workflow_name)) = payload {
        let mut inner = nested.run;
        inner.origin = format!("{origin}.workflow_run");
        if inner.workflow_name.is_none() {
            inner.workflow_name = payload_workflow_name;
        }
        merge_repository(&mut inner.repository, outer_repository);
        return Some(Record::Run(Box::new(inner)));
    }
    if had_workflow_runs {
        return None;
    }
    if run.id.is_some() || run.gh_shape {
        run.origin = origin.to_owned();
        if run.workflow_name.is_none() {
            run.workflow_name = workflow_name;
        }
        return Some(Record::Run(Box::new(run)));
    }
    Some(Record::Unrecognised {
        origin: origin.to_owned(),
        reason: format!(
            "not a recognised shape (no \"id\", \"databaseId\", \"workflow_runs\" or \"workflow_run\"); expected {ACCEPTED_SHAPES}"
        ),
    })
}

fn merge_repository(inner: &mut Option<RepoRef>, outer: Option<RepoRef>) {
    let Some(outer) = outer else { return };
    match inner {
        None => *inner = Some(outer),
        Some(inner) => {
            if inner.full_name.is_none() && (inner.owner.is_none() || inner.name.is_none()) {
                *inner = outer;
            }
        }
    }
}

/// The `workflow_runs` array of a list body: each element is emitted as it is read.
struct RunListSeed<'c, 'a, 'b, 'p> {
    context: &'c mut Context<'a, 'b>,
    position: Position<'p>,
}

impl<'de> DeserializeSeed<'de> for RunListSeed<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RunListSeed<'_, '_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of workflow runs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            let position = Position::Element { parent: &self.position, index };
            if seq.next_element_seed(ValueSeed { context: self.context, position })?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An object in a field (`workflow_run`); anything else there is skipped.
struct NestedObjectSeed<'c, 'a, 'b, 'p> {
    context: &'c mut Context<'a, 'b>,
    position: Position<'p>,
}

impl<'de> DeserializeSeed<'de> for NestedObjectSeed<'_, '_, '_, '_> {
    type Value = Option<Object>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Object>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NestedObjectSeed<'_, '_, '_, '_> {
    type Value = Option<Object>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<Object>, A::Error> {
        ObjectSeed { context: self.context, position: self.position }.visit_map(map).map(Some)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Object>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<Object>, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<Object>, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<Object>, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<Object>, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<Object>, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<Object>, E> {
        Ok(None)
    }
}

enum EventField {
    Name(Scalar),
    Object(Box<Object>),
}

/// `event`: the run's trigger name, or (github context dump) the event payload object.
struct EventSeed<'c, 'a, 'b, 'p> {
    context: &'c mut Context<'a, 'b>,
    position: Position<'p>,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_, '_, '_, '_> {
    type Value = EventField;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<EventField, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_, '_, '_, '_> {
    type Value = EventField;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event name or an event payload")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EventField, A::Error> {
        ObjectSeed { context: self.context, position: self.position }
            .visit_map(map)
            .map(|object| EventField::Object(Box::new(object)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<EventField, A::Error> {
        ScalarVisitor.visit_seq(seq).map(EventField::Name)
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<EventField, E> {
        Ok(EventField::Name(Scalar::Str(value.to_owned())))
    }
    fn visit_string<E: de::Error>(self, value: String) -> Result<EventField, E> {
        Ok(EventField::Name(Scalar::Str(value)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<EventField, E> {
        Ok(EventField::Name(Scalar::Null))
    }
    fn visit_bool<E: de::Error>(self, value: bool) -> Result<EventField, E> {
        Ok(EventField::Name(Scalar::Bool(value)))
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<EventField, E> {
        Ok(EventField::Name(Scalar::Int(value)))
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<EventField, E> {
        Ok(EventField::Name(Scalar::UInt(value)))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<EventField, E> {
        Ok(EventField::Name(Scalar::Float(value)))
    }
}

struct ScalarVisitor;

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(value))
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(value))
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Scalar, E> {
        Ok(Scalar::UInt(value))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(value))
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(value.to_owned()))
    }
    fn visit_string<E: de::Error>(self, value: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(value))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Composite("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Composite("an object"))
    }
}

/// `repository`: an object (`full_name`, `name`, `owner.login`) or an `owner/name` string.
struct RepoField(Option<RepoRef>);

impl<'de> de::Deserialize<'de> for RepoField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RepoField, D::Error> {
        struct RepoVisitor;
        impl<'de> Visitor<'de> for RepoVisitor {
            type Value = RepoField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a repository object or name")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<RepoField, E> {
                Ok(RepoField(Some(RepoRef { full_name: Some(value.to_owned()), ..RepoRef::default() })))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RepoField, A::Error> {
                let mut repo = RepoRef::default();
                while let Some(key) = map.next_key::<RepoKey>()? {
                    match key {
                        RepoKey::FullName => repo.full_name = map.next_value::<Scalar>()?.into_string(),
                        RepoKey::Name => repo.name = map.next_value::<Scalar>()?.into_string(),
                        RepoKey::Owner => repo.owner = map.next_value::<OwnerField>()?.0,
                        RepoKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(RepoField(Some(repo)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RepoField, A::Error> {
                ScalarVisitor.visit_seq(seq).map(|_| RepoField(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RepoField, E> {
                Ok(RepoField(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RepoField, E> {
                Ok(RepoField(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RepoField, E> {
                Ok(RepoField(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RepoField, E> {
                Ok(RepoField(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RepoField, E> {
                Ok(RepoField(None))
            }
        }
        deserializer.deserialize_any(RepoVisitor)
    }
}

enum RepoKey {
    FullName,
    Name,
    Owner,
    Other,
}

impl<'de> de::Deserialize<'de> for RepoKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RepoKey, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RepoKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<RepoKey, E> {
                Ok(match key {
                    "full_name" => RepoKey::FullName,
                    "name" => RepoKey::Name,
                    "owner" => RepoKey::Owner,
                    _ => RepoKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(V)
    }
}

/// `owner`: an object with `login`; anything else counts as absent.
struct OwnerField(Option<String>);

impl<'de> de::Deserialize<'de> for OwnerField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<OwnerField, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OwnerField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an owner object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OwnerField, A::Error> {
                let mut login = None;
                while let Some(key) = map.next_key::<Scalar>()? {
                    if key == Scalar::Str("login".to_owned()) {
                        login = map.next_value::<Scalar>()?.into_string();
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(OwnerField(login))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<OwnerField, A::Error> {
                ScalarVisitor.visit_seq(seq).map(|_| OwnerField(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<OwnerField, E> {
                Ok(OwnerField(None))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<OwnerField, E> {
                Ok(OwnerField(Some(value.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<OwnerField, E> {
                Ok(OwnerField(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<OwnerField, E> {
                Ok(OwnerField(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<OwnerField, E> {
                Ok(OwnerField(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<OwnerField, E> {
                Ok(OwnerField(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `workflow`: the event payload's workflow object (its `name`), or the context's string.
struct WorkflowField(Option<Scalar>);

impl<'de> de::Deserialize<'de> for WorkflowField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<WorkflowField, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WorkflowField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a workflow object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WorkflowField, A::Error> {
                let mut name = None;
                while let Some(key) = map.next_key::<RepoKey>()? {
                    if matches!(key, RepoKey::Name) {
                        name = Some(map.next_value::<Scalar>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(WorkflowField(name))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<WorkflowField, A::Error> {
                ScalarVisitor.visit_seq(seq).map(|_| WorkflowField(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<WorkflowField, E> {
                Ok(WorkflowField(None))
            }
            // The github context's `workflow` is the workflow's name (or its path): not used,
            // since the event payload inside names the workflow properly.
            fn visit_str<E: de::Error>(self, _: &str) -> Result<WorkflowField, E> {
                Ok(WorkflowField(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<WorkflowField, E> {
                Ok(WorkflowField(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<WorkflowField, E> {
                Ok(WorkflowField(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<WorkflowField, E> {
                Ok(WorkflowField(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<WorkflowField, E> {
                Ok(WorkflowField(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Scalar {
    fn into_string(self) -> Option<String> {
        match self {
            Scalar::Str(value) => Some(value),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
