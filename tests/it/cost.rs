//! What it costs: `--metrics` and `--tag-keys` choose the metrics and tag keys sent (every
//! distinct metric and tag set is a custom metric on the Datadog bill).

use crate::support::fixtures::{self, spec, Spec};
use crate::support::{Env, Intake};

#[test]
fn only_the_chosen_metrics_and_tag_keys_are_sent_and_points_that_merge_are_summed() {
    let env = Env::new();
    let intake = Intake::start();
    let now = fixtures::now();
    // Two runs that differ only in their branch, completed at the same second, and a third.
    let runs: Vec<Spec> = vec![
        Spec { branch: "main", ..spec(1) },
        Spec { branch: "feature", ..spec(2) },
        Spec { completed_ago: 600, ..spec(3) },
    ];
    let file = env.file("runs.json", fixtures::rest_page(&runs, now).to_string());
    let out = env
        .send(&intake)
        .args(["--metrics", "workflow_run.*,!*.conclusion.*", "--metrics", "!workflow_run.queued_*"])
        .args(["--tag-keys", "*,!branch", "--tag", "team:ci"])
        .arg(&file)
        .run();
    out.expect_code(0);
    let stored = intake.stored();
    let metrics: std::collections::BTreeSet<&str> = stored.iter().map(|point| point.metric.as_str()).collect();
    assert_eq!(
        metrics.into_iter().collect::<Vec<_>>(),
        ["github.actions.workflow_run.duration_second", "github.actions.workflow_run.total"]
    );
    for point in &stored {
        assert!(!point.tags.iter().any(|tag| tag.starts_with("branch:")), "{:?}", point.tags);
        assert!(
            point.tags.iter().any(|tag| tag == "team:ci")
                && point.tags.iter().any(|tag| tag.starts_with("workflow_name:"))
        );
    }
    // Without the branch, runs 1 and 2 are one point: counted twice, not written over.
    assert_eq!(intake.total("github.actions.workflow_run.total"), 3.0);
    let counts: Vec<f64> = stored
        .iter()
        .filter(|point| point.metric == "github.actions.workflow_run.total")
        .map(|point| point.value)
        .collect();
    assert_eq!(counts.len(), 2, "{stored:?}");
    assert!(counts.contains(&2.0), "{counts:?}");
    assert_eq!(env.sent_keys().len(), 3);
    // The run log says what was chosen.
    assert!(
        env.logs()[0].contains("metrics=workflow_run.*,!*.conclusion.*,!workflow_run.queued_* tag_keys=*,!branch"),
        "{}",
        env.logs()[0]
    );
}

#[test]
fn metrics_not_chosen_for_an_entity_mean_no_request_for_it() {
    let env = Env::new();
    let intake = Intake::start();
    let file = env.file("runs.json", fixtures::rest_run(&spec(1), fixtures::now()).to_string());
    let out = env.send(&intake).args(["--metrics", "job.*"]).arg(&file).run();
    out.expect_code(0);
    assert!(intake.requests().is_empty(), "no series, no request");
    assert_eq!(env.sent_keys().len(), 1, "the run is settled: sending it later would send nothing either");
    assert!(env.logs()[0].contains("status=none-chosen"), "{}", env.logs()[0]);
}

#[test]
fn patterns_that_choose_nothing_known_are_refused() {
    let env = Env::new();
    let file = env.file("runs.json", fixtures::rest_run(&spec(1), fixtures::now()).to_string());
    for (args, says) in [
        (["--metrics", "workflow_runs.*"], "workflow_runs.* matches no metric; the metrics are workflow_run.total"),
        (["--metrics", "job.*,,step.*"], "--metrics: an empty pattern"),
        (["--tag-keys", "!"], "--tag-keys: a lone !"),
    ] {
        let out = env.command(["send", "--dry-run"]).args(args).arg(&file).run();
        out.expect_code(2);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
}
