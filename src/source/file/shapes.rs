//! JSON shape detection: serde seeds that walk any accepted shape and hand each run to the
//! reader's sink as soon as it is read.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Context, Position, Record, ACCEPTED_SHAPES};
use crate::model::{RawJob, RawRun, RawStep, RepoRef, Scalar, ScalarVisitor};

mod fields;

use fields::{LabelsField, PersonField, PullRequestsField, RepoField, StepsField, WorkflowField};

/// A top-level value or an array element: an object (classified), or an array of such values.
pub(super) struct ValueSeed<'c, 'a, 'b, 'p> {
    pub(super) context: &'c mut Context<'a, 'b>,
    pub(super) position: Position<'p>,
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

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        visit_elements(self.context, &self.position, seq)
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
    /// The fields only a job has; `run_id` makes the object a job.
    job: JobFields,
    /// `jobs` was present (a jobs list body): its elements have been emitted already.
    had_jobs: bool,
    /// `workflow_job` (webhook payload).
    workflow_job: Option<Box<Object>>,
}

/// What a job object has beside the fields it shares with a run.
#[derive(Default)]
struct JobFields {
    run_id: Option<Scalar>,
    started_at: Option<Scalar>,
    completed_at: Option<Scalar>,
    labels: Option<Vec<String>>,
    runner_group_name: Option<Scalar>,
    run_url: Option<Scalar>,
    steps: Vec<RawStep>,
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
    RunId,
    StartedAtSnake,
    CompletedAt,
    Labels,
    RunnerGroupName,
    RunUrl,
    Steps,
    Jobs,
    WorkflowJob,
    WorkflowNameSnake,
    /// gh's run `number`, or a step's number.
    Number,
    /// gh's `completedAt` (jobs and steps).
    CompletedAtCamel,
    Actor,
    TriggeringActor,
    Sender,
    PullRequests,
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
                    "completedAt" => Key::CompletedAtCamel,
                    "actor" => Key::Actor,
                    "triggering_actor" => Key::TriggeringActor,
                    "sender" => Key::Sender,
                    "pull_requests" => Key::PullRequests,
                    "updated_at" => Key::UpdatedAt,
                    "updatedAt" => Key::UpdatedAtCamel,
                    "url" => Key::Url,
                    "html_url" => Key::HtmlUrl,
                    "repository" => Key::Repository,
                    "workflow_runs" => Key::WorkflowRuns,
                    "workflow_run" => Key::WorkflowRun,
                    "workflow" => Key::Workflow,
                    "run_id" => Key::RunId,
                    "started_at" => Key::StartedAtSnake,
                    "completed_at" => Key::CompletedAt,
                    "labels" => Key::Labels,
                    "runner_group_name" => Key::RunnerGroupName,
                    "run_url" => Key::RunUrl,
                    "steps" => Key::Steps,
                    "jobs" => Key::Jobs,
                    "workflow_job" => Key::WorkflowJob,
                    "workflow_name" => Key::WorkflowNameSnake,
                    "displayTitle" | "headSha" => Key::OtherCamel,
                    "number" => Key::Number,
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
                Key::Actor => run.actor = map.next_value::<PersonField>()?.0,
                Key::TriggeringActor => run.triggering_actor = map.next_value::<PersonField>()?.0,
                Key::Sender => run.sender = map.next_value::<PersonField>()?.0,
                Key::PullRequests => run.pull_request = map.next_value::<PullRequestsField>()?.0,
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
                Key::Jobs => {
                    object.had_jobs = true;
                    let position = Position::Field { parent: &self.position, name: "jobs" };
                    map.next_value_seed(JobListSeed { context: self.context, position })?;
                }
                Key::WorkflowJob => {
                    let position = Position::Field { parent: &self.position, name: "workflow_job" };
                    let nested = map.next_value_seed(NestedObjectSeed { context: self.context, position })?;
                    object.workflow_job = nested.map(Box::new);
                }
                Key::RunId => object.job.run_id = Some(map.next_value()?),
                Key::StartedAtSnake => object.job.started_at = Some(map.next_value()?),
                Key::CompletedAt => object.job.completed_at = Some(map.next_value()?),
                Key::CompletedAtCamel => {
                    object.camel_keys = true;
                    object.job.completed_at = Some(map.next_value()?);
                }
                Key::Labels => object.job.labels = map.next_value::<LabelsField>()?.0,
                Key::RunnerGroupName => object.job.runner_group_name = Some(map.next_value()?),
                Key::RunUrl => object.job.run_url = Some(map.next_value()?),
                Key::Steps => object.job.steps = map.next_value::<StepsField>()?.0,
                Key::WorkflowNameSnake => run.workflow_name = Some(map.next_value()?),
                Key::OtherCamel | Key::Number => {
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
    let Object {
        mut run,
        had_workflow_runs,
        workflow_run,
        event_object,
        mut workflow_name,
        camel_keys: _,
        job,
        had_jobs,
        workflow_job,
    } = object;
    // A `workflow_job` webhook payload: the job inside, the repository beside it.
    if let Some(nested) = workflow_job {
        let nested = *nested;
        let mut inner = into_job(nested.run, nested.job, &format!("{origin}.workflow_job"));
        merge_repository(&mut inner.repository, run.repository.take());
        return Some(Record::Job(Box::new(inner)));
    }
    if had_jobs {
        return None;
    }
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
        // The payload's sender is who triggered this run.
        if inner.sender.is_none() {
            inner.sender = run.sender.take();
        }
        return Some(Record::Run(Box::new(inner)));
    }
    if had_workflow_runs {
        return None;
    }
    // A job object: an `id` and a `run_id` (a github context dump has a `run_id`, no `id`).
    if job.run_id.is_some() && run.id.is_some() {
        return Some(Record::Job(Box::new(into_job(run, job, origin))));
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

/// A job from the fields its object shares with a run and its own. gh's `startedAt` was read
/// into the run's start.
fn into_job(run: RawRun, job: JobFields, origin: &str) -> RawJob {
    let started_at = job.started_at.or(run.run_started_at);
    RawJob {
        origin: origin.to_owned(),
        id: run.id,
        run_id: job.run_id,
        attempt: run.attempt,
        name: run.name,
        workflow_name: run.workflow_name,
        head_branch: run.head_branch,
        status: run.status,
        conclusion: run.conclusion,
        created_at: run.created_at,
        started_at,
        completed_at: job.completed_at,
        labels: job.labels,
        runner_group_name: job.runner_group_name,
        url: run.url,
        html_url: run.html_url,
        run_url: job.run_url,
        repository: run.repository,
        steps: job.steps,
    }
}

fn merge_repository(inner: &mut Option<RepoRef>, outer: Option<RepoRef>) {
    let Some(outer) = outer else { return };
    match inner {
        None => *inner = Some(outer),
        Some(inner) => {
            if inner.full_name.is_none() && (inner.owner.is_none() || inner.name.is_none()) {
                *inner = outer;
            } else if inner.default_branch.is_none() {
                // A payload's nested run has a minimal repository; the payload's own says more.
                inner.default_branch = outer.default_branch;
            }
        }
    }
}

/// Each element of an array, as a value of its own (emitted as soon as it is read).
fn visit_elements<'de, A: SeqAccess<'de>>(
    context: &mut Context<'_, '_>,
    parent: &Position<'_>,
    mut seq: A,
) -> Result<(), A::Error> {
    let mut index = 0;
    loop {
        let position = Position::Element { parent, index };
        if seq.next_element_seed(ValueSeed { context: &mut *context, position })?.is_none() {
            return Ok(());
        }
        index += 1;
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
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        visit_elements(self.context, &self.position, seq)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// The `jobs` array of a jobs list body: each element is emitted as a job as it is read.
struct JobListSeed<'c, 'a, 'b, 'p> {
    context: &'c mut Context<'a, 'b>,
    position: Position<'p>,
}

impl<'de> DeserializeSeed<'de> for JobListSeed<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JobListSeed<'_, '_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of jobs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            let position = Position::Element { parent: &self.position, index };
            let origin = self.context.origin(&position);
            let seed = NestedObjectSeed { context: &mut *self.context, position };
            let record = match seq.next_element_seed(seed)? {
                None => return Ok(()),
                // The jobs API's objects have a run_id; `gh run view --json jobs` rows have gh's
                // camelCase names (`databaseId`, `startedAt`, `completedAt`) and a url.
                Some(Some(object)) if object.job.run_id.is_some() || object.camel_keys => {
                    Record::Job(Box::new(into_job(object.run, object.job, &origin)))
                }
                Some(_) => Record::Unrecognised {
                    origin,
                    reason: "not a job (no \"run_id\", nor gh's \"databaseId\")".to_owned(),
                },
            };
            self.context.emit(record)?;
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
