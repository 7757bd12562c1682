//! Delivery that survives the real world: retries, bad requests, crashes, overlapping
//! invocations, signals. Faults are scripted in the stand-in intake; the binary runs for real.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::fixtures::{self, spec};
use crate::support::{kill, Env, Intake, Reply, API_KEY, BIN};

const TOTAL: &str = "github.actions.workflow_run.total";

/// `n` completed runs, each on its own branch, so every accepted point names its run.
pub(crate) fn tagged_runs(env: &Env, n: u64, name: &str) -> (String, BTreeSet<String>) {
    let now = fixtures::now();
    let mut text = String::new();
    let mut branches = BTreeSet::new();
    for id in 1..=n {
        let mut run = fixtures::rest_run(&spec(id), now);
        let branch = format!("b{id}");
        run["head_branch"] = serde_json::json!(branch);
        branches.insert(format!("branch:{branch}"));
        text.push_str(&run.to_string());
        text.push('\n');
    }
    (env.file(name, text), branches)
}

/// The branch tag of each accepted `total` point, with how often it arrived.
pub(crate) fn accepted_branches(intake: &Intake) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for point in intake.accepted().into_iter().filter(|p| p.metric == TOTAL) {
        let branch = point.tags.iter().find(|t| t.starts_with("branch:")).cloned().expect("branch tag");
        *seen.entry(branch).or_default() += 1;
    }
    seen
}

/// The branch tags of the runs the intake accepted, each once.
fn accepted_set(intake: &Intake) -> BTreeSet<String> {
    accepted_branches(intake).into_keys().collect()
}

pub(crate) fn spawn(env: &Env, intake: &Intake, args: &[&str]) -> Child {
    Command::new(BIN)
        .current_dir(env.dir.path())
        .arg("send")
        .args(args)
        .arg("--ledger")
        .arg(&env.ledger_arg)
        .arg("--log-dir")
        .arg(env.log_dir())
        .args(["--api-url", &intake.url(), "--retry-delay-ms", "1", "--retry-max-delay-ms", "4", "--jitter-seed", "3"])
        .env("DD_API_KEY", API_KEY)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

// 1. Transient failures are retried.
#[test]
fn transient_failures_are_retried_until_accepted() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, branches) = tagged_runs(&env, 3, "runs.ndjson");
    intake.script([
        Reply::status(503),
        Reply::Drop,
        Reply::status(429),
        Reply::status(408),
        Reply::with_header(500, "Retry-After", "0"),
    ]);
    let out = env.send(&intake).arg(&file).arg("--output").arg("json").run();
    out.expect_code(0);
    assert_eq!(out.json()["retries"], 5);
    assert_eq!(accepted_set(&intake), branches);
    assert!(env.logs()[0].contains("status=202 attempts=6"), "{}", env.logs()[0]);
}

#[test]
fn refused_connections_are_retried_then_left_unmarked() {
    let env = Env::new();
    let (file, _) = tagged_runs(&env, 2, "runs.ndjson");
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = env
        .command(["send"])
        .args(["--api-url", &format!("http://127.0.0.1:{port}"), "--max-attempts", "3", "--retry-delay-ms", "1"])
        .var("DD_API_KEY", API_KEY)
        .arg(&file)
        .run();
    out.expect_code(1);
    assert!(env.sent_keys().is_empty());
    assert!(env.logs()[0].contains("status=error attempts=3"), "{}", env.logs()[0]);
    assert_eq!(out.stderr.matches("retrying request").count(), 2, "{}", out.stderr);
}

#[test]
fn retry_after_and_rate_limit_reset_are_honoured() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, _) = tagged_runs(&env, 1, "runs.ndjson");
    intake.script([Reply::with_header(429, "Retry-After", "1"), Reply::with_header(429, "X-RateLimit-Reset", "1")]);
    let out = env.send(&intake).arg(&file).run();
    out.expect_code(0);
    // The jittered backoff is at most 4 ms here: a 1000 ms wait is the server's.
    assert_eq!(out.stderr.matches("delay_ms=1000").count(), 2, "{}", out.stderr);

    // A wait past the deadline is not waited for: the request fails at once.
    let env = Env::new();
    let (file, _) = tagged_runs(&env, 1, "runs.ndjson");
    intake.script([Reply::with_header(503, "Retry-After", "3600")]);
    let out = env.send(&intake).arg(&file).args(["--retry-deadline", "5"]).run();
    out.expect_code(1);
    assert!(env.logs()[0].contains("status=503 attempts=1"), "{}", env.logs()[0]);
}

// 2. 401 and 403 stop the whole invocation.
#[test]
fn forbidden_mid_run_stops_everything_and_marks_nothing_more() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, _) = tagged_runs(&env, 10, "runs.ndjson");
    intake.script([Reply::Delay(Duration::ZERO), Reply::status(401)]);
    let out = env.send(&intake).arg(&file).args(["--batch-size", "2", "--concurrency", "1"]).run();
    out.expect_code(5);
    assert_eq!(intake.requests().len(), 2, "nothing is sent after the 401");
    assert_eq!(env.sent_keys().len(), 2, "only the first request's runs are marked");
}

// 3. 413: split and retried.
#[test]
fn payload_too_large_is_split_and_sent() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, branches) = tagged_runs(&env, 8, "runs.ndjson");
    intake.script([Reply::status(413), Reply::status(413)]);
    env.send(&intake).arg(&file).args(["--concurrency", "1"]).run().expect_code(0);
    assert_eq!(accepted_set(&intake), branches);
    let statuses: Vec<u16> = intake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [413, 413, 202, 202, 202]);
}

// 4. 400: bisected to the runs Datadog rejects; those become dead letters.
#[test]
fn bad_request_is_bisected_to_dead_letters_and_requeued_on_demand() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, branches) = tagged_runs(&env, 9, "runs.ndjson");
    intake.poison("branch:b6");
    let out = env.send(&intake).arg(&file).args(["--output", "json"]).run();
    out.expect_code(3);
    assert_eq!(out.json()["dead_letters"], 1);
    assert_eq!(out.json()["sent"], 8);
    let accepted: BTreeSet<String> = accepted_branches(&intake).keys().cloned().collect();
    let expected: BTreeSet<String> = branches.iter().filter(|b| *b != "branch:b6").cloned().collect();
    assert_eq!(accepted, expected);
    assert!(!env.sent_keys().contains(&"octo-org/octo-repo:6:1".to_owned()));
    assert!(env.logs()[0].contains("skip dead_letter octo-org/octo-repo:6:1 reason=Datadog answered 400"));

    // Later invocations skip it ...
    let out = env.send(&intake).arg(&file).args(["--output", "json"]).run();
    out.expect_code(0);
    assert_eq!(out.json()["dead_before"], 1);
    // ... it is listed with Datadog's error ...
    let out = env.command(["ledger", "dead"]).run();
    out.expect_code(0);
    assert!(out.stdout.contains("octo-org/octo-repo:6:1") && out.stdout.contains("poisoned tag"), "{}", out.stdout);
    // ... and requeued on demand.
    env.command(["ledger", "requeue", "octo-org/octo-repo:6:1"]).run().expect_code(0);
    intake.poison("branch:none");
    env.send(&intake).arg(&file).run().expect_code(0);
    assert_eq!(env.sent_keys().len(), 9);
}

// 5. Circuit breaker.
#[test]
fn circuit_breaker_stops_after_consecutive_failures() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, branches) = tagged_runs(&env, 10, "runs.ndjson");
    intake.script((0..50).map(|_| Reply::status(500)));
    let out = env
        .send(&intake)
        .arg(&file)
        .args(["--batch-size", "1", "--concurrency", "1", "--max-attempts", "2", "--circuit-breaker", "3"])
        .run();
    out.expect_code(1);
    assert!(out.stderr.contains("3 consecutive requests failed"), "{}", out.stderr);
    assert_eq!(intake.requests().len(), 6, "3 requests of 2 attempts, then nothing");
    assert!(env.sent_keys().is_empty());
    intake.clear_script();
    env.send(&intake).arg(&file).run().expect_code(0);
    assert_eq!(accepted_set(&intake), branches);
}

// 6. Crash safety: kill -9 at many moments, then run to completion.
#[test]
fn kill_9_at_random_moments_loses_no_run() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, branches) = tagged_runs(&env, 1500, "runs.ndjson");
    let args = ["--batch-size", "25", "--concurrency", "2"];
    let mut rng = fastrand::Rng::with_seed(20261122);
    for round in 0..10 {
        // A shared ledger: the claims of a killed child lapse within two seconds.
        let mut child = spawn(&env, &intake, &[&file, args[0], args[1], args[2], args[3], "--claim-lease", "2"]);
        let pid = child.id();
        if round % 2 == 0 {
            // Killed while the intake holds the k-th request from now: before or after accepting it.
            let target = intake.requests().len() + rng.usize(0..6);
            let accept_first = rng.bool();
            intake.hook(Box::new(move |number| {
                if number == target {
                    kill(pid, "-9");
                    return accept_first;
                }
                true
            }));
        } else {
            // Killed at a random moment, whatever it is doing (reading, claiming, marking). The
            // sleep picks the moment; `Child::kill` never signals a pid that was reaped already.
            std::thread::sleep(Duration::from_millis(rng.u64(5..200)));
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        intake.clear_hook();
        assert!(status.code().is_none() || status.code() == Some(0), "round {round}: {status:?}");
        env.ledger_is_consistent();
    }
    // Run to completion.
    let out = env.send(&intake).arg(&file).args(args).run();
    out.expect_code(0);
    let accepted = accepted_branches(&intake);
    assert_eq!(accepted.keys().cloned().collect::<BTreeSet<_>>(), branches, "every run reached the intake");
    assert_eq!(env.sent_keys().len(), 1500, "and the ledger says so");
    // Duplicates only from requests in flight at a kill, and their points are identical.
    let mut by_branch: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
    for point in intake.accepted().into_iter().filter(|p| p.metric == TOTAL) {
        let branch = point.tags.iter().find(|t| t.starts_with("branch:")).unwrap().clone();
        by_branch.entry(branch).or_default().push((point.timestamp, point.value.to_bits()));
    }
    assert!(by_branch.values().all(|points| points.windows(2).all(|w| w[0] == w[1])));
    env.ledger_is_consistent();
}

// 7. Overlapping invocations share one ledger without sending a run twice.
#[test]
fn overlapping_invocations_send_each_run_once() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, branches) = tagged_runs(&env, 300, "runs.ndjson");
    intake.latency(Duration::from_millis(20));
    let args = [file.as_str(), "--batch-size", "10", "--concurrency", "2"];
    let first = spawn(&env, &intake, &args);
    let second = spawn(&env, &intake, &args);
    let (a, b) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    assert_eq!((a.status.code(), b.status.code()), (Some(0), Some(0)), "{a:?} {b:?}");
    let accepted = accepted_branches(&intake);
    assert_eq!(accepted.keys().cloned().collect::<BTreeSet<_>>(), branches);
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert_eq!(env.sent_keys().len(), 300);
}

#[test]
fn a_crashed_invocation_leaves_nothing_stuck() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, branches) = tagged_runs(&env, 20, "runs.ndjson");
    // Killed while its only request is in flight, holding the ledger.
    // A shared ledger: the claims of the killed child lapse within two seconds.
    let child = spawn(&env, &intake, &[&file, "--claim-lease", "2"]);
    intake.kill_on_arrival(child.id());
    child.wait_with_output().unwrap();
    intake.clear_hook();
    // The kernel released its lock: the next invocation starts at once and sends everything.
    env.send(&intake).arg(&file).args(["--lock-timeout", "0"]).run().expect_code(0);
    assert_eq!(accepted_set(&intake), branches);
    env.ledger_is_consistent();
}

#[test]
fn a_live_invocation_holds_the_ledger_until_it_ends() {
    let env = Env::sqlite();
    let intake = Intake::start();
    let (file, _) = tagged_runs(&env, 5, "runs.ndjson");
    let receiver = intake.arrivals();
    intake.latency(Duration::from_millis(1500));
    let first = spawn(&env, &intake, &[&file]);
    // Its request is at the intake: it holds the ledger now.
    receiver.recv().unwrap();
    let out = env.send(&intake).arg(&file).args(["--lock-timeout", "0"]).run();
    out.expect_code(4);
    assert!(out.stderr.contains("held by another invocation"), "{}", out.stderr);
    // One that waits gets the ledger once the first is done, and finds nothing left to send.
    let out = env.send(&intake).arg(&file).args(["--output", "json"]).run();
    out.expect_code(0);
    assert_eq!(out.json()["already_sent"], 5);
    assert_eq!(first.wait_with_output().unwrap().status.code(), Some(0));
    assert_eq!(intake.requests().len(), 1);
}

// 8. SIGTERM / SIGINT.
#[test]
fn sigterm_lets_the_request_in_flight_finish_and_exits_143() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, _) = tagged_runs(&env, 30, "runs.ndjson");
    let receiver = intake.arrivals();
    intake.latency(Duration::from_millis(300));
    let child = spawn(&env, &intake, &[&file, "--batch-size", "10", "--concurrency", "1"]);
    // The first request has reached the intake (which answers after its latency): signal now.
    assert_eq!(receiver.recv().unwrap(), 0);
    kill(child.id(), "-TERM");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(143), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(intake.requests().len(), 1, "no new request after the signal");
    assert_eq!(env.sent_keys().len(), 10, "the request in flight finished and was marked");
    let log = &env.logs()[0];
    assert!(log.contains("summary: sent 10 run(s)") && log.contains("stopped: signal (exit code 143)"), "{log}");
    assert!(log.contains("exit_code=143"));
}

#[test]
fn second_sigint_exits_at_once() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, _) = tagged_runs(&env, 5, "runs.ndjson");
    let receiver = intake.arrivals();
    // The intake would hold the request for a minute; the grace period is longer still.
    intake.latency(Duration::from_secs(60));
    let mut child = spawn(&env, &intake, &[&file, "--shutdown-grace", "300"]);
    receiver.recv().unwrap();
    kill(child.id(), "-INT");
    // Signals sent back to back may merge into one: wait until the first was taken.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("signal received") {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0, "stderr ended: {seen}");
        seen.push_str(&line);
    }
    kill(child.id(), "-INT");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(rest.contains("second signal"), "{rest}");
    assert!(env.sent_keys().is_empty(), "nothing confirmed, nothing marked");
}

// 9. At-most-once.
#[test]
fn at_most_once_marks_before_sending_and_never_duplicates() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, _) = tagged_runs(&env, 10, "runs.ndjson");
    // Killed while its request is in flight, not accepted: the runs are marked, so lost.
    let child = spawn(&env, &intake, &[&file, "--at-most-once"]);
    intake.kill_on_arrival(child.id());
    child.wait_with_output().unwrap();
    intake.clear_hook();
    assert_eq!(env.sent_keys().len(), 10);
    env.send(&intake).arg(&file).arg("--at-most-once").run().expect_code(0);
    assert!(intake.accepted().is_empty(), "at most once: never resent");

    // A request that fails for sure is unmarked, so the next invocation sends it.
    let env = Env::new();
    let (file, _) = tagged_runs(&env, 3, "runs.ndjson");
    intake.script([Reply::status(500)]);
    env.send(&intake).arg(&file).args(["--at-most-once", "--max-attempts", "1"]).run().expect_code(1);
    assert!(env.sent_keys().is_empty());
    env.send(&intake).arg(&file).arg("--at-most-once").run().expect_code(0);
    assert_eq!(env.sent_keys().len(), 3);
}
