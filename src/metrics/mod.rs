//! Turns validated items into Datadog series. Pure: no I/O, no clock (the caller passes `now`),
//! no wire types. Metric families are tables per entity (`run.rs`), used by the series builder
//! and the run log alike; `tags.rs` normalises tags as Datadog does.

use std::sync::Arc;

use crate::model::{Entity, Item};

mod distributions;
pub mod filter;
mod job;
mod point;
mod quota;
mod run;
pub mod tags;

pub use point::point_key;
use point::{TagSetHash, TagSetKey};
pub use quota::quota_series;

pub use filter::Patterns;
pub use tags::{normalise_tag, tag, MAX_TAG_LENGTH};

/// Datadog metric kinds we send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Count,
    Gauge,
    /// Sent apart (`POST /api/v1/distribution_points`), with `--distributions`: a series of this
    /// kind holds one (timestamp, value) per item, several at one timestamp.
    Distribution,
}

impl MetricKind {
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Count => "count",
            MetricKind::Gauge => "gauge",
            MetricKind::Distribution => "distribution",
        }
    }
}

/// What distributions add to a gauge's name: `<prefix>.<entity>.<gauge>.distribution` (a metric
/// has one type in Datadog, so it cannot share the gauge's name).
pub const DISTRIBUTION_SUFFIX: &str = ".distribution";

/// One series for the request being built.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub metric: Arc<str>,
    pub kind: MetricKind,
    pub unit: Option<&'static str>,
    /// Shared by the series of one tag set (and with the runs' `Planned`): no copies.
    pub tags: Arc<[String]>,
    /// (unix seconds, value), ascending by time.
    pub points: Vec<(i64, f64)>,
}

/// How items become series: the prefix and the user's own tags, both validated by `config`.
#[derive(Clone, Debug, Default)]
pub struct SeriesSpec {
    pub prefix: String,
    pub extra_tags: Vec<String>,
    /// Tags on request (`--tag-fields`).
    pub fields: TagFields,
    /// `--metrics`: the metrics sent, by their names after the prefix (`workflow_run.total`).
    pub metrics: Patterns,
    /// `--tag-keys`: the tag keys kept. Applied before point keys are made, so items whose tags
    /// differ only in a dropped key share a point (their counts are summed, as for any point).
    pub tag_keys: Patterns,
}

/// Tags that make a series per person or per pull request, so only on request
/// (`--tag-fields sender,sender_type,pull_request_number`); runs only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TagFields {
    pub sender: bool,
    pub sender_type: bool,
    pub pull_request_number: bool,
}

/// The metrics of one entity: every family has two counts, `<prefix>.<entity>.total` and
/// `<prefix>.<entity>.conclusion.<conclusion>_total`, the gauges of its table, in order, and
/// its tallies: counts of the items that have some trait (a job's runner errors), sent only
/// where one is not zero.
#[derive(Debug)]
pub struct Family {
    pub entity: Entity,
    /// The order is stored in ledgers (the largest value sent per point, per gauge): never
    /// reorder, only append.
    pub gauges: &'static [GaugeMetric],
    /// `<prefix>.<entity>.<name>`, counts. Stored in ledgers in this order, as gauges are.
    pub tallies: &'static [&'static str],
}

/// One gauge of a family: `<prefix>.<entity>.<name>`.
#[derive(Debug)]
pub struct GaugeMetric {
    pub name: &'static str,
    pub unit: &'static str,
    /// A duration, also sent as a distribution with `--distributions`.
    pub distribution: bool,
}

/// The count metric every family has.
pub const TOTAL: &str = "total";

/// Gauges a family has at most.
pub const MAX_GAUGES: usize = 3;

/// An item's gauge values, in its family's order; `None` where it has none.
pub type Gauges = [Option<f64>; MAX_GAUGES];

/// Tallies a family has at most.
pub const MAX_TALLIES: usize = 2;

/// An item's tallies (0 or 1 each), or their sums over the items of a point.
pub type Tallies = [u32; MAX_TALLIES];

/// The family of an entity.
pub fn family(entity: Entity) -> &'static Family {
    match entity {
        Entity::WorkflowRun => &run::FAMILY,
        Entity::Job => &job::JOB,
        Entity::Step => &job::STEP,
    }
}

impl Family {
    /// `<prefix>.<entity>.`: what the compact run log leaves out of metric names.
    pub fn metric_prefix(&self, prefix: &str) -> String {
        format!("{prefix}.{}.", self.entity.name())
    }
}

/// What earlier requests delivered to one point (metric prefix, tags, timestamp): how many items,
/// and the largest value of each gauge. Datadog keeps the last value written, so a request
/// writing the point again sends the sum and the maxima, not its own share.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SentPoint {
    pub count: u32,
    pub gauges: Gauges,
    pub tallies: Tallies,
}

impl SentPoint {
    /// Adds the contribution of `count` items: their gauges' maxima and their tallies' sums.
    pub fn add(&mut self, count: u32, gauges: &Gauges, tallies: &Tallies) {
        self.count += count;
        for (slot, value) in self.gauges.iter_mut().zip(gauges) {
            *slot = max_option(*slot, *value);
        }
        for (slot, value) in self.tallies.iter_mut().zip(tallies) {
            *slot += value;
        }
    }
}

/// Plans items with a cache of tag sets: items of one entity, workflow, branch, event,
/// conclusion and attempt share one `Arc<[String]>`, built and normalised once, and its hash.
pub struct Planner {
    spec: SeriesSpec,
    cache: foldhash::HashMap<String, (Arc<[String]>, TagSetHash)>,
    scratch: String,
}

/// Tag sets kept at most; the cache starts over beyond (a backfill of many repositories).
const TAG_CACHE_LIMIT: usize = 8_192;

impl Planner {
    pub fn new(spec: SeriesSpec) -> Planner {
        Planner { spec, cache: foldhash::HashMap::default(), scratch: String::new() }
    }

    pub fn plan(&mut self, item: Item, timestamp: i64) -> Planned {
        // The cache key: the entity, and every field the tags are made of, apart.
        self.scratch.clear();
        self.scratch.push_str(item.entity().name());
        self.scratch.push('\u{1e}');
        match &item {
            Item::Run(run) => run::cache_key(run, &mut self.scratch),
            Item::Job(job) => job::cache_key(&job.context, &job.conclusion, None, &mut self.scratch),
            Item::Step(step) => {
                job::cache_key(&step.context, &step.conclusion, Some(&step.name), &mut self.scratch);
            }
        }
        let (tags, hash) = match self.cache.get(self.scratch.as_str()) {
            Some((tags, hash)) => (tags.clone(), *hash),
            None => {
                let tags: Arc<[String]> = self.spec.tags(&item).into();
                let hash = TagSetHash::new(&self.spec.prefix, &tags);
                if self.cache.len() >= TAG_CACHE_LIMIT {
                    self.cache.clear();
                }
                self.cache.insert(self.scratch.clone(), (tags.clone(), hash));
                (tags, hash)
            }
        };
        Planned::new(item, timestamp, tags, hash)
    }
}

/// An item on its way out: the point timestamp chosen (real or stamped), its tags, its point key
/// and its gauge values.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub item: Item,
    pub timestamp: i64,
    pub tags: Arc<[String]>,
    /// FNV-1a of the prefix and tags: equal tag sets have equal hashes (groups items into series).
    pub tag_hash: u64,
    /// Identity of the item's points (prefix, tags, timestamp): items sharing it are summed.
    pub point_key: i64,
    pub gauges: Gauges,
    pub tallies: Tallies,
    /// The pipeline's chunk the item came in (it holds a source's checkpoint until all its
    /// items are settled); 0 outside a pipeline.
    pub chunk: u64,
}

impl Planned {
    fn new(item: Item, timestamp: i64, tags: Arc<[String]>, hash: TagSetHash) -> Planned {
        let (gauges, tallies) = match &item {
            Item::Run(run) => (run::gauges(run), Tallies::default()),
            Item::Job(job) => (job::job_gauges(job), job::job_tallies(job)),
            Item::Step(step) => (job::step_gauges(step), Tallies::default()),
        };
        Planned { item, timestamp, tags, tag_hash: hash.0, point_key: hash.at(timestamp), gauges, tallies, chunk: 0 }
    }
}

/// The keys of `items`, in order (for the ledger and the run log).
pub fn keys(items: &[Planned]) -> Vec<&str> {
    items.iter().map(|planned| planned.item.key()).collect()
}

impl SeriesSpec {
    /// Plans one item without a cache (tests and the fuzz target compare it with [`Planner`]).
    pub fn plan(&self, item: Item, timestamp: i64) -> Planned {
        let tags: Arc<[String]> = self.tags(&item).into();
        let hash = TagSetHash::new(&self.prefix, &tags);
        Planned::new(item, timestamp, tags, hash)
    }

    fn tags(&self, item: &Item) -> Vec<String> {
        let mut tags = match item {
            Item::Run(run) => run::tags(run, self.fields, self.extra_tags.len()),
            Item::Job(job) => job::job_tags(job, self.extra_tags.len()),
            Item::Step(step) => job::step_tags(step, self.extra_tags.len()),
        };
        tags.extend(self.extra_tags.iter().cloned());
        self.keep_tag_keys(&mut tags);
        tags
    }

    /// Drops the tags whose keys `--tag-keys` leaves out.
    pub(crate) fn keep_tag_keys(&self, tags: &mut Vec<String>) {
        if !self.tag_keys.is_all() {
            tags.retain(|tag| self.tag_keys.matches(tag.split_once(':').map_or(tag.as_str(), |(key, _)| key)));
        }
    }

    /// Whether `--metrics` chooses the metric `name` (a full name, with the prefix).
    pub(crate) fn sends(&self, name: &str) -> bool {
        self.metrics.is_all()
            || name
                .strip_prefix(&self.prefix)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| self.metrics.matches(rest))
    }

    /// Every metric name the families can send, after the prefix (a conclusion's as
    /// `conclusion.success_total`): what `--metrics` is checked against.
    #[must_use]
    pub fn metric_names() -> Vec<String> {
        let mut names = Vec::new();
        for entity in [Entity::WorkflowRun, Entity::Job, Entity::Step] {
            let family = family(entity);
            let entity = entity.name();
            names.push(format!("{entity}.{TOTAL}"));
            names.push(format!("{entity}.conclusion.success_total"));
            names.push(format!("{entity}.conclusion.failure_total"));
            for gauge in family.gauges {
                names.push(format!("{entity}.{}", gauge.name));
                if gauge.distribution {
                    names.push(format!("{entity}.{}{DISTRIBUTION_SUFFIX}", gauge.name));
                }
            }
            names.extend(family.tallies.iter().map(|tally| format!("{entity}.{tally}")));
        }
        names.extend(["limit", "remaining", "used"].map(|gauge| format!("api_rate_limit.{gauge}")));
        names
    }

    /// The series of `items`, which travel in one request. Items sharing a point key are summed
    /// into one point, on top of `before(point_key)`: what earlier requests delivered to that
    /// point (Datadog keeps the last value written for a metric, tags and time). Counts are
    /// summed; gauges keep the largest value, whichever request carried it.
    pub fn series(&self, items: &[Planned], before: &dyn Fn(i64) -> SentPoint) -> Vec<Series> {
        struct Point {
            timestamp: i64,
            sum: SentPoint,
        }
        struct Group<'r> {
            tags: &'r Arc<[String]>,
            family: &'static Family,
            conclusion: &'r str,
            points: Vec<Point>,
        }
        let mut index: foldhash::HashMap<TagSetKey<'_>, usize> = foldhash::HashMap::default();
        let mut groups: Vec<Group<'_>> = Vec::new();
        for planned in items {
            let key = TagSetKey { hash: planned.tag_hash, tags: &planned.tags };
            let slot = *index.entry(key).or_insert_with(|| {
                groups.push(Group {
                    tags: &planned.tags,
                    family: family(planned.item.entity()),
                    conclusion: planned.item.conclusion(),
                    points: Vec::new(),
                });
                groups.len() - 1
            });
            let group = &mut groups[slot];
            match group.points.iter_mut().find(|point| point.timestamp == planned.timestamp) {
                Some(point) => point.sum.add(1, &planned.gauges, &planned.tallies),
                None => {
                    let mut sum = before(planned.point_key);
                    sum.add(1, &planned.gauges, &planned.tallies);
                    group.points.push(Point { timestamp: planned.timestamp, sum });
                }
            }
        }
        // Metric names are built once per call and family, not once per series.
        let mut names: Vec<(Entity, Names)> = Vec::with_capacity(1);
        let mut series = Vec::with_capacity(groups.len() * 4);
        for mut group in groups {
            let at = match names.iter().position(|(entity, _)| *entity == group.family.entity) {
                Some(at) => at,
                None => {
                    names.push((group.family.entity, Names::new(&self.prefix, group.family)));
                    names.len() - 1
                }
            };
            let names = &mut names[at].1;
            group.points.sort_by_key(|point| point.timestamp);
            let counts: Vec<(i64, f64)> =
                group.points.iter().map(|point| (point.timestamp, f64::from(point.sum.count))).collect();
            let tags = group.tags;
            series.push(Series {
                metric: names.total.clone(),
                kind: MetricKind::Count,
                unit: None,
                tags: tags.clone(),
                points: counts.clone(),
            });
            series.push(Series {
                metric: names.conclusion(&self.prefix, group.family, group.conclusion),
                kind: MetricKind::Count,
                unit: None,
                tags: tags.clone(),
                points: counts,
            });
            for (slot, gauge) in group.family.gauges.iter().enumerate() {
                let points: Vec<(i64, f64)> = group
                    .points
                    .iter()
                    .filter_map(|point| point.sum.gauges[slot].map(|value| (point.timestamp, value)))
                    .collect();
                if !points.is_empty() {
                    series.push(Series {
                        metric: names.gauges[slot].clone(),
                        kind: MetricKind::Gauge,
                        unit: Some(gauge.unit),
                        tags: tags.clone(),
                        points,
                    });
                }
            }
            for slot in 0..group.family.tallies.len() {
                let points: Vec<(i64, f64)> = group
                    .points
                    .iter()
                    .filter(|point| point.sum.tallies[slot] > 0)
                    .map(|point| (point.timestamp, f64::from(point.sum.tallies[slot])))
                    .collect();
                if !points.is_empty() {
                    series.push(Series {
                        metric: names.tallies[slot].clone(),
                        kind: MetricKind::Count,
                        unit: None,
                        tags: tags.clone(),
                        points,
                    });
                }
            }
        }
        series.retain(|one| self.sends(&one.metric));
        series
    }
}

/// The metric names of one family, shared by the series of a request.
struct Names {
    total: Arc<str>,
    gauges: Vec<Arc<str>>,
    tallies: Vec<Arc<str>>,
    by_conclusion: foldhash::HashMap<String, Arc<str>>,
}

impl Names {
    fn new(prefix: &str, family: &Family) -> Names {
        let entity = family.entity.name();
        Names {
            total: format!("{prefix}.{entity}.{TOTAL}").into(),
            gauges: family.gauges.iter().map(|gauge| format!("{prefix}.{entity}.{}", gauge.name).into()).collect(),
            tallies: family.tallies.iter().map(|name| format!("{prefix}.{entity}.{name}").into()).collect(),
            by_conclusion: foldhash::HashMap::default(),
        }
    }

    fn conclusion(&mut self, prefix: &str, family: &Family, conclusion: &str) -> Arc<str> {
        if let Some(name) = self.by_conclusion.get(conclusion) {
            return name.clone();
        }
        let name: Arc<str> =
            format!("{prefix}.{}.conclusion.{}_total", family.entity.name(), tags::metric_segment(conclusion)).into();
        self.by_conclusion.insert(conclusion.to_owned(), name.clone());
        name
    }
}

fn max_option(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Splits the runs of a request that came out too large into two halves, never separating runs
/// that share a point key (their counts are summed into one point). `Err` gives the runs back when they cannot
/// be split (one run, or one point key).
pub fn split_in_two(mut runs: Vec<Planned>) -> Result<(Vec<Planned>, Vec<Planned>), Vec<Planned>> {
    if runs.len() < 2 {
        return Err(runs);
    }
    runs.sort_by_key(|planned| planned.point_key);
    let middle = runs.len() / 2;
    let boundary = (middle..runs.len())
        .find(|&at| runs[at].point_key != runs[at - 1].point_key)
        .or_else(|| (1..middle).rev().find(|&at| runs[at].point_key != runs[at - 1].point_key));
    match boundary {
        Some(at) => {
            let second = runs.split_off(at);
            Ok((runs, second))
        }
        None => Err(runs),
    }
}

/// Where a completed run stands against Datadog's intake window at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Age {
    /// Completed within `max_age`: send with its real timestamp.
    Fresh,
    /// Completed longer ago than `max_age`: Datadog would drop its points.
    TooOld,
    /// Completed more than 10 minutes in the future: the clock of the input or of this machine is
    /// wrong, and Datadog would drop the points.
    Future,
}

/// Datadog drops points more than ten minutes ahead of its clock.
pub const MAX_FUTURE_SECONDS: i64 = 600;

pub fn age(completed_at: i64, now: i64, max_age_seconds: i64) -> Age {
    if completed_at > now + MAX_FUTURE_SECONDS {
        Age::Future
    } else if completed_at < now - max_age_seconds {
        Age::TooOld
    } else {
        Age::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{completed, completed_run, s, with};
    use crate::model::Scalar;

    fn planned(spec: &SeriesSpec, fields: &[(&str, Scalar)]) -> Planned {
        let run = completed_run(fields);
        let timestamp = run.completed_at;
        spec.plan(Item::Run(run), timestamp)
    }

    fn nothing_sent(_: i64) -> SentPoint {
        SentPoint::default()
    }

    #[test]
    fn series_for_one_run() {
        let spec = SeriesSpec {
            prefix: "github.actions".into(),
            extra_tags: vec!["team:ci".into()],
            fields: TagFields::default(),
            ..SeriesSpec::default()
        };
        let run = planned(&spec, &completed());
        let series = spec.series(std::slice::from_ref(&run), &nothing_sent);
        let names: Vec<_> = series.iter().map(|s| (&*s.metric, s.kind.name(), s.points.clone())).collect();
        assert_eq!(
            names,
            [
                ("github.actions.workflow_run.total", "count", vec![(1714557900, 1.0)]),
                ("github.actions.workflow_run.conclusion.success_total", "count", vec![(1714557900, 1.0)]),
                ("github.actions.workflow_run.duration_second", "gauge", vec![(1714557900, 269.5)]),
                ("github.actions.workflow_run.queued_duration_second", "gauge", vec![(1714557900, 30.5)]),
            ]
        );
        assert_eq!(
            &series[0].tags[..],
            [
                "repository_owner:octo-org",
                "repository_name:repo",
                "workflow_name:ci",
                "workflow_id:7",
                "event:push",
                "branch:main",
                "conclusion:success",
                "run_attempt:1",
                "team:ci"
            ]
        );
    }

    #[test]
    fn colliding_counts_are_summed_on_top_of_what_was_sent() {
        let spec = SeriesSpec {
            prefix: "p".into(),
            extra_tags: vec![],
            fields: TagFields::default(),
            ..SeriesSpec::default()
        };
        let first = planned(&spec, &completed());
        let second = planned(&spec, &with(completed(), "id", Scalar::UInt(43)));
        let other_time = planned(&spec, &with(completed(), "updated", s("2024-05-01T10:06:00Z")));
        assert_eq!(first.point_key, second.point_key);
        assert_ne!(first.point_key, other_time.point_key);
        let key = first.point_key;
        let sent = SentPoint { count: 5, gauges: [Some(1.0), None, None], tallies: [0; 2] };
        let series = spec.series(&[first, second, other_time], &|point_key| {
            if point_key == key {
                sent
            } else {
                SentPoint::default()
            }
        });
        assert_eq!(series[0].points, [(1714557900, 7.0), (1714557960, 1.0)]);
    }

    #[test]
    fn colliding_gauges_keep_the_largest_value_across_requests() {
        let spec = SeriesSpec {
            prefix: "p".into(),
            extra_tags: vec![],
            fields: TagFields::default(),
            ..SeriesSpec::default()
        };
        // 269.5 s and 30.5 s queued, completed at the same second as runs sent earlier whose
        // largest duration was 500 s and largest queue time 10 s.
        let run = planned(&spec, &completed());
        let key = run.point_key;
        let earlier = SentPoint { count: 2, gauges: [Some(500.0), Some(10.0), None], tallies: [0; 2] };
        let series = spec.series(std::slice::from_ref(&run), &|point_key| {
            assert_eq!(point_key, key);
            earlier
        });
        let values: Vec<_> = series.iter().map(|s| (&*s.metric, s.points[0].1)).collect();
        assert_eq!(
            values,
            [
                ("p.workflow_run.total", 3.0),
                ("p.workflow_run.conclusion.success_total", 3.0),
                ("p.workflow_run.duration_second", 500.0),
                ("p.workflow_run.queued_duration_second", 30.5),
            ]
        );
        // Within one request, the larger of two colliding runs wins too.
        let longer =
            planned(&spec, &with(with(completed(), "id", Scalar::UInt(43)), "started", s("2024-05-01T10:00:10Z")));
        assert_eq!(longer.point_key, key);
        let series = spec.series(&[run, longer], &nothing_sent);
        assert_eq!(series[2].points, [(1714557900, 290.0)]);
    }

    #[test]
    fn runner_errors_are_counted_where_there_are_some_summed_on_top_of_what_was_sent() {
        use crate::model::job_testing::{job, raw};
        use crate::model::RunnerErrors;
        let spec = SeriesSpec {
            prefix: "p".into(),
            extra_tags: vec![],
            fields: TagFields::default(),
            ..SeriesSpec::default()
        };
        let plan = |id: u64, errors: RunnerErrors| {
            let mut raw = raw();
            raw.id = Some(Scalar::UInt(id));
            raw.conclusion = Some(s("failure"));
            let mut job = job(&raw);
            job.runner_errors = errors;
            let timestamp = job.completed_at;
            spec.plan(Item::Job(Box::new(job)), timestamp)
        };
        let lost = RunnerErrors { lost_communication: true, shutdown_signal: false };
        // Two colliding failed jobs, one that lost its runner; an earlier request had sent one
        // more such job to that point.
        let (a, b) = (plan(1, lost), plan(2, RunnerErrors::default()));
        assert_eq!(a.point_key, b.point_key);
        let earlier = SentPoint { count: 1, gauges: [None; 3], tallies: [1, 0] };
        let series = spec.series(&[a, b], &|_| earlier);
        let counts: Vec<_> =
            series.iter().filter(|s| s.kind == MetricKind::Count).map(|s| (&*s.metric, s.points[0].1)).collect();
        assert_eq!(
            counts,
            [
                ("p.job.total", 3.0),
                ("p.job.conclusion.failure_total", 3.0),
                ("p.job.lost_communication_with_server_error_total", 2.0),
            ],
            "no shutdown series where no job had one"
        );
        // Without any runner error, no runner error series at all.
        let series = spec.series(&[plan(3, RunnerErrors::default())], &nothing_sent);
        assert!(series.iter().all(|s| !s.metric.ends_with("error_total")), "{series:?}");
    }

    #[test]
    fn split_keeps_point_keys_together() {
        let spec = SeriesSpec {
            prefix: "p".into(),
            extra_tags: vec![],
            fields: TagFields::default(),
            ..SeriesSpec::default()
        };
        let same: Vec<_> = (0..3).map(|i| planned(&spec, &with(completed(), "id", Scalar::UInt(100 + i)))).collect();
        assert!(split_in_two(same.clone()).is_err());
        let mut runs = same;
        runs.push(planned(&spec, &with(completed(), "updated", s("2024-05-01T10:06:00Z"))));
        let (a, b) = split_in_two(runs).expect("two point keys");
        assert_eq!(a.len() + b.len(), 4);
        let keys_a: Vec<_> = a.iter().map(|p| p.point_key).collect();
        assert!(b.iter().all(|p| !keys_a.contains(&p.point_key)));
    }

    #[test]
    fn the_planner_cache_gives_the_same_plan() {
        let spec = SeriesSpec {
            prefix: "p".into(),
            extra_tags: vec!["x:y".into()],
            fields: TagFields::default(),
            ..SeriesSpec::default()
        };
        let mut planner = Planner::new(spec.clone());
        for fields in [completed(), with(completed(), "branch", s("dev")), completed()] {
            let run = completed_run(&fields);
            let timestamp = run.completed_at;
            assert_eq!(planner.plan(Item::Run(run.clone()), timestamp), spec.plan(Item::Run(run), timestamp));
        }
        assert_eq!(planner.cache.len(), 2);
    }

    #[test]
    fn point_key_is_stable_across_versions() {
        // Stored in ledgers: a change here would recount runs. The values come from an
        // independent FNV-1a in Python (each text and the little-endian timestamp followed by a
        // 0xff separator).
        assert_eq!(point_key("p", &[], 0), 1_770_209_142_969_546_045);
        let tags = |tags: &[&str]| tags.iter().map(|tag| (*tag).to_owned()).collect::<Vec<_>>();
        assert_eq!(point_key("github.actions", &tags(&["a:b"]), 1_700_000_000), -1_888_579_908_571_774_572);
        assert_eq!(point_key("github.actions", &tags(&["a:b", "c:d"]), 1_700_000_000), 3_163_507_421_079_286_124);
        // The separator keeps ["a:b", "c:d"] apart from ["a:bc:d"].
        assert_eq!(point_key("github.actions", &tags(&["a:bc:d"]), 1_700_000_000), -3_789_397_109_254_471_823);
    }

    #[test]
    fn ages() {
        assert_eq!(age(1000, 1000, 60), Age::Fresh);
        assert_eq!(age(939, 1000, 60), Age::TooOld);
        assert_eq!(age(1601, 1000, 60), Age::Future);
    }
}
