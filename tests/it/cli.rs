//! The command line: exit codes, configuration errors, `check`, help and secrets.

use crate::support::fixtures::{self, spec};
use crate::support::{Env, Intake, API_KEY};

#[test]
fn live_run_without_a_key_fails_before_doing_anything() {
    let env = Env::sqlite();
    let file = env.file("runs.json", fixtures::rest_run(&spec(1), fixtures::now()).to_string());
    let out = env.command(["send"]).arg(&file).run();
    out.expect_code(2);
    assert!(out.stderr.contains("DD_API_KEY") && out.stderr.contains("--api-key-file"), "{}", out.stderr);
    assert!(!env.ledger().exists());
    assert!(env.logs().is_empty());
}

#[test]
fn api_key_file_works_and_the_key_is_not_printed() {
    let env = Env::new();
    let intake = Intake::start();
    let key_file = env.file("key", format!("{API_KEY}\n"));
    let file = env.file("runs.json", fixtures::rest_run(&spec(1), fixtures::now()).to_string());
    let out = env
        .command(["send", "-v"])
        .arg("--api-url")
        .arg(intake.url())
        .arg("--api-key-file")
        .arg(&key_file)
        .arg(&file)
        .run();
    out.expect_code(0);
    assert_eq!(env.sent_keys().len(), 1);
    assert!(!out.stderr.contains(API_KEY) && !env.logs()[0].contains(API_KEY));
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    for args in [
        vec!["send", "--dry-run", "--site", "datadoghq.moon", "x.json"],
        vec!["send", "--dry-run", "--tag", "novalue", "x.json"],
        vec!["send", "--dry-run", "--max-age", "3h", "x.json"],
        vec!["send", "--dry-run", "--historical", "--stamp-now", "x.json"],
        vec!["send", "--dry-run", "-", "-"],
        vec!["send", "--dry-run"],
        vec!["send", "--no-such-flag"],
    ] {
        let mut run = env.command(["send"]).no_defaults();
        run = run.args(&args[1..]);
        let out = run.run();
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("error"), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn bad_input_exits_3_with_the_file_named() {
    let env = Env::new();
    for (name, content, says) in [
        ("truncated.json", "[{\"id\": 1,", "truncated JSON"),
        ("empty.json", "", "is empty"),
        ("text.json", "hello", "invalid JSON"),
    ] {
        let file = env.file(name, content);
        let out = env.command(["send", "--dry-run"]).arg(&file).run();
        out.expect_code(3);
        assert!(out.stderr.contains(name) && out.stderr.contains(says), "{name}: {}", out.stderr);
    }
    let out = env.command(["send", "--dry-run"]).arg(env.path("missing.json").to_str().unwrap()).run();
    out.expect_code(3);
    assert!(out.stderr.contains("missing.json"), "{}", out.stderr);
    let out = env.command(["send", "--dry-run"]).arg(env.dir.path().to_str().unwrap()).run();
    out.expect_code(3);
    assert!(out.stderr.contains("is a directory"), "{}", out.stderr);
}

#[test]
fn one_bad_run_does_not_sink_the_file() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let mut bad = fixtures::rest_run(&spec(2), now);
    bad["updated_at"] = serde_json::json!(12);
    let text =
        serde_json::json!([fixtures::rest_run(&spec(1), now), bad, fixtures::rest_run(&spec(3), now)]).to_string();
    let file = env.file("mixed.json", text);
    let out = env.send(&intake).arg(&file).args(["--output", "json"]).run();
    out.expect_code(3);
    assert_eq!(out.json()["invalid"], 1);
    assert!(out.stderr.contains("mixed.json value 1[1]") && out.stderr.contains("updated_at"), "{}", out.stderr);
    assert_eq!(env.sent_keys(), ["octo-org/octo-repo:1:1", "octo-org/octo-repo:3:1"]);
}

#[test]
fn broken_ledger_exits_4() {
    let env = Env::sqlite();
    std::fs::create_dir_all(env.ledger().parent().unwrap()).unwrap();
    std::fs::write(env.ledger(), "not a database, only some text that is long enough to fill a header page").unwrap();
    let file = env.file("runs.json", fixtures::rest_run(&spec(1), fixtures::now()).to_string());
    let intake = Intake::start();
    let out = env.send(&intake).arg(&file).run();
    out.expect_code(4);
    assert!(out.stderr.contains("metrics.db"), "{}", out.stderr);
    assert!(intake.requests().is_empty());
    // A ledger from a newer binary is refused too, untouched.
    std::fs::remove_file(env.ledger()).unwrap();
    // (Made by this binary, then stamped as a later schema: `user_version` is the big-endian
    // 32-bit number at offset 60 of SQLite's file header.)
    env.command(["ledger", "dead"]).run().expect_code(0);
    let mut bytes = std::fs::read(env.ledger()).unwrap();
    bytes[60..64].copy_from_slice(&99u32.to_be_bytes());
    std::fs::write(env.ledger(), &bytes).unwrap();
    let out = env.send(&intake).arg(&file).run();
    out.expect_code(4);
    assert!(out.stderr.contains("newer"), "{}", out.stderr);
    assert_eq!(std::fs::read(env.ledger()).unwrap(), bytes, "the newer ledger was changed");
    // Reading it is refused the same way.
    let out = env.command(["ledger", "list"]).run();
    out.expect_code(4);
    assert!(out.stderr.contains("newer"), "{}", out.stderr);
}

#[test]
fn ledger_list_and_verify_read_without_creating() {
    let env = Env::sqlite();
    let out = env.command(["ledger", "list"]).run();
    out.expect_code(0);
    assert!(out.stdout.is_empty() && out.stderr.contains("0 key(s)"), "{}", out.stderr);
    let out = env.command(["ledger", "verify"]).run();
    out.expect_code(4);
    assert!(out.stderr.contains("there is no ledger at") && out.stderr.contains("metrics.db"), "{}", out.stderr);
    assert!(!env.ledger().exists(), "reading created a ledger");
}

#[test]
fn check_validates_the_key_and_opens_the_ledger() {
    let env = Env::sqlite();
    let intake = Intake::start();
    let out = env.command(["check"]).arg("--api-url").arg(intake.url()).var("DD_API_KEY", API_KEY).run();
    out.expect_code(0);
    assert!(out.stderr.contains("accepted the API key"), "{}", out.stderr);
    assert!(env.ledger().exists());
    let out = env.command(["check"]).arg("--api-url").arg(intake.url()).var("DD_API_KEY", "bad").run();
    out.expect_code(5);
    let out = env.command(["check"]).arg("--api-url").arg(intake.url()).run();
    out.expect_code(2);
}

#[test]
fn default_ledger_and_log_locations() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("runs.json", fixtures::rest_run(&spec(1), now).to_string());
    env.command(["send"])
        .no_defaults()
        .arg("--api-url")
        .arg(intake.url())
        .var("DD_API_KEY", API_KEY)
        .arg(&file)
        .run()
        .expect_code(0);
    assert!(env.path("cache/metrics.db").exists());
    assert_eq!(std::fs::read_dir(env.path("log")).unwrap().count(), 1);
}

#[test]
fn help_shows_no_secret_defaults() {
    let env = Env::new();
    let out = env.command(["send", "--help"]).var("DD_API_KEY", API_KEY).no_defaults().run();
    out.expect_code(0);
    assert!(out.stdout.contains("--dry-run") && out.stdout.contains("--api-key-file"));
    assert!(!out.stdout.contains(API_KEY));
}

#[test]
fn without_a_terminal_stderr_is_only_the_closing_summary() {
    let now = fixtures::now();
    let env = Env::new();
    let intake = Intake::start();
    let runs: Vec<_> = (1..=3000).map(spec).collect();
    let file = env.file("runs.json", fixtures::rest_page(&runs, now).to_string());
    let out = env.send(&intake).arg(&file).run();
    out.expect_code(0);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].starts_with("workflow-metrics: sent 3000 run(s)"), "{}", out.stderr);
}
