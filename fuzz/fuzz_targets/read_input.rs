//! Fuzzes the input reader and validation: any bytes must give records or an error, never a
//! panic, and every run that validates must have a well-formed key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workflow_metrics::metrics::{self, Validated};
use workflow_metrics::source::{self, Input, Record};

fuzz_target!(|data: &[u8]| {
    let mut sink = |record: Record| {
        if let Record::Run(raw) = record {
            if let Validated::Completed(run) = metrics::validate(&raw, None) {
                assert!(run.key().contains('/') && run.key().matches(':').count() >= 2, "{}", run.key());
                let spec = metrics::SeriesSpec { prefix: "p".into(), extra_tags: vec![] };
                let timestamp = run.completed_at;
                let planned = spec.plan(*run, timestamp);
                let series = spec.series(std::slice::from_ref(&planned), &|_| 0);
                assert!(series.iter().all(|s| s.tags.iter().all(|t| t.chars().count() <= metrics::MAX_TAG_LENGTH)));
            }
        }
        Ok(())
    };
    let _ = source::read_from(&Input::Stdin, data, &mut sink);
});
