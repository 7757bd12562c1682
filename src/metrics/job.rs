//! The job and step metric families, as int128's action names them.
//!
//! | metric | type | value |
//! |---|---|---|
//! | `job.total`, `job.conclusion.<conclusion>_total` | count | jobs completed at that second |
//! | `job.duration_second` | gauge | `completed_at - started_at` |
//! | `job.queued_duration_second` | gauge | `started_at - created_at`, when known and not negative |
//! | `job.start_time_from_workflow_start_second` | gauge | `started_at - run_started_at`, when the run is known |
//! | `job.lost_communication_with_server_error_total` | count | failed jobs whose runner lost the server (fetch mode) |
//! | `job.received_shutdown_signal_error_total` | count | failed jobs whose runner was shut down (fetch mode) |
//! | `step.total`, `step.conclusion.<conclusion>_total` | count | steps completed at that second |
//! | `step.duration_second` | gauge | `completed_at - started_at` |
//! | `step.start_time_from_workflow_start_second` | gauge | `started_at - run_started_at`, when the run is known |
//!
//! Tags: those of the run that a job carries (`repository_owner`, `repository_name`,
//! `workflow_name`, `branch`, `run_attempt`), the job's `conclusion`, `job_name`, `runs_on` (its
//! labels, sorted, joined with `,`), `runner_group`; steps add `step_name` and carry their own
//! `conclusion`. No job, run or step ids: a series per job costs money and charts nothing.

use super::{tags::tag, Family, GaugeMetric, Gauges, Tallies};
use crate::model::{Entity, Job, JobContext, Step};

pub(super) static JOB: Family = Family {
    entity: Entity::Job,
    gauges: &[
        GaugeMetric { name: "duration_second", unit: "second", distribution: true },
        GaugeMetric { name: "queued_duration_second", unit: "second", distribution: true },
        GaugeMetric { name: "start_time_from_workflow_start_second", unit: "second", distribution: false },
    ],
    tallies: &["lost_communication_with_server_error_total", "received_shutdown_signal_error_total"],
};

pub(super) static STEP: Family = Family {
    entity: Entity::Step,
    gauges: &[
        GaugeMetric { name: "duration_second", unit: "second", distribution: true },
        GaugeMetric { name: "start_time_from_workflow_start_second", unit: "second", distribution: false },
    ],
    tallies: &[],
};

pub(super) fn job_gauges(job: &Job) -> Gauges {
    [job.duration_seconds, job.queued_seconds, job.start_from_workflow_seconds]
}

/// In the order of `JOB.tallies`.
pub(super) fn job_tallies(job: &Job) -> Tallies {
    [u32::from(job.runner_errors.lost_communication), u32::from(job.runner_errors.shutdown_signal)]
}

pub(super) fn step_gauges(step: &Step) -> Gauges {
    [step.duration_seconds, step.start_from_workflow_seconds, None]
}

fn context_tags(context: &JobContext, conclusion: &str, extra: usize) -> Vec<String> {
    let mut tags = Vec::with_capacity(10 + extra);
    tags.push(tag("repository_owner", &context.owner));
    tags.push(tag("repository_name", &context.repo));
    tags.push(tag("workflow_name", &context.workflow_name));
    if let Some(branch) = &context.branch {
        tags.push(tag("branch", branch));
    }
    tags.push(tag("conclusion", conclusion));
    tags.push(format!("run_attempt:{}", context.attempt));
    if let Some(on_default) = context.on_default_branch {
        tags.push(format!("default_branch:{on_default}"));
    }
    tags.push(tag("job_name", &context.job_name));
    if let Some(runs_on) = &context.runs_on {
        tags.push(tag("runs_on", runs_on));
    }
    if let Some(group) = &context.runner_group {
        tags.push(tag("runner_group", group));
    }
    tags
}

pub(super) fn job_tags(job: &Job, extra: usize) -> Vec<String> {
    context_tags(&job.context, &job.conclusion, extra)
}

pub(super) fn step_tags(step: &Step, extra: usize) -> Vec<String> {
    let mut tags = context_tags(&step.context, &step.conclusion, extra + 1);
    tags.push(tag("step_name", &step.name));
    tags
}

/// Every field the tags are made of, apart (the planner's cache key).
pub(super) fn cache_key(context: &JobContext, conclusion: &str, step_name: Option<&str>, scratch: &mut String) {
    let optional = |value: Option<&str>| value.map_or_else(|| "\u{2}".to_owned(), str::to_owned);
    for field in [
        context.owner.as_str(),
        &context.repo,
        &context.workflow_name,
        &optional(context.branch.as_deref()),
        conclusion,
        &context.job_name,
        &optional(context.runs_on.as_deref()),
        &optional(context.runner_group.as_deref()),
        &optional(step_name),
    ] {
        scratch.push_str(field);
        scratch.push('\u{1f}');
    }
    scratch.push_str(itoa::Buffer::new().format(context.attempt));
    scratch.push(match context.on_default_branch {
        Some(true) => 't',
        Some(false) => 'f',
        None => '-',
    });
}
