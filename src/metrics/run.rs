//! The workflow-run metric family: its gauges, its tags and its planner cache key.
//!
//! | metric | type | value |
//! |---|---|---|
//! | `workflow_run.total` | count | runs completed at that second |
//! | `workflow_run.conclusion.<conclusion>_total` | count | the same, per conclusion |
//! | `workflow_run.duration_second` | gauge | `updated_at - run_started_at` (or `- created_at`) |
//! | `workflow_run.queued_duration_second` | gauge | `run_started_at - created_at`, attempt 1 |

use super::{tags::tag, Family, GaugeMetric, Gauges, TagFields};
use crate::model::{Entity, Run};

pub(super) static FAMILY: Family = Family {
    entity: Entity::WorkflowRun,
    gauges: &[
        GaugeMetric { name: "duration_second", unit: "second", distribution: true },
        GaugeMetric { name: "queued_duration_second", unit: "second", distribution: true },
    ],
    tallies: &[],
};

pub(super) fn gauges(run: &Run) -> Gauges {
    [run.duration_seconds, run.queued_seconds, None]
}

/// The run's own tags; `extra` more are appended by the caller.
pub(super) fn tags(run: &Run, fields: TagFields, extra: usize) -> Vec<String> {
    let mut tags = Vec::with_capacity(8 + extra);
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
    if let Some(on_default) = run.on_default_branch {
        tags.push(format!("default_branch:{on_default}"));
    }
    if let Some(extras) = &run.extras {
        if let Some(sender) = extras.sender.as_deref().filter(|_| fields.sender) {
            tags.push(tag("sender", sender));
        }
        if let Some(kind) = extras.sender_type.as_deref().filter(|_| fields.sender_type) {
            tags.push(tag("sender_type", kind));
        }
        if let Some(number) = extras.pull_request.filter(|_| fields.pull_request_number) {
            tags.push(format!("pull_request_number:{number}"));
        }
    }
    tags
}

/// Every field the tags are made of, apart: runs with equal keys have equal tag sets.
pub(super) fn cache_key(run: &Run, scratch: &mut String) {
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
    scratch.push(match run.on_default_branch {
        Some(true) => 't',
        Some(false) => 'f',
        None => '-',
    });
    // The fields on request (whether asked or not: a cache key never says less than the tags).
    if let Some(extras) = &run.extras {
        for field in [extras.sender.as_deref(), extras.sender_type.as_deref()] {
            scratch.push('\u{1f}');
            scratch.push_str(field.unwrap_or("\u{2}"));
        }
        scratch.push('\u{1f}');
        if let Some(number) = extras.pull_request {
            scratch.push_str(itoa::Buffer::new().format(number));
        }
    }
}
