//! A ledger many invocations share (PostgreSQL, always: these tests are about many writers):
//! concurrent invocations split the work and send each run once, a killed one's claims lapse,
//! a restarted database loses nothing, and the password is never shown.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::reliability::{accepted_branches, spawn, tagged_runs};
use crate::support::postgres::{self, without_password};
use crate::support::{Env, Intake};

/// What a child wrote on stdout as JSON (`--output json`).
fn summary(output: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr)))
}

fn spawn_json(env: &Env, intake: &Intake, args: &[&str]) -> std::process::Child {
    let mut command = spawn_command(env, intake, args);
    command.spawn().expect("spawn")
}

/// `spawn`'s command, with stdout kept (the JSON summary).
fn spawn_command(env: &Env, intake: &Intake, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(crate::support::BIN);
    command
        .current_dir(env.dir.path())
        .arg("send")
        .args(args)
        .args(["--output", "json", "--ledger", &env.ledger_arg])
        .arg("--log-dir")
        .arg(env.log_dir())
        .args(["--api-url", &intake.url(), "--retry-delay-ms", "1", "--retry-max-delay-ms", "4"])
        .env("DD_API_KEY", crate::support::API_KEY)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

#[test]
fn four_invocations_over_twenty_thousand_runs_send_each_once_and_split_the_work() {
    let env = Env::postgres();
    let intake = Intake::start();
    let (file, branches) = tagged_runs(&env, 20_000, "runs.ndjson");
    // Datadog, not the input, is what bounds one invocation (as it does in production): then
    // four take turns. One alone would take 80 requests x 150 ms.
    intake.latency(Duration::from_millis(150));
    let args = [file.as_str(), "--batch-size", "250", "--concurrency", "1"];
    let children: Vec<_> = (0..4).map(|_| spawn_json(&env, &intake, &args)).collect();
    let outputs: Vec<_> = children.into_iter().map(|child| child.wait_with_output().unwrap()).collect();
    let mut shares = Vec::new();
    for output in &outputs {
        assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
        let summary = summary(output);
        shares.push(summary["sent"].as_u64().unwrap());
        assert_eq!(summary["sent"].as_u64().unwrap() + summary["already_sent"].as_u64().unwrap(), 20_000, "{summary}");
    }
    assert_eq!(shares.iter().sum::<u64>(), 20_000, "each run sent by exactly one invocation: {shares:?}");
    assert!(shares.iter().all(|share| *share > 0), "every invocation took a share: {shares:?}");
    let accepted = accepted_branches(&intake);
    assert_eq!(accepted.len(), 20_000);
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {:?}", &twice[..twice.len().min(5)]);
    assert_eq!(accepted.keys().cloned().collect::<BTreeSet<_>>(), branches);
    assert_eq!(env.sent_keys().len(), 20_000);
    env.ledger_is_consistent();
}

#[test]
fn a_killed_invocations_claims_lapse_and_a_later_one_sends_the_rest() {
    let env = Env::postgres();
    let intake = Intake::start();
    let (file, branches) = tagged_runs(&env, 200, "runs.ndjson");
    // Killed the moment its first request arrives: it holds the claims of what it dispatched.
    let child = spawn(&env, &intake, &[&file, "--batch-size", "50", "--concurrency", "2", "--claim-lease", "5"]);
    intake.kill_on_arrival(child.id());
    child.wait_with_output().unwrap();
    intake.clear_hook();
    // Others started meanwhile send what is free and leave the held points to their holder:
    // they finish, without waiting for its lease.
    let others: Vec<_> =
        (0..2).map(|_| spawn_json(&env, &intake, &[&file, "--batch-size", "50", "--claim-wait", "0"])).collect();
    let (mut left, mut sent) = (0, 0);
    for other in others {
        let output = other.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
        left = left.max(summary(&output)["claimed_elsewhere"].as_u64().unwrap());
        sent += summary(&output)["sent"].as_u64().unwrap();
    }
    assert!(left > 0, "the killed invocation held claims");
    assert_eq!(env.sent_keys().len() as u64, sent);
    assert!(sent < 200, "{sent}");
    // A later invocation waits for the lapsed lease (5 s: long enough that the others, even slowed
    // by a busy machine, still find the claims held) and sends the rest.
    let out = env.send(&intake).arg(&file).args(["--output", "json"]).run();
    out.expect_code(0);
    sent += out.json()["sent"].as_u64().unwrap();
    assert_eq!(sent, 200, "the survivors sent each run once");
    assert_eq!(env.sent_keys().len(), 200);
    let accepted = accepted_branches(&intake);
    assert_eq!(accepted.keys().cloned().collect::<BTreeSet<_>>(), branches);
    // A request of the killed one that reached Datadog unmarked is sent again: the same points,
    // which Datadog keeps once (the last write of identical values).
    let mut values: std::collections::BTreeMap<(String, Vec<String>, i64), f64> = Default::default();
    for point in intake.accepted() {
        let previous = values.insert((point.metric.clone(), point.tags.clone(), point.timestamp), point.value);
        assert!(previous.is_none_or(|value| value == point.value), "a resend changed {point:?}");
    }
    env.ledger_is_consistent();
}

#[test]
fn a_database_restarted_in_the_middle_of_a_send_loses_nothing() {
    let env = Env::postgres();
    let intake = Intake::start();
    let (file, branches) = tagged_runs(&env, 300, "runs.ndjson");
    let receiver = intake.arrivals();
    intake.latency(Duration::from_millis(100));
    let child = spawn_json(&env, &intake, &[&file, "--batch-size", "20", "--concurrency", "1"]);
    // Its first request is at the intake: the database goes away under it, and comes back.
    assert_eq!(receiver.recv().unwrap(), 0);
    postgres::restart();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(summary(&output)["sent"], 300);
    let accepted = accepted_branches(&intake);
    assert_eq!(accepted.keys().cloned().collect::<BTreeSet<_>>(), branches);
    assert!(accepted.values().all(|n| *n == 1), "a run sent twice");
    assert_eq!(env.sent_keys().len(), 300);
}

#[test]
fn a_restart_while_the_look_ups_claims_and_marks_beside_the_pipeline_run_loses_nothing() {
    let env = Env::postgres();
    let intake = Intake::start();
    // Three chunks of input and many requests: past the first requests and chunks, look-ups,
    // claims and marks run on their own connections, which the restart cuts too.
    let (file, branches) = tagged_runs(&env, 3_000, "runs.ndjson");
    let receiver = intake.arrivals();
    intake.latency(Duration::from_millis(20));
    let child = spawn_json(&env, &intake, &[&file, "--batch-size", "50", "--concurrency", "2"]);
    for _ in 0..10 {
        receiver.recv().unwrap();
    }
    postgres::restart();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("unreachable; retrying"), "the restart cut a connection in use: {stderr}");
    assert_eq!(summary(&output)["sent"], 3_000);
    let accepted = accepted_branches(&intake);
    assert_eq!(accepted.keys().cloned().collect::<BTreeSet<_>>(), branches);
    assert!(accepted.values().all(|n| *n == 1), "a run sent twice");
    assert_eq!(env.sent_keys().len(), 3_000);
    env.ledger_is_consistent();
}

#[test]
fn the_password_is_never_shown_and_a_wrong_one_is_a_clear_error() {
    let env = Env::postgres();
    let intake = Intake::start();
    let (shown, password) = without_password(&env.ledger_arg);
    let (file, _) = tagged_runs(&env, 3, "runs.ndjson");
    let out = env.send(&intake).arg(&file).run();
    out.expect_code(0);
    let log = env.logs().concat();
    assert!(log.contains(&format!("ledger: {shown}")), "{log}");
    // check: the connection, the schema version, the permissions.
    let out =
        env.command(["check"]).var("DD_API_KEY", crate::support::API_KEY).arg("--api-url").arg(intake.url()).run();
    out.expect_code(0);
    assert!(
        out.stderr.contains(&shown)
            && out.stderr.contains(&format!("schema {}", workflow_metrics::ledger::PG_SCHEMA_VERSION)),
        "{}",
        out.stderr
    );
    for text in [&out.stdout, &out.stderr, &log] {
        assert!(!text.contains(&password), "the password was shown");
    }
    // The password from PGPASSWORD, as libpq users expect.
    let out = env
        .command(["ledger", "list", "--state", "sent"])
        .no_defaults()
        .args(["--ledger", &shown])
        .var("PGPASSWORD", &password)
        .run();
    out.expect_code(0);
    assert_eq!(out.stdout.lines().count(), 3);
    // A wrong password: a clear error, exit 4, and neither password shown.
    let wrong = env.ledger_arg.replace(&password, "not-the-password");
    let out = env.send(&intake).no_defaults().arg(&file).args(["--ledger", &wrong, "--log-dir", "log"]).run();
    out.expect_code(4);
    assert!(out.stderr.contains(&shown) && out.stderr.contains("password"), "{}", out.stderr);
    assert!(!out.stderr.contains("not-the-password") && !out.stderr.contains(&password), "{}", out.stderr);
    // And --help shows no value from the environment.
    let out = env.command(["send", "--help"]).var("WORKFLOW_METRICS_LEDGER", &env.ledger_arg).run();
    assert!(!out.stdout.contains(&password), "--help showed the ledger URL from the environment");
}

#[test]
fn check_names_a_permission_the_ledger_lacks() {
    let env = Env::postgres();
    let intake = Intake::start();
    // The ledger exists (made by its owner); a reader may only read it.
    env.command(["ledger", "list"]).run();
    let (file, _) = tagged_runs(&env, 1, "runs.ndjson");
    env.send(&intake).arg(&file).run().expect_code(0);
    let role = format!("wm_reader_{:08x}", fastrand::u32(..));
    let database = env.ledger_arg.rsplit('/').next().unwrap().to_owned();
    postgres::admin(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'reader-pass'; GRANT CONNECT ON DATABASE {database} TO {role}"
    ));
    postgres::execute(&env.ledger_arg, &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"));
    let (shown, _) = without_password(&env.ledger_arg);
    let reader = shown.replacen("postgres://postgres@", &format!("postgres://{role}:reader-pass@"), 1);
    let out = env
        .command(["check"])
        .no_defaults()
        .args(["--ledger", &reader, "--api-url", &intake.url()])
        .var("DD_API_KEY", crate::support::API_KEY)
        .run();
    out.expect_code(4);
    assert!(out.stderr.contains("permission"), "{}", out.stderr);
    assert!(!out.stderr.contains("reader-pass"), "{}", out.stderr);
    // Reading is what it may do.
    let out = env.command(["ledger", "list", "--state", "sent"]).no_defaults().args(["--ledger", &reader]).run();
    out.expect_code(0);
    assert_eq!(out.stdout.lines().count(), 1);
}

#[test]
fn a_sqlite_ledger_moves_into_postgres_with_export_and_import() {
    let now = crate::support::fixtures::now();
    let sqlite = Env::sqlite();
    let intake = Intake::start();
    // Sent runs, one run Datadog rejects (a dead letter) and one too old.
    let (file, _) = tagged_runs(&sqlite, 30, "runs.ndjson");
    intake.poison("branch:b7");
    sqlite.send(&intake).arg(&file).run();
    let old = crate::support::fixtures::spec(99).ago(2 * 3600);
    let old_file = sqlite.file("old.json", crate::support::fixtures::rest_run(&old, now).to_string());
    sqlite.send(&intake).arg(&old_file).run().expect_code(0);
    let export = sqlite.command(["ledger", "export"]).run();
    export.expect_code(0);
    assert!(export.stderr.contains("exported 29 sent item(s), 2 skipped"), "{}", export.stderr);
    let exported = sqlite.file("ledger.ndjson", &export.stdout);

    let postgres = Env::postgres();
    for _ in 0..2 {
        let out = postgres.command(["ledger", "import"]).arg(&exported).run();
        out.expect_code(0);
        assert!(out.stderr.contains("imported 29 sent item(s), 2 skipped"), "{}", out.stderr);
    }
    for state in ["sent", "too-old", "dead"] {
        let list = |env: &Env| env.command(["ledger", "list", "--state", state]).run().stdout;
        assert_eq!(list(&postgres), list(&sqlite), "{state}");
    }
    assert_eq!(postgres.command(["ledger", "dead"]).run().stdout, sqlite.command(["ledger", "dead"]).run().stdout);
    // The PostgreSQL ledger knows what was sent: nothing goes out twice.
    intake.poison("branch:none");
    let out = postgres.send(&intake).arg(&file).args(["--output", "json"]).run();
    out.expect_code(0);
    assert_eq!((out.json()["already_sent"].as_u64(), out.json()["dead_before"].as_u64()), (Some(29), Some(1)));
    // A line that is not an exported row: named, exit 3.
    let bad = postgres.file("bad.ndjson", "{\"kind\":\"sent\",\"key\":\"x\"}\n");
    let out = postgres.command(["ledger", "import"]).arg(&bad).run();
    out.expect_code(3);
    assert!(out.stderr.contains("bad.ndjson line 1"), "{}", out.stderr);
}

#[test]
fn a_repository_is_polled_by_one_invocation_at_a_time() {
    use crate::github::{pass, spawn_pass, REPO};
    use crate::support::github::{GhRun, GithubStandIn};
    let now = crate::support::fixtures::now();
    let env = Env::postgres();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add((1..=30).map(|id| GhRun::completed(REPO, id, now - 1800 + id as i64)));
    // The first pass holds the repository while its requests are slow to be answered.
    let receiver = intake.arrivals();
    intake.latency(Duration::from_millis(500));
    let first = spawn_pass(&env, &intake, &github, &["--batch-size", "10", "--concurrency", "1"]);
    assert_eq!(receiver.recv().unwrap(), 0);
    // A second one meanwhile leaves the repository to it: no GitHub request, nothing sent.
    let out = pass(&env, &intake, &github, &[]);
    out.expect_code(0);
    assert_eq!(
        (out.json()["sent"].as_u64(), out.json()["github_requests"].as_u64()),
        (Some(0), Some(0)),
        "{}",
        out.stdout
    );
    assert!(env.logs().iter().any(|log| log.contains("is being polled by another invocation")));
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(env.sent_keys().len(), 30);
    // Once the first has ended, the repository is free again.
    intake.latency(Duration::ZERO);
    pass(&env, &intake, &github, &[]).expect_code(0);
    assert!(!env.logs().last().unwrap().contains("being polled by another invocation"));
}
