//! The dry run's preview for a person at a terminal: per repository and workflow, the runs that
//! would be sent, their conclusions and median duration, and what was skipped and why, in
//! words ("completed but no conclusion", not `status=completed`). The run log stays the
//! complete record; this is a summary of it.

use std::collections::BTreeMap;

use crate::model::Item;

/// Rows by (repository, workflow); skipped items whose workflow is not known are under "-".
#[derive(Clone, Debug, Default)]
pub struct Preview {
    rows: BTreeMap<(String, String), Row>,
}

#[derive(Clone, Debug, Default)]
struct Row {
    runs: u64,
    /// Jobs and steps that would be sent with the runs of this workflow.
    jobs_and_steps: u64,
    conclusions: BTreeMap<String, u64>,
    durations: Vec<f64>,
    skipped: BTreeMap<String, u64>,
}

/// A skip reason of the run log, in words.
fn why(reason: &str, detail: Option<&str>) -> String {
    match (reason, detail.and_then(|detail| detail.strip_prefix("status="))) {
        ("not_completed", Some("completed")) => "completed but no conclusion".to_owned(),
        ("not_completed", Some("no conclusion")) => "no status and no conclusion".to_owned(),
        ("not_completed", Some(status)) => format!("not completed yet ({status})"),
        ("already_sent", _) => "already sent".to_owned(),
        ("too_old", _) => "too old for Datadog (--historical sends it)".to_owned(),
        ("too_old_before", _) => "recorded too old before".to_owned(),
        ("dead_letter", _) => "a dead letter (ledger requeue)".to_owned(),
        ("duplicate", _) => "read twice".to_owned(),
        ("not_requested", _) => "a job (--jobs sends it)".to_owned(),
        ("claimed_elsewhere", _) => "held by another invocation".to_owned(),
        (reason, _) => reason.replace('_', " "),
    }
}

impl Preview {
    /// An item that would be sent.
    pub fn would_send(&mut self, item: &Item) {
        match item {
            Item::Run(run) => {
                // Lowercase, as keys are: a run and its skipped attempts share a row.
                let repository = format!("{}/{}", run.owner(), run.repo()).to_lowercase();
                let row = self.row(&repository, run.workflow_name());
                row.runs += 1;
                *row.conclusions.entry(run.conclusion().to_owned()).or_default() += 1;
                row.durations.extend(run.duration_seconds);
            }
            Item::Job(job) => self.job_or_step(&job.context),
            Item::Step(step) => self.job_or_step(&step.context),
        }
    }

    fn job_or_step(&mut self, context: &crate::model::JobContext) {
        let repository = format!("{}/{}", context.owner, context.repo).to_lowercase();
        self.row(&repository, &context.workflow_name).jobs_and_steps += 1;
    }

    /// An item skipped, as the run log says it (`reason`, `detail`), by its key.
    pub fn skipped(&mut self, key: &str, reason: &str, detail: Option<&str>) {
        let repository = crate::ledger::inspect::repository(key);
        *self.row(repository, "-").skipped.entry(why(reason, detail)).or_default() += 1;
    }

    fn row(&mut self, repository: &str, workflow: &str) -> &mut Row {
        self.rows.entry((repository.to_owned(), workflow.to_owned())).or_default()
    }

    /// The table, or `None` when there is nothing to show.
    #[must_use]
    pub fn render(&self) -> Option<String> {
        if self.rows.is_empty() {
            return None;
        }
        let header = ["repository", "workflow", "runs", "conclusions", "median", "skipped"];
        let mut lines: Vec<[String; 6]> = vec![header.map(str::to_owned)];
        for ((repository, workflow), row) in &self.rows {
            let conclusions: Vec<String> = row.conclusions.iter().map(|(name, n)| format!("{name} {n}")).collect();
            let skipped: Vec<String> = row.skipped.iter().map(|(why, n)| format!("{n} {why}")).collect();
            let runs = match (row.runs, row.jobs_and_steps) {
                (0, 0) => "-".to_owned(),
                (runs, 0) => runs.to_string(),
                (0, more) => format!("+{more} jobs/steps"),
                (runs, more) => format!("{runs} +{more} jobs/steps"),
            };
            lines.push([
                repository.clone(),
                workflow.clone(),
                runs,
                if conclusions.is_empty() { "-".to_owned() } else { conclusions.join(", ") },
                median(&row.durations).map_or_else(|| "-".to_owned(), duration),
                if skipped.is_empty() { "-".to_owned() } else { skipped.join(", ") },
            ]);
        }
        let mut widths = [0usize; 6];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in &lines {
            let cells: Vec<String> = line.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        Some(out)
    }
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) { (sorted[middle - 1] + sorted[middle]) / 2.0 } else { sorted[middle] })
}

fn duration(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_read_as_words_and_medians_as_durations() {
        assert_eq!(why("not_completed", Some("status=completed")), "completed but no conclusion");
        assert_eq!(why("not_completed", Some("status=in_progress")), "not completed yet (in_progress)");
        assert_eq!(median(&[300.0, 60.0, 90.0]), Some(90.0));
        assert_eq!(median(&[1.0, 2.0]), Some(1.5));
        assert_eq!((duration(42.4), duration(312.0), duration(7300.0)), ("42s".into(), "5m12s".into(), "2h01m".into()));
        let mut preview = Preview::default();
        preview.skipped("acme/api:1:1", "not_completed", Some("status=queued"));
        let table = preview.render().unwrap();
        assert!(
            table.starts_with("repository")
                && table.contains("acme/api    -")
                && table.contains("1 not completed yet (queued)"),
            "{table}"
        );
    }
}
