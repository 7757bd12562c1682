//! `send` end to end: marking, dry runs, failures, re-runs, the time window, counts and the log.

use crate::support::fixtures::{self, spec};
use crate::support::{Env, Intake, Reply, API_KEY};

const TOTAL: &str = "github.actions.workflow_run.total";

#[test]
fn second_invocation_sends_nothing() {
    let now = fixtures::now();
    let runs = [spec(1), spec(2)];
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("runs.json", fixtures::rest_page(&runs, now).to_string());
    env.send(&intake).arg(&file).run().expect_code(0);
    assert_eq!(intake.requests().len(), 1);
    let out = env.send(&intake).arg(&file).arg("--output").arg("json").run();
    out.expect_code(0);
    assert_eq!(intake.requests().len(), 1, "no second request");
    let summary = out.json();
    assert_eq!(summary["already_sent"], 2);
    assert_eq!(summary["sent"], 0);
    assert!(env.logs()[1].contains("skip already_sent octo-org/octo-repo:1:1"));
}

#[test]
fn dry_run_sends_and_marks_nothing_and_needs_no_key() {
    let now = fixtures::now();
    let runs = [spec(1), spec(2), spec(3).in_progress()];
    let env = Env::sqlite();
    let intake = Intake::start();
    let file = env.file("runs.json", fixtures::rest_page(&runs, now).to_string());
    // No DD_API_KEY, but --api-url set: nothing may reach it.
    let out =
        env.command(["send", "--dry-run", "--output", "json"]).arg("--api-url").arg(intake.url()).arg(&file).run();
    out.expect_code(0);
    assert!(intake.requests().is_empty());
    assert!(!env.ledger().exists(), "a dry run creates no ledger");
    let summary = out.json();
    assert_eq!((summary["would_send"].as_u64(), summary["sent"].as_u64()), (Some(2), Some(0)));
    let log = &env.logs()[0];
    assert!(log.contains("mode: DRY RUN"));
    assert!(log.contains("status=dry-run"));

    // After a live send of run 1, the dry run reads the real ledger: only run 2 is new.
    let one = env.file("one.json", fixtures::rest_run(&runs[0], now).to_string());
    env.send(&intake).arg(&one).run().expect_code(0);
    let ledger_before = std::fs::read(env.ledger()).unwrap();
    let out = env.command(["send", "--dry-run", "--output", "json"]).arg(&file).run();
    out.expect_code(0);
    let summary = out.json();
    assert_eq!((summary["would_send"].as_u64(), summary["already_sent"].as_u64()), (Some(1), Some(1)));
    assert_eq!(std::fs::read(env.ledger()).unwrap(), ledger_before, "the real ledger is untouched");
    assert_eq!(intake.requests().len(), 1);
}

#[test]
fn dry_run_record_shows_only_what_is_new() {
    let now = fixtures::now();
    let env = Env::sqlite();
    let record = env.path("dry.db");
    let first = env.file("first.json", fixtures::rest_page(&[spec(1)], now).to_string());
    let both = env.file("both.json", fixtures::rest_page(&[spec(1), spec(2)], now).to_string());
    let dry = |file: &str| {
        env.command(["send", "--dry-run", "--output", "json", "--dry-run-record"])
            .arg(record.to_str().unwrap())
            .arg(file)
            .run()
    };
    assert_eq!(dry(&first).json()["would_send"], 1);
    let summary = dry(&both).json();
    assert_eq!((summary["would_send"].as_u64(), summary["already_sent"].as_u64()), (Some(1), Some(1)));
    assert!(!env.ledger().exists());
}

#[test]
fn server_error_marks_nothing_and_the_next_invocation_sends() {
    let now = fixtures::now();
    let runs = [spec(1), spec(2)];
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("runs.json", fixtures::rest_page(&runs, now).to_string());
    intake.script([Reply::status(500), Reply::status(502), Reply::status(503)]);
    let out = env.send(&intake).arg(&file).args(["--max-attempts", "3"]).run();
    out.expect_code(1);
    assert!(out.stderr.contains("2 run(s) NOT sent"), "{}", out.stderr);
    assert!(env.sent_keys().is_empty());
    assert!(env.logs()[0].contains("status=503 attempts=3"), "{}", env.logs()[0]);
    env.send(&intake).arg(&file).run().expect_code(0);
    assert_eq!(env.sent_keys().len(), 2);
    assert_eq!(intake.total(TOTAL), 2.0);
}

#[test]
fn wrong_key_exits_5_and_marks_nothing() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("runs.json", fixtures::rest_page(&[spec(1)], now).to_string());
    let out = env.command(["send"]).arg("--api-url").arg(intake.url()).var("DD_API_KEY", "wrong-key").arg(&file).run();
    out.expect_code(5);
    assert!(out.stderr.contains("rejected the API key"), "{}", out.stderr);
    assert!(env.sent_keys().is_empty());
    assert!(!out.stderr.contains("wrong-key"));
    assert!(!env.logs()[0].contains("wrong-key"));
}

#[test]
fn rerun_attempt_is_sent_and_an_attempt_never_twice() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let first = env.file("a1.json", fixtures::rest_run(&spec(1).conclusion("failure").ago(600), now).to_string());
    env.send(&intake).arg(&first).run().expect_code(0);
    let second = env.file("a2.json", fixtures::rest_run(&spec(1).attempt(2), now).to_string());
    env.send(&intake).arg(&second).arg(&first).run().expect_code(0);
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:1:1", "octo-org/octo-repo:1:2"]);
    assert_eq!(intake.requests().len(), 2);
    // The re-run's queued time would be days (created_at is the first attempt's): not sent.
    let queued: Vec<_> =
        intake.stored().into_iter().filter(|p| p.metric.ends_with("queued_duration_second")).map(|p| p.tags).collect();
    assert_eq!(queued.len(), 1);
    assert!(queued[0].contains(&"run_attempt:1".to_owned()));
}

#[test]
fn in_progress_run_is_sent_once_after_it_completes() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let running = env.file("running.json", fixtures::rest_run(&spec(4).in_progress(), now).to_string());
    let out = env.send(&intake).arg(&running).arg("--output").arg("json").run();
    out.expect_code(0);
    assert_eq!(out.json()["not_completed"], 1);
    assert!(env.sent_keys().is_empty());
    assert!(intake.requests().is_empty());
    let done = env.file("done.json", fixtures::rest_run(&spec(4), now).to_string());
    env.send(&intake).arg(&done).run().expect_code(0);
    env.send(&intake).arg(&done).run().expect_code(0);
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:4:1"]);
    assert_eq!(intake.requests().len(), 1);
}

#[test]
fn duplicate_runs_in_the_input_are_sent_once() {
    let now = fixtures::now();
    let run = spec(8);
    let env = Env::new();
    let intake = Intake::start();
    let text = fixtures::ndjson(&[run.clone(), spec(9), run.clone()], now);
    let file = env.file("dup.ndjson", text);
    let out = env.send(&intake).arg(&file).arg(&file).args(["--output", "json"]).run();
    out.expect_code(0);
    assert_eq!(out.json()["duplicates"], 4);
    assert_eq!(intake.total(TOTAL), 2.0);
}

#[test]
fn old_runs_are_recorded_not_sent_unless_asked() {
    let now = fixtures::now();
    let old = spec(11).ago(2 * 3600);
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("old.json", fixtures::rest_run(&old, now).to_string());
    let out = env.send(&intake).arg(&file).run();
    out.expect_code(0);
    assert!(intake.requests().is_empty());
    assert!(out.stderr.contains("--historical") && out.stderr.contains("--stamp-now"), "{}", out.stderr);
    assert_eq!(env.too_old_keys(), [old.key()]);
    assert!(env.sent_keys().is_empty());
    // Not reconsidered on every invocation, and no more hints.
    let out = env.send(&intake).arg(&file).args(["--output", "json"]).run();
    assert_eq!(out.json()["too_old_before"], 1);
    assert!(!out.stderr.contains("--stamp-now"));

    // --stamp-now: sent once, stamped with the send time.
    let before = fixtures::now();
    env.send(&intake).arg(&file).arg("--stamp-now").run().expect_code(0);
    let after = fixtures::now();
    assert_eq!(env.sent_keys(), [old.key()]);
    assert!(env.too_old_keys().is_empty());
    let point = intake.stored().into_iter().find(|p| p.metric == TOTAL).unwrap();
    assert!((before..=after).contains(&point.timestamp), "{} not in {before}..{after}", point.timestamp);
    assert!(intake.dropped().is_empty());
    env.send(&intake).arg(&file).arg("--stamp-now").run().expect_code(0);
    assert_eq!(intake.requests().len(), 1, "stamped runs are still sent once");
}

#[test]
fn historical_sends_real_timestamps() {
    let now = fixtures::now();
    let old = spec(12).ago(3 * 3600);
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("old.json", fixtures::rest_run(&old, now).to_string());
    env.send(&intake).arg(&file).arg("--historical").run().expect_code(0);
    let point = intake.stored().into_iter().find(|p| p.metric == TOTAL).unwrap();
    assert_eq!(point.timestamp, old.completed_at(now));
    // The stand-in, like Datadog without historical ingestion, would drop these silently.
    assert_eq!(intake.dropped().len(), 4);
}

#[test]
fn colliding_counts_are_summed_within_and_across_invocations() {
    let now = fixtures::now();
    // Same workflow, branch, event, conclusion and completion second: one point per metric.
    let env = Env::new();
    let intake = Intake::start();
    let first = env.file("a.json", fixtures::rest_page(&[spec(1), spec(2)], now).to_string());
    env.send(&intake).arg(&first).run().expect_code(0);
    let point = intake.stored().into_iter().find(|p| p.metric == TOTAL).unwrap();
    assert_eq!(point.value, 2.0);
    let second = env.file("b.json", fixtures::rest_page(&[spec(3)], now).to_string());
    env.send(&intake).arg(&second).run().expect_code(0);
    assert_eq!(intake.total(TOTAL), 3.0, "the third run adds to the stored point instead of overwriting it");
    assert_eq!(intake.total("github.actions.workflow_run.conclusion.success_total"), 3.0);
}

#[test]
fn batches_respect_batch_size_and_keep_colliding_runs_together() {
    let now = fixtures::now();
    let specs: Vec<_> =
        (1..=25).map(|i| spec(i).branch(if i % 2 == 0 { "main" } else { "dev" }).ago(100 + (i as i64 % 5))).collect();
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("many.json", fixtures::rest_page(&specs, now).to_string());
    env.send(&intake).arg(&file).args(["--batch-size", "4", "--compression", "gzip"]).run().expect_code(0);
    // Every request carries at most 4 runs, and together they carry each run once.
    let log = &env.logs()[0];
    let sizes: Vec<usize> = log
        .lines()
        .filter(|line| line.starts_with("request "))
        .map(|line| line.split(" runs=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(sizes.len() >= 7 && sizes.iter().all(|runs| (1..=4).contains(runs)), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 25);
    assert_eq!(intake.requests().len(), sizes.len());
    assert!(intake.requests().iter().all(|r| r.encoding.as_deref() == Some("gzip")));
    // Runs sharing a point (branch and completion second) add up there, whichever requests
    // carried them: each stored count is the size of its group.
    let mut groups = std::collections::BTreeMap::<(String, i64), f64>::new();
    for s in &specs {
        *groups.entry((format!("branch:{}", s.branch), s.completed_at(now))).or_default() += 1.0;
    }
    let stored: std::collections::BTreeMap<(String, i64), f64> = intake
        .stored()
        .into_iter()
        .filter(|p| p.metric == TOTAL)
        .map(|p| ((p.tags.iter().find(|t| t.starts_with("branch:")).unwrap().clone(), p.timestamp), p.value))
        .collect();
    assert_eq!(stored, groups);
    assert_eq!(env.sent_keys().len(), 25);
}

#[test]
fn colliding_gauges_keep_the_largest_value_whatever_the_input_order() {
    let now = fixtures::now();
    // Three runs of one point (same tags, same completion second), far apart in the input, with
    // other runs between them: they go out in different requests. Datadog keeps the last value
    // written, so each request must carry the largest duration seen for the point so far.
    let collide = |id: u64, duration: i64| fixtures::Spec { duration, ..spec(id).ago(200) };
    let mut specs = vec![collide(1, 900)];
    specs.extend((10..30).map(|id| spec(id).branch("dev").ago(100 + id as i64)));
    specs.push(collide(2, 100));
    specs.extend((30..50).map(|id| spec(id).branch("dev").ago(100 + id as i64)));
    specs.push(collide(3, 300));
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("apart.ndjson", fixtures::ndjson(&specs, now));
    env.send(&intake).arg(&file).args(["--batch-size", "5", "--concurrency", "1"]).run().expect_code(0);
    let point = |metric: &str| {
        let stored: Vec<_> = intake
            .stored()
            .into_iter()
            .filter(|p| p.metric == metric && p.timestamp == now - 200 && p.tags.contains(&"branch:main".to_owned()))
            .collect();
        assert_eq!(stored.len(), 1, "{metric}: {stored:?}");
        stored[0].value
    };
    // The three runs went out in three requests.
    let carrying: Vec<_> =
        intake.accepted().into_iter().filter(|p| p.metric == TOTAL && p.timestamp == now - 200).collect();
    assert_eq!(carrying.len(), 3, "{carrying:?}");
    assert_eq!(point(TOTAL), 3.0);
    assert_eq!(point("github.actions.workflow_run.duration_second"), 900.0);
    assert_eq!(point("github.actions.workflow_run.queued_duration_second"), 15.0);
    // And across invocations: a fourth, shorter run of the same point keeps 900.
    let later = env.file("later.json", fixtures::rest_page(&[collide(4, 50)], now).to_string());
    env.send(&intake).arg(&later).run().expect_code(0);
    assert_eq!(point(TOTAL), 4.0);
    assert_eq!(point("github.actions.workflow_run.duration_second"), 900.0);
}

#[test]
fn oversized_requests_are_split_within_datadog_limits() {
    let now = fixtures::now();
    // Unique long tags per run make each run ~3 KB of JSON: 3000 runs in one batch exceed 5 MB.
    let env = Env::new();
    let intake = Intake::start();
    let specs: Vec<_> = (1..=3000).map(spec).collect();
    let mut text = String::new();
    for s in &specs {
        let mut run = fixtures::rest_run(s, now);
        run["head_branch"] = serde_json::json!(format!("{}-{}", "b".repeat(180), s.id));
        text.push_str(&run.to_string());
        text.push('\n');
    }
    let file = env.file("big.ndjson", text);
    env.send(&intake).arg(&file).args(["--batch-size", "3000", "--compression", "deflate"]).run().expect_code(0);
    let requests = intake.requests();
    assert!(requests.len() >= 2, "split into {} requests", requests.len());
    assert!(requests.iter().all(|r| r.status == 202 && r.raw_bytes <= 5_242_880 && r.compressed_bytes <= 512_000));
    assert_eq!(intake.total(TOTAL), 3000.0);
}

#[test]
fn run_log_records_everything_and_never_the_key() {
    let now = fixtures::now();
    let env = Env::sqlite();
    let intake = Intake::start();
    let runs = [spec(1), spec(2).in_progress(), spec(3).ago(7200)];
    let file = env.file("runs.json", fixtures::rest_page(&runs, now).to_string());
    env.send(&intake).arg(&file).args(["--tag", "team:ci", "--log-detail", "full"]).run().expect_code(0);
    let logs = env.logs();
    assert_eq!(logs.len(), 1);
    let name = std::fs::read_dir(env.log_dir()).unwrap().next().unwrap().unwrap().file_name();
    let name = name.to_string_lossy();
    // log/YYYY-MM-DDTHH-mm-ss-sssZ.log
    assert_eq!(name.len(), "2026-11-22T19-40-14-123Z.log".len(), "{name}");
    assert!(name.ends_with("Z.log") && name.as_bytes()[10] == b'T', "{name}");
    let log = &logs[0];
    let completed = runs[0].completed_at(now);
    let iso = chrono::DateTime::from_timestamp(completed, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    for expected in [
        "workflow-metrics run log, format 2".to_owned(),
        "mode: LIVE".to_owned(),
        format!("version: {}", env!("CARGO_PKG_VERSION")),
        format!("inputs: {file}"),
        format!("ledger: {}", env.ledger().display()),
        format!("endpoint: {}/api/v2/series", intake.url()),
        "skip not_completed octo-org/octo-repo:2:1 status=in_progress".to_owned(),
        "skip too_old octo-org/octo-repo:3:1".to_owned(),
        format!("send octo-org/octo-repo:1:1 timestamp={completed}"),
        format!("series request=1 metric=github.actions.workflow_run.duration_second type=gauge unit=second points={completed}/{iso}=300 tags="),
        "team:ci".to_owned(),
        "request 1 runs=1 raw_bytes=".to_owned(),
        "status=202 attempts=1 keys=octo-org/octo-repo:1:1".to_owned(),
        "summary: sent 1 run(s) in 1 request(s); skipped 1 not completed, 1 too old".to_owned(),
        "exit_code=0".to_owned(),
    ] {
        assert!(log.contains(&expected), "log lacks {expected:?}:\n{log}");
    }
    assert!(!log.contains(API_KEY));
}

#[test]
fn compact_run_log_has_one_line_per_tag_set_with_every_point() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    // Runs 1 and 2 share tags and completion second (one summed point); run 3 has its own tags.
    let runs = [spec(1), spec(2), spec(3).branch("dev").ago(60)];
    let file = env.file("runs.json", fixtures::rest_page(&runs, now).to_string());
    env.send(&intake).arg(&file).run().expect_code(0);
    let log = &env.logs()[0];
    let lines: Vec<&str> = log.lines().filter(|line| line.starts_with("points ")).collect();
    let (main, dev) = (runs[0].completed_at(now), runs[2].completed_at(now));
    let tags = |branch: &str| {
        format!(
            "tags=repository_owner:octo-org,repository_name:octo-repo,workflow_name:ci,workflow_id:161335,\
             event:push,branch:{branch},conclusion:success,run_attempt:1"
        )
    };
    let expected = [
        format!(
            "points request=1 total={main}=2 conclusion.success_total={main}=2 duration_second={main}=300 \
             queued_duration_second={main}=15 {}",
            tags("main")
        ),
        format!(
            "points request=1 total={dev}=1 conclusion.success_total={dev}=1 duration_second={dev}=300 \
             queued_duration_second={dev}=15 {}",
            tags("dev")
        ),
    ];
    let mut lines = lines.into_iter().map(str::to_owned).collect::<Vec<_>>();
    lines.sort();
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(lines, expected, "{log}");
    assert!(!log.contains("series request="), "the compact log has no per-series lines:\n{log}");
    // What the log says is what Datadog was sent.
    assert_eq!(intake.total(TOTAL), 3.0);
}

#[test]
fn distributions_carry_every_runs_value_and_go_out_only_after_the_series() {
    let now = fixtures::now();
    // Two runs at the same point: the gauge shows the longer, the distribution both.
    let runs = [spec(1), spec(2)];
    let runs = [runs[0].clone(), fixtures::Spec { duration: 420, ..runs[1].clone() }];
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("runs.json", fixtures::rest_page(&runs, now).to_string());
    // Datadog takes the series but fails the distributions: nothing is marked, and the
    // invocation fails as for any request that was not accepted.
    intake.script_distributions([503, 503]);
    env.send(&intake).arg(&file).args(["--distributions", "--max-attempts", "2"]).run().expect_code(1);
    assert_eq!(intake.requests().len(), 1, "the series went out first");
    assert!(env.sent_keys().is_empty(), "marked although its distributions were not accepted");
    assert!(intake.distributions().is_empty());
    // The next invocation sends both; the series are the same points again.
    env.send(&intake).arg(&file).arg("--distributions").run().expect_code(0);
    assert_eq!(env.sent_keys().len(), 2);
    let durations = |metric: &str| -> Vec<f64> {
        let mut values: Vec<f64> = intake.distributions().into_iter().filter(|d| d.0 == metric).map(|d| d.3).collect();
        values.sort_by(f64::total_cmp);
        values
    };
    assert_eq!(durations("github.actions.workflow_run.duration_second.distribution"), [300.0, 420.0]);
    assert_eq!(durations("github.actions.workflow_run.queued_duration_second.distribution"), [15.0, 15.0]);
    let gauge: Vec<f64> = intake
        .stored()
        .into_iter()
        .filter(|p| p.metric == "github.actions.workflow_run.duration_second")
        .map(|p| p.value)
        .collect();
    assert_eq!(gauge, [420.0], "the gauge keeps the largest of the point");
    let (metric, tags, timestamp, _) = &intake.distributions()[0];
    assert!(metric.ends_with(".distribution"));
    assert_eq!(*timestamp, runs[0].completed_at(now));
    assert!(tags.contains(&"workflow_name:ci".to_owned()), "{tags:?}");
    assert!(
        intake.distribution_requests().iter().all(|(_, error)| error.is_none()),
        "{:?}",
        intake.distribution_requests()
    );
    // Without the flag: no distribution request at all.
    let other = env.file("other.json", fixtures::rest_page(&[spec(3)], now).to_string());
    let before = intake.distribution_requests().len();
    env.send(&intake).arg(&other).run().expect_code(0);
    assert_eq!(intake.distribution_requests().len(), before);
}
