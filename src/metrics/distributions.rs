//! Distribution series (`--distributions`): one value per item and duration gauge, grouped by
//! tag set, never summed nor read back from the ledger.

use std::sync::Arc;

use super::{family, MetricKind, Planned, Series, SeriesSpec, TagSetKey, DISTRIBUTION_SUFFIX};
use crate::model::Entity;

impl SeriesSpec {
    /// The distribution series of `items` (`--distributions`): for each duration gauge, one
    /// value per item that has it, at the item's timestamp, grouped by tag set. Not summed, not
    /// read back from the ledger: Datadog adds every value it receives to the distribution.
    pub fn distributions(&self, items: &[Planned]) -> Vec<Series> {
        let mut index: foldhash::HashMap<(TagSetKey<'_>, usize), usize> = foldhash::HashMap::default();
        let mut series: Vec<Series> = Vec::new();
        let mut names: Vec<((Entity, usize), Arc<str>)> = Vec::new();
        for planned in items {
            let family = family(planned.item.entity());
            for (slot, gauge) in family.gauges.iter().enumerate() {
                let Some(value) = planned.gauges[slot].filter(|_| gauge.distribution) else { continue };
                let key = (TagSetKey { hash: planned.tag_hash, tags: &planned.tags }, slot);
                let at = *index.entry(key).or_insert_with(|| {
                    let metric = match names.iter().find(|(of, _)| *of == (family.entity, slot)) {
                        Some((_, name)) => name.clone(),
                        None => {
                            let name: Arc<str> =
                                format!("{}.{}.{}{DISTRIBUTION_SUFFIX}", self.prefix, family.entity.name(), gauge.name)
                                    .into();
                            names.push(((family.entity, slot), name.clone()));
                            name
                        }
                    };
                    series.push(Series {
                        metric,
                        kind: MetricKind::Distribution,
                        unit: None,
                        tags: planned.tags.clone(),
                        points: Vec::new(),
                    });
                    series.len() - 1
                });
                series[at].points.push((planned.timestamp, value));
            }
        }
        series.retain(|one| self.sends(&one.metric));
        for one in &mut series {
            one.points.sort_by_key(|&(timestamp, _)| timestamp);
        }
        series
    }
}
