//! The GitHub Action (`action.yml`): its inputs are the ones the README documents, with the same
//! defaults; the workflows give it only inputs it has; every input reaches its scripts; and its
//! send script, run for real with the binary on a recorded `workflow_run` payload, previews the
//! run and reports to the job summary.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::support::{shared, BIN};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The keys of the mapping at `indent` spaces under the line `header` (block YAML as the
/// action's files write it), with the `default:` under each when there is one.
fn block(text: &str, header: &str, indent: usize) -> BTreeMap<String, Option<String>> {
    let mut keys = BTreeMap::new();
    let lines = text.lines().skip_while(|line| line.trim_end() != header).skip(1);
    let mut current: Option<String> = None;
    for line in lines {
        let depth = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && depth < indent {
            break;
        }
        if depth == indent && line.trim_end().ends_with(':') {
            let key = line.trim().trim_end_matches(':').to_owned();
            keys.insert(key.clone(), None);
            current = Some(key);
        } else if let (Some(key), Some(default)) = (&current, line.trim().strip_prefix("default: ")) {
            keys.insert(key.clone(), Some(default.trim_matches('"').to_owned()));
        }
    }
    keys
}

#[test]
fn the_inputs_are_the_documented_ones_and_every_one_is_used() {
    let action = std::fs::read_to_string(root().join("action.yml")).unwrap();
    let inputs = block(&action, "inputs:", 2);
    assert!(inputs.len() >= 10 && inputs.contains_key("datadog-api-key"), "{inputs:?}");
    // The README's table: | `input` | `default` | what |.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table: BTreeMap<String, String> = readme
        .lines()
        .skip_while(|line| !line.starts_with("### Action inputs"))
        .skip(1)
        .take_while(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].trim_matches('`').to_owned())
        })
        .collect();
    let documented: Vec<&String> = table.keys().collect();
    assert_eq!(documented, inputs.keys().collect::<Vec<_>>(), "README's action inputs against action.yml");
    for (input, default) in &inputs {
        let shown = &table[input];
        let default = default.as_deref().unwrap_or("");
        assert_eq!(shown, if default.is_empty() { "-" } else { default }, "{input}: README default");
        // Each input reaches a step.
        assert!(action.contains(&format!("inputs.{input} }}}}")), "{input} is never used in action.yml");
    }
    // Each INPUT_ variable the send script reads is set by the action.
    let send = std::fs::read_to_string(root().join("scripts/action-send")).unwrap();
    for variable in send
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.len() > "INPUT_".len() && word.starts_with("INPUT_"))
    {
        assert!(action.contains(&format!("{variable}: ")), "{variable} is read by scripts/action-send but never set");
    }
    // The workflows that use the action give it only inputs it has.
    for entry in std::fs::read_dir(root().join(".github/workflows")).unwrap() {
        let workflow = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        if let Some(at) = workflow.find("- uses: ./\n") {
            for given in block(&workflow[at..], "        with:", 10).keys() {
                assert!(inputs.contains_key(given), "a workflow gives the action {given}, which it does not have");
            }
        }
    }
}

#[test]
fn the_send_script_previews_a_workflow_run_event_and_reports_to_the_job_summary() {
    let dir = tempfile::tempdir().unwrap();
    let event = shared("github/examples").join("webhook_octokit_completed_with_pull_requests.json");
    let (output, summary) = (dir.path().join("output"), dir.path().join("summary"));
    #[allow(clippy::disallowed_methods, reason = "the script finds the binary on PATH, as on a runner")]
    let path = format!("{}:{}", Path::new(BIN).parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let run = Command::new("bash")
        .arg(root().join("scripts/action-send"))
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("DD_API_KEY")
        .envs([
            ("EVENT_NAME", "workflow_run"),
            ("INPUT_LEDGER", ".workflow-metrics/metrics.db"),
            ("INPUT_METRIC_PREFIX", "github.actions"),
            ("INPUT_TAGS", "team:platform\n\nenv:ci\n"),
            ("INPUT_METRICS", ""),
            ("INPUT_TAG_KEYS", "*,!branch"),
            ("INPUT_JOBS", "false"),
            ("INPUT_STEPS", "false"),
            ("INPUT_DRY_RUN", "true"),
            ("INPUT_REPOSITORIES", "octo-org/octo-repo"),
        ])
        .env("GITHUB_EVENT_PATH", &event)
        .env("GITHUB_OUTPUT", &output)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    // The recorded run is years old: a dry run shows it as too old, and exits 0.
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "exit-code=0\n");
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(summary.starts_with("### workflow-metrics") && summary.contains("dry run:"), "{summary}");
    let logs: Vec<_> = std::fs::read_dir(dir.path().join(".workflow-metrics/log")).unwrap().collect();
    assert_eq!(logs.len(), 1);
    let log = std::fs::read_to_string(logs[0].as_ref().unwrap().path()).unwrap();
    assert!(log.contains("tags=team:platform,env:ci") && log.contains("tag_keys=*,!branch"), "{log}");
    assert!(log.contains(&event.display().to_string()), "the event payload is the input: {log}");
}
