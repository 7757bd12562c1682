//! The quota of the GitHub token as gauges, as int128's action sends them after each run:
//! `<prefix>.api_rate_limit.limit`, `.remaining` and `.used`, tagged by `resource`. They are
//! not items: the ledger does not track them, and a resend writes the same values.

use std::sync::Arc;

use super::{tags::tag, MetricKind, Series, SeriesSpec};
use crate::model::Quota;

/// The three gauges of `quota`, at `timestamp`.
pub fn quota_series(spec: &SeriesSpec, quota: &Quota, timestamp: i64) -> Vec<Series> {
    let mut tags = vec![tag("resource", &quota.resource)];
    tags.extend(spec.extra_tags.iter().cloned());
    spec.keep_tag_keys(&mut tags);
    let tags: Arc<[String]> = tags.into();
    [("limit", quota.limit), ("remaining", quota.remaining), ("used", quota.used)]
        .into_iter()
        .map(|(name, value)| Series {
            metric: format!("{}.api_rate_limit.{name}", spec.prefix).into(),
            kind: MetricKind::Gauge,
            unit: None,
            tags: tags.clone(),
            // Counts of requests: exact in an f64.
            points: vec![(timestamp, value as f64)],
        })
        .filter(|one| spec.sends(&one.metric))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::TagFields;

    #[test]
    fn three_gauges_tagged_by_resource() {
        let spec = SeriesSpec {
            prefix: "github.actions".into(),
            extra_tags: vec!["team:ci".into()],
            fields: TagFields::default(),
            ..SeriesSpec::default()
        };
        let quota = Quota { limit: 5000, remaining: 4990, used: 10, reset: 0, resource: "core".into() };
        let series = quota_series(&spec, &quota, 1_700_000_000);
        let shown: Vec<_> = series.iter().map(|s| (&*s.metric, s.kind, s.points[0], &s.tags[..])).collect();
        let tags = ["resource:core".to_owned(), "team:ci".to_owned()];
        assert_eq!(
            shown,
            [
                ("github.actions.api_rate_limit.limit", MetricKind::Gauge, (1_700_000_000, 5000.0), &tags[..]),
                ("github.actions.api_rate_limit.remaining", MetricKind::Gauge, (1_700_000_000, 4990.0), &tags[..]),
                ("github.actions.api_rate_limit.used", MetricKind::Gauge, (1_700_000_000, 10.0), &tags[..]),
            ]
        );
    }
}
