//! `send --github`: runs fetched from a strict stand-in for GitHub's API, pass after pass, while
//! runs are created, complete and are re-run between passes.

use std::process::{Child, Command, Stdio};

use crate::support::fixtures;
use crate::support::github::{GhRun, GithubStandIn, GITHUB_TOKEN};
use crate::support::{Env, Intake, Output, Reply, API_KEY, BIN};

pub(crate) const REPO: &str = "octo-org/octo-repo";
const TOTAL: &str = "github.actions.workflow_run.total";

/// One cron pass over `REPO`.
pub(crate) fn pass(env: &Env, intake: &Intake, github: &GithubStandIn, extra: &[&str]) -> Output {
    env.send(intake)
        .args(["--github", REPO, "--github-api-url", &github.url(), "--since", "2h", "--output", "json"])
        .args(extra)
        .var("GITHUB_TOKEN", GITHUB_TOKEN)
        .run()
}

fn sent(out: &Output) -> u64 {
    out.json()["sent"].as_u64().unwrap()
}

#[test]
fn a_run_in_progress_over_many_passes_is_sent_once_after_it_completes() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add([
        GhRun::completed(REPO, 1, now - 1500),
        GhRun::in_progress(REPO, 2, now - 1400),
        GhRun::completed(REPO, 3, now - 1300),
    ]);
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 2);
    // The next pass learns the ETags of the listing and of the run in progress...
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 0);
    let spent = github.usage().2;
    // ...after which waiting for it costs nothing.
    for _ in 0..3 {
        assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 0, "still in progress");
    }
    assert_eq!(github.usage().2, spent, "a run in progress is watched with free 304s");
    github.update(2, |run| {
        run.status = "completed";
        run.conclusion = Some("failure");
        run.updated = now - 60;
    });
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 1);
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 0);
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:1:1", "octo-org/octo-repo:2:1", "octo-org/octo-repo:3:1"]);
    assert_eq!(intake.total(TOTAL), 3.0);
    // The repository's default branch is main, as the runs' branch: asked once, tagged on all.
    let points = intake.stored();
    let totals: Vec<_> = points.iter().filter(|p| p.metric == TOTAL).collect();
    assert!(totals.iter().all(|p| p.tags.contains(&"default_branch:true".to_owned())), "{totals:?}");
}

#[test]
fn five_thousand_new_runs_lose_none_to_the_thousand_result_cap() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    // A pass, then 5,000 runs created since, over 50 minutes, two or three a second.
    github.add([GhRun::completed(REPO, 1, now - 3400)]);
    assert_eq!(sent(pass(&env, &intake, &github, &["--historical"]).expect_code(0)), 1);
    github.reset_usage();
    github.add((0..5000).map(|i| GhRun::completed(REPO, 100_000 + i, now - 3300 + (i as i64 * 3000 / 5000))));
    let out = pass(&env, &intake, &github, &["--historical"]);
    out.expect_code(0);
    assert_eq!(sent(&out), 5000);
    assert_eq!(env.sent_keys().len(), 5001);
    assert_eq!(intake.total(TOTAL), 5001.0);
    // It had to split the time range: GitHub shows the first 1,000 results of a query only.
    // Each split costs one request (a range's first page), the rest is one request per 100 runs.
    let urls = github.urls();
    let ranges = urls.iter().filter(|url| url.contains("..") && !url.contains("&page=")).count();
    let (requests, _, _) = github.usage();
    eprintln!("5000 runs: {requests} requests, {ranges} of them first pages of time ranges");
    assert!(ranges >= 5, "{urls:?}");
    assert!(requests <= 50 + ranges as u64 + 1, "{requests} requests for 5,000 runs and {ranges} ranges");
    // A second pass finds nothing new to send.
    assert_eq!(sent(pass(&env, &intake, &github, &["--historical"]).expect_code(0)), 0);
}

#[test]
fn an_idle_repository_costs_no_quota_and_thirty_new_runs_one_request() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add((1..=5).map(|id| GhRun::completed(REPO, id, now - 2000 + id as i64)));
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 5);
    // The listing from the newest run on, once, to learn its ETag.
    pass(&env, &intake, &github, &[]).expect_code(0);
    let (requests, not_modified, spent) = github.usage();
    for _ in 0..3 {
        assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 0);
    }
    assert_eq!(github.usage(), (requests + 3, not_modified + 3, spent), "idle passes must cost no quota");
    // The rescan's listing, anchored on the cursor, is free too once it has its ETag.
    pass(&env, &intake, &github, &["--rescan-every", "0"]).expect_code(0);
    let (requests, not_modified, spent) = github.usage();
    for _ in 0..2 {
        assert_eq!(sent(pass(&env, &intake, &github, &["--rescan-every", "0"]).expect_code(0)), 0);
    }
    assert_eq!(github.usage(), (requests + 4, not_modified + 4, spent), "idle passes with rescans cost no quota");
    github.add((100..130).map(|id| GhRun::completed(REPO, id, now - 1000 + id as i64)));
    let before = github.usage().0;
    let out = pass(&env, &intake, &github, &[]);
    assert_eq!(sent(&out), 30);
    assert_eq!(github.usage().0, before + 1, "thirty new runs, one request");
    // The token's quota goes to Datadog as gauges after each pass, as GitHub stated it last.
    let quota = |name: &str| {
        let metric = format!("github.actions.api_rate_limit.{name}");
        let points: Vec<_> = intake.accepted().into_iter().filter(|point| point.metric == metric).collect();
        let last = points.last().unwrap_or_else(|| panic!("no {metric}")).clone();
        assert_eq!(last.tags, ["resource:core"]);
        last.value
    };
    let spent = github.usage().2 as f64;
    assert_eq!((quota("limit"), quota("remaining"), quota("used")), (5000.0, 5000.0 - spent, spent));
    assert!(env.logs().pop().unwrap().contains("quota resource=core limit=5000"));
}

#[test]
fn the_cursor_never_moves_past_a_run_that_was_not_sent() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add([GhRun::completed(REPO, 1, now - 2000)]);
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 1);
    // Two more runs, and Datadog fails: neither is sent, and the cursor must stay before both.
    github.add([GhRun::completed(REPO, 2, now - 1500), GhRun::completed(REPO, 3, now - 1400)]);
    intake.script((0..20).map(|_| Reply::status(503)));
    pass(&env, &intake, &github, &["--max-attempts", "1"]).expect_code(1);
    intake.clear_script();
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 2);
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:1:1", "octo-org/octo-repo:2:1", "octo-org/octo-repo:3:1"]);
}

#[test]
fn a_rerun_of_a_recent_run_is_sent_as_a_new_attempt() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add([GhRun::in_progress(REPO, 2, now - 2100), GhRun::completed(REPO, 1, now - 2000)]);
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 1);
    // Run 1 is re-run (same id, same creation time) while run 2, created before it and still in
    // progress, holds the cursor back.
    github.update(1, |run| {
        run.attempt = 2;
        run.started = now - 300;
        run.updated = now - 30;
    });
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 1);
    assert!(env.sent_keys().contains(&"octo-org/octo-repo:1:2".to_owned()));
}

#[test]
fn a_rerun_of_an_older_run_is_found_by_the_rescan() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add([GhRun::completed(REPO, 1, now - 2500), GhRun::completed(REPO, 2, now - 2400)]);
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 2);
    github.update(1, |run| {
        run.attempt = 2;
        run.started = now - 400;
        run.updated = now - 60;
    });
    // Created before the cursor: only a rescan lists it again, at most every --rescan-every.
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 0);
    let out = pass(&env, &intake, &github, &["--rescan-every", "0"]);
    assert_eq!(sent(out.expect_code(0)), 1);
    assert!(env.sent_keys().contains(&"octo-org/octo-repo:1:2".to_owned()));
    // The summary and the run log say what GitHub was asked.
    let summary = out.json();
    assert!(summary["github_requests"].as_u64().unwrap() >= 2, "{summary}");
    assert!(summary["github_quota_remaining"].as_u64().is_some(), "{summary}");
    let log = env.logs().pop().unwrap();
    assert!(log.contains("github GET http://") && log.contains("status=200"), "{log}");
    // With --rescan 0, never.
    github.update(1, |run| run.attempt = 3);
    assert_eq!(sent(pass(&env, &intake, &github, &["--rescan", "0", "--rescan-every", "0"]).expect_code(0)), 0);
}

#[test]
fn a_spent_rate_limit_is_waited_for_when_near_and_stops_the_pass_when_not() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add([GhRun::completed(REPO, 1, now - 1000)]);
    // One request left this hour: the listing is answered; the repository's default branch and
    // the rescan after it would be over (the first is best effort: the run goes out without it).
    github.set_quota(1, 3000);
    let out = pass(&env, &intake, &github, &[]);
    out.expect_code(1);
    assert!(out.stderr.contains("rate limit") && out.stderr.contains("--github-max-wait"), "{}", out.stderr);
    assert_eq!(github.usage().2, 1, "no request past the spent quota");
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:1:1"], "what was listed is sent");
    // Reset in two seconds, within --github-max-wait: the pass waits for it and goes on (one
    // request an hour: the listing, then the repository after the reset; no rescan).
    github.add([GhRun::completed(REPO, 2, now - 900)]);
    github.set_quota(1, 2);
    let out = pass(&env, &intake, &github, &["--github-max-wait", "10", "--rescan", "0"]);
    out.expect_code(0);
    assert_eq!(github.over_limit(), 0, "a request went out before the reset: {}", out.stderr);
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:1:1", "octo-org/octo-repo:2:1"]);
}

#[test]
fn a_secondary_rate_limit_is_waited_out_and_retried() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add([GhRun::completed(REPO, 1, now - 1000)]);
    github.secondary_limit(2);
    let out = pass(&env, &intake, &github, &[]);
    out.expect_code(0);
    assert_eq!(out.stderr.matches("retrying GitHub request").count(), 2, "{}", out.stderr);
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:1:1"]);
}

#[test]
fn an_organisation_is_fetched_repository_by_repository_with_filters() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    // 60 repositories: one page of GitHub's listing (150 would be two, listed whole every pass).
    for index in 0..58 {
        github.add_repo(&format!("acme/lib-{index:03}"), false);
    }
    github.add_repo("acme/api-gateway", false);
    github.add_repo("acme/api-legacy", true);
    github.add([
        GhRun::completed("acme/api-gateway", 1, now - 1000),
        GhRun::completed("acme/api-legacy", 2, now - 1000),
        GhRun::completed("acme/lib-007", 3, now - 1000),
        GhRun::completed("acme/lib-008", 4, now - 1000),
    ]);
    let org = |extra: &[&str]| {
        env.send(&intake)
            .args(["--github-org", "acme", "--github-api-url", &github.url(), "--since", "2h", "--output", "json"])
            .args(extra)
            .var("GITHUB_TOKEN", GITHUB_TOKEN)
            .run()
    };
    let out = org(&["--github-repos", "api-*", "--github-repos", "lib-00?", "--github-exclude", "lib-008"]);
    assert_eq!(sent(out.expect_code(0)), 2);
    assert_eq!(env.sent_keys(), ["acme/api-gateway:1:1", "acme/lib-007:3:1"], "archived and excluded left out");
    // Without filters, every repository that is not archived; the listing of repositories is
    // conditional too.
    let out = org(&[]);
    assert_eq!(sent(out.expect_code(0)), 1);
    assert!(env.sent_keys().contains(&"acme/lib-008:4:1".to_owned()));
    let before = github.usage();
    org(&[]).expect_code(0);
    let after = github.usage();
    assert_eq!(after.2, before.2 + 1, "idle repositories cost nothing; one request where a cursor just moved");
    assert_eq!(after.1 - before.1, 59, "58 idle repositories and the organisation's listing answered 304");
}

#[test]
fn a_github_app_buys_installation_tokens_and_renews_them_before_they_expire() {
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    // Tokens that live 30 s: less than the minute the client keeps in hand, so each request
    // renews it.
    github.install_app("4242", 77, 30);
    many_runs(&github, 150);
    let key = crate::support::data("github-app-test-key.pem");
    let app = |key: &std::path::Path| {
        env.send(&intake)
            .args(["--github", REPO, "--github-api-url", &github.url(), "--since", "2h", "--output", "json"])
            .args(["--github-app-id", "4242", "--github-app-key-file", key.to_str().unwrap()])
            .run()
    };
    let out = app(&key);
    assert_eq!(sent(out.expect_code(0)), 150);
    let (exchanges, tokens) = github.exchanges();
    assert!(exchanges >= 3, "two pages and a rescan, a token each: {exchanges}");
    let logs = env.logs().concat();
    for token in tokens {
        assert!(!out.stderr.contains(&token) && !logs.contains(&token), "{token} printed");
    }
    // A key that is not the App's: refused at the exchange, exit 2, nothing more sent.
    let out = app(&crate::support::data("github-app-wrong-key.pem"));
    out.expect_code(2);
    assert!(out.stderr.contains("GitHub App 4242") && out.stderr.contains("401"), "{}", out.stderr);
}

#[test]
fn github_outages_are_retried_and_a_lasting_one_leaves_the_cursor() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add([GhRun::completed(REPO, 1, now - 1000)]);
    github.fail_next(2);
    let out = pass(&env, &intake, &github, &[]);
    assert_eq!(sent(out.expect_code(0)), 1);
    assert_eq!(out.stderr.matches("retrying GitHub request").count(), 2, "{}", out.stderr);
    // An outage that outlasts the retries: exit 1, nothing lost for the next pass.
    github.add([GhRun::completed(REPO, 2, now - 900)]);
    github.fail_next(100);
    let out = pass(&env, &intake, &github, &["--max-attempts", "2"]);
    out.expect_code(1);
    assert!(out.stderr.contains("502"), "{}", out.stderr);
    github.fail_next(0);
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 1);
}

#[test]
fn the_token_and_the_api_root_come_from_where_github_actions_puts_them() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add([GhRun::completed(REPO, 1, now - 1000)]);
    // GH_TOKEN when GITHUB_TOKEN is not set, and the API root from GITHUB_API_URL.
    let out = env
        .send(&intake)
        .args(["--github", REPO, "--since", "2h", "--output", "json"])
        .var("GH_TOKEN", GITHUB_TOKEN)
        .var("GITHUB_API_URL", &github.url())
        .run();
    assert_eq!(sent(out.expect_code(0)), 1);
    // A token file when neither variable is set.
    github.add([GhRun::completed(REPO, 2, now - 900)]);
    let file = env.file("token", format!("{GITHUB_TOKEN}\n"));
    let out = env
        .send(&intake)
        .args(["--github", REPO, "--github-api-url", &github.url(), "--github-token-file", &file, "--output", "json"])
        .run();
    assert_eq!(sent(out.expect_code(0)), 1);
}

#[test]
fn with_jobs_each_new_run_goes_out_with_its_jobs_and_never_without() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add([GhRun::completed(REPO, 1, now - 1500), GhRun::completed(REPO, 2, now - 1400)]);
    let out = pass(&env, &intake, &github, &["--jobs"]);
    assert_eq!(sent(out.expect_code(0)), 2 + 4);
    assert!(env.sent_keys().contains(&"octo-org/octo-repo:job:110".to_owned()), "{:?}", env.sent_keys());
    assert_eq!(intake.total("github.actions.job.total"), 4.0);
    // The stand-in starts `test` 2 s after its run: measured from the run's start.
    let offsets: Vec<f64> = intake
        .stored()
        .into_iter()
        .filter(|p| p.metric == "github.actions.job.start_time_from_workflow_start_second")
        .filter(|p| p.tags.contains(&"job_name:test".to_owned()))
        .map(|p| p.value)
        .collect();
    assert_eq!(offsets, [2.0, 2.0], "one per run");
    // Listed again (the boundary run, a rescan): their jobs are not asked for again.
    let jobs_asked = |github: &GithubStandIn| github.urls().iter().filter(|url| url.contains("/jobs")).count();
    let before = jobs_asked(&github);
    assert_eq!(sent(pass(&env, &intake, &github, &["--jobs", "--rescan-every", "0"]).expect_code(0)), 0);
    assert_eq!(jobs_asked(&github), before);
    // A new run whose jobs cannot be fetched: neither it nor its jobs go out, and the next pass
    // sends both.
    github.add([GhRun::completed(REPO, 3, now - 1300)]);
    github.fail_jobs(100);
    pass(&env, &intake, &github, &["--jobs", "--max-attempts", "2"]).expect_code(1);
    assert!(!env.sent_keys().contains(&"octo-org/octo-repo:3:1".to_owned()), "a run went out without its jobs");
    github.fail_jobs(0);
    let out = pass(&env, &intake, &github, &["--jobs"]);
    assert_eq!(sent(out.expect_code(0)), 1 + 2);
    assert!(out.stderr.contains("sent 3 item(s) (1 run(s), 2 job(s), 0 step(s))"), "{}", out.stderr);
}

#[test]
fn with_jobs_a_job_goes_out_when_it_completes_while_its_run_goes_on() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    // In progress: its job `build` is done, `test` still runs.
    github.add([GhRun::in_progress(REPO, 7, now - 1500)]);
    assert_eq!(sent(pass(&env, &intake, &github, &["--jobs"]).expect_code(0)), 0);
    assert_eq!(sent(pass(&env, &intake, &github, &["--jobs"]).expect_code(0)), 1, "build, before its run ends");
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:job:710"]);
    // One more pass learns the run's own ETag (the listing had shown it until now).
    assert_eq!(sent(pass(&env, &intake, &github, &["--jobs"]).expect_code(0)), 0);
    let spent = github.usage().2;
    assert_eq!(sent(pass(&env, &intake, &github, &["--jobs"]).expect_code(0)), 0);
    assert_eq!(github.usage().2, spent, "nothing changed: the run and its jobs answered 304");
    github.update(7, |run| {
        run.status = "completed";
        run.conclusion = Some("success");
        run.updated = now - 60;
    });
    assert_eq!(sent(pass(&env, &intake, &github, &["--jobs"]).expect_code(0)), 2, "the run and test");
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:7:1", "octo-org/octo-repo:job:710", "octo-org/octo-repo:job:711"]);
}

const LOST: &str = "The self-hosted runner: runner-7 lost communication with the server. Verify the machine is running and has a healthy network connection. Anything in your workflow that terminates the runner process, starves it for CPU/Memory, or blocks its network access can cause this error.";
const SHUTDOWN: &str = "The runner has received a shutdown signal. This can happen when the runner service is stopped, or a manually started runner is canceled.";

#[test]
fn runner_errors_are_read_from_failed_jobs_annotations_once_per_failed_job() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    let annotations_asked =
        |github: &GithubStandIn| github.urls().iter().filter(|url| url.contains("/annotations")).count();
    // Run 1: `build` lost its runner; run 2: `build` failed on its own. Successful jobs cost
    // no annotation request.
    github.add([GhRun::completed(REPO, 1, now - 1500), GhRun::completed(REPO, 2, now - 1400)]);
    github.fail_job(110, &["Process completed with exit code 1.", LOST]);
    github.fail_job(210, &["Process completed with exit code 1."]);
    assert_eq!(sent(pass(&env, &intake, &github, &["--jobs"]).expect_code(0)), 2 + 4);
    assert_eq!(annotations_asked(&github), 2, "{:?}", github.urls());
    assert_eq!(intake.total("github.actions.job.lost_communication_with_server_error_total"), 1.0);
    assert_eq!(intake.total("github.actions.job.conclusion.failure_total"), 2.0);
    let lost: Vec<Vec<String>> = intake
        .stored()
        .into_iter()
        .filter(|p| p.metric == "github.actions.job.lost_communication_with_server_error_total")
        .map(|p| p.tags)
        .collect();
    assert!(lost.len() == 1 && lost[0].contains(&"job_name:build".to_owned()), "{lost:?}");
    assert_eq!(intake.total("github.actions.job.received_shutdown_signal_error_total"), 0.0);

    // A run under way whose `build` was shut down: asked once while the run goes on, not again
    // when the run completes.
    github.add([GhRun::in_progress(REPO, 7, now - 1300)]);
    github.fail_job(710, &[SHUTDOWN]);
    assert_eq!(sent(pass(&env, &intake, &github, &["--jobs"]).expect_code(0)), 0);
    assert_eq!(sent(pass(&env, &intake, &github, &["--jobs"]).expect_code(0)), 1, "build, before its run ends");
    assert_eq!(intake.total("github.actions.job.received_shutdown_signal_error_total"), 1.0);
    let asked = annotations_asked(&github);
    github.update(7, |run| {
        run.status = "completed";
        run.conclusion = Some("failure");
        run.updated = now - 60;
    });
    assert_eq!(sent(pass(&env, &intake, &github, &["--jobs"]).expect_code(0)), 2, "the run and test");
    assert_eq!(annotations_asked(&github), asked, "build's annotations were asked already");
    assert_eq!(intake.total("github.actions.job.received_shutdown_signal_error_total"), 1.0);

    // A token without `checks: read`: the failed job goes out without runner error counts, and
    // the user is told why.
    github.add([GhRun::completed(REPO, 3, now - 1200)]);
    github.fail_job(310, &[LOST]);
    github.refuse_annotations();
    let out = pass(&env, &intake, &github, &["--jobs"]);
    assert_eq!(sent(out.expect_code(0)), 1 + 2);
    assert!(out.stderr.contains("checks: read"), "{}", out.stderr);
    assert_eq!(intake.total("github.actions.job.lost_communication_with_server_error_total"), 1.0);
}

#[test]
fn a_missing_or_rejected_token_stops_before_anything_is_sent() {
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    github.add([GhRun::completed(REPO, 1, fixtures::now() - 1000)]);
    let out = env.send(&intake).args(["--github", REPO, "--github-api-url", &github.url()]).run();
    out.expect_code(2);
    assert!(out.stderr.contains("GITHUB_TOKEN") && out.stderr.contains("GH_TOKEN"), "{}", out.stderr);
    github.reject_token();
    let out = pass(&env, &intake, &github, &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("GITHUB_TOKEN") && out.stderr.contains("actions: read"), "{}", out.stderr);
    assert!(!out.stderr.contains(GITHUB_TOKEN) && !env.logs().concat().contains(GITHUB_TOKEN));
    assert!(intake.requests().is_empty());
    assert!(env.sent_keys().is_empty());
}

/// A pass as a child process, to run two at once or to kill one.
pub(crate) fn spawn_pass(env: &Env, intake: &Intake, github: &GithubStandIn, extra: &[&str]) -> Child {
    Command::new(BIN)
        .current_dir(env.dir.path())
        .args(["send", "--github", REPO, "--github-api-url", &github.url(), "--since", "2h"])
        .args(["--api-url", &intake.url(), "--retry-delay-ms", "1", "--retry-max-delay-ms", "4"])
        .arg("--ledger")
        .arg(&env.ledger_arg)
        .arg("--log-dir")
        .arg(env.log_dir())
        .args(extra)
        .env("DD_API_KEY", API_KEY)
        .env("GITHUB_TOKEN", GITHUB_TOKEN)
        .env_remove("RUST_LOG")
        .env_remove("GH_TOKEN")
        .env_remove("GITHUB_API_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// `count` (at most 1,000) completed runs created a second apart, completed within the last 30
/// minutes: each has a point of its own, well inside Datadog's window.
fn many_runs(github: &GithubStandIn, count: u64) {
    let now = fixtures::now();
    github.add((0..count).map(|i| GhRun::completed(REPO, 1000 + i, now - 2100 + i as i64)));
}

#[test]
fn a_dry_run_calls_github_but_never_datadog_and_moves_no_cursor() {
    let env = Env::sqlite();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    many_runs(&github, 30);
    let out = env
        .command(["send", "--dry-run", "--github", REPO, "--github-api-url", &github.url(), "--since", "2h"])
        .args(["--output", "json"])
        .var("GITHUB_TOKEN", GITHUB_TOKEN)
        .run();
    out.expect_code(0);
    assert_eq!(out.json()["would_send"], 30);
    assert!(github.usage().0 >= 1 && intake.requests().is_empty());
    assert!(!env.ledger().exists(), "a dry run wrote the ledger");
    // The live pass after it starts from the same place and sends everything.
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)), 30);
}

#[test]
fn overlapping_passes_over_one_repository_send_each_run_once() {
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    many_runs(&github, 300);
    intake.latency(std::time::Duration::from_millis(20));
    let args = ["--batch-size", "10", "--concurrency", "2"];
    let (first, second) = (spawn_pass(&env, &intake, &github, &args), spawn_pass(&env, &intake, &github, &args));
    let (a, b) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    assert_eq!((a.status.code(), b.status.code()), (Some(0), Some(0)), "{a:?} {b:?}");
    let accepted: Vec<_> = intake.accepted().into_iter().filter(|point| point.metric == TOTAL).collect();
    assert_eq!(accepted.len(), 300, "each run's point written once");
    assert_eq!(env.sent_keys().len(), 300);
}

#[test]
fn a_pass_killed_at_any_moment_loses_no_run() {
    let env = Env::new();
    let intake = Intake::start();
    let github = GithubStandIn::start();
    many_runs(&github, 200);
    for arrival in [0, 3, 7] {
        // Killed (kill -9) as its request `arrival` (counted from 0) reaches the intake.
        // A shared ledger: the claims of a killed pass lapse within two seconds.
        let child =
            spawn_pass(&env, &intake, &github, &["--batch-size", "10", "--concurrency", "1", "--claim-lease", "2"]);
        let pid = child.id();
        let seen = std::sync::atomic::AtomicUsize::new(0);
        // In the intake's handler, before it answers: the request is in flight when it dies.
        intake.hook(Box::new(move |_| {
            if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == arrival {
                crate::support::kill(pid, "-9");
                return false;
            }
            true
        }));
        child.wait_with_output().unwrap();
        intake.clear_hook();
        env.ledger_is_consistent();
    }
    let before = env.sent_keys().len();
    assert!(before < 200, "the kills left runs to send");
    assert_eq!(sent(pass(&env, &intake, &github, &[]).expect_code(0)) as usize, 200 - before);
    assert_eq!(env.sent_keys().len(), 200);
    // Resent runs (those in flight at a kill) wrote the same points: each stored once.
    assert_eq!(intake.total(TOTAL), 200.0);
}
