//! What the tool emits, read from the outside: the metric names its families' tables can make,
//! and the series a real dry run over GitHub's recorded payloads logs.

use std::collections::BTreeSet;

use workflow_metrics::metrics::{family, DISTRIBUTION_SUFFIX, TOTAL};
use workflow_metrics::model::Entity;

use super::{shared, Env};

/// Every metric name the tool can send under the default prefix, from the families' tables.
pub fn metrics_in_code() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entity in [Entity::WorkflowRun, Entity::Job, Entity::Step] {
        let family = family(entity);
        let prefix = family.metric_prefix("github.actions");
        names.insert(format!("{prefix}{TOTAL}"));
        for gauge in family.gauges {
            names.insert(format!("{prefix}{}", gauge.name));
            if gauge.distribution {
                names.insert(format!("{prefix}{}{DISTRIBUTION_SUFFIX}", gauge.name));
            }
        }
        for tally in family.tallies {
            names.insert(format!("{prefix}{tally}"));
        }
    }
    names
}

/// One `series` line of a run log.
#[derive(Debug)]
pub struct Logged {
    pub metric: String,
    /// `(key, value)` in the order sent.
    pub tags: Vec<(String, String)>,
    /// `(epoch seconds, value)`.
    pub points: Vec<(i64, f64)>,
}

impl Logged {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, value)| value.as_str())
    }
}

/// The recorded payloads of `../shared/github/examples`, every one of them.
pub fn recorded_payloads() -> Vec<String> {
    let examples = shared("github/examples");
    let mut inputs: Vec<String> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| path.to_string_lossy().into_owned())
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 5, "the recorded payloads are missing from {}", examples.display());
    inputs
}

/// The series a dry run of every recorded payload (runs, jobs, steps, distributions) logs.
pub fn dry_run_series() -> Vec<Logged> {
    let env = Env::new();
    let out = env
        .command(["send", "--dry-run", "--historical", "--jobs", "--steps", "--distributions", "--log-detail", "full"])
        .args(recorded_payloads())
        .run();
    out.expect_code(0);
    let log = env.logs().concat();
    let series: Vec<Logged> = log.lines().filter_map(|line| line.strip_prefix("series ")).map(parse).collect();
    assert!(series.iter().any(|one| one.tag("step_name").is_some()), "the dry run sent no step series: {log}");
    series
}

/// `request=<n> metric=<m> type=<t> unit=<u> points=<epoch>/<iso>=<value>,... tags=<k:v,...>`
fn parse(line: &str) -> Logged {
    let field = |name: &str| {
        let start = line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name} in {line}")) + name.len() + 2;
        line[start..].split(' ').next().unwrap()
    };
    let points = field("points")
        .split(',')
        .map(|point| {
            let (epoch, rest) = point.split_once('/').unwrap_or_else(|| panic!("point {point} in {line}"));
            let value = rest.rsplit_once('=').unwrap().1;
            (epoch.parse().unwrap(), value.parse().unwrap())
        })
        .collect();
    let tags = line
        .split_once(" tags=")
        .map(|(_, tags)| tags.split(',').filter(|tag| !tag.is_empty()))
        .into_iter()
        .flatten()
        .map(|tag| {
            let (key, value) = tag.split_once(':').unwrap_or((tag, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect();
    Logged { metric: field("metric").to_owned(), tags, points }
}
