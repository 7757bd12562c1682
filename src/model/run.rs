//! One workflow run: its raw fields as read (`RawRun`, lenient [`Scalar`]s), and their validation
//! into a [`Run`]. Pure: no I/O, no clock.
//!
//! Decisions written down once (the README's metrics table repeats them):
//! - run key: `owner/repo:run_id:attempt`, owner and repo lowercased (GitHub names are
//!   case-insensitive); it identifies one attempt of one run of one repository.
//! - fallbacks for old or partial payloads: no `run_attempt` means attempt 1; no `run_started_at`
//!   means the duration is measured from `created_at` (attempt 1 only: a re-run's `created_at` is
//!   the first attempt's, so a re-run without its start has no duration) and no queued duration
//!   is sent; the workflow
//!   name falls back from `workflowName`/`workflow.name` to `name`, then the file name of `path`,
//!   then `unknown`; a missing event is `unknown`; a missing branch or workflow id drops that tag.
//! - the point timestamp is the completion time (`updated_at`), so a resent run yields identical
//!   points.

use chrono::DateTime;

use super::{Item, Scalar, Validated};

/// The repository a record names, as far as the record tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepoRef {
    /// `owner/name`, from `full_name` or the `github.repository` string.
    pub full_name: Option<String>,
    pub owner: Option<String>,
    pub name: Option<String>,
    /// The repository's default branch, where the record tells it (event payloads; with
    /// `--github`, the repository asked once a pass).
    pub default_branch: Option<String>,
}

/// A GitHub user or bot as a record names it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Person {
    pub login: Option<String>,
    /// `User`, `Bot`, `Organization`.
    pub kind: Option<String>,
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
    /// Who triggered it: the event payload's `sender`, else the run's `triggering_actor`, else
    /// its `actor` (login, type).
    pub sender: Option<Person>,
    pub triggering_actor: Option<Person>,
    pub actor: Option<Person>,
    /// The number of the first of its `pull_requests`.
    pub pull_request: Option<u64>,
}

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
    /// `run_started_at` (the latest attempt's start), unix milliseconds: where its jobs' and
    /// steps' start times are measured from.
    pub started_ms: Option<i64>,
    /// Whether its branch is the repository's default branch, when the record tells the default.
    pub on_default_branch: Option<bool>,
    /// Who triggered it and its pull request, when the record tells them (tags on request).
    pub extras: Option<Box<RunExtras>>,
}

/// What only `--tag-fields` asks for; boxed, and only where the record has any of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunExtras {
    pub sender: Option<String>,
    pub sender_type: Option<String>,
    pub pull_request: Option<u64>,
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

/// The gh fields a run needs, named in the message for rows that lack `databaseId`.
pub const GH_JSON_FIELDS: &str =
    "databaseId,attempt,conclusion,createdAt,event,headBranch,name,startedAt,status,updatedAt,url,workflowDatabaseId,workflowName";

/// Validates one raw record. `default_repo` is `--repo owner/name`, used when the record names
/// no repository.
pub fn validate_run(raw: &RawRun, default_repo: Option<&(String, String)>) -> Validated {
    match validate_inner(raw, default_repo) {
        Ok(validated) => validated,
        Err(Problem::Invalid(reason)) => Validated::Invalid { origin: raw.origin.clone(), reason },
        Err(Problem::Fatal(reason)) => Validated::Fatal { origin: raw.origin.clone(), reason },
    }
}

pub(super) enum Problem {
    Invalid(String),
    Fatal(String),
}

pub(super) fn invalid(reason: impl Into<String>) -> Problem {
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

    let status = optional_string(raw.status.as_ref(), "status")?;
    let conclusion = optional_string(raw.conclusion.as_ref(), "conclusion")?;
    let completed = match (&status, &conclusion) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(status), Some(_)) => status == "completed",
    };
    let Some(conclusion) = conclusion.filter(|_| completed) else {
        let status = status.unwrap_or_else(|| "no conclusion".to_owned());
        return Ok(Validated::NotCompleted { key, status });
    };

    let completed_ms = time(raw.updated_at.as_ref(), "updated_at")?
        .ok_or_else(|| invalid("a completed run without a completion time (updated_at)"))?;
    let created_ms = time(raw.created_at.as_ref(), "created_at")?;
    let started_ms = time(raw.run_started_at.as_ref(), "run_started_at")?;
    // `created_at` is the first attempt's creation: a re-run measured from it would span every
    // attempt (gh rows of re-runs lack `startedAt`), so a re-run without its start has no duration.
    let duration_from = started_ms.or(created_ms.filter(|_| attempt == 1));
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
    Ok(Validated::Completed(Item::Run(Run {
        text,
        ends,
        has_branch: branch.is_some(),
        run_id,
        attempt,
        workflow_id,
        completed_at: completed_ms.div_euclid(1000),
        duration_seconds,
        queued_seconds,
        started_ms,
        on_default_branch: on_default_branch(raw.repository.as_ref(), branch.as_deref()),
        extras: extras(raw),
    })))
}

fn extras(raw: &RawRun) -> Option<Box<RunExtras>> {
    let person =
        [&raw.sender, &raw.triggering_actor, &raw.actor].into_iter().flatten().find(|person| person.login.is_some());
    let extras = RunExtras {
        sender: person.and_then(|person| person.login.clone()),
        sender_type: person.and_then(|person| person.kind.clone()),
        pull_request: raw.pull_request,
    };
    (extras != RunExtras::default()).then(|| Box::new(extras))
}

/// Whether `branch` is the default branch of `repository`, when both are known.
pub(super) fn on_default_branch(repository: Option<&RepoRef>, branch: Option<&str>) -> Option<bool> {
    let default = repository?.default_branch.as_deref()?;
    Some(branch? == default)
}

/// The ledger key of one attempt of one run: `owner/repo:run_id:attempt`.
pub fn run_key(owner: &str, repo: &str, run_id: u64, attempt: u32) -> String {
    format!("{}/{}:{run_id}:{attempt}", owner.to_lowercase(), repo.to_lowercase())
}

pub(super) fn millis_to_seconds(ms: i64) -> f64 {
    // Durations are whole milliseconds; the f64 holds them exactly for any realistic span.
    ms as f64 / 1000.0
}

pub(super) fn positive_integer(value: &Scalar) -> Option<u64> {
    match value {
        Scalar::UInt(n) if *n > 0 => Some(*n),
        Scalar::Int(n) if *n > 0 => u64::try_from(*n).ok(),
        _ => None,
    }
}

pub(super) fn describe(value: &Scalar) -> String {
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
pub(super) fn optional_string(value: Option<&Scalar>, field: &str) -> Result<Option<String>, Problem> {
    match value {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(text)) if text.is_empty() => Ok(None),
        Some(Scalar::Str(text)) => Ok(Some(text.clone())),
        Some(other) => Err(invalid(format!("{field}: expected a string, found {}", describe(other)))),
    }
}

pub(super) fn non_empty(value: Option<&Scalar>) -> Option<String> {
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
pub(super) fn time(value: Option<&Scalar>, field: &str) -> Result<Option<i64>, Problem> {
    let Some(text) = optional_string(value, field)? else { return Ok(None) };
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

pub(super) fn repo_from_ref(repo: &RepoRef) -> Option<(String, String)> {
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
pub(super) fn repo_from_url(url: &str) -> Option<(String, String)> {
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

#[cfg(test)]
pub(crate) mod testing {
    //! Raw runs for the unit tests of this module and of `metrics`.
    use super::*;

    pub(crate) fn raw(fields: &[(&str, Scalar)]) -> RawRun {
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

    pub(crate) fn s(text: &str) -> Scalar {
        Scalar::Str(text.into())
    }

    pub(crate) fn completed() -> Vec<(&'static str, Scalar)> {
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

    pub(crate) fn with(
        mut fields: Vec<(&'static str, Scalar)>,
        name: &'static str,
        value: Scalar,
    ) -> Vec<(&'static str, Scalar)> {
        fields.retain(|(field, _)| *field != name);
        fields.push((name, value));
        fields
    }

    pub(crate) fn without(mut fields: Vec<(&'static str, Scalar)>, name: &str) -> Vec<(&'static str, Scalar)> {
        fields.retain(|(field, _)| *field != name);
        fields
    }

    /// The run `fields` validate into; panics if they do not.
    pub(crate) fn completed_run(fields: &[(&str, Scalar)]) -> Run {
        match validate_run(&raw(fields), None) {
            Validated::Completed(Item::Run(run)) => run,
            other => panic!("not a completed run: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn check(fields: &[(&str, Scalar)], expected: &str) {
        let actual = match validate_run(&raw(fields), None) {
            Validated::Completed(Item::Run(run)) => {
                format!(
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
                )
            }
            Validated::Completed(other) => format!("not a run: {other:?}"),
            Validated::NotCompleted { key, status } => format!("not completed {key} {status}"),
            Validated::Invalid { reason, .. } => format!("invalid: {reason}"),
            Validated::Fatal { reason, .. } => format!("fatal: {reason}"),
        };
        assert_eq!(actual, expected);
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
    fn the_default_branch_is_told_when_the_repository_says_it() {
        let mut raw = raw(&completed());
        assert_eq!(validate_run_completed(&raw).on_default_branch, None);
        raw.repository.as_mut().unwrap().default_branch = Some("main".into());
        assert_eq!(validate_run_completed(&raw).on_default_branch, Some(true));
        raw.head_branch = Some(s("feature/x"));
        assert_eq!(validate_run_completed(&raw).on_default_branch, Some(false));
        raw.head_branch = None;
        assert_eq!(validate_run_completed(&raw).on_default_branch, None);
    }

    fn validate_run_completed(raw: &RawRun) -> Run {
        match validate_run(raw, None) {
            Validated::Completed(Item::Run(run)) => run,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rerun_without_its_start_has_no_duration() {
        let fields = with(without(completed(), "started"), "attempt", Scalar::UInt(3));
        check(
            &fields,
            "octo-org/repo:42:3 success wf=CI id=Some(7) ev=push br=Some(\"main\") at=1714557900 dur=None q=None",
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
        let Validated::Fatal { reason, .. } = validate_run(&row, None) else { panic!("not fatal") };
        assert!(reason.contains("--json databaseId,attempt"), "{reason}");

        let mut row = raw(&completed());
        row.gh_shape = true;
        row.repository = None;
        let Validated::Fatal { reason, .. } = validate_run(&row, None) else { panic!("not fatal") };
        assert!(reason.contains("--repo"), "{reason}");
        row.url = Some(s("https://github.com/Cli/CLI/actions/runs/42"));
        let Validated::Completed(run) = validate_run(&row, None) else { panic!() };
        assert_eq!(run.key(), "cli/cli:42:1");
        row.url = None;
        let default = ("me".to_owned(), "mine".to_owned());
        let Validated::Completed(run) = validate_run(&row, Some(&default)) else { panic!() };
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
}
