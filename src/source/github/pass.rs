//! One pass over one repository: the listing from its cursor (split under GitHub's cap), the
//! runs it watches, their jobs (`--jobs`), the rescan for re-runs, the repository's default
//! branch, and the cursor it hands over as a checkpoint. See the module above for the cursor.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use tokio::sync::watch;

use super::client::{self, GithubError};
use super::{
    fetch, over_cap, Checkpoint, Cursor, Ended, GithubSource, Input, RepositoryInfo, Rescan, SourceEvent, Stop, Watched,
};
use crate::model::{validate_run, Item, Validated};
use crate::source::file::{read_from, Record};

/// What a listing came to.
struct Listed {
    /// `304`: unchanged since the `ETag` given; nothing was yielded.
    not_modified: bool,
    /// The `ETag` of the listing, when one query held it all.
    etag: Option<String>,
}

/// What a pass has seen: the newest run by creation time, and the runs not finished yet.
#[derive(Default)]
pub(super) struct Seen {
    newest: Option<i64>,
    /// Run id, attempt and the attempt's start (unix milliseconds).
    unfinished: Vec<(u64, u32, Option<i64>)>,
}

/// One pass over one repository. HTTP runs on `runtime`; items are handed over outside it (the
/// reader's channel blocks, which a runtime's thread must not).
pub(super) struct Pass<'a> {
    source: &'a GithubSource,
    runtime: &'a tokio::runtime::Runtime,
    owner: &'a str,
    name: &'a str,
    scope: &'a str,
    shutdown: &'a mut watch::Receiver<Option<i32>>,
    /// Attempts whose jobs were handed over: the cursor's, and this pass's.
    with_jobs: Vec<(u64, u32, i64)>,
    /// The repository as the cursor or this pass knows it.
    repository: Option<RepositoryInfo>,
    /// (run id, job id) of failed jobs of watched runs whose annotations were asked: the
    /// cursor's, and this pass's. Those jobs went out; asking again would spend quota for a job
    /// the ledger already holds.
    annotated: Vec<(u64, u64)>,
    /// GitHub refused the annotations (403/404: the token lacks `checks: read`): not asked
    /// again this pass.
    annotations_refused: bool,
}

impl<'a> Pass<'a> {
    pub(super) fn new(
        source: &'a GithubSource,
        runtime: &'a tokio::runtime::Runtime,
        owner: &'a str,
        name: &'a str,
        scope: &'a str,
        shutdown: &'a mut watch::Receiver<Option<i32>>,
    ) -> Pass<'a> {
        Pass {
            source,
            runtime,
            owner,
            name,
            scope,
            shutdown,
            with_jobs: Vec::new(),
            repository: None,
            annotated: Vec::new(),
            annotations_refused: false,
        }
    }

    pub(super) fn run(mut self, emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>) -> Result<(), Ended> {
        let cursor = self
            .source
            .cursors
            .get(self.scope)
            .and_then(|text| serde_json::from_str::<Cursor>(text).ok())
            .unwrap_or(Cursor { low: self.source.since, ..Cursor::default() });
        let now = Utc::now().timestamp();
        let mut next = cursor.clone();
        self.with_jobs = cursor.with_jobs.clone();
        self.repository = cursor.repository.clone();
        self.annotated =
            cursor.watch.iter().flat_map(|watched| watched.annotated.iter().map(|job| (watched.id, *job))).collect();
        // New runs: everything created since the cursor.
        let mut seen = Seen::default();
        let head = self.list(cursor.low, None, cursor.etag.as_deref(), now, &mut seen, emit)?;
        if !head.not_modified {
            next.low = seen.newest.unwrap_or(cursor.low).max(cursor.low);
            // The ETag belongs to the listing from `low`: it is kept only if `low` stays.
            next.etag = head.etag.filter(|_| next.low == cursor.low);
        }
        // Runs not finished at the last pass, one by one with their ETags: a run that stays in
        // progress for days costs a free 304 a pass, and is sent once it completes. (Those the
        // listing just showed are not asked again.)
        next.watch.clear();
        for watched in &cursor.watch {
            let listed = seen.unfinished.iter().find(|(id, _, _)| *id == watched.id).copied();
            let mut still = if let Some((_, attempt, started_ms)) = listed {
                // The listing just showed it unfinished: no need to ask for the run again.
                let mut still = watched.clone();
                if still.attempt != attempt {
                    still.attempt = attempt;
                    still.jobs_etag = None;
                }
                still.started_ms = started_ms;
                Some(still)
            } else {
                let url =
                    self.source.client.url(&format!("repos/{}/{}/actions/runs/{}", self.owner, self.name, watched.id));
                let page = match self.fetch(&url, watched.etag.as_deref(), emit) {
                    Ok(page) => page,
                    // Deleted since: nothing to wait for.
                    Err(Ended::Failed(GithubError::Status { status: 404 | 410, .. })) => continue,
                    Err(ended) => return Err(ended),
                };
                self.watched_answer(watched, page, emit)?
            };
            // Jobs of a run still under way go out as they complete: a long workflow's early
            // jobs would otherwise be older than Datadog's window when the run ends.
            if let Some(watched) = still.as_mut().filter(|_| self.source.jobs) {
                watched.jobs_etag = self.running_jobs(watched, emit)?;
                watched.annotated =
                    self.annotated.iter().filter(|(run, _)| *run == watched.id).map(|(_, job)| *job).collect();
            }
            next.watch.extend(still);
        }
        // Older runs, created within the rescan window before the cursor, now and then, for
        // their re-runs (new attempts). Anchored on the cursor, the listing's URL stays the same
        // while nothing happens, and its ETag makes it free.
        let policy = self.source.rescan;
        let due = cursor.rescan.as_ref().is_none_or(|rescan| now - rescan.at >= policy.every);
        if policy.window > 0 && due {
            let (from, to) = (cursor.low - policy.window, cursor.low - 1);
            let etag = cursor
                .rescan
                .as_ref()
                .filter(|last| (last.from, last.to) == (from, to))
                .and_then(|last| last.etag.as_deref());
            let listed = self.list(from, Some(to), etag, now, &mut seen, emit)?;
            next.rescan = Some(Rescan { at: now, from, to, etag: listed.etag });
        }
        next.repository = self.repository.take();
        // Attempts whose jobs went out, as far back as the next rescan reaches.
        let oldest = next.low - self.source.rescan.window;
        next.with_jobs = std::mem::take(&mut self.with_jobs);
        next.with_jobs.retain(|(_, _, created)| *created >= oldest);
        // Runs the listings showed unfinished (new ones, and re-runs under way) are watched from
        // the next pass on.
        for (id, attempt, started_ms) in seen.unfinished {
            if !next.watch.iter().any(|watched| watched.id == id) {
                next.watch.push(Watched {
                    id,
                    etag: None,
                    attempt,
                    jobs_etag: None,
                    started_ms,
                    annotated: Vec::new(),
                });
            }
        }
        if next != cursor {
            let cursor = serde_json::to_string(&next).expect("a cursor serialises: numbers and strings");
            emit(SourceEvent::Checkpoint(Checkpoint { scope: self.scope.to_owned(), cursor }))?;
        }
        Ok(())
    }

    /// Yields the runs created from `from` (to `to`, else up to now), newest first; splits the
    /// time range when it holds more than GitHub shows of one query.
    fn list(
        &mut self,
        from: i64,
        to: Option<i64>,
        etag: Option<&str>,
        now: i64,
        seen: &mut Seen,
        emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>,
    ) -> Result<Listed, Ended> {
        let created = match to {
            None => format!(">={}", iso(from)),
            Some(to) => format!("{}..{}", iso(from), iso(to)),
        };
        let first = self.fetch(&self.listing(&created), etag, emit)?;
        if first.status == 304 {
            return Ok(Listed { not_modified: true, etag: etag.map(str::to_owned) });
        }
        if !over_cap(total_count(&first.body)) {
            let etag = first.etag.clone();
            self.page_through(first, seen, emit)?;
            return Ok(Listed { not_modified: false, etag });
        }
        // Over GitHub's cap: halve the time range until each part holds at most 1,000 runs.
        let mut ranges = vec![(from, to.unwrap_or(now))];
        while let Some((from, to)) = ranges.pop() {
            let page = self.fetch(&self.listing(&format!("{}..{}", iso(from), iso(to))), None, emit)?;
            if over_cap(total_count(&page.body)) && to > from {
                let middle = from + (to - from) / 2;
                ranges.push((middle + 1, to));
                ranges.push((from, middle));
                continue;
            }
            self.page_through(page, seen, emit)?;
        }
        Ok(Listed { not_modified: false, etag: None })
    }

    /// The runs listing URL with a `created` filter, newest first, 100 a page.
    fn listing(&self, created: &str) -> String {
        let created: String = created.replace('>', "%3E").replace('=', "%3D").replace(':', "%3A");
        self.source.client.url(&format!(
            "repos/{}/{}/actions/runs?per_page=100&exclude_pull_requests=true&created={created}",
            self.owner, self.name
        ))
    }

    fn fetch(
        &mut self,
        url: &str,
        etag: Option<&str>,
        emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>,
    ) -> Result<client::Page, Ended> {
        fetch(&self.source.client, self.runtime, &self.source.policy, self.shutdown, url, etag, emit)
    }

    /// Yields the runs of `page` and of the pages after it (`Link: rel="next"`).
    fn page_through(
        &mut self,
        mut page: client::Page,
        seen: &mut Seen,
        emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>,
    ) -> Result<(), Ended> {
        let default_branch = self.default_branch(emit)?;
        let mut number = 1;
        loop {
            let label = Input::Remote(format!("{} page {number}", self.scope));
            // The page's records first, then (with --jobs) each new run's jobs, fetched before the
            // run is handed over: a run never goes out without its jobs.
            let mut records: Vec<(Validated, Option<i64>)> = Vec::new();
            let mut sink = |record: Record| -> Result<(), Stop> {
                records.push(match record {
                    Record::Run(mut raw) => {
                        lend_default_branch(&mut raw.repository, default_branch.as_deref());
                        let created = match &raw.created_at {
                            Some(crate::model::Scalar::Str(text)) => {
                                DateTime::parse_from_rfc3339(text).ok().map(|time| time.timestamp())
                            }
                            _ => None,
                        };
                        let validated = validate_run(&raw, None);
                        if let Some(created) = created {
                            seen.newest = Some(seen.newest.map_or(created, |newest| newest.max(created)));
                        }
                        if let (Validated::NotCompleted { .. }, Some(crate::model::Scalar::UInt(id))) =
                            (&validated, &raw.id)
                        {
                            let attempt = match raw.attempt {
                                Some(crate::model::Scalar::UInt(attempt)) => u32::try_from(attempt).unwrap_or(1),
                                _ => 1,
                            };
                            let started_ms = match &raw.run_started_at {
                                Some(crate::model::Scalar::Str(text)) => {
                                    DateTime::parse_from_rfc3339(text).ok().map(|time| time.timestamp_millis())
                                }
                                _ => None,
                            };
                            seen.unfinished.push((*id, attempt, started_ms));
                        }
                        (validated, created)
                    }
                    Record::Job(raw) => (crate::model::validate_job(&raw), None),
                    Record::Unrecognised { origin, reason } => (Validated::Invalid { origin, reason }, None),
                });
                Ok(())
            };
            match read_from(&label, &page.body[..], &mut sink) {
                Ok(_) => {}
                Err(crate::source::SourceError::Stopped { .. }) => return Err(Ended::Stopped),
                Err(error) => {
                    return Err(Ended::Failed(GithubError::Status {
                        url: label.to_string(),
                        status: page.status,
                        body: error.to_string(),
                        retry_after: None,
                    }))
                }
            }
            for (validated, created) in records {
                let jobs = match (&validated, created) {
                    (Validated::Completed(Item::Run(run)), Some(created)) if self.source.jobs => {
                        let done = (run.run_id, run.attempt);
                        let known = self.with_jobs.iter().any(|(id, attempt, _)| (*id, *attempt) == done);
                        if known {
                            Vec::new()
                        } else {
                            let mut jobs = self.jobs(run.run_id, run.attempt, emit)?;
                            for job in &mut jobs {
                                if let Validated::Completed(Item::Job(job)) = job {
                                    job.anchor(run.started_ms);
                                }
                            }
                            self.with_jobs.push((run.run_id, run.attempt, created));
                            jobs
                        }
                    }
                    _ => Vec::new(),
                };
                emit(SourceEvent::Item(validated))?;
                for job in jobs {
                    emit(SourceEvent::Item(job))?;
                }
            }
            let Some(next) = page.next.take() else { return Ok(()) };
            page = self.fetch(&next, None, emit)?;
            number += 1;
        }
    }

    /// What the answer about a watched run makes of it: still watched (with the new `ETag`, and
    /// its jobs' while the attempt stays), or done (it was handed over with the page).
    fn watched_answer(
        &mut self,
        watched: &Watched,
        page: client::Page,
        emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>,
    ) -> Result<Option<Watched>, Ended> {
        if page.status == 304 {
            return Ok(Some(watched.clone()));
        }
        let etag = page.etag.clone();
        let mut run = Seen::default();
        self.page_through(page, &mut run, emit)?;
        Ok(run.unfinished.iter().find(|(id, _, _)| *id == watched.id).map(|&(id, attempt, started_ms)| Watched {
            id,
            etag,
            attempt,
            jobs_etag: watched.jobs_etag.clone().filter(|_| attempt == watched.attempt),
            started_ms,
            annotated: watched.annotated.clone(),
        }))
    }

    /// The repository's default branch, asked at most every `--rescan-every` (with its ETag).
    /// Best effort: when GitHub does not answer, the last one known (or none) serves, and the
    /// runs still go out.
    fn default_branch(
        &mut self,
        emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>,
    ) -> Result<Option<String>, Ended> {
        let now = Utc::now().timestamp();
        if let Some(info) = self.repository.as_ref().filter(|info| now - info.at < self.source.rescan.every) {
            return Ok(info.default_branch.clone());
        }
        #[derive(Deserialize)]
        struct Repository {
            default_branch: Option<String>,
        }
        let url = self.source.client.url(&format!("repos/{}/{}", self.owner, self.name));
        let etag = self.repository.as_ref().and_then(|info| info.etag.clone());
        let page = match self.fetch(&url, etag.as_deref(), emit) {
            Ok(page) => page,
            Err(Ended::Stopped) => return Err(Ended::Stopped),
            Err(Ended::Failed(error)) => {
                tracing::warn!(repository = %self.scope, error = %error, "default branch unknown this pass");
                return Ok(self.repository.as_ref().and_then(|info| info.default_branch.clone()));
            }
        };
        let info = if page.status == 304 {
            let last = self.repository.take().expect("a 304 answers the ETag the cursor kept");
            RepositoryInfo { at: now, ..last }
        } else {
            let default_branch =
                serde_json::from_slice::<Repository>(&page.body).ok().and_then(|repository| repository.default_branch);
            RepositoryInfo { default_branch, etag: page.etag, at: now }
        };
        let default_branch = info.default_branch.clone();
        self.repository = Some(info);
        Ok(default_branch)
    }

    /// The jobs of a run under way, conditional on the last answer's `ETag`: those completed go
    /// out (the ledger keeps each once), the others are counted as not completed. The ETag to
    /// keep.
    fn running_jobs(
        &mut self,
        watched: &Watched,
        emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>,
    ) -> Result<Option<String>, Ended> {
        let url = self.source.client.url(&format!(
            "repos/{}/{}/actions/runs/{}/attempts/{}/jobs?per_page=100",
            self.owner, self.name, watched.id, watched.attempt
        ));
        let page = self.fetch(&url, watched.jobs_etag.as_deref(), emit)?;
        if page.status == 304 {
            return Ok(watched.jobs_etag.clone());
        }
        let etag = page.etag.clone().filter(|_| page.next.is_none());
        for mut job in self.job_pages(page, watched.id, watched.attempt, emit)? {
            if let Validated::Completed(Item::Job(job)) = &mut job {
                job.anchor(watched.started_ms);
            }
            emit(SourceEvent::Item(job))?;
        }
        Ok(etag)
    }

    /// The jobs of one attempt of a run (`GET .../runs/{id}/attempts/{n}/jobs`, every page).
    fn jobs(
        &mut self,
        run_id: u64,
        attempt: u32,
        emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>,
    ) -> Result<Vec<Validated>, Ended> {
        let url = self.source.client.url(&format!(
            "repos/{}/{}/actions/runs/{run_id}/attempts/{attempt}/jobs?per_page=100",
            self.owner, self.name
        ));
        let page = self.fetch(&url, None, emit)?;
        self.job_pages(page, run_id, attempt, emit)
    }

    /// The jobs of `page` and of the pages after it (`Link: rel="next"`).
    fn job_pages(
        &mut self,
        mut page: client::Page,
        run_id: u64,
        attempt: u32,
        emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>,
    ) -> Result<Vec<Validated>, Ended> {
        let mut jobs = Vec::new();
        loop {
            let label = Input::Remote(format!("{} run {run_id} attempt {attempt} jobs", self.scope));
            let default_branch = self.repository.as_ref().and_then(|info| info.default_branch.clone());
            let mut sink = |record: Record| -> Result<(), Stop> {
                if let Record::Job(mut raw) = record {
                    lend_default_branch(&mut raw.repository, default_branch.as_deref());
                    jobs.push(crate::model::validate_job(&raw));
                }
                Ok(())
            };
            if let Err(error) = read_from(&label, &page.body[..], &mut sink) {
                return Err(Ended::Failed(GithubError::Status {
                    url: label.to_string(),
                    status: page.status,
                    body: error.to_string(),
                    retry_after: None,
                }));
            }
            let Some(next) = page.next.take() else { break };
            page = self.fetch(&next, None, emit)?;
        }
        for job in &mut jobs {
            if let Validated::Completed(Item::Job(job)) = job {
                self.annotate(run_id, job, emit)?;
            }
        }
        Ok(jobs)
    }

    /// Reads a failed job's runner errors from its check run's annotations (the job id is the
    /// check run id): one request per failed job, never for one asked before. When GitHub
    /// cannot answer, the run waits for the next pass (`Err`); when it refuses (403/404: the
    /// token lacks `checks: read`), the job goes out without runner error counts, with a warning.
    fn annotate(
        &mut self,
        run_id: u64,
        job: &mut crate::model::Job,
        emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>,
    ) -> Result<(), Ended> {
        if job.conclusion != "failure" || self.annotations_refused || self.annotated.contains(&(run_id, job.job_id)) {
            return Ok(());
        }
        #[derive(Deserialize)]
        struct Annotation {
            #[serde(default)]
            message: Option<String>,
        }
        let mut url = self
            .source
            .client
            .url(&format!("repos/{}/{}/check-runs/{}/annotations?per_page=100", self.owner, self.name, job.job_id));
        let mut messages = Vec::new();
        loop {
            let mut page = match self.fetch(&url, None, emit) {
                Ok(page) => page,
                Err(Ended::Failed(GithubError::Status { status: 403 | 404, url, .. })) => {
                    tracing::warn!(
                        repository = %self.scope,
                        url = %url,
                        "GitHub refused the check run annotations (the token needs `checks: read`): failed jobs go out without runner error counts this pass"
                    );
                    self.annotations_refused = true;
                    return Ok(());
                }
                Err(ended) => return Err(ended),
            };
            let annotations: Vec<Annotation> = serde_json::from_slice(&page.body).map_err(|error| {
                Ended::Failed(GithubError::Status {
                    url: url.clone(),
                    status: page.status,
                    body: format!("not a list of annotations: {error}"),
                    retry_after: None,
                })
            })?;
            messages.extend(annotations.into_iter().filter_map(|annotation| annotation.message));
            match page.next.take() {
                Some(next) => url = next,
                None => break,
            }
        }
        job.runner_errors = crate::model::RunnerErrors::from_messages(messages.iter().map(String::as_str));
        self.annotated.push((run_id, job.job_id));
        Ok(())
    }
}

/// Gives a record's repository the default branch the pass learned, unless it says its own.
fn lend_default_branch(repository: &mut Option<crate::model::RepoRef>, default_branch: Option<&str>) {
    if let Some(default_branch) = default_branch {
        let repository = repository.get_or_insert_with(Default::default);
        if repository.default_branch.is_none() {
            repository.default_branch = Some(default_branch.to_owned());
        }
    }
}

/// `total_count` of a list body (0 when it has none).
pub(super) fn total_count(body: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Count {
        #[serde(default)]
        total_count: u64,
    }
    serde_json::from_slice::<Count>(body).map_or(0, |count| count.total_count)
}

pub(super) fn iso(seconds: i64) -> String {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Secs, true)
}
