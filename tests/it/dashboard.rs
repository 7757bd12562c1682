//! The ready dashboard (`dashboards/github-actions.json`) queries only what the tool sends: its
//! metrics are checked against the metric table in code, its tags against the series a real
//! dry run over GitHub's recorded payloads emits. A renamed metric or tag breaks this test, not
//! a user's dashboard.

use std::collections::BTreeSet;

use crate::support::emitted::{dry_run_series, metrics_in_code};

/// The tag keys of every series a dry run of the real payloads (runs, jobs, steps) logs.
fn tag_keys_sent() -> BTreeSet<String> {
    dry_run_series().into_iter().flat_map(|series| series.tags.into_iter().map(|(key, _)| key)).collect()
}

/// A query's metric, the tag keys it filters on or groups by, and the template variables it uses.
fn parse_query(query: &str) -> (String, Vec<String>, Vec<String>) {
    let (_, rest) = query.split_once(':').unwrap_or_else(|| panic!("no aggregator in {query}"));
    let (metric, rest) = rest.split_once('{').unwrap_or_else(|| panic!("no scope in {query}"));
    let (scope, rest) = rest.split_once('}').unwrap();
    let (mut tags, mut variables) = (Vec::new(), Vec::new());
    for term in scope.split(',').map(str::trim).filter(|term| !term.is_empty() && *term != "*") {
        match term.strip_prefix('$') {
            Some(variable) => variables.push(variable.to_owned()),
            None => tags.push(term.trim_start_matches('!').split(':').next().unwrap().to_owned()),
        }
    }
    if let Some((_, grouped)) = rest.split_once("by {") {
        let grouped = grouped.split('}').next().unwrap();
        tags.extend(grouped.split(',').map(|key| key.trim().to_owned()));
    }
    (metric.to_owned(), tags, variables)
}

fn queries<'a>(value: &'a serde_json::Value, into: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("query", serde_json::Value::String(query)) => into.push(query),
                    _ => queries(value, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| queries(item, into)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_metrics_and_tags_the_tool_sends() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/github-actions.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(dashboard["layout_type"], "ordered", "the shape Datadog's dashboard API takes");
    assert!(dashboard["title"].is_string() && dashboard["widgets"].is_array());
    let variables: BTreeSet<String> = dashboard["template_variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variable| {
            assert_eq!(variable["name"], variable["prefix"], "{variable}");
            variable["prefix"].as_str().unwrap().to_owned()
        })
        .collect();
    for wanted in ["repository_name", "workflow_name", "branch"] {
        assert!(variables.contains(wanted), "template variable {wanted} missing");
    }
    let mut found = Vec::new();
    queries(&dashboard, &mut found);
    assert!(found.len() >= 15, "{found:?}");
    let (metrics, tags) = (metrics_in_code(), tag_keys_sent());
    let mut used = BTreeSet::new();
    for query in found {
        let (metric, keys, uses) = parse_query(query);
        assert!(metrics.contains(&metric), "{query}: {metric} is not a metric the tool sends ({metrics:?})");
        used.insert(metric);
        for key in keys {
            assert!(tags.contains(&key), "{query}: the tool sends no tag {key} ({tags:?})");
        }
        for variable in uses {
            assert!(variables.contains(&variable), "{query}: no template variable ${variable}");
        }
    }
    for variable in &variables {
        assert!(tags.contains(variable), "template variable {variable} is not a tag the tool sends");
    }
    // Runs, jobs and steps are all charted.
    for entity in ["workflow_run", "job", "step"] {
        assert!(
            used.iter().any(|metric| metric.starts_with(&format!("github.actions.{entity}."))),
            "{entity}: {used:?}"
        );
    }
}
