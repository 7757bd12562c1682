//! Every input shape the issue names goes through the real binary into the strict intake.

use serde_json::{json, Value};

use crate::support::fixtures::{self, spec, Spec};
use crate::support::{shared, Env, Intake, Reply};

const TOTAL: &str = "github.actions.workflow_run.total";

/// Sends `content` (written to a file, or on stdin when `stdin`), expects `expected` runs sent.
fn sends(content: &str, expected: &[&Spec], extra: &[&str]) -> (Env, Intake) {
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("input.json", content);
    env.send(&intake).arg(&file).args(extra).run().expect_code(0);
    let mut keys: Vec<String> = expected.iter().map(|s| s.key()).collect();
    keys.sort();
    assert_eq!(env.sent_keys(), keys);
    assert_eq!(intake.total(TOTAL), expected.len() as f64);
    assert!(intake.dropped().is_empty(), "points outside Datadog's window: {:?}", intake.dropped());
    (env, intake)
}

#[test]
fn rest_list_body() {
    let now = fixtures::now();
    let runs = [spec(1), spec(2).conclusion("failure")];
    sends(&fixtures::rest_page(&runs, now).to_string(), &[&runs[0], &runs[1]], &[]);
}

#[test]
fn gh_api_paginate_pages_back_to_back() {
    let now = fixtures::now();
    let (a, b, c) = (spec(1), spec(2), spec(3));
    let text = fixtures::paginated(&[&[a.clone(), b.clone()], std::slice::from_ref(&c)], now);
    assert!(text.contains("}{"), "pages are back to back");
    sends(&text, &[&a, &b, &c], &[]);
}

#[test]
fn gh_api_paginate_slurp() {
    let now = fixtures::now();
    let (a, b) = (spec(1), spec(2));
    let text =
        json!([fixtures::rest_page(std::slice::from_ref(&a), now), fixtures::rest_page(std::slice::from_ref(&b), now)])
            .to_string();
    sends(&text, &[&a, &b], &[]);
}

#[test]
fn single_run_object_array_and_ndjson() {
    let now = fixtures::now();
    let (a, b) = (spec(1), spec(2));
    sends(&fixtures::rest_run(&a, now).to_string(), &[&a], &[]);
    sends(&json!([fixtures::rest_run(&a, now), fixtures::rest_run(&b, now)]).to_string(), &[&a, &b], &[]);
    sends(&fixtures::ndjson(&[a.clone(), b.clone()], now), &[&a, &b], &[]);
}

#[test]
fn workflow_run_event_payload_from_github_event_path() {
    let now = fixtures::now();
    let run = spec(77);
    let env = Env::new();
    let intake = Intake::start();
    let path = env.file("event.json", fixtures::event_payload(&run, now).to_string());
    // No INPUT: the binary reads $GITHUB_EVENT_PATH, as in an `on: workflow_run` job.
    env.send(&intake).var("GITHUB_EVENT_PATH", &path).run().expect_code(0);
    assert_eq!(env.sent_keys(), [run.key()]);
    // The run's own name is "": the workflow's name comes from the payload's `workflow`.
    let point = intake.stored().into_iter().find(|p| p.metric == TOTAL).unwrap();
    assert!(point.tags.contains(&"workflow_name:ci".to_owned()), "{:?}", point.tags);
}

#[test]
fn github_context_dump() {
    let now = fixtures::now();
    let run = spec(78);
    sends(&fixtures::github_context(&run, now).to_string(), &[&run], &[]);
}

#[test]
fn gh_run_list_rows_take_the_repository_from_url() {
    let now = fixtures::now();
    let done = spec(5).repo("cli/cli");
    let running = spec(6).repo("cli/cli").in_progress();
    let (env, intake) = sends(&fixtures::gh_list(&[done.clone(), running], now), &[&done], &[]);
    let point = intake.stored().into_iter().find(|p| p.metric == TOTAL).unwrap();
    assert!(point.tags.contains(&"repository_name:cli".to_owned()));
    assert!(point.tags.contains(&"workflow_id:161335".to_owned()));
    assert!(env.logs()[0].contains("skip not_completed cli/cli:6:1"));
}

#[test]
fn gh_run_view_single_object() {
    let now = fixtures::now();
    let run = spec(9).attempt(2);
    sends(&fixtures::gh_row(&run, now).to_string(), &[&run], &[]);
}

#[test]
fn gh_rows_without_url_need_repo() {
    let now = fixtures::now();
    let run = spec(5);
    let mut row = fixtures::gh_row(&run, now);
    row.as_object_mut().unwrap().remove("url");
    let text = Value::Array(vec![row]).to_string();

    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("rows.json", &text);
    let out = env.send(&intake).arg(&file).run();
    out.expect_code(3);
    assert!(out.stderr.contains("--repo owner/name"), "{}", out.stderr);
    assert!(intake.requests().is_empty());

    env.send(&intake).arg(&file).args(["--repo", "octo-org/octo-repo"]).run().expect_code(0);
    assert_eq!(env.sent_keys(), [run.key()]);
}

#[test]
fn gh_rows_without_database_id_name_the_fields_to_ask_for() {
    let env = Env::new();
    let intake = Intake::start();
    let file =
        env.file("rows.json", r#"[{"conclusion":"success","status":"completed","createdAt":"2024-01-01T00:00:00Z"}]"#);
    let out = env.send(&intake).arg(&file).run();
    out.expect_code(3);
    assert!(out.stderr.contains("--json databaseId,attempt,conclusion"), "{}", out.stderr);
}

#[test]
fn standard_input_and_several_files() {
    let now = fixtures::now();
    let (a, b) = (spec(1), spec(2));
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("b.json", fixtures::rest_run(&b, now).to_string());
    env.send(&intake).arg("-").arg(&file).stdin(fixtures::gh_list(std::slice::from_ref(&a), now)).run().expect_code(0);
    assert_eq!(env.sent_keys(), [a.key(), b.key()]);
}

#[test]
fn not_a_recognised_shape_names_file_position_and_shapes() {
    let env = Env::new();
    let intake = Intake::start();
    // An artifacts list: GitHub's shape, not one of ours.
    let file = env.file("artifacts.json", r#"{"total_count":1,"artifacts":[{"id":1}]}"#);
    let out = env.send(&intake).arg(&file).run();
    out.expect_code(3);
    assert!(out.stderr.contains("artifacts.json value 1"), "{}", out.stderr);
    assert!(out.stderr.contains("workflow_runs"), "{}", out.stderr);
    assert!(out.stderr.contains("gh run list/view --json"), "{}", out.stderr);
}

/// The real payloads recorded from GitHub, read from ../shared (present in CI). Their runs are
/// years old: with --historical they are sent with their real timestamps.
#[test]
fn real_github_payloads_from_shared() {
    let dir = shared("github/examples");
    // file name → run keys that must be sent (completed runs), none for queued runs.
    let expected: &[(&str, &[&str])] = &[
        ("rest_run_github_openapi_example_workflow-run_queued.json", &[]),
        ("rest_runs_github_openapi_example_workflow-run-paginated_queued.json", &[]),
        (
            "rest_runs_pygithub_2020-05_push_pr_no_run_attempt.json",
            &[
                "pygithub/pygithub:110278769:1",
                "pygithub/pygithub:110286191:1",
                "pygithub/pygithub:110932072:1",
                "pygithub/pygithub:110932159:1",
                "pygithub/pygithub:110932306:1",
            ],
        ),
        ("webhook_octokit_completed_2020_original_no_run_attempt.json", &["octo-org/octo-repo:289782451:1"]),
        ("webhook_octokit_completed_repository_dispatch_empty_name.json", &["octo-org/octo-repo:289782451:1"]),
        ("webhook_octokit_completed_with_pull_requests.json", &["octo-org/octo-repo:289782451:1"]),
        ("webhook_octokit_requested_queued_null_conclusion.json", &[]),
    ];
    for (name, keys) in expected {
        let env = Env::new();
        let intake = Intake::start();
        let path = dir.join(name);
        let out = env.send(&intake).arg(path.to_str().unwrap()).arg("--historical").run();
        out.expect_code(0);
        assert_eq!(env.sent_keys(), *keys, "{name}");
        assert_eq!(intake.total(TOTAL), keys.len() as f64, "{name}");
        let not_completed = env.logs()[0].matches("skip not_completed").count();
        assert_eq!(not_completed, usize::from(keys.is_empty()), "{name}");
    }
    // A jobs list without --jobs: its jobs are counted, not sent, and not an error.
    let env = Env::new();
    let intake = Intake::start();
    let path = dir.join("rest_jobs_pygithub_2023-01_5jobs_steps.json");
    let out = env.send(&intake).arg(path.to_str().unwrap()).args(["--historical", "--output", "json"]).run();
    out.expect_code(0);
    assert_eq!(out.json()["not_requested"], 5);
    assert!(intake.requests().is_empty());
}

/// The completed steps of each job of a jobs list body, as GitHub wrote them.
fn completed_steps(body: &serde_json::Value) -> usize {
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|job| job["steps"].as_array().unwrap())
        .filter(|step| !step["conclusion"].is_null())
        .count()
}

#[test]
fn real_jobs_and_steps_match_github() {
    let dir = shared("github/examples");
    let path = dir.join("rest_jobs_pygithub_2023-01_5jobs_steps.json");
    let body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let env = Env::new();
    let intake = Intake::start();
    let out = env.send(&intake).arg(path.to_str().unwrap()).args(["--historical", "--steps", "--output", "json"]).run();
    out.expect_code(0);
    let steps = completed_steps(&body);
    assert!(steps > 20, "{steps}");
    assert_eq!(out.json()["sent"], 5 + steps as u64);
    let job = |metric: &str| {
        let points: Vec<_> = intake
            .stored()
            .into_iter()
            .filter(|p| {
                p.metric == format!("github.actions.job.{metric}")
                    && p.tags.contains(&"job_name:test__python_3.7_".to_owned())
            })
            .collect();
        assert_eq!(points.len(), 1, "{metric}: {points:?}");
        points[0].clone()
    };
    // GitHub's numbers: started 08:24:28, completed 08:25:28, created 08:24:21.
    assert_eq!(job("duration_second").value, 60.0);
    assert_eq!(job("queued_duration_second").value, 7.0);
    let total = job("total");
    assert_eq!(total.value, 1.0);
    for tag in [
        "repository_owner:pygithub",
        "repository_name:pygithub",
        "workflow_name:ci",
        "branch:feat/workflow-run",
        "conclusion:success",
        "run_attempt:1",
        "runs_on:ubuntu-latest",
        "runner_group:github_actions",
    ] {
        assert!(total.tags.contains(&tag.to_owned()), "{tag} missing from {:?}", total.tags);
    }
    assert!(intake.total("github.actions.step.total") >= 1.0);
    // Sent again: every job and step is already in the ledger.
    let out = env.send(&intake).arg(path.to_str().unwrap()).args(["--historical", "--steps", "--output", "json"]).run();
    assert_eq!(out.json()["already_sent"], 5 + steps as u64);
}

#[test]
fn tag_fields_on_request_from_a_real_payload() {
    let dir = shared("github/examples");
    let path = dir.join("webhook_octokit_completed_with_pull_requests.json");
    let tags = |extra: &[&str]| {
        let env = Env::new();
        let intake = Intake::start();
        env.send(&intake).arg(path.to_str().unwrap()).arg("--historical").args(extra).run().expect_code(0);
        intake.stored().into_iter().find(|p| p.metric == TOTAL).expect("a total point").tags
    };
    let plain = tags(&[]);
    assert!(plain.iter().all(|tag| !tag.starts_with("sender") && !tag.starts_with("pull_request")), "{plain:?}");
    let asked = tags(&["--tag-fields", "sender,sender_type,pull_request_number"]);
    for tag in ["sender:codertocat", "sender_type:user", "pull_request_number:2"] {
        assert!(asked.contains(&tag.to_owned()), "{tag} missing from {asked:?}");
    }
    assert_eq!(asked.len(), plain.len() + 3);
}

#[test]
fn gh_run_view_jobs_rows_are_the_same_jobs() {
    let dir = shared("github/examples");
    let path = dir.join("rest_jobs_pygithub_2023-01_5jobs_steps.json");
    let body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // What `gh run view --json jobs` prints for the same jobs: gh's names, a web url, "" for a
    // null conclusion and Go's zero time for a missing time.
    let zero = |value: &serde_json::Value| if value.is_null() { "0001-01-01T00:00:00Z".into() } else { value.clone() };
    let empty = |value: &serde_json::Value| if value.is_null() { "".into() } else { value.clone() };
    let mut jobs: Vec<serde_json::Value> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            let steps: Vec<serde_json::Value> = job["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|step| {
                    serde_json::json!({"completedAt": zero(&step["completed_at"]), "conclusion": empty(&step["conclusion"]),
                        "name": step["name"], "number": step["number"], "startedAt": zero(&step["started_at"]), "status": step["status"]})
                })
                .collect();
            serde_json::json!({"completedAt": zero(&job["completed_at"]), "conclusion": empty(&job["conclusion"]),
                "databaseId": job["id"], "name": job["name"], "startedAt": zero(&job["started_at"]),
                "status": job["status"], "steps": steps, "url": job["html_url"]})
        })
        .collect();
    // And one still queued.
    jobs.push(serde_json::json!({"completedAt": "0001-01-01T00:00:00Z", "conclusion": "", "databaseId": 1,
        "name": "later", "startedAt": "0001-01-01T00:00:00Z", "status": "queued", "steps": [],
        "url": "https://github.com/PyGithub/PyGithub/actions/runs/3881497935/job/1"}));
    let env = Env::new();
    let intake = Intake::start();
    let rows = env.file("jobs.json", serde_json::json!({ "jobs": jobs }).to_string());
    let out = env.send(&intake).arg(&rows).args(["--historical", "--steps", "--output", "json"]).run();
    out.expect_code(0);
    let steps = completed_steps(&body);
    assert_eq!(out.json()["sent"], 5 + steps as u64);
    assert_eq!(out.json()["not_completed"], 1);
    // The jobs API's body for the same jobs: the same keys, all already sent.
    let out = env.send(&intake).arg(path.to_str().unwrap()).args(["--historical", "--steps", "--output", "json"]).run();
    assert_eq!(out.json()["already_sent"], 5 + steps as u64);
}

#[test]
fn github_example_job_without_created_at_and_a_workflow_job_payload() {
    let dir = shared("github/examples");
    let path = dir.join("rest_jobs_github_openapi_example_job-paginated_no_created_at.json");
    let body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let env = Env::new();
    let intake = Intake::start();
    let out = env.send(&intake).arg(path.to_str().unwrap()).args(["--historical", "--jobs"]).run();
    out.expect_code(0);
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:job:399444496"]);
    // No created_at: no queue time, never a made-up one.
    let metrics: Vec<String> = intake.stored().into_iter().map(|p| p.metric).collect();
    assert!(metrics.contains(&"github.actions.job.duration_second".to_owned()), "{metrics:?}");
    assert!(!metrics.contains(&"github.actions.job.queued_duration_second".to_owned()), "{metrics:?}");
    // The same job as an on: workflow_job payload hands it over ($GITHUB_EVENT_PATH).
    let payload = serde_json::json!({
        "action": "completed",
        "workflow_job": body["jobs"][0],
        "repository": {"full_name": "octo-org/octo-repo", "name": "octo-repo", "owner": {"login": "octo-org"}},
    });
    let event = env.file("event.json", payload.to_string());
    let out =
        env.send(&intake).args(["--historical", "--jobs", "--output", "json"]).var("GITHUB_EVENT_PATH", &event).run();
    out.expect_code(0);
    assert_eq!(out.json()["already_sent"], 1, "the same job id, from another input, is not sent twice");
}

#[test]
fn real_payload_values_match_github() {
    let dir = shared("github/examples");
    let env = Env::new();
    let intake = Intake::start();
    let path = dir.join("webhook_octokit_completed_repository_dispatch_empty_name.json");
    env.send(&intake).arg(path.to_str().unwrap()).arg("--historical").run().expect_code(0);
    let stored = intake.stored();
    let find = |metric: &str| stored.iter().find(|p| p.metric == metric).unwrap_or_else(|| panic!("{metric}"));
    // created 16:33:24, started 16:33:49, updated 16:33:49 (GitHub's own example).
    let queued = find("github.actions.workflow_run.queued_duration_second");
    assert_eq!((queued.timestamp, queued.value), (1601915629, 25.0));
    assert_eq!(find("github.actions.workflow_run.duration_second").value, 0.0);
    assert_eq!(find("github.actions.workflow_run.conclusion.success_total").value, 1.0);
    let tags = &find(TOTAL).tags;
    for tag in [
        "branch:master",
        "conclusion:success",
        // The payload's repository says its default branch is master.
        "default_branch:true",
        "event:repository_dispatch",
        "repository_name:octo-repo",
        "repository_owner:octo-org",
        "run_attempt:1",
        "workflow_id:2823525",
        "workflow_name:test",
    ] {
        assert!(tags.contains(&tag.to_owned()), "{tag} missing from {tags:?}");
    }
    assert_eq!(tags.len(), 9, "{tags:?}");
}

/// The stand-in validates against a copy of Datadog's schema: it must stay the one in ../shared.
#[test]
fn schema_copy_matches_shared() {
    let copy = std::fs::read_to_string(shared("datadog").join("v2-series.schema.json")).unwrap();
    assert_eq!(include_str!("../data/v2-series.schema.json"), copy);
}

/// A jobs list body of `count` jobs made from the real example's first job (its 9 steps, times
/// and labels), each a matrix leg of its own, moved so that it completed `ago` seconds before
/// `now` (the steps' times move with it).
fn matrix_jobs(count: u64, ago: i64, now: i64) -> String {
    use chrono::{DateTime, SecondsFormat};
    let path = shared("github/examples").join("rest_jobs_pygithub_2023-01_5jobs_steps.json");
    let body: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let template = body["jobs"][0].clone();
    let completed = DateTime::parse_from_rfc3339(template["completed_at"].as_str().unwrap()).unwrap().timestamp();
    let shift = now - ago - completed;
    let moved = |value: &Value| match value.as_str().map(DateTime::parse_from_rfc3339) {
        Some(Ok(time)) => {
            json!((time + chrono::Duration::seconds(shift)).to_rfc3339_opts(SecondsFormat::Millis, true))
        }
        _ => value.clone(),
    };
    let jobs: Vec<Value> = (0..count)
        .map(|index| {
            let mut job = template.clone();
            job["id"] = json!(9_000_000 + index);
            job["name"] = json!(format!("test (matrix leg {index:04} of a large build with a long name)"));
            for field in ["created_at", "started_at", "completed_at"] {
                job[field] = moved(&job[field]);
            }
            for step in job["steps"].as_array_mut().unwrap() {
                for field in ["started_at", "completed_at"] {
                    step[field] = moved(&step[field]);
                }
            }
            job
        })
        .collect();
    json!({"total_count": count, "jobs": jobs}).to_string()
}

#[test]
fn a_large_matrix_is_split_by_size_and_a_failure_resends_only_what_was_not_accepted() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let jobs = 700;
    let file = env.file("matrix.json", matrix_jobs(jobs, 300, now));
    let steps = 9 * jobs;
    // One request is accepted, the next refused for good; the others land as they come.
    intake.script([Reply::Delay(std::time::Duration::ZERO), Reply::status(500)]);
    let args = ["--steps", "--batch-size", "20000", "--max-attempts", "1", "--concurrency", "1", "--output", "json"];
    let out = env.send(&intake).arg(&file).args(args).run();
    out.expect_code(1);
    let first = out.json()["sent"].as_u64().unwrap();
    assert!(0 < first && first < jobs + steps, "{first}");
    // Datadog's size limits, not --batch-size, split the one batch: every request within them.
    let requests = intake.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    assert!(requests.iter().all(|r| r.raw_bytes <= 5_242_880 && r.compressed_bytes <= 512_000), "{requests:?}");
    // The next invocation sends exactly what was not accepted, and Datadog shows each job and
    // step once.
    let out = env.send(&intake).arg(&file).args(args).run();
    out.expect_code(0);
    assert_eq!(out.json()["sent"].as_u64().unwrap(), jobs + steps - first);
    assert_eq!(out.json()["already_sent"].as_u64().unwrap(), first);
    assert_eq!(intake.total("github.actions.job.total"), jobs as f64);
    assert_eq!(intake.total("github.actions.step.total"), steps as f64);
    assert!(intake.dropped().is_empty());
    env.ledger_is_consistent();
}

#[test]
fn jobs_older_than_the_window_follow_the_runs_policy() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("jobs.json", matrix_jobs(3, 2 * 3600, now));
    let out = env.send(&intake).arg(&file).args(["--jobs", "--output", "json"]).run();
    out.expect_code(0);
    assert!(intake.requests().is_empty());
    assert_eq!(env.too_old_keys().len(), 3, "recorded, not dropped in silence");
    assert!(out.stderr.contains("--historical"), "{}", out.stderr);
    let out = env.send(&intake).arg(&file).args(["--jobs", "--stamp-now", "--output", "json"]).run();
    out.expect_code(0);
    assert_eq!(out.json()["sent"], 3);
    assert_eq!(intake.total("github.actions.job.total"), 3.0);
    assert!(intake.dropped().is_empty());
}
