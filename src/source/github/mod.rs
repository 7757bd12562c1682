//! Runs fetched from GitHub's REST API itself (`send --github OWNER/REPO`), incrementally.
//!
//! Each repository keeps a cursor (its scope is `github:owner/repo`): `low`, the creation time
//! from which the next pass lists runs (the newest run seen), the `ETag` of that listing, and the
//! runs seen unfinished. A pass lists `GET /repos/{o}/{r}/actions/runs?created=>=low` newest
//! first, following the `Link` header, and yields every run to the pipeline (which skips what its
//! ledger already has); then asks for each unfinished run (`GET .../runs/{id}`) with its `ETag`,
//! so that a run in progress for days costs a free `304` a pass and is sent once, in the first
//! pass after it completes. An idle repository's listing is the same URL as before, and GitHub
//! answers its `If-None-Match` with a `304` that costs no quota.
//!
//! GitHub returns at most 1,000 results for a query with a `created` filter, whatever
//! `total_count` says: a listing that holds more is split into time ranges, halved until each
//! holds at most 1,000.
//!
//! The cursor is handed to the pipeline as a checkpoint after the repository's runs: it is
//! saved only once every run yielded before it is sent, recorded or dead-lettered, so a crash or
//! a failed request leaves the old cursor and the next pass lists those runs again.
//!
//! With `--jobs`, a new run's jobs are fetched before the run is handed over (if that fails,
//! neither goes out), a run under way has its jobs asked for each pass with their `ETag` (those
//! completed go out), and the cursor keeps which attempts' jobs went out, as far back as the
//! rescan reaches.
//!
//! Re-runs: a new attempt keeps its run's creation time, so once the cursor has passed it, only
//! the rescan (`--rescan` before the cursor, every `--rescan-every`) lists it again; a re-run in
//! progress it finds is watched like any unfinished run. Re-runs of older runs are not seen: the
//! `workflow_run` event path (`on: workflow_run`) sends every attempt.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::file::{read_from, Record};
use super::{Checkpoint, Input, Source, SourceEvent, SourceUsage, Stop};
use crate::model::{validate_run, Item, Validated};
use crate::retry::{self, RetryPolicy};

mod client;

pub use client::{GithubApp, GithubAuth, GithubClient, GithubError, GithubToken, Usage};

/// GitHub's cap on the results of a query that uses the `created` filter.
const RESULT_CAP: u64 = 1000;

/// A listing is split when its `total_count` reaches this: every part then holds fewer than the
/// cap, whatever GitHub counts at the edge.
fn over_cap(total: u64) -> bool {
    total >= RESULT_CAP
}

/// Where a repository's next pass starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// Unix seconds: runs created at or after this are listed.
    low: i64,
    /// The `ETag` of the listing from `low`, when the last pass ended with the same `low`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    /// The last rescan of older runs (for their re-runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rescan: Option<Rescan>,
    /// Runs seen unfinished, asked for one by one until they complete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    watch: Vec<Watched>,
    /// With `--jobs`: the attempts whose jobs were handed over (run id, attempt, created), as
    /// far back as a rescan reaches, so that a run listed again does not cost its jobs again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    with_jobs: Vec<(u64, u32, i64)>,
    /// The repository's default branch as last asked (`GET /repos/{o}/{r}`), for the
    /// `default_branch` tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    repository: Option<RepositoryInfo>,
}

/// What a pass needs of the repository itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RepositoryInfo {
    default_branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    /// When it was asked, unix seconds: asked again (with its ETag, free when unchanged) after
    /// `--rescan-every`.
    at: i64,
}

/// A run seen unfinished, with the `ETag` of its last answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Watched {
    id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    /// The attempt under way (with `--jobs`: whose jobs are asked for as they complete).
    #[serde(default = "first_attempt")]
    attempt: u32,
    /// The `ETag` of that attempt's jobs listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jobs_etag: Option<String>,
    /// That attempt's start (`run_started_at`), unix milliseconds: its jobs' starts are
    /// measured from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_ms: Option<i64>,
}

fn first_attempt() -> u32 {
    1
}

/// A listing of the runs created in `from..=to`, older than the cursor, at `at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Rescan {
    at: i64,
    from: i64,
    to: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
}

/// How far back and how often older runs are listed again, for their re-runs.
#[derive(Clone, Copy, Debug)]
pub struct RescanPolicy {
    /// Seconds back from the cursor (the newest run seen, or the oldest unfinished); 0: never.
    pub window: i64,
    /// Seconds between two rescans of a repository.
    pub every: i64,
}

/// Which repositories to fetch: those named, and those of organisations that pass the filters.
#[derive(Clone, Debug, Default)]
pub struct Repositories {
    /// `(owner, name)`, as given (`--github`).
    pub named: Vec<(String, String)>,
    /// `--github-org`: every repository of these, archived and disabled ones left out.
    pub orgs: Vec<String>,
    /// `--github-repos`: of an organisation's repositories, those whose name matches one of
    /// these globs (all when none).
    pub include: Vec<String>,
    /// `--github-exclude`: and not one of these.
    pub exclude: Vec<String>,
}

impl Repositories {
    fn wanted(&self, name: &str) -> bool {
        let matches = |globs: &[String]| globs.iter().any(|glob| wildmatch::WildMatch::new(glob).matches(name));
        (self.include.is_empty() || matches(&self.include)) && !matches(&self.exclude)
    }
}

/// The repositories of an organisation as last listed, with the listing's `ETag` when it was
/// one page (GitHub's ETags are per page: a first page unchanged says nothing of the second).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OrgCursor {
    etag: Option<String>,
    /// Names of the repositories that are neither archived nor disabled.
    repos: Vec<String>,
}

/// The runs of one or more repositories, from GitHub.
pub struct GithubSource {
    client: GithubClient,
    repositories: Repositories,
    /// Where a repository without a cursor starts (`--since`), unix seconds.
    since: i64,
    rescan: RescanPolicy,
    policy: RetryPolicy,
    cursors: HashMap<String, String>,
    /// `--jobs`: each new run's jobs are fetched and handed over with it.
    jobs: bool,
}

impl GithubSource {
    pub fn new(
        client: GithubClient,
        repositories: Repositories,
        since: i64,
        rescan: RescanPolicy,
        policy: RetryPolicy,
    ) -> GithubSource {
        GithubSource { client, repositories, since, rescan, policy, cursors: HashMap::new(), jobs: false }
    }

    /// Fetch each new run's jobs too (`--jobs`).
    pub fn with_jobs(mut self, jobs: bool) -> GithubSource {
        self.jobs = jobs;
        self
    }

    /// The repositories of `org` that are neither archived nor disabled (`GET /orgs/{org}/repos`,
    /// conditional on the last listing's `ETag`, kept under the scope `github-org:{org}`).
    fn org_repos(
        &self,
        runtime: &tokio::runtime::Runtime,
        shutdown: &mut watch::Receiver<Option<i32>>,
        org: &str,
        emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>,
    ) -> Result<Vec<String>, Ended> {
        #[derive(Deserialize)]
        struct Repo {
            name: String,
            #[serde(default)]
            archived: bool,
            #[serde(default)]
            disabled: bool,
        }
        let scope = format!("github-org:{}", org.to_lowercase());
        let last: OrgCursor =
            self.cursors.get(&scope).and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default();
        let mut url = Some(self.client.url(&format!("orgs/{org}/repos?per_page=100&type=all")));
        let mut etag = last.etag.clone();
        let mut first_etag = None;
        let mut pages = 0;
        let mut repos = Vec::new();
        while let Some(next) = url.take() {
            pages += 1;
            let page = fetch(&self.client, runtime, &self.policy, shutdown, &next, etag.take().as_deref(), emit)?;
            if page.status == 304 {
                return Ok(last.repos);
            }
            if first_etag.is_none() {
                first_etag = Some(page.etag.clone());
            }
            let listed: Vec<Repo> = serde_json::from_slice(&page.body).map_err(|error| {
                Ended::Failed(GithubError::Status {
                    url: next.clone(),
                    status: page.status,
                    body: format!("not a list of repositories: {error}"),
                    retry_after: None,
                })
            })?;
            repos.extend(listed.into_iter().filter(|repo| !repo.archived && !repo.disabled).map(|repo| repo.name));
            url = page.next;
        }
        repos.sort();
        let next = OrgCursor { etag: first_etag.flatten().filter(|_| pages == 1), repos: repos.clone() };
        if next != last {
            let cursor = serde_json::to_string(&next).expect("an organisation's cursor serialises: strings");
            emit(SourceEvent::Checkpoint(Checkpoint { scope, cursor }))?;
        }
        Ok(repos)
    }
}

/// The cursor scope of a repository.
pub fn scope(owner: &str, name: &str) -> String {
    format!("github:{}/{}", owner.to_lowercase(), name.to_lowercase())
}

impl Source for GithubSource {
    fn describe(&self) -> Vec<String> {
        let named = self.repositories.named.iter().map(|(owner, name)| scope(owner, name));
        named.chain(self.repositories.orgs.iter().map(|org| format!("github-org:{org}"))).collect()
    }

    fn size(&self) -> Option<u64> {
        None
    }

    fn scope_prefix(&self) -> Option<String> {
        Some("github".into())
    }

    fn resume(&mut self, cursors: HashMap<String, String>) {
        self.cursors = cursors;
    }

    fn run(&mut self, _: &AtomicU64, emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = emit(SourceEvent::Unavailable { input: "github".into(), message: error.to_string() });
                return;
            }
        };
        // Shutdown reaches this thread as the pipeline going away (`Stop`), not as a signal.
        let (_never, mut shutdown) = watch::channel(None);
        let mut repos = self.repositories.named.clone();
        for org in self.repositories.orgs.clone() {
            match self.org_repos(&runtime, &mut shutdown, &org, emit) {
                Ok(names) => repos.extend(
                    names.into_iter().filter(|name| self.repositories.wanted(name)).map(|name| (org.clone(), name)),
                ),
                Err(Ended::Stopped) => return,
                Err(Ended::Failed(error)) => {
                    let message = crate::error::error_chain(&error);
                    let event = if matches!(error, GithubError::Token { .. } | GithubError::App { .. }) {
                        SourceEvent::Fatal { input: format!("github-org:{org}"), message }
                    } else {
                        SourceEvent::Unavailable { input: format!("github-org:{org}"), message }
                    };
                    if emit(event).is_err() {
                        return;
                    }
                }
            }
        }
        repos.sort_by_key(|(owner, name)| scope(owner, name));
        repos.dedup_by_key(|(owner, name)| scope(owner, name));
        for (owner, name) in repos {
            let scope = scope(&owner, &name);
            let pass = Pass {
                source: self,
                runtime: &runtime,
                owner: &owner,
                name: &name,
                scope: &scope,
                shutdown: &mut shutdown,
                with_jobs: Vec::new(),
                repository: None,
            };
            match pass.run(emit) {
                Ok(()) => {}
                Err(Ended::Stopped) => return,
                Err(Ended::Failed(error)) => {
                    // A rejected token or a spent quota holds for every repository: stop.
                    let whole_source = matches!(
                        error,
                        GithubError::Token { .. } | GithubError::App { .. } | GithubError::RateLimited { .. }
                    );
                    let message = crate::error::error_chain(&error);
                    let event = if matches!(error, GithubError::Token { .. } | GithubError::App { .. }) {
                        SourceEvent::Fatal { input: scope.clone(), message }
                    } else {
                        SourceEvent::Unavailable { input: scope.clone(), message }
                    };
                    if emit(event).is_err() {
                        return;
                    }
                    if whole_source {
                        break;
                    }
                }
            }
        }
        let usage = self.client.usage();
        let _ = emit(SourceEvent::Usage(SourceUsage {
            requests: usage.requests,
            not_modified: usage.not_modified,
            quota: self.client.quota(),
        }));
    }
}

/// Why a pass over a repository ended early.
enum Ended {
    /// The pipeline has gone.
    Stopped,
    Failed(GithubError),
}

impl From<Stop> for Ended {
    fn from(_: Stop) -> Ended {
        Ended::Stopped
    }
}

/// What a listing came to.
struct Listed {
    /// `304`: unchanged since the `ETag` given; nothing was yielded.
    not_modified: bool,
    /// The `ETag` of the listing, when one query held it all.
    etag: Option<String>,
}

/// What a pass has seen: the newest run by creation time, and the runs not finished yet.
#[derive(Default)]
struct Seen {
    newest: Option<i64>,
    /// Run id, attempt and the attempt's start (unix milliseconds).
    unfinished: Vec<(u64, u32, Option<i64>)>,
}

/// One pass over one repository. HTTP runs on `runtime`; items are handed over outside it (the
/// reader's channel blocks, which a runtime's thread must not).
struct Pass<'a> {
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
}

impl Pass<'_> {
    fn run(mut self, emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>) -> Result<(), Ended> {
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
                next.watch.push(Watched { id, etag: None, attempt, jobs_etag: None, started_ms });
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
                Err(super::SourceError::Stopped { .. }) => return Err(Ended::Stopped),
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
            let Some(next) = page.next.take() else { return Ok(jobs) };
            page = self.fetch(&next, None, emit)?;
        }
    }
}

/// One GET, retried as GitHub's answers allow; each request goes to the run log.
fn fetch(
    client: &GithubClient,
    runtime: &tokio::runtime::Runtime,
    policy: &RetryPolicy,
    shutdown: &mut watch::Receiver<Option<i32>>,
    url: &str,
    etag: Option<&str>,
    emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>,
) -> Result<client::Page, Ended> {
    let outcome = runtime.block_on(retry::retry(policy, 0, "GitHub request", shutdown, || client.get(url, etag)));
    let status = match &outcome.result {
        Ok(page) => page.status.to_string(),
        Err(GithubError::Status { status, .. } | GithubError::Token { status, .. }) => status.to_string(),
        Err(_) => "error".to_owned(),
    };
    let quota = client.quota().map_or_else(|| "-".to_owned(), |quota| quota.remaining.to_string());
    emit(SourceEvent::Log(format!(
        "github GET {url} status={status} attempts={} etag={} quota_remaining={quota}",
        outcome.attempts,
        if etag.is_some() { "sent" } else { "-" },
    )))?;
    outcome.result.map_err(Ended::Failed)
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
fn total_count(body: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Count {
        #[serde(default)]
        total_count: u64,
    }
    serde_json::from_slice::<Count>(body).map_or(0, |count| count.total_count)
}

fn iso(seconds: i64) -> String {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_scopes_are_lowercase() {
        let cursor = Cursor {
            low: 1_700_000_000,
            etag: Some("W/\"abc\"".into()),
            watch: vec![Watched { id: 7, etag: None, attempt: 1, jobs_etag: None, started_ms: None }],
            ..Cursor::default()
        };
        let text = serde_json::to_string(&cursor).unwrap();
        assert_eq!(text, r#"{"low":1700000000,"etag":"W/\"abc\"","watch":[{"id":7,"attempt":1}]}"#);
        assert_eq!(serde_json::from_str::<Cursor>(&text).unwrap(), cursor);
        assert_eq!(serde_json::from_str::<Cursor>(r#"{"low":5}"#).unwrap(), Cursor { low: 5, ..Cursor::default() });
        assert_eq!(scope("Octo-Org", "Repo"), "github:octo-org/repo");
        assert_eq!(total_count(br#"{"total_count":1234,"workflow_runs":[]}"#), 1234);
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
    }
}
