//! Shell conventions: `--version`, completions, the man page, `-q` and `--log-format json`.

use clap::CommandFactory;
use workflow_metrics::cli::Cli;

use crate::support::fixtures::{self, spec};
use crate::support::Env;

/// Every subcommand's name, nested ones too, from the definitions `--help` is made of.
fn subcommands(command: &clap::Command) -> Vec<String> {
    command
        .get_subcommands()
        .flat_map(|sub| std::iter::once(sub.get_name().to_owned()).chain(subcommands(sub)))
        .collect()
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git runs (the tests run in a checkout)");
    assert!(git.status.success(), "not a git checkout: {}", String::from_utf8_lossy(&git.stderr));
    let commit = String::from_utf8(git.stdout).unwrap().trim().to_owned();
    let env = Env::new();
    let out = env.command(["--version"]).run();
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), format!("workflow-metrics {} ({commit})", env!("CARGO_PKG_VERSION")));
}

#[test]
fn completions_and_the_man_page_cover_every_subcommand() {
    let command = Cli::command();
    let top: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_owned()).collect();
    let all = subcommands(&command);
    assert!(all.len() > top.len() && top.iter().any(|name| name == "man"), "{all:?}");
    let env = Env::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = env.command(["completions", shell]).run();
        out.expect_code(0);
        assert!(out.stderr.is_empty(), "{shell}: {}", out.stderr);
        for name in &all {
            assert!(out.stdout.contains(name.as_str()), "{shell} completions lack {name}");
        }
        assert!(out.stdout.contains("--dry-run") && out.stdout.contains("--ledger"), "{shell}: flags missing");
    }
    let out = env.command(["completions", "tcsh"]).run();
    out.expect_code(2);
    let page = env.command(["man"]).run();
    page.expect_code(0);
    assert!(page.stdout.starts_with(".ie") && page.stdout.contains(".TH workflow-metrics 1"), "{}", page.stdout);
    for name in &top {
        assert!(
            page.stdout.contains(&format!("workflow\\-metrics\\-{}", name.replace('-', "\\-"))),
            "the man page lacks {name}"
        );
    }
}

#[test]
fn quiet_prints_nothing_when_all_went_well_and_errors_when_not() {
    let env = Env::new();
    let file = env.file("runs.json", fixtures::rest_run(&spec(1), fixtures::now()).to_string());
    let out = env.command(["send", "--dry-run", "-q"]).arg(&file).run();
    out.expect_code(0);
    assert_eq!(out.stderr, "", "nothing on stderr");
    let out = env.command(["send", "--dry-run", "-q"]).arg(env.path("missing.json").to_str().unwrap()).run();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("missing.json"), "{}", out.stderr);
    let out = env.command(["send", "--dry-run", "-q", "-v"]).arg(&file).run();
    out.expect_code(2);
}

#[test]
fn json_diagnostics_are_one_object_per_line() {
    let env = Env::new();
    let missing = env.path("missing.json");
    let out = env.command(["send", "--dry-run", "--log-format", "json", "-v"]).arg(missing.to_str().unwrap()).run();
    assert_ne!(out.code, 0);
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}")))
        .collect();
    assert!(lines.len() >= 3, "{}", out.stderr);
    for line in &lines {
        assert!(
            line["level"].is_string() && line["timestamp"].is_string() && line["fields"]["message"].is_string(),
            "{line}"
        );
    }
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert!(last["fields"]["message"].as_str().unwrap().contains("missing.json"), "{last}");
    assert!(lines.iter().any(|line| line["level"] == "INFO"), "-v shows info events: {}", out.stderr);
}

#[test]
fn a_configuration_file_sets_options_that_flags_and_the_environment_override() {
    let env = Env::new();
    let file = env.file("runs.json", fixtures::rest_run(&spec(1), fixtures::now()).to_string());
    env.file(
        "workflow-metrics.toml",
        "ledger = \"postgres://metrics:hunter2@db.invalid/metrics\"\n\
         [send]\nmetric-prefix = \"cfg.actions\"\ntag = [\"team:platform\", \"env:prod\"]\nlog-detail = \"full\"\njobs = true\n",
    );
    // The file's options apply (its ledger too, which the test harness's --ledger overrides).
    let out = env.command(["send", "--dry-run"]).arg(&file).run();
    out.expect_code(0);
    let log = env.logs().concat();
    assert!(log.contains("cfg.actions.workflow_run.total") && log.contains("team:platform"), "{log}");
    assert!(log.contains("env:prod") && log.contains("jobs=true"), "{log}");
    // A flag overrides the file; so does the environment.
    let out = env.command(["send", "--dry-run", "--metric-prefix", "flag.actions"]).arg(&file).run();
    out.expect_code(0);
    assert!(env.logs().last().unwrap().contains("flag.actions.workflow_run.total"));
    let shown = env.command(["config"]).var("DD_API_KEY", crate::support::API_KEY).var("DD_SITE", "datadoghq.eu").run();
    shown.expect_code(0);
    for line in [
        "metric-prefix = \"cfg.actions\"  # file",
        "tag = [\"team:platform\", \"env:prod\"]  # file",
        "site = \"datadoghq.eu\"  # environment",
        "ledger = \"postgres://metrics@db.invalid/metrics\"  # file",
        "batch-size = 2000  # default",
        "DD_API_KEY set",
    ] {
        assert!(shown.stdout.contains(line), "{line} missing:\n{}", shown.stdout);
    }
    assert!(!shown.stdout.contains("hunter2") && !shown.stdout.contains(crate::support::API_KEY), "{}", shown.stdout);
}

#[test]
fn a_bad_configuration_file_is_named_and_nothing_runs() {
    let env = Env::new();
    let file = env.file("runs.json", fixtures::rest_run(&spec(1), fixtures::now()).to_string());
    for (content, says) in [
        (
            "[send]\nno-such-option = 1\n",
            "[send] no-such-option: `workflow-metrics send` has no option --no-such-option",
        ),
        ("[send]\njobs = \"yes\"\n", "[send] jobs: a switch, give true or false"),
        ("[send\n", "is not valid TOML"),
        ("[deploy]\nx = 1\n", "unknown table [deploy]"),
        ("[send]\nbatch-size = \"many\"\n", "invalid value 'many' for '--batch-size"),
    ] {
        let config = env.file("bad.toml", content);
        let out = env.command(["send", "--dry-run", "--config", &config]).arg(&file).run();
        out.expect_code(2);
        assert!(out.stderr.contains("bad.toml") && out.stderr.contains(says), "{content}: {}", out.stderr);
        assert!(env.logs().is_empty(), "{content}: nothing ran");
    }
    let out = env.command(["send", "--dry-run", "--config", "missing.toml"]).arg(&file).run();
    out.expect_code(2);
    assert!(out.stderr.contains("missing.toml"), "{}", out.stderr);
}

#[test]
fn the_examples_commands_are_ones_the_binary_takes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let service = std::fs::read_to_string(root.join("systemd/workflow-metrics.service")).unwrap();
    let exec = service.lines().find_map(|line| line.strip_prefix("ExecStart=")).expect("an ExecStart line");
    let mut systemd: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    assert!(systemd[0].ends_with("/workflow-metrics"), "{exec}");
    systemd[0] = "workflow-metrics".to_owned();
    let cronjob = std::fs::read_to_string(root.join("kubernetes/cronjob.yaml")).unwrap();
    let args = cronjob.lines().find_map(|line| line.trim().strip_prefix("args: ")).expect("an args line");
    let kubernetes: Vec<String> = std::iter::once("workflow-metrics".to_owned())
        .chain(serde_json::from_str::<Vec<String>>(args).expect("args as a flow sequence of strings"))
        .collect();
    for command in [systemd, kubernetes] {
        if let Err(error) = <Cli as clap::Parser>::try_parse_from(&command) {
            panic!("{command:?}: {error}");
        }
    }
    let timer = std::fs::read_to_string(root.join("systemd/workflow-metrics.timer")).unwrap();
    assert!(timer.contains("OnUnitActiveSec=") && cronjob.contains("concurrencyPolicy: Forbid"));
}

#[test]
fn a_dry_run_previews_a_table_for_a_person_and_keeps_stdout_for_machines_otherwise() {
    let env = Env::new();
    let now = fixtures::now();
    let runs = vec![
        spec(1),
        fixtures::Spec { conclusion: Some("failure"), duration: 600, ..spec(2) },
        fixtures::Spec { status: "in_progress", conclusion: None, ..spec(3) },
        fixtures::Spec { status: "completed", conclusion: None, ..spec(4) },
    ];
    let file = env.file("runs.json", fixtures::rest_page(&runs, now).to_string());
    let out = env.command(["send", "--dry-run", "--preview", "always"]).arg(&file).run();
    out.expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines[0].starts_with("repository") && lines[0].contains("median") && lines[0].contains("skipped"));
    assert!(lines[1].starts_with("octo-org/octo-repo  -"), "{}", out.stdout);
    assert!(
        lines[1].contains("1 completed but no conclusion") && lines[1].contains("1 not completed yet (in_progress)")
    );
    assert!(
        lines[2].contains("CI") && lines[2].contains("failure 1, success 1") && lines[2].contains("7m30s"),
        "{}",
        out.stdout
    );
    // Piped (as here) the default prints nothing on stdout; --output json keeps it JSON.
    let out = env.command(["send", "--dry-run"]).arg(&file).run();
    assert_eq!(out.stdout, "");
    let out = env.command(["send", "--dry-run", "--preview", "auto", "--output", "json"]).arg(&file).run();
    assert_eq!(out.json()["would_send"], 2);
}
