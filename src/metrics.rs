//! Turns raw records into validated runs, and runs into Datadog series. Pure: no I/O, no clock
//! (the caller passes `now`), no wire types. Most of the unit tests live here.
//!
//! Decisions written down once (the README's metrics table repeats them):
//! - run key: `owner/repo:run_id:attempt`, owner and repo lowercased (GitHub names are
//!   case-insensitive); it identifies one attempt of one run of one repository.
//! - fallbacks for old or partial payloads: no `run_attempt` means attempt 1; no `run_started_at`
//!   means the duration is measured from `created_at` and no queued duration is sent; the workflow
//!   name falls back from `workflowName`/`workflow.name` to `name`, then the file name of `path`,
//!   then `unknown`; a missing event is `unknown`; a missing branch or workflow id drops that tag.
//! - the point timestamp is the completion time (`updated_at`), so a resent run yields identical
//!   points.

use std::sync::Arc;

use chrono::DateTime;

use crate::source::{RawRun, RepoRef, Scalar};

/// One completed attempt of one workflow run, validated.
///
/// Its texts (key, owner, repository, workflow name, event, conclusion, branch) share one
/// allocation: a backfill moves a million of these from the reader thread to the pipeline, which
/// frees them, and one allocation per run instead of seven is less allocator work there and less
/// memory per run in flight.
#[derive(Clone, PartialEq)]
pub struct Run {
    text: Box<str>,
    /// End of each text in `text`, in the order of [`Part`].
    ends: [u32; PARTS],
    has_branch: bool,
    pub run_id: u64,
    pub attempt: u32,
    pub workflow_id: Option<u64>,
    /// Completion time (`updated_at`), unix seconds.
    pub completed_at: i64,
    /// `updated_at - run_started_at` (or `- created_at` when the start is unknown); `None` when
    /// negative.
    pub duration_seconds: Option<f64>,
    /// `run_started_at - created_at`, attempt 1 only, when known and not negative.
    pub queued_seconds: Option<f64>,
}

const PARTS: usize = 7;

#[derive(Clone, Copy)]
enum Part {
    Key,
    Owner,
    Repo,
    WorkflowName,
    Event,
    Conclusion,
    Branch,
}

/// The texts of a run, packed by [`pack`].
struct RunTexts<'a> {
    key: &'a str,
    owner: &'a str,
    repo: &'a str,
    workflow_name: &'a str,
    event: &'a str,
    conclusion: &'a str,
    branch: Option<&'a str>,
}

/// The texts in one buffer, with the end of each.
fn pack(texts: &RunTexts<'_>) -> (Box<str>, [u32; PARTS]) {
    let parts = [
        texts.key,
        texts.owner,
        texts.repo,
        texts.workflow_name,
        texts.event,
        texts.conclusion,
        texts.branch.unwrap_or(""),
    ];
    let mut text = String::with_capacity(parts.iter().map(|part| part.len()).sum());
    let mut ends = [0u32; PARTS];
    for (end, part) in ends.iter_mut().zip(parts) {
        text.push_str(part);
        // Texts come from one JSON record; a run over 4 GiB of text cannot be read.
        *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
    }
    (text.into_boxed_str(), ends)
}

/// Accessors of the texts of a [`Run`].
macro_rules! texts {
    ($($(#[$doc:meta])* $name:ident => $part:ident,)*) => {
        $($(#[$doc])* pub fn $name(&self) -> &str {
            self.part(Part::$part)
        })*
    };
}

impl Run {
    fn part(&self, part: Part) -> &str {
        let index = part as usize;
        let start = if index == 0 { 0 } else { self.ends[index - 1] as usize };
        self.text.get(start..self.ends[index] as usize).unwrap_or_default()
    }

    texts! {
        /// `owner/repo:run_id:attempt`, lowercased: the ledger key.
        key => Key,
        owner => Owner,
        repo => Repo,
        workflow_name => WorkflowName,
        event => Event,
        conclusion => Conclusion,
    }

    pub fn branch(&self) -> Option<&str> {
        self.has_branch.then(|| self.part(Part::Branch))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("key", &self.key())
            .field("owner", &self.owner())
            .field("repo", &self.repo())
            .field("workflow_name", &self.workflow_name())
            .field("workflow_id", &self.workflow_id)
            .field("event", &self.event())
            .field("branch", &self.branch())
            .field("conclusion", &self.conclusion())
            .field("completed_at", &self.completed_at)
            .field("duration_seconds", &self.duration_seconds)
            .field("queued_seconds", &self.queued_seconds)
            .finish()
    }
}

/// What validation makes of one raw record.
#[derive(Clone, Debug, PartialEq)]
pub enum Validated {
    Completed(Box<Run>),
    /// Queued, in progress, waiting...: not sent, not marked, so a later pass sends it.
    NotCompleted {
        key: String,
        status: String,
    },
    /// This record cannot be used; the others can.
    Invalid {
        origin: String,
        reason: String,
    },
    /// The invocation itself is wrong for this input (a gh row without `databaseId`, rows with no
    /// repository and no `--repo`): every record would fail the same way, so reading stops.
    Fatal {
        origin: String,
        reason: String,
    },
}

/// The gh fields a run needs, named in the message for rows that lack `databaseId`.
pub const GH_JSON_FIELDS: &str =
    "databaseId,attempt,conclusion,createdAt,event,headBranch,name,startedAt,status,updatedAt,url,workflowDatabaseId,workflowName";

/// Validates one raw record. `default_repo` is `--repo owner/name`, used when the record names
/// no repository.
pub fn validate(raw: &RawRun, default_repo: Option<&(String, String)>) -> Validated {
    match validate_inner(raw, default_repo) {
        Ok(validated) => validated,
        Err(Problem::Invalid(reason)) => Validated::Invalid { origin: raw.origin.clone(), reason },
        Err(Problem::Fatal(reason)) => Validated::Fatal { origin: raw.origin.clone(), reason },
    }
}

enum Problem {
    Invalid(String),
    Fatal(String),
}

fn invalid(reason: impl Into<String>) -> Problem {
    Problem::Invalid(reason.into())
}

fn validate_inner(raw: &RawRun, default_repo: Option<&(String, String)>) -> Result<Validated, Problem> {
    let id_field = if raw.gh_shape { "databaseId" } else { "id" };
    let run_id = match &raw.id {
        None if raw.gh_shape => {
            return Err(Problem::Fatal(format!(
                "gh run list/view rows have no databaseId, so runs cannot be told apart; \
                 ask gh for it: --json {GH_JSON_FIELDS}"
            )))
        }
        None => return Err(invalid("no \"id\"")),
        Some(value) => positive_integer(value)
            .ok_or_else(|| invalid(format!("{id_field}: expected a positive integer, found {}", describe(value))))?,
    };
    let attempt = match &raw.attempt {
        None | Some(Scalar::Null) => 1,
        Some(value) => match positive_integer(value) {
            Some(n) => u32::try_from(n).map_err(|_| invalid(format!("run attempt {n} is out of range")))?,
            // gh prints a missing number as 0.
            None if raw.gh_shape && matches!(value, Scalar::UInt(0) | Scalar::Int(0)) => 1,
            None => {
                return Err(invalid(format!("run attempt: expected a positive integer, found {}", describe(value))))
            }
        },
    };
    let (owner, repo) = repository(raw, default_repo)?;
    let key = run_key(&owner, &repo, run_id, attempt);

    let status = optional_string(raw, raw.status.as_ref(), "status")?;
    let conclusion = optional_string(raw, raw.conclusion.as_ref(), "conclusion")?;
    let completed = match (&status, &conclusion) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(status), Some(_)) => status == "completed",
    };
    let Some(conclusion) = conclusion.filter(|_| completed) else {
        let status = status.unwrap_or_else(|| "no conclusion".to_owned());
        return Ok(Validated::NotCompleted { key, status });
    };

    let completed_ms = time(raw, raw.updated_at.as_ref(), "updated_at")?
        .ok_or_else(|| invalid("a completed run without a completion time (updated_at)"))?;
    let created_ms = time(raw, raw.created_at.as_ref(), "created_at")?;
    let started_ms = time(raw, raw.run_started_at.as_ref(), "run_started_at")?;
    let duration_from = started_ms.or(created_ms);
    let duration_seconds = duration_from.map(|start| completed_ms - start).filter(|ms| *ms >= 0).map(millis_to_seconds);
    let queued_seconds = match (attempt, created_ms, started_ms) {
        (1, Some(created), Some(started)) if started >= created => Some(millis_to_seconds(started - created)),
        _ => None,
    };

    let workflow_name = [&raw.workflow_name, &raw.name]
        .into_iter()
        .find_map(|field| non_empty(field.as_ref()))
        .or_else(|| non_empty(raw.path.as_ref()).and_then(|path| path_stem(&path)))
        .unwrap_or_else(|| "unknown".to_owned());
    let workflow_id = raw.workflow_id.as_ref().and_then(positive_integer);
    let event = non_empty(raw.event.as_ref()).unwrap_or_else(|| "unknown".to_owned());
    let branch = non_empty(raw.head_branch.as_ref());

    let (text, ends) = pack(&RunTexts {
        key: &key,
        owner: &owner,
        repo: &repo,
        workflow_name: &workflow_name,
        event: &event,
        conclusion: &conclusion,
        branch: branch.as_deref(),
    });
    Ok(Validated::Completed(Box::new(Run {
        text,
        ends,
        has_branch: branch.is_some(),
        run_id,
        attempt,
        workflow_id,
        completed_at: completed_ms.div_euclid(1000),
        duration_seconds,
        queued_seconds,
    })))
}

/// The ledger key of one attempt of one run: `owner/repo:run_id:attempt`.
pub fn run_key(owner: &str, repo: &str, run_id: u64, attempt: u32) -> String {
    format!("{}/{}:{run_id}:{attempt}", owner.to_lowercase(), repo.to_lowercase())
}

fn millis_to_seconds(ms: i64) -> f64 {
    // Durations are whole milliseconds; the f64 holds them exactly for any realistic span.
    ms as f64 / 1000.0
}

fn positive_integer(value: &Scalar) -> Option<u64> {
    match value {
        Scalar::UInt(n) if *n > 0 => Some(*n),
        Scalar::Int(n) if *n > 0 => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn describe(value: &Scalar) -> String {
    match value {
        Scalar::Str(text) => format!("the string {:?}", truncate_chars(text, 40)),
        Scalar::Int(n) => n.to_string(),
        Scalar::UInt(n) => n.to_string(),
        Scalar::Float(n) => format!("{n}"),
        other => other.kind().to_owned(),
    }
}

fn truncate_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

/// A string field that may be absent: null, missing and (gh) `""` are all `None`.
fn optional_string(raw: &RawRun, value: Option<&Scalar>, field: &str) -> Result<Option<String>, Problem> {
    match value {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(text)) if text.is_empty() => Ok(None),
        Some(Scalar::Str(text)) => Ok(Some(text.clone())),
        Some(other) => {
            let _ = raw;
            Err(invalid(format!("{field}: expected a string, found {}", describe(other))))
        }
    }
}

fn non_empty(value: Option<&Scalar>) -> Option<String> {
    match value {
        Some(Scalar::Str(text)) if !text.trim().is_empty() => Some(text.clone()),
        _ => None,
    }
}

fn path_stem(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.strip_suffix(".yml").or_else(|| file.strip_suffix(".yaml")).unwrap_or(file);
    (!stem.is_empty()).then(|| stem.to_owned())
}

/// Go's zero time, which gh prints for a missing time.
const ZERO_TIME_MS: i64 = -62_135_596_800_000;

/// Parses an RFC 3339 time (offsets and fractions allowed) into unix milliseconds; `None` for a
/// missing time (absent, null, `""`, or Go's zero time `0001-01-01T00:00:00Z`).
fn time(raw: &RawRun, value: Option<&Scalar>, field: &str) -> Result<Option<i64>, Problem> {
    let Some(text) = optional_string(raw, value, field)? else { return Ok(None) };
    let parsed = DateTime::parse_from_rfc3339(&text).map_err(|error| {
        invalid(format!("{field}: {:?} is not an RFC 3339 time ({error})", truncate_chars(&text, 40)))
    })?;
    let ms = parsed.timestamp_millis();
    Ok((ms != ZERO_TIME_MS).then_some(ms))
}

fn repository(raw: &RawRun, default_repo: Option<&(String, String)>) -> Result<(String, String), Problem> {
    if let Some(found) = raw.repository.as_ref().and_then(repo_from_ref) {
        return Ok(found);
    }
    for url in [&raw.url, &raw.html_url] {
        if let Some(Scalar::Str(url)) = url {
            if let Some(found) = repo_from_url(url) {
                return Ok(found);
            }
        }
    }
    if let Some((owner, repo)) = default_repo {
        return Ok((owner.clone(), repo.clone()));
    }
    if raw.gh_shape {
        Err(Problem::Fatal(
            "gh rows carry no repository: add url to gh's --json fields, or pass --repo owner/name".to_owned(),
        ))
    } else {
        Err(invalid("no repository (no repository.full_name, no url); pass --repo owner/name"))
    }
}

fn repo_from_ref(repo: &RepoRef) -> Option<(String, String)> {
    if let Some(full_name) = &repo.full_name {
        if let Some(found) = split_full_name(full_name) {
            return Some(found);
        }
    }
    match (&repo.owner, &repo.name) {
        (Some(owner), Some(name)) if !owner.is_empty() && !name.is_empty() => Some((owner.clone(), name.clone())),
        _ => None,
    }
}

/// `owner/name`, both parts non-empty, no further slash.
pub fn split_full_name(full_name: &str) -> Option<(String, String)> {
    let (owner, name) = full_name.split_once('/')?;
    let valid = |part: &str| !part.is_empty() && !part.contains('/') && !part.contains(char::is_whitespace);
    (valid(owner) && valid(name)).then(|| (owner.to_owned(), name.to_owned()))
}

/// The repository in a run URL: `https://api.github.com/repos/{o}/{r}/actions/runs/{id}` or
/// `https://github.com/{o}/{r}/actions/runs/{id}` (any host, so GitHub Enterprise works too).
fn repo_from_url(url: &str) -> Option<(String, String)> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let mut segments = rest.split('/').skip(1).filter(|segment| !segment.is_empty());
    let mut first = segments.next()?;
    if first == "repos" || first == "api" {
        // `/repos/o/r/...` (api.github.com) or `/api/v3/repos/o/r/...` (GitHub Enterprise).
        while first != "repos" {
            first = segments.next()?;
        }
        first = segments.next()?;
    }
    let owner = first;
    let repo = segments.next()?;
    (segments.next()? == "actions").then(|| (owner.to_owned(), repo.to_owned()))
}

/// Datadog metric kinds we send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Count,
    Gauge,
}

impl MetricKind {
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Count => "count",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// One series for the request being built.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub metric: Arc<str>,
    pub kind: MetricKind,
    pub unit: Option<&'static str>,
    /// Shared by the series of one tag set (and with the runs' `Planned`): no copies.
    pub tags: Arc<[String]>,
    /// (unix seconds, value), ascending by time.
    pub points: Vec<(i64, f64)>,
}

/// How runs become series: the prefix and the user's own tags, both validated by `config`.
#[derive(Clone, Debug)]
pub struct SeriesSpec {
    pub prefix: String,
    pub extra_tags: Vec<String>,
}

/// Plans runs with a cache of tag sets: runs of one workflow, branch, event, conclusion and
/// attempt share one `Arc<[String]>`, built and normalised once, and its hash.
pub struct Planner {
    spec: SeriesSpec,
    cache: foldhash::HashMap<String, (Arc<[String]>, TagSetHash)>,
    scratch: String,
}

/// Tag sets kept at most; the cache starts over beyond (a backfill of many repositories).
const TAG_CACHE_LIMIT: usize = 8_192;

impl Planner {
    pub fn new(spec: SeriesSpec) -> Planner {
        Planner { spec, cache: foldhash::HashMap::default(), scratch: String::new() }
    }

    pub fn plan(&mut self, run: Run, timestamp: i64) -> Planned {
        // The cache key: every field the tags are made of, apart.
        let scratch = &mut self.scratch;
        scratch.clear();
        for field in [run.owner(), run.repo(), run.workflow_name(), run.event(), run.conclusion()] {
            scratch.push_str(field);
            scratch.push('\u{1f}');
        }
        match run.branch() {
            Some(branch) => {
                scratch.push('b');
                scratch.push_str(branch);
            }
            None => scratch.push('-'),
        }
        scratch.push('\u{1f}');
        match run.workflow_id {
            Some(id) => scratch.push_str(itoa::Buffer::new().format(id)),
            None => scratch.push('-'),
        }
        scratch.push('\u{1f}');
        scratch.push_str(itoa::Buffer::new().format(run.attempt));
        let (tags, hash) = match self.cache.get(scratch.as_str()) {
            Some((tags, hash)) => (tags.clone(), *hash),
            None => {
                let tags: Arc<[String]> = self.spec.tags(&run).into();
                let hash = TagSetHash::new(&self.spec.prefix, &tags);
                if self.cache.len() >= TAG_CACHE_LIMIT {
                    self.cache.clear();
                }
                self.cache.insert(scratch.clone(), (tags.clone(), hash));
                (tags, hash)
            }
        };
        Planned { run, timestamp, tags, tag_hash: hash.0, point_key: hash.at(timestamp) }
    }
}

/// A run on its way out: the point timestamp chosen (real or stamped), its tags and its point key.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub run: Run,
    pub timestamp: i64,
    pub tags: Arc<[String]>,
    /// FNV-1a of the prefix and tags: equal tag sets have equal hashes (groups runs into series).
    pub tag_hash: u64,
    /// Identity of the run's count points (prefix, tags, timestamp): runs sharing it are summed.
    pub point_key: i64,
}

impl SeriesSpec {
    pub fn plan(&self, run: Run, timestamp: i64) -> Planned {
        let tags: Arc<[String]> = self.tags(&run).into();
        let hash = TagSetHash::new(&self.prefix, &tags);
        Planned { run, timestamp, tags, tag_hash: hash.0, point_key: hash.at(timestamp) }
    }

    fn tags(&self, run: &Run) -> Vec<String> {
        let mut tags = Vec::with_capacity(8 + self.extra_tags.len());
        tags.push(tag("repository_owner", run.owner()));
        tags.push(tag("repository_name", run.repo()));
        tags.push(tag("workflow_name", run.workflow_name()));
        if let Some(id) = run.workflow_id {
            tags.push(format!("workflow_id:{id}"));
        }
        tags.push(tag("event", run.event()));
        if let Some(branch) = run.branch() {
            tags.push(tag("branch", branch));
        }
        tags.push(tag("conclusion", run.conclusion()));
        tags.push(format!("run_attempt:{}", run.attempt));
        tags.extend(self.extra_tags.iter().cloned());
        tags
    }

    /// The series of `runs`, which travel in one request. Count points of runs sharing a point
    /// key are summed, on top of `already_sent(point_key)`: the runs with that key that earlier
    /// requests delivered (Datadog keeps the last value written for a metric, tags and time).
    /// Gauges that collide keep the largest value.
    pub fn series(&self, runs: &[Planned], already_sent: &dyn Fn(i64) -> u32) -> Vec<Series> {
        struct Point {
            timestamp: i64,
            point_key: i64,
            count: u32,
            duration: Option<f64>,
            queued: Option<f64>,
        }
        struct Group<'r> {
            tags: &'r Arc<[String]>,
            conclusion: &'r str,
            points: Vec<Point>,
        }
        let mut index: foldhash::HashMap<TagSetKey<'_>, usize> = foldhash::HashMap::default();
        let mut groups: Vec<Group<'_>> = Vec::new();
        for planned in runs {
            let key = TagSetKey { hash: planned.tag_hash, tags: &planned.tags };
            let slot = *index.entry(key).or_insert_with(|| {
                groups.push(Group { tags: &planned.tags, conclusion: planned.run.conclusion(), points: Vec::new() });
                groups.len() - 1
            });
            let group = &mut groups[slot];
            match group.points.iter_mut().find(|point| point.timestamp == planned.timestamp) {
                Some(point) => {
                    point.count += 1;
                    point.duration = max_option(point.duration, planned.run.duration_seconds);
                    point.queued = max_option(point.queued, planned.run.queued_seconds);
                }
                None => group.points.push(Point {
                    timestamp: planned.timestamp,
                    point_key: planned.point_key,
                    count: 1,
                    duration: planned.run.duration_seconds,
                    queued: planned.run.queued_seconds,
                }),
            }
        }
        // Metric names are built once per call, not once per series.
        let prefix = &self.prefix;
        let total: Arc<str> = format!("{prefix}.workflow_run.total").into();
        let duration: Arc<str> = format!("{prefix}.workflow_run.duration_second").into();
        let queued_name: Arc<str> = format!("{prefix}.workflow_run.queued_duration_second").into();
        let mut by_conclusion: foldhash::HashMap<&str, Arc<str>> = foldhash::HashMap::default();
        let mut series = Vec::with_capacity(groups.len() * 4);
        for mut group in groups {
            group.points.sort_by_key(|point| point.timestamp);
            let counts: Vec<(i64, f64)> = group
                .points
                .iter()
                .map(|point| (point.timestamp, f64::from(already_sent(point.point_key) + point.count)))
                .collect();
            let gauge = |pick: fn(&Point) -> Option<f64>| -> Vec<(i64, f64)> {
                group.points.iter().filter_map(|point| pick(point).map(|value| (point.timestamp, value))).collect()
            };
            let durations = gauge(|point| point.duration);
            let queued = gauge(|point| point.queued);
            let conclusion_metric = by_conclusion
                .entry(group.conclusion)
                .or_insert_with(|| {
                    format!("{prefix}.workflow_run.conclusion.{}_total", metric_segment(group.conclusion)).into()
                })
                .clone();
            let tags = group.tags;
            series.push(Series {
                metric: total.clone(),
                kind: MetricKind::Count,
                unit: None,
                tags: tags.clone(),
                points: counts.clone(),
            });
            series.push(Series {
                metric: conclusion_metric,
                kind: MetricKind::Count,
                unit: None,
                tags: tags.clone(),
                points: counts,
            });
            if !durations.is_empty() {
                series.push(Series {
                    metric: duration.clone(),
                    kind: MetricKind::Gauge,
                    unit: Some("second"),
                    tags: tags.clone(),
                    points: durations,
                });
            }
            if !queued.is_empty() {
                series.push(Series {
                    metric: queued_name.clone(),
                    kind: MetricKind::Gauge,
                    unit: Some("second"),
                    tags: tags.clone(),
                    points: queued,
                });
            }
        }
        series
    }
}

fn max_option(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Splits the runs of a request that came out too large into two halves, never separating runs
/// that share a point key (their counts are summed into one point). `None` when the runs cannot
/// be split (one run, or one point key).
pub fn split_in_two(mut runs: Vec<Planned>) -> Result<(Vec<Planned>, Vec<Planned>), Vec<Planned>> {
    if runs.len() < 2 {
        return Err(runs);
    }
    runs.sort_by_key(|planned| planned.point_key);
    let middle = runs.len() / 2;
    let boundary = (middle..runs.len())
        .find(|&at| runs[at].point_key != runs[at - 1].point_key)
        .or_else(|| (1..middle).rev().find(|&at| runs[at].point_key != runs[at - 1].point_key));
    match boundary {
        Some(at) => {
            let second = runs.split_off(at);
            Ok((runs, second))
        }
        None => Err(runs),
    }
}

/// The longest tag Datadog accepts.
pub const MAX_TAG_LENGTH: usize = 200;

/// A Datadog tag `key:value`, normalised the way Datadog would: lowercase, characters other than
/// letters, digits, `_ - : . /` become `_`, cut to 200 characters. Normalising here keeps the
/// point key equal to the series Datadog stores.
pub fn tag(key: &str, value: &str) -> String {
    let mut tag = String::with_capacity(key.len() + value.len() + 1);
    tag.push_str(key);
    tag.push(':');
    push_normalised(&mut tag, value);
    truncate_tag(tag)
}

/// Normalises a user-supplied `key:value` tag the same way as [`tag`].
pub fn normalise_tag(raw: &str) -> String {
    let mut tag = String::with_capacity(raw.len());
    push_normalised(&mut tag, raw);
    truncate_tag(tag)
}

fn push_normalised(out: &mut String, text: &str) {
    if text.is_ascii() {
        // The usual case, byte by byte: the same result as the general loop below.
        out.extend(text.bytes().map(|byte| {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b':' | b'.' | b'/') {
                char::from(byte.to_ascii_lowercase())
            } else {
                '_'
            }
        }));
        return;
    }
    for character in text.chars() {
        if character.is_alphanumeric() || matches!(character, '_' | '-' | ':' | '.' | '/') {
            out.extend(character.to_lowercase());
        } else {
            out.push('_');
        }
    }
}

fn truncate_tag(mut tag: String) -> String {
    // At most MAX_TAG_LENGTH bytes means at most as many characters.
    if tag.len() <= MAX_TAG_LENGTH {
        return tag;
    }
    if let Some((index, _)) = tag.char_indices().nth(MAX_TAG_LENGTH) {
        tag.truncate(index);
    }
    tag
}

/// A conclusion as part of a metric name: `[a-z0-9_]` only.
fn metric_segment(text: &str) -> String {
    text.chars()
        .map(|character| if character.is_ascii_alphanumeric() { character.to_ascii_lowercase() } else { '_' })
        .collect()
}

/// A tag set in a hash map, by the hash it carries; equal by content (identity first).
struct TagSetKey<'r> {
    hash: u64,
    tags: &'r Arc<[String]>,
}

impl std::hash::Hash for TagSetKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for TagSetKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(self.tags, other.tags) || self.tags == other.tags)
    }
}

impl Eq for TagSetKey<'_> {}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// The FNV-1a state after the prefix and the tags of a point key: the part runs of one tag set
/// share, computed once per tag set.
#[derive(Clone, Copy, Debug)]
struct TagSetHash(u64);

impl TagSetHash {
    fn new(prefix: &str, tags: &[String]) -> TagSetHash {
        let mut hash = TagSetHash(FNV_OFFSET);
        hash.feed(prefix.as_bytes());
        for tag in tags {
            hash.feed(tag.as_bytes());
        }
        hash
    }

    fn feed(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        // A separator that cannot occur in UTF-8 text keeps ("ab","c") apart from ("a","bc").
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(FNV_PRIME);
    }

    /// The point key at `timestamp`.
    fn at(mut self, timestamp: i64) -> i64 {
        self.feed(&timestamp.to_le_bytes());
        i64::from_ne_bytes(self.0.to_ne_bytes())
    }
}

/// A stable 64-bit FNV-1a hash of the prefix, tags and timestamp. Stored in the ledger, so it must
/// never change between versions (std's hasher may).
pub fn point_key(prefix: &str, tags: &[String], timestamp: i64) -> i64 {
    TagSetHash::new(prefix, tags).at(timestamp)
}

/// Where a completed run stands against Datadog's intake window at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Age {
    /// Completed within `max_age`: send with its real timestamp.
    Fresh,
    /// Completed longer ago than `max_age`: Datadog would drop its points.
    TooOld,
    /// Completed more than 10 minutes in the future: the clock of the input or of this machine is
    /// wrong, and Datadog would drop the points.
    Future,
}

/// Datadog drops points more than ten minutes ahead of its clock.
pub const MAX_FUTURE_SECONDS: i64 = 600;

pub fn age(completed_at: i64, now: i64, max_age_seconds: i64) -> Age {
    if completed_at > now + MAX_FUTURE_SECONDS {
        Age::Future
    } else if completed_at < now - max_age_seconds {
        Age::TooOld
    } else {
        Age::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(fields: &[(&str, Scalar)]) -> RawRun {
        let mut raw = RawRun { origin: "test".into(), ..RawRun::default() };
        raw.repository = Some(RepoRef { full_name: Some("Octo-Org/Repo".into()), ..RepoRef::default() });
        for (name, value) in fields {
            let value = Some(value.clone());
            match *name {
                "id" => raw.id = value,
                "attempt" => raw.attempt = value,
                "name" => raw.name = value,
                "workflow_id" => raw.workflow_id = value,
                "status" => raw.status = value,
                "conclusion" => raw.conclusion = value,
                "event" => raw.event = value,
                "branch" => raw.head_branch = value,
                "created" => raw.created_at = value,
                "started" => raw.run_started_at = value,
                "updated" => raw.updated_at = value,
                "path" => raw.path = value,
                other => panic!("unknown field {other}"),
            }
        }
        raw
    }

    fn s(text: &str) -> Scalar {
        Scalar::Str(text.into())
    }

    fn completed() -> Vec<(&'static str, Scalar)> {
        vec![
            ("id", Scalar::UInt(42)),
            ("name", s("CI")),
            ("workflow_id", Scalar::UInt(7)),
            ("status", s("completed")),
            ("conclusion", s("success")),
            ("event", s("push")),
            ("branch", s("main")),
            ("created", s("2024-05-01T10:00:00Z")),
            ("started", s("2024-05-01T10:00:30.500Z")),
            ("updated", s("2024-05-01T12:05:00+02:00")),
        ]
    }

    fn check(fields: &[(&str, Scalar)], expected: &str) {
        let actual = match validate(&raw(fields), None) {
            Validated::Completed(run) => format!(
                "{} {} wf={} id={:?} ev={} br={:?} at={} dur={:?} q={:?}",
                run.key(),
                run.conclusion(),
                run.workflow_name(),
                run.workflow_id,
                run.event(),
                run.branch(),
                run.completed_at,
                run.duration_seconds,
                run.queued_seconds
            ),
            Validated::NotCompleted { key, status } => format!("not completed {key} {status}"),
            Validated::Invalid { reason, .. } => format!("invalid: {reason}"),
            Validated::Fatal { reason, .. } => format!("fatal: {reason}"),
        };
        assert_eq!(actual, expected);
    }

    fn with(mut fields: Vec<(&'static str, Scalar)>, name: &'static str, value: Scalar) -> Vec<(&'static str, Scalar)> {
        fields.retain(|(field, _)| *field != name);
        fields.push((name, value));
        fields
    }

    fn without(mut fields: Vec<(&'static str, Scalar)>, name: &str) -> Vec<(&'static str, Scalar)> {
        fields.retain(|(field, _)| *field != name);
        fields
    }

    #[test]
    fn completed_run_with_offsets_and_milliseconds() {
        check(
            &completed(),
            "octo-org/repo:42:1 success wf=CI id=Some(7) ev=push br=Some(\"main\") at=1714557900 dur=Some(269.5) q=Some(30.5)",
        );
    }

    #[test]
    fn rerun_has_no_queued_duration() {
        check(
            &with(completed(), "attempt", Scalar::UInt(2)),
            "octo-org/repo:42:2 success wf=CI id=Some(7) ev=push br=Some(\"main\") at=1714557900 dur=Some(269.5) q=None",
        );
    }

    #[test]
    fn old_payload_falls_back_to_created_at_and_attempt_one() {
        let fields = without(without(completed(), "started"), "name");
        check(
            &with(fields, "path", s(".github/workflows/build.yaml")),
            "octo-org/repo:42:1 success wf=build id=Some(7) ev=push br=Some(\"main\") at=1714557900 dur=Some(300.0) q=None",
        );
    }

    #[test]
    fn negative_durations_are_dropped_not_sent() {
        let fields = with(completed(), "started", s("2024-05-01T10:06:00Z"));
        let fields = with(fields, "created", s("2024-05-01T10:07:00Z"));
        check(
            &fields,
            "octo-org/repo:42:1 success wf=CI id=Some(7) ev=push br=Some(\"main\") at=1714557900 dur=None q=None",
        );
    }

    #[test]
    fn unfinished_runs_are_not_completed() {
        check(&with(completed(), "status", s("in_progress")), "not completed octo-org/repo:42:1 in_progress");
        check(&with(completed(), "conclusion", Scalar::Null), "not completed octo-org/repo:42:1 completed");
        check(&without(without(completed(), "status"), "conclusion"), "not completed octo-org/repo:42:1 no conclusion");
    }

    #[test]
    fn bad_fields_make_the_record_invalid() {
        check(&with(completed(), "id", s("42")), "invalid: id: expected a positive integer, found the string \"42\"");
        check(
            &with(completed(), "id", Scalar::Float(1e30)),
            "invalid: id: expected a positive integer, found 1000000000000000000000000000000",
        );
        check(
            &with(completed(), "attempt", Scalar::UInt(1 << 40)),
            "invalid: run attempt 1099511627776 is out of range",
        );
        check(
            &with(completed(), "updated", s("yesterday")),
            "invalid: updated_at: \"yesterday\" is not an RFC 3339 time (premature end of input)",
        );
        check(
            &with(completed(), "updated", s("0001-01-01T00:00:00Z")),
            "invalid: a completed run without a completion time (updated_at)",
        );
        check(&with(completed(), "conclusion", Scalar::UInt(1)), "invalid: conclusion: expected a string, found 1");
    }

    #[test]
    fn gh_rows_need_database_id_and_a_repository() {
        let mut row = raw(&without(completed(), "id"));
        row.gh_shape = true;
        let Validated::Fatal { reason, .. } = validate(&row, None) else { panic!("not fatal") };
        assert!(reason.contains("--json databaseId,attempt"), "{reason}");

        let mut row = raw(&completed());
        row.gh_shape = true;
        row.repository = None;
        let Validated::Fatal { reason, .. } = validate(&row, None) else { panic!("not fatal") };
        assert!(reason.contains("--repo"), "{reason}");
        row.url = Some(s("https://github.com/Cli/CLI/actions/runs/42"));
        let Validated::Completed(run) = validate(&row, None) else { panic!() };
        assert_eq!(run.key(), "cli/cli:42:1");
        row.url = None;
        let default = ("me".to_owned(), "mine".to_owned());
        let Validated::Completed(run) = validate(&row, Some(&default)) else { panic!() };
        assert_eq!(run.key(), "me/mine:42:1");
    }

    #[test]
    fn repositories_from_urls() {
        let check_url = |url: &str, expected: Option<(&str, &str)>| {
            let found = repo_from_url(url);
            assert_eq!(found.as_ref().map(|(o, r)| (o.as_str(), r.as_str())), expected, "{url}");
        };
        check_url("https://api.github.com/repos/o/r/actions/runs/1", Some(("o", "r")));
        check_url("https://github.com/o/r/actions/runs/1", Some(("o", "r")));
        check_url("https://ghe.example/api/v3/repos/o/r/actions/runs/1", Some(("o", "r")));
        check_url("https://github.com/o/r", None);
        check_url("nonsense", None);
    }

    #[test]
    fn tags_are_normalised_and_bounded() {
        assert_eq!(tag("branch", "Feature/ÄB c#1"), "branch:feature/äb_c_1");
        let long = tag("branch", &"x".repeat(500));
        assert_eq!(long.chars().count(), MAX_TAG_LENGTH);
        assert_eq!(tag("b", &"é".repeat(300)).chars().count(), MAX_TAG_LENGTH);
        // The ASCII fast path agrees with the general one on every ASCII character.
        let ascii: String = (0u8..128).map(char::from).collect();
        let general: String = ascii
            .chars()
            .flat_map(|c| {
                let keep = c.is_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '/');
                if keep {
                    c.to_lowercase().collect::<Vec<_>>()
                } else {
                    vec!['_']
                }
            })
            .collect();
        assert_eq!(tag("k", &ascii), format!("k:{general}"));
    }

    fn planned(spec: &SeriesSpec, fields: &[(&str, Scalar)]) -> Planned {
        let Validated::Completed(run) = validate(&raw(fields), None) else { panic!() };
        let timestamp = run.completed_at;
        spec.plan(*run, timestamp)
    }

    #[test]
    fn series_for_one_run() {
        let spec = SeriesSpec { prefix: "github.actions".into(), extra_tags: vec!["team:ci".into()] };
        let run = planned(&spec, &completed());
        let series = spec.series(std::slice::from_ref(&run), &|_| 0);
        let names: Vec<_> = series.iter().map(|s| (&*s.metric, s.kind.name(), s.points.clone())).collect();
        assert_eq!(
            names,
            [
                ("github.actions.workflow_run.total", "count", vec![(1714557900, 1.0)]),
                ("github.actions.workflow_run.conclusion.success_total", "count", vec![(1714557900, 1.0)]),
                ("github.actions.workflow_run.duration_second", "gauge", vec![(1714557900, 269.5)]),
                ("github.actions.workflow_run.queued_duration_second", "gauge", vec![(1714557900, 30.5)]),
            ]
        );
        assert_eq!(
            &series[0].tags[..],
            [
                "repository_owner:octo-org",
                "repository_name:repo",
                "workflow_name:ci",
                "workflow_id:7",
                "event:push",
                "branch:main",
                "conclusion:success",
                "run_attempt:1",
                "team:ci"
            ]
        );
    }

    #[test]
    fn colliding_counts_are_summed_on_top_of_what_was_sent() {
        let spec = SeriesSpec { prefix: "p".into(), extra_tags: vec![] };
        let first = planned(&spec, &completed());
        let second = planned(&spec, &with(completed(), "id", Scalar::UInt(43)));
        let other_time = planned(&spec, &with(completed(), "updated", s("2024-05-01T10:06:00Z")));
        assert_eq!(first.point_key, second.point_key);
        assert_ne!(first.point_key, other_time.point_key);
        let key = first.point_key;
        let series = spec.series(&[first, second, other_time], &|point_key| if point_key == key { 5 } else { 0 });
        assert_eq!(series[0].points, [(1714557900, 7.0), (1714557960, 1.0)]);
    }

    #[test]
    fn split_keeps_point_keys_together() {
        let spec = SeriesSpec { prefix: "p".into(), extra_tags: vec![] };
        let same: Vec<_> = (0..3).map(|i| planned(&spec, &with(completed(), "id", Scalar::UInt(100 + i)))).collect();
        assert!(split_in_two(same.clone()).is_err());
        let mut runs = same;
        runs.push(planned(&spec, &with(completed(), "updated", s("2024-05-01T10:06:00Z"))));
        let (a, b) = split_in_two(runs).expect("two point keys");
        assert_eq!(a.len() + b.len(), 4);
        let keys_a: Vec<_> = a.iter().map(|p| p.point_key).collect();
        assert!(b.iter().all(|p| !keys_a.contains(&p.point_key)));
    }

    #[test]
    fn the_planner_cache_gives_the_same_plan() {
        let spec = SeriesSpec { prefix: "p".into(), extra_tags: vec!["x:y".into()] };
        let mut planner = Planner::new(spec.clone());
        for fields in [completed(), with(completed(), "branch", s("dev")), completed()] {
            let Validated::Completed(run) = validate(&raw(&fields), None) else { panic!() };
            let timestamp = run.completed_at;
            assert_eq!(planner.plan((*run).clone(), timestamp), spec.plan(*run, timestamp));
        }
        assert_eq!(planner.cache.len(), 2);
    }

    #[test]
    fn point_key_is_stable_across_versions() {
        // Stored in ledgers: a change here would recount runs. Checked against an independent
        // FNV-1a in Python.
        assert_eq!(
            point_key("github.actions", &["a:b".to_owned()], 1_700_000_000),
            point_key("github.actions", &["a:b".to_owned()], 1_700_000_000)
        );
        assert_eq!(point_key("p", &[], 0), 1_770_209_142_969_546_045);
    }

    #[test]
    fn ages() {
        assert_eq!(age(1000, 1000, 60), Age::Fresh);
        assert_eq!(age(939, 1000, 60), Age::TooOld);
        assert_eq!(age(1601, 1000, 60), Age::Future);
    }
}
