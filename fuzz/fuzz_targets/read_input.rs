//! Fuzzes the input reader, validation and planning: any bytes must give records or an error,
//! never a panic; every run that validates must have a well-formed key, and the planner (with
//! its tag-set cache) must plan it as the uncached path does, into series with bounded tags.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workflow_metrics::metrics::{Planner, SentPoint, SeriesSpec, TagFields, MAX_TAG_LENGTH};
use workflow_metrics::model::{validate_run, Validated};
use workflow_metrics::source::file::{read_from, Record};
use workflow_metrics::source::Input;

fuzz_target!(|data: &[u8]| {
    let spec = SeriesSpec { prefix: "p".into(), extra_tags: vec![], fields: TagFields::default(), ..SeriesSpec::default() };
    let mut planner = Planner::new(spec.clone());
    let mut planned = Vec::new();
    let mut sink = |record: Record| {
        if let Record::Run(raw) = record {
            if let Validated::Completed(item) = validate_run(&raw, None) {
                let key = item.key();
                assert!(key.contains('/') && key.matches(':').count() >= 2, "{key}");
                let timestamp = item.completed_at();
                let cached = planner.plan(item.clone(), timestamp);
                assert_eq!(cached, spec.plan(item, timestamp));
                planned.push(cached);
            }
        }
        Ok(())
    };
    let _ = read_from(&Input::Stdin, data, &mut sink);
    let series = spec.series(&planned, &|_| SentPoint::default());
    assert!(series.iter().all(|s| s.tags.iter().all(|t| t.chars().count() <= MAX_TAG_LENGTH)));
});
