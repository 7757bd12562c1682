//! One job of a workflow run, and its steps: raw fields as read (the jobs API's objects, also
//! inside `workflow_job` webhook payloads), and their validation. Pure: no I/O, no clock.
//!
//! Decisions written down once (the README's metrics table repeats them):
//! - keys: a job is `owner/repo:job:<job_id>` (a re-run gets new job ids, so the id alone tells
//!   attempts apart), a step `owner/repo:job:<job_id>:step:<number>`; neither can be mistaken for
//!   a run key, which has no `job` segment;
//! - a job's points are timestamped at its `completed_at`, a step's at its own `completed_at`, or
//!   its job's when it has none (a skipped step has no times): a resend writes the same points;
//! - durations in seconds: `completed_at - started_at`; the queue time `started_at - created_at`
//!   is left out when `created_at` is missing (older answers and GitHub's own example lack it) or
//!   the difference is negative (re-runs);
//! - `runs_on` is the job's labels, sorted and joined with `,`: the tag queue time is charted by.

use super::run::{
    describe, invalid, millis_to_seconds, non_empty, on_default_branch, optional_string, positive_integer,
    repo_from_ref, repo_from_url, time, Problem,
};
use super::{Item, RepoRef, Scalar, Validated};

/// The fields of one job as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawJob {
    /// Where the record stands: file and position, for messages.
    pub origin: String,
    pub id: Option<Scalar>,
    pub run_id: Option<Scalar>,
    pub attempt: Option<Scalar>,
    pub name: Option<Scalar>,
    pub workflow_name: Option<Scalar>,
    pub head_branch: Option<Scalar>,
    pub status: Option<Scalar>,
    pub conclusion: Option<Scalar>,
    pub created_at: Option<Scalar>,
    pub started_at: Option<Scalar>,
    pub completed_at: Option<Scalar>,
    /// `None` when absent or not an array of strings.
    pub labels: Option<Vec<String>>,
    pub runner_group_name: Option<Scalar>,
    pub url: Option<Scalar>,
    pub html_url: Option<Scalar>,
    pub run_url: Option<Scalar>,
    pub repository: Option<RepoRef>,
    pub steps: Vec<RawStep>,
}

/// The fields of one step as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawStep {
    pub name: Option<Scalar>,
    pub status: Option<Scalar>,
    pub conclusion: Option<Scalar>,
    pub number: Option<Scalar>,
    pub started_at: Option<Scalar>,
    pub completed_at: Option<Scalar>,
}

/// What a job and a step share: where they ran.
#[derive(Clone, Debug, PartialEq)]
pub struct JobContext {
    pub owner: String,
    pub repo: String,
    pub workflow_name: String,
    pub branch: Option<String>,
    pub attempt: u32,
    pub job_name: String,
    /// The labels, sorted, joined with `,`.
    pub runs_on: Option<String>,
    pub runner_group: Option<String>,
    /// Whether the branch is the repository's default branch, when the record tells the default.
    pub on_default_branch: Option<bool>,
}

/// One completed job, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub key: String,
    pub job_id: u64,
    pub run_id: Option<u64>,
    pub context: JobContext,
    pub conclusion: String,
    /// Unix seconds.
    pub completed_at: i64,
    pub duration_seconds: Option<f64>,
    pub queued_seconds: Option<f64>,
    /// `started_at - run_started_at` of its run, once the run is known ([`Job::anchor`]).
    pub start_from_workflow_seconds: Option<f64>,
    /// `started_at`, unix milliseconds.
    pub started_ms: Option<i64>,
    /// Its completed steps, handed out as items of their own with `--steps`.
    pub steps: Vec<Step>,
    /// Runner failures its check run's annotations tell (fetch mode, failed jobs only).
    pub runner_errors: RunnerErrors,
}

/// Failures of the runner rather than of the job's own work, as GitHub reports them in the
/// annotations of a failed job's check run (int128's two runner error counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunnerErrors {
    /// "The self-hosted runner: … lost communication with the server."
    pub lost_communication: bool,
    /// "The runner has received a shutdown signal."
    pub shutdown_signal: bool,
}

impl RunnerErrors {
    /// What a set of annotation messages tells (case is ignored; the wording is GitHub's).
    pub fn from_messages<'m>(messages: impl IntoIterator<Item = &'m str>) -> RunnerErrors {
        let mut errors = RunnerErrors::default();
        for message in messages {
            let message = message.to_lowercase();
            errors.lost_communication |= message.contains("lost communication with the server");
            errors.shutdown_signal |= message.contains("received a shutdown signal");
        }
        errors
    }
}

impl Job {
    /// Measures the job's and its steps' starts from their run's (`run_started_at`, unix
    /// milliseconds): left out when either is unknown or the difference is negative.
    pub fn anchor(&mut self, run_started_ms: Option<i64>) {
        self.start_from_workflow_seconds = span(run_started_ms, self.started_ms);
        for step in &mut self.steps {
            step.start_from_workflow_seconds = span(run_started_ms, step.started_ms);
        }
    }
}

/// One completed step of a job, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub key: String,
    pub number: u64,
    pub name: String,
    pub context: JobContext,
    pub conclusion: String,
    pub completed_at: i64,
    pub duration_seconds: Option<f64>,
    /// `started_at - run_started_at` of its run, once the run is known.
    pub start_from_workflow_seconds: Option<f64>,
    pub started_ms: Option<i64>,
}

/// Validates one raw job (and its steps).
pub fn validate_job(raw: &RawJob) -> Validated {
    match validate_inner(raw) {
        Ok(validated) => validated,
        Err(Problem::Invalid(reason) | Problem::Fatal(reason)) => {
            Validated::Invalid { origin: raw.origin.clone(), reason }
        }
    }
}

fn validate_inner(raw: &RawJob) -> Result<Validated, Problem> {
    let job_id = match &raw.id {
        None => return Err(invalid("a job without \"id\"")),
        Some(value) => positive_integer(value)
            .ok_or_else(|| invalid(format!("job id: expected a positive integer, found {}", describe(value))))?,
    };
    let (owner, repo) = repository(raw)?;
    let key = format!("{}/{}:job:{job_id}", owner.to_lowercase(), repo.to_lowercase());
    let status = optional_string(raw.status.as_ref(), "status")?;
    let conclusion = optional_string(raw.conclusion.as_ref(), "conclusion")?;
    let completed_ms = time(raw.completed_at.as_ref(), "completed_at")?;
    let (Some(conclusion), Some(completed_ms)) = (conclusion, completed_ms) else {
        return Ok(Validated::NotCompleted { key, status: status.unwrap_or_else(|| "no conclusion".to_owned()) });
    };
    if status.as_deref().is_some_and(|status| status != "completed") {
        return Ok(Validated::NotCompleted { key, status: status.unwrap_or_default() });
    }
    let created_ms = time(raw.created_at.as_ref(), "created_at")?;
    let started_ms = time(raw.started_at.as_ref(), "started_at")?;
    let attempt = match &raw.attempt {
        None | Some(Scalar::Null) => 1,
        Some(value) => positive_integer(value)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| invalid(format!("run attempt: expected a positive integer, found {}", describe(value))))?,
    };
    let mut labels = raw.labels.clone().unwrap_or_default();
    labels.sort();
    labels.dedup();
    let context = JobContext {
        owner,
        repo,
        workflow_name: non_empty(raw.workflow_name.as_ref()).unwrap_or_else(|| "unknown".to_owned()),
        branch: non_empty(raw.head_branch.as_ref()),
        attempt,
        job_name: non_empty(raw.name.as_ref()).unwrap_or_else(|| "unknown".to_owned()),
        runs_on: (!labels.is_empty()).then(|| labels.join(",")),
        runner_group: non_empty(raw.runner_group_name.as_ref()),
        on_default_branch: on_default_branch(raw.repository.as_ref(), non_empty(raw.head_branch.as_ref()).as_deref()),
    };
    let completed_at = completed_ms.div_euclid(1000);
    let steps = raw
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| validate_step(step, index, &key, &context, completed_at))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    Ok(Validated::Completed(Item::Job(Box::new(Job {
        key,
        job_id,
        run_id: raw.run_id.as_ref().and_then(positive_integer),
        context,
        conclusion,
        completed_at,
        duration_seconds: span(started_ms, Some(completed_ms)),
        queued_seconds: span(created_ms, started_ms),
        start_from_workflow_seconds: None,
        started_ms,
        steps,
        runner_errors: RunnerErrors::default(),
    }))))
}

/// A completed step, or `None` for one that did not run to a conclusion.
fn validate_step(
    raw: &RawStep,
    index: usize,
    job_key: &str,
    context: &JobContext,
    job_completed_at: i64,
) -> Result<Option<Step>, Problem> {
    let Some(conclusion) = optional_string(raw.conclusion.as_ref(), "step conclusion")? else { return Ok(None) };
    let number = raw.number.as_ref().and_then(positive_integer).unwrap_or(index as u64 + 1);
    let started_ms = time(raw.started_at.as_ref(), "step started_at")?;
    let completed_ms = time(raw.completed_at.as_ref(), "step completed_at")?;
    Ok(Some(Step {
        key: format!("{job_key}:step:{number}"),
        number,
        name: non_empty(raw.name.as_ref()).unwrap_or_else(|| format!("step {number}")),
        context: context.clone(),
        conclusion,
        completed_at: completed_ms.map_or(job_completed_at, |ms| ms.div_euclid(1000)),
        duration_seconds: span(started_ms, completed_ms),
        start_from_workflow_seconds: None,
        started_ms,
    }))
}

/// `to - from` in seconds, when both are known and it is not negative.
fn span(from_ms: Option<i64>, to_ms: Option<i64>) -> Option<f64> {
    match (from_ms, to_ms) {
        (Some(from), Some(to)) if to >= from => Some(millis_to_seconds(to - from)),
        _ => None,
    }
}

/// The repository: the payload's `repository`, else the one in `run_url`, `url` or `html_url`.
fn repository(raw: &RawJob) -> Result<(String, String), Problem> {
    if let Some(found) = raw.repository.as_ref().and_then(repo_from_ref) {
        return Ok(found);
    }
    for url in [&raw.run_url, &raw.url, &raw.html_url] {
        if let Some(Scalar::Str(url)) = url {
            if let Some(found) = repo_from_url(url) {
                return Ok(found);
            }
        }
    }
    Err(invalid("a job with no repository (no repository.full_name, no run_url)"))
}

#[cfg(test)]
pub(crate) mod testing {
    //! A raw job for the unit tests of this module and of `metrics`.
    use super::*;

    pub(crate) fn s(text: &str) -> Option<Scalar> {
        Some(Scalar::Str(text.into()))
    }

    /// A job as GitHub's own example has it: no `created_at`, step times with offsets.
    pub(crate) fn raw() -> RawJob {
        RawJob {
            origin: "test".into(),
            id: Some(Scalar::UInt(399_444_496)),
            run_id: Some(Scalar::UInt(29_679_449)),
            name: s("build"),
            workflow_name: s("CI"),
            head_branch: s("main"),
            status: s("completed"),
            conclusion: s("success"),
            started_at: s("2020-01-20T17:42:40Z"),
            completed_at: s("2020-01-20T17:44:39Z"),
            labels: Some(vec!["self-hosted".into(), "foo".into(), "bar".into()]),
            runner_group_name: s("my runner group"),
            run_url: s("https://api.github.com/repos/octo-org/octo-repo/actions/runs/29679449"),
            steps: vec![
                RawStep {
                    name: s("Set up job"),
                    status: s("completed"),
                    conclusion: s("success"),
                    number: Some(Scalar::UInt(1)),
                    started_at: s("2020-01-20T09:42:40.000-08:00"),
                    completed_at: s("2020-01-20T09:42:41.000-08:00"),
                },
                RawStep { name: s("Skipped"), status: s("completed"), conclusion: s("skipped"), ..RawStep::default() },
                RawStep { name: s("Queued"), status: s("queued"), ..RawStep::default() },
            ],
            ..RawJob::default()
        }
    }

    /// The completed job `raw` validates into.
    pub(crate) fn job(raw: &RawJob) -> Job {
        match validate_job(raw) {
            Validated::Completed(Item::Job(job)) => *job,
            other => panic!("not a completed job: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{job, raw, s};
    use super::*;

    #[test]
    fn a_job_without_created_at_has_no_queue_time_and_its_labels_are_sorted() {
        let job = job(&raw());
        assert_eq!(job.key, "octo-org/octo-repo:job:399444496");
        assert_eq!((job.completed_at, job.duration_seconds, job.queued_seconds), (1_579_542_279, Some(119.0), None));
        assert_eq!(job.context.runs_on.as_deref(), Some("bar,foo,self-hosted"));
        assert_eq!(job.context.runner_group.as_deref(), Some("my runner group"));
        assert_eq!(job.context.attempt, 1);
        // Step times carry offsets; a skipped step has no times and takes its job's; a step that
        // did not conclude is left out.
        let steps: Vec<_> = job.steps.iter().map(|s| (s.key.as_str(), s.completed_at, s.duration_seconds)).collect();
        assert_eq!(
            steps,
            [
                ("octo-org/octo-repo:job:399444496:step:1", 1_579_542_161, Some(1.0)),
                ("octo-org/octo-repo:job:399444496:step:2", 1_579_542_279, None),
            ]
        );
    }

    #[test]
    fn runner_errors_are_read_from_githubs_annotation_wording() {
        let errors = RunnerErrors::from_messages([
            "Process completed with exit code 1.",
            "The self-hosted runner: runner-7 lost communication with the server. Verify the machine is running and has a healthy network connection.",
        ]);
        assert_eq!(errors, RunnerErrors { lost_communication: true, shutdown_signal: false });
        let hosted = "The hosted runner: GitHub Actions 9 lost communication with the server. Anything in your workflow that terminates the runner process, starves it for CPU/Memory, or blocks its network access can cause this error.";
        assert!(RunnerErrors::from_messages([hosted]).lost_communication);
        let errors = RunnerErrors::from_messages(["The runner has received a shutdown signal. This can happen when the runner service is stopped, or a manually started runner is canceled."]);
        assert_eq!(errors, RunnerErrors { lost_communication: false, shutdown_signal: true });
        assert_eq!(RunnerErrors::from_messages(["Process completed with exit code 137."]), RunnerErrors::default());
    }

    #[test]
    fn starts_are_measured_from_the_run_once_it_is_known() {
        let mut job = job(&raw());
        assert_eq!(job.start_from_workflow_seconds, None);
        // The run started at 17:42:30Z: the job 10 s later, its first step 10 s later too.
        job.anchor(Some(1_579_542_150_000));
        assert_eq!(job.start_from_workflow_seconds, Some(10.0));
        assert_eq!(job.steps[0].start_from_workflow_seconds, Some(10.0));
        assert_eq!(job.steps[1].start_from_workflow_seconds, None, "a skipped step has no start");
        job.anchor(Some(1_579_542_200_000));
        assert_eq!(job.start_from_workflow_seconds, None, "a run that started after its job: a re-run's");
    }

    #[test]
    fn queue_times_are_left_out_when_negative_and_unfinished_jobs_are_not_completed() {
        let mut raw = raw();
        raw.created_at = s("2020-01-20T17:43:00Z");
        assert_eq!(job(&raw).queued_seconds, None, "a created_at after started_at (a re-run)");
        raw.created_at = s("2020-01-20T17:42:30Z");
        assert_eq!(job(&raw).queued_seconds, Some(10.0));
        raw.status = s("in_progress");
        raw.conclusion = Some(Scalar::Null);
        raw.completed_at = s("0001-01-01T00:00:00Z");
        assert!(matches!(validate_job(&raw), Validated::NotCompleted { .. }));
        let mut raw = self::raw();
        raw.id = s("1");
        assert!(matches!(validate_job(&raw), Validated::Invalid { .. }));
    }
}
