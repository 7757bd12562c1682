//! The README's section for users coming from int128/datadog-actions-metrics accounts for all
//! that int128 documents: each of its metrics and tags for runs, jobs and steps is sent here (seen
//! in a dry run over GitHub's recorded payloads, or in the families' tables for what only
//! `--github` brings) or named in that section with its reason; its other metrics are named there
//! too; and where int128 documents the same quantity, the numbers are the payloads' own.
//!
//! int128's names are listed from its README ("Metrics for workflow_run event"), facts of its
//! documented interface; its code and its test snapshot are not copied here. The snapshot is of
//! a fixture written by hand (a `queued` run given a `success` conclusion), not a recorded
//! payload, so it would not be test data here anyway.

use std::collections::BTreeSet;

use crate::support::emitted::{dry_run_series, metrics_in_code, recorded_payloads, Logged};

/// A family as int128 documents it: metric names (`*` for the conclusion) and tag keys.
struct Documented {
    family: &'static str,
    metrics: &'static [&'static str],
    tags: &'static [&'static str],
}

const COMMON_TAGS: [&str; 9] = [
    "repository_owner",
    "repository_name",
    "workflow_name",
    "workflow_id",
    "event",
    "sender",
    "sender_type",
    "branch",
    "default_branch",
];

const INT128: [Documented; 3] = [
    Documented {
        family: "workflow_run",
        metrics: &["total", "conclusion.*_total", "duration_second", "queued_duration_second"],
        tags: &["conclusion"],
    },
    Documented {
        family: "job",
        metrics: &[
            "total",
            "conclusion.*_total",
            "duration_second",
            "queued_duration_second",
            "lost_communication_with_server_error_total",
        ],
        tags: &["job_name", "job_id", "conclusion", "status", "runs_on"],
    },
    Documented {
        family: "step",
        metrics: &["total", "conclusion.*_total", "duration_second"],
        tags: &["job_name", "job_id", "step_name", "step_number", "conclusion", "status", "runs_on"],
    },
];

/// int128's metrics for other events and for its token, by the names the README must give.
const INT128_ELSEWHERE: [&str; 5] =
    ["pull_request_opened", "pull_request_closed", "push", "schedule.queued_workflow_run", "api_rate_limit"];

/// The README's section for int128's users.
fn migration_section() -> String {
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("## Coming from int128/datadog-actions-metrics").expect("the README's int128 section");
    let rest = &readme[start + 3..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_owned()
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        Some((head, tail)) => name.len() > head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail),
        None => pattern == name,
    }
}

#[test]
fn every_metric_and_tag_int128_documents_is_sent_or_explained() {
    let series = dry_run_series();
    let in_code = metrics_in_code();
    let section = migration_section();
    let mut unexplained = Vec::new();
    for documented in &INT128 {
        let prefix = format!("github.actions.{}.", documented.family);
        let ours: Vec<&Logged> = series.iter().filter(|one| one.metric.starts_with(&prefix)).collect();
        assert!(!ours.is_empty(), "the dry run sent no {} series", documented.family);
        for metric in documented.metrics {
            let full = format!("{prefix}{metric}");
            let sent =
                ours.iter().any(|one| matches(&full, &one.metric)) || in_code.iter().any(|name| matches(&full, name));
            if !sent && !section.contains(&format!("`{}.{metric}`", documented.family)) {
                unexplained.push(format!("metric {full}"));
            }
        }
        let keys: BTreeSet<&str> = ours.iter().flat_map(|one| one.tags.iter().map(|(key, _)| key.as_str())).collect();
        for tag in COMMON_TAGS.iter().chain(documented.tags) {
            if !keys.contains(tag) && !section.contains(&format!("`{tag}`")) {
                unexplained.push(format!("tag {tag} on {}", documented.family));
            }
        }
    }
    for name in INT128_ELSEWHERE {
        if !section.contains(&format!("`{name}")) {
            unexplained.push(format!("metric github.actions.{name}*"));
        }
    }
    assert!(
        unexplained.is_empty(),
        "int128 documents these; the README's int128 section must say why they differ: {unexplained:?}"
    );
}

/// Unix milliseconds of an RFC 3339 field of a payload object.
fn millis(object: &serde_json::Value, field: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(object[field].as_str()?).ok().map(|at| at.timestamp_millis())
}

/// Each `(timestamp, value)` logged for `metric` is one that `expected` computes from a recorded
/// object, and every object it computes one for was logged.
fn assert_points(series: &[Logged], metric: &str, expected: &[(i64, f64)]) {
    let mut logged: Vec<(i64, f64)> =
        series.iter().filter(|one| one.metric == metric).flat_map(|one| one.points.iter().copied()).collect();
    logged.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut expected = expected.to_vec();
    expected.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert!(!expected.is_empty(), "no recorded payload gives {metric}");
    assert_eq!(logged.len(), expected.len(), "{metric}: logged {logged:?}, from the payloads {expected:?}");
    for (got, want) in logged.iter().zip(&expected) {
        assert!(
            got.0 == want.0 && (got.1 - want.1).abs() < 1e-3,
            "{metric}: logged {logged:?}, from the payloads {expected:?}"
        );
    }
}

#[test]
fn durations_int128_documents_are_the_recorded_payloads_own() {
    let series = dry_run_series();
    let (mut runs, mut jobs) = (Vec::new(), Vec::new());
    for path in recorded_payloads() {
        let body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let found_runs = body["workflow_runs"].as_array().cloned().unwrap_or_default();
        runs.extend(found_runs.into_iter().chain(body.get("workflow_run").cloned()));
        jobs.extend(body["jobs"].as_array().cloned().unwrap_or_default());
    }
    // int128: "Time from a workflow is started until it is updated", at the update. A run
    // recorded twice (the same repository, id and attempt) is sent once, from where it is first.
    let mut seen = std::collections::HashSet::new();
    let run_durations: Vec<(i64, f64)> = runs
        .iter()
        .filter(|run| run["status"] == "completed" && !run["conclusion"].is_null())
        .filter(|run| {
            seen.insert((
                run["repository"]["full_name"].clone(),
                run["id"].clone(),
                run["run_attempt"].as_u64().unwrap_or(1),
            ))
        })
        .filter_map(|run| {
            let updated = millis(run, "updated_at")?;
            let started = millis(run, "run_started_at").or_else(|| millis(run, "created_at"))?;
            Some((updated / 1000, (updated - started) as f64 / 1000.0))
        })
        .collect();
    assert_points(&series, "github.actions.workflow_run.duration_second", &run_durations);
    // int128: "Time from a job is started to completed", at its completion.
    let job_durations: Vec<(i64, f64)> = jobs
        .iter()
        .filter(|job| job["status"] == "completed")
        .filter_map(|job| {
            let completed = millis(job, "completed_at")?;
            Some((completed / 1000, (completed - millis(job, "started_at")?) as f64 / 1000.0))
        })
        .collect();
    assert_points(&series, "github.actions.job.duration_second", &job_durations);
}
