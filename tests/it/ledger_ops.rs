//! The ledger subcommands operators reach for when numbers look wrong: `stats`, `list` with
//! filters, `forget` (then a send sends again what was forgotten), through the real binary, on
//! both ledgers.

use crate::support::fixtures::{self, spec, Spec};
use crate::support::{Env, Intake};

/// Two runs of octo-org/octo-repo, one of octo-org/other, one too old to send, one that
/// Datadog refuses (a dead letter), sent once. The file, and the time the runs were made at.
fn sent_ledger(env: &Env, intake: &Intake) -> (String, i64) {
    let runs = vec![
        spec(1),
        Spec { completed_ago: 900, ..spec(2) },
        Spec { repo: "octo-org/other", ..spec(3) },
        Spec { completed_ago: 3 * 86_400, ..spec(4) },
        Spec { branch: "poison", ..spec(5) },
    ];
    let now = fixtures::now();
    let file = env.file("runs.json", fixtures::rest_page(&runs, now).to_string());
    intake.poison("branch:poison");
    let out = env.send(intake).arg(&file).run();
    out.expect_code(3);
    intake.clear_poison();
    (file, now)
}

#[test]
fn stats_count_by_state_and_repository() {
    let env = Env::new();
    let intake = Intake::start();
    let (_, now) = sent_ledger(&env, &intake);
    let out = env.command(["ledger", "stats", "--output", "json"]).run();
    out.expect_code(0);
    let stats = out.json();
    assert_eq!(stats["total"]["sent"]["items"], 3, "{stats}");
    assert_eq!(stats["total"]["too_old"]["items"], 1);
    assert_eq!(stats["total"]["dead"]["items"], 1);
    assert_eq!(stats["total"]["sent"]["oldest"], now - 900);
    assert_eq!(stats["total"]["sent"]["newest"], now - 120);
    assert_eq!(stats["repositories"]["octo-org/octo-repo"]["sent"]["items"], 2);
    assert_eq!(stats["repositories"]["octo-org/octo-repo"]["dead"]["items"], 1);
    assert_eq!(stats["repositories"]["octo-org/other"]["sent"]["items"], 1);
    assert!(stats["size_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["claims"].is_null() || stats["claims"] == 0, "no claims live after a send: {stats}");
    let text = env.command(["ledger", "stats"]).run();
    text.expect_code(0);
    assert!(text.stdout.contains("repositories (2):") && text.stdout.contains("octo-org/other"), "{}", text.stdout);
}

#[test]
fn list_narrows_by_repository_and_time() {
    let env = Env::new();
    let intake = Intake::start();
    sent_ledger(&env, &intake);
    let keys = |args: &[&str]| {
        let out = env.command(["ledger", "list"]).args(args).run();
        out.expect_code(0);
        out.stdout.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(keys(&["--repository", "octo-org/other"]), ["octo-org/other:3:1"]);
    assert_eq!(keys(&["--repository", "Octo-Org/Octo-Repo", "--since", "10m"]), ["octo-org/octo-repo:1:1"]);
    assert_eq!(keys(&["--until", "10m"]), ["octo-org/octo-repo:2:1"]);
    assert_eq!(keys(&["--state", "dead"]), ["octo-org/octo-repo:5:1"]);
    let out = env.command(["ledger", "list", "--state", "too-old", "--output", "json"]).run();
    let row: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(row["key"], "octo-org/octo-repo:4:1");
    assert_eq!(row["state"], "too_old");
    let out = env.command(["ledger", "list", "--since", "last tuesday"]).run();
    out.expect_code(2);
    assert!(out.stderr.contains("--since \"last tuesday\""), "{}", out.stderr);
}

#[test]
fn forgotten_items_are_sent_again_and_nothing_is_forgotten_unasked() {
    let env = Env::new();
    let intake = Intake::start();
    let (file, _) = sent_ledger(&env, &intake);
    let before = env.sent_keys();
    // A preview changes nothing; without --yes and without a terminal, nothing either.
    let out = env.command(["ledger", "forget", "--repository", "octo-org/octo-repo", "--dry-run"]).run();
    out.expect_code(0);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["octo-org/octo-repo:1:1", "octo-org/octo-repo:2:1", "octo-org/octo-repo:5:1"]
    );
    let out = env.command(["ledger", "forget", "--repository", "octo-org/octo-repo"]).run();
    out.expect_code(2);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    assert_eq!(env.sent_keys(), before);
    assert_eq!(env.command(["ledger", "forget"]).run().code, 2, "forgetting everything is refused");
    // Forget one repository's sent items since 10 minutes ago: run 1 only.
    let out = env
        .command([
            "ledger",
            "forget",
            "--repository",
            "octo-org/octo-repo",
            "--since",
            "10m",
            "--state",
            "sent",
            "--yes",
        ])
        .run();
    out.expect_code(0);
    assert!(out.stderr.contains("forgot 1 sent item(s) and 0 dead letter(s)"), "{}", out.stderr);
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:2:1", "octo-org/other:3:1"]);
    // The dead letter, by key.
    env.command(["ledger", "forget", "octo-org/octo-repo:5:1", "--yes"]).run().expect_code(0);
    assert!(env.command(["ledger", "dead"]).run().stdout.trim().is_empty());
    // The next send sends what was forgotten, and only that.
    let requests = intake.requests().len();
    let out = env.send(&intake).args(["--output", "json"]).arg(&file).run();
    out.expect_code(0);
    assert_eq!(out.json()["sent"], 2, "{}", out.stderr);
    assert_eq!(intake.requests().len(), requests + 1);
    assert_eq!(env.sent_keys().len(), 5 - 1, "all but the too-old one");
}
