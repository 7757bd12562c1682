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

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Checkpoint, Input, Source, SourceEvent, SourceUsage, Stop};
use crate::retry::{self, RetryPolicy};

mod client;
mod pass;

use pass::Pass;

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
    /// Failed jobs of that run whose annotations were asked (they went out, runner errors and
    /// all): not asked again when the run completes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    annotated: Vec<u64>,
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
    /// A shared ledger's locks: a repository is polled only while this invocation holds its lock.
    locks: Option<Box<dyn crate::source::ScopeLocks>>,
}

impl GithubSource {
    pub fn new(
        client: GithubClient,
        repositories: Repositories,
        since: i64,
        rescan: RescanPolicy,
        policy: RetryPolicy,
    ) -> GithubSource {
        GithubSource { client, repositories, since, rescan, policy, cursors: HashMap::new(), jobs: false, locks: None }
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

    fn share_scopes(&mut self, locks: Box<dyn crate::source::ScopeLocks>) {
        self.locks = Some(locks);
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
            // Another invocation sharing the ledger is polling it: its runs are in hand there.
            if let Some(locks) = &mut self.locks {
                let note = match locks.try_lock(&scope) {
                    Ok(true) => None,
                    Ok(false) => Some(format!("note: {scope} is being polled by another invocation; skipped")),
                    Err(error) => Some(format!("note: {scope} skipped: its lock could not be taken ({error})")),
                };
                if let Some(note) = note {
                    tracing::info!("{note}");
                    if emit(SourceEvent::Log(note)).is_err() {
                        return;
                    }
                    continue;
                }
            }
            let pass = Pass::new(self, &runtime, &owner, &name, &scope, &mut shutdown);
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

#[cfg(test)]
mod tests {
    use super::pass::{iso, total_count};
    use super::*;

    #[test]
    fn cursors_round_trip_and_scopes_are_lowercase() {
        let cursor = Cursor {
            low: 1_700_000_000,
            etag: Some("W/\"abc\"".into()),
            watch: vec![Watched {
                id: 7,
                etag: None,
                attempt: 1,
                jobs_etag: None,
                started_ms: None,
                annotated: vec![],
            }],
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
