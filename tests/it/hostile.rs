//! Bad input never panics and never damages the ledger; each case gets a clear message and a
//! documented exit code. Secrets stay secret.

use std::process::Command;

use crate::support::fixtures::{self, spec};
use crate::support::{Env, Intake, API_KEY, BIN};

/// A send that must not panic: exit code as expected, no "panicked" on stderr.
fn check(env: &Env, intake: &Intake, file: &str, code: i32, says: &str) -> String {
    let out = env.send(intake).arg(file).run();
    out.expect_code(code);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(out.stderr.contains(says), "expected {says:?} in:\n{}", out.stderr);
    out.stderr
}

#[test]
fn wrong_types_huge_numbers_and_year_0001_skip_only_their_run() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let good = fixtures::rest_run(&spec(1), now);
    let mut cases = Vec::new();
    for (field, value) in [
        ("id", serde_json::json!("12")),
        ("id", serde_json::json!(1e300)),
        ("id", serde_json::json!(-5)),
        ("run_attempt", serde_json::json!(99_999_999_999u64)),
        ("updated_at", serde_json::json!("0001-01-01T00:00:00Z")),
        ("updated_at", serde_json::json!("2024-13-45T99:00:00Z")),
        ("conclusion", serde_json::json!(["success"])),
        ("created_at", serde_json::json!({"at": 1})),
    ] {
        let mut run = fixtures::rest_run(&spec(100 + cases.len() as u64), now);
        run[field] = value;
        cases.push(run);
    }
    let mut all = vec![good];
    all.extend(cases);
    let file = env.file("hostile.json", serde_json::Value::Array(all).to_string());
    let out = env.send(&intake).arg(&file).args(["--output", "json"]).run();
    out.expect_code(3);
    assert_eq!(out.json()["invalid"], 8);
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:1:1"]);
    let log = &env.logs()[0];
    assert_eq!(log.matches("\ninvalid ").count(), 8, "{log}");
    assert!(log.contains("id: expected a positive integer, found the string \"12\""), "{log}");
}

#[test]
fn negative_durations_send_the_run_without_the_negative_metric() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    // Created after it started, and updated before it started: both happen in GitHub's data.
    let mut run = fixtures::rest_run(&spec(1), now);
    let time_ago = |seconds: i64| fixtures::rest_run(&spec(1).ago(seconds), now)["updated_at"].clone();
    // Completed 120 s ago, started 30 s ago, created 10 s ago.
    run["run_started_at"] = time_ago(30);
    run["created_at"] = time_ago(10);
    let file = env.file("negative.json", run.to_string());
    env.send(&intake).arg(&file).run().expect_code(0);
    let metrics: Vec<String> = intake.stored().into_iter().map(|p| p.metric).collect();
    assert!(metrics.contains(&"github.actions.workflow_run.total".to_owned()));
    assert!(!metrics.iter().any(|m| m.ends_with("duration_second")), "{metrics:?}");
}

#[test]
fn non_utf8_deep_nesting_and_duplicate_keys() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let mut bytes = b"{\"id\":1,\"name\":\"".to_vec();
    bytes.extend([0xff, 0xfe]);
    bytes.extend(b"\"}");
    let file = env.file("latin1.json", bytes);
    check(&env, &intake, &file, 3, "latin1.json");

    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let file = env.file("deep.json", deep);
    check(&env, &intake, &file, 3, "recursion limit");

    // Duplicate keys: the last one wins, like most JSON readers.
    let run = fixtures::rest_run(&spec(5), now).to_string();
    let doubled = run.replacen("{", "{\"id\":4,", 1);
    let file = env.file("dup.json", doubled);
    env.send(&intake).arg(&file).run().expect_code(0);
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:5:1"]);
}

#[test]
fn a_100_mb_single_line_is_read_without_trouble() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let mut run = fixtures::rest_run(&spec(1), now);
    run["display_title"] = serde_json::json!("x".repeat(100 * 1024 * 1024));
    let file = env.file("huge.json", format!("{run}\n"));
    env.send(&intake).arg(&file).run().expect_code(0);
    assert_eq!(env.sent_keys().len(), 1);
}

#[test]
fn unreadable_inputs_name_the_file() {
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("plain.json", "{}");
    // A path through a file: the OS refuses to open it (ENOTDIR), as root too.
    check(&env, &intake, &format!("{file}/runs.json"), 3, "cannot read");
}

#[test]
fn a_ledger_in_a_read_only_place_exits_4_before_sending() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("runs.json", fixtures::rest_run(&spec(1), now).to_string());
    // /proc refuses new folders even to root.
    let out = env
        .command(["send"])
        .no_defaults()
        .arg("--ledger")
        .arg("/proc/workflow-metrics/metrics.db")
        .arg("--log-dir")
        .arg(env.log_dir().to_str().unwrap())
        .arg("--api-url")
        .arg(intake.url())
        .var("DD_API_KEY", API_KEY)
        .arg(&file)
        .run();
    out.expect_code(4);
    assert!(out.stderr.contains("/proc/workflow-metrics"), "{}", out.stderr);
    assert!(intake.requests().is_empty());
}

#[test]
fn a_full_disk_for_the_run_log_is_reported_with_exit_1() {
    let now = fixtures::now();
    let env = Env::sqlite();
    let specs: Vec<_> = (1..=300).map(spec).collect();
    let file = env.file("runs.json", fixtures::rest_page(&specs, now).to_string());
    // RLIMIT_FSIZE of 16 KiB stands in for a full disk (EFBIG instead of ENOSPC); the dry run keeps
    // its ledger in memory, so the log is the only file written.
    let script = format!(
        "ulimit -f 16; trap '' XFSZ; exec '{BIN}' send --dry-run --ledger '{}' --log-dir '{}' '{file}'",
        env.ledger().display(),
        env.log_dir().display()
    );
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("run log") && stderr.contains("incomplete"), "{stderr}");
    assert!(stderr.contains("would send 300 run(s)"), "{stderr}");
}

#[test]
fn the_key_is_never_an_argument_nor_in_debug_output() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let out = env.command(["send", "--api-key", API_KEY, "x.json"]).run();
    out.expect_code(2);
    let file = env.file("runs.json", fixtures::rest_run(&spec(1), now).to_string());
    let out = env.send(&intake).arg("-vv").arg(&file).var("RUST_LOG", "trace").run();
    out.expect_code(0);
    assert!(out.stderr.len() > 1000, "trace output is on: {}", out.stderr.len());
    assert!(!out.stderr.contains(API_KEY), "the key leaked into debug output");
    assert!(!env.logs()[0].contains(API_KEY));
}
