//! A stand-in for GitHub's REST API on 127.0.0.1, as strict as GitHub where the tool depends on
//! it: it checks the token and the headers GitHub asks of API clients; serves a repository's
//! runs newest first, 100 a page at most, with real `Link` headers and `total_count`; applies
//! `created` filters (`>=`, `<=`, `a..b`) and GitHub's cap of 1,000 results for such queries;
//! answers `If-None-Match` with `304`, which costs no quota; and counts the quota down in its
//! rate-limit headers. Runs are built from a real recorded payload (`../shared/github/examples`),
//! and the test moves them along between passes: created, completed, re-run.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

pub const GITHUB_TOKEN: &str = "ghp_test0123456789abcdefghijklmnopqrstuv";
const QUOTA: u64 = 5000;

/// One run as the stand-in holds it.
#[derive(Clone, Debug)]
pub struct GhRun {
    pub repo: String,
    pub id: u64,
    pub attempt: u32,
    /// Unix seconds.
    pub created: i64,
    pub started: i64,
    pub updated: i64,
    pub status: &'static str,
    pub conclusion: Option<&'static str>,
}

impl GhRun {
    /// A run created `created` (unix seconds), completed successfully 300 s later.
    pub fn completed(repo: &str, id: u64, created: i64) -> GhRun {
        GhRun {
            repo: repo.to_owned(),
            id,
            attempt: 1,
            created,
            started: created + 5,
            updated: created + 300,
            status: "completed",
            conclusion: Some("success"),
        }
    }

    pub fn in_progress(repo: &str, id: u64, created: i64) -> GhRun {
        GhRun { status: "in_progress", conclusion: None, updated: created + 5, ..GhRun::completed(repo, id, created) }
    }
}

#[derive(Default)]
struct Inner {
    runs: Vec<GhRun>,
    /// Requests answered, and how many with 304.
    requests: u64,
    not_modified: u64,
    /// Quota spent (304s spend none).
    spent: u64,
    /// Every URL asked for, in order (path and query).
    urls: Vec<String>,
    /// Answer 401 to everything (a revoked token).
    reject_token: bool,
    /// The primary limit (5,000 unless a test sets it) and when it resets, unix seconds.
    quota: Option<u64>,
    reset: Option<i64>,
    /// The next requests answered with a secondary rate limit (403, retry-after: 0).
    secondary: u32,
    /// Repositories of organisations: full name, archived.
    repos: Vec<(String, bool)>,
    /// A real job object (from ../shared), the model of the jobs the stand-in serves.
    job_template: Value,
    /// A GitHub App that may buy installation tokens, and the tokens it bought (with expiry).
    app: Option<App>,
    issued: Vec<(String, i64)>,
    exchanges: u64,
    /// Requests refused because the primary limit was spent.
    over_limit: u64,
    /// The next requests answered 502 (a GitHub outage).
    failing: u32,
    /// The next requests for jobs answered 502.
    failing_jobs: u32,
    /// Jobs (by id) that failed, with the messages of their check run's annotations.
    failed_jobs: HashMap<u64, Vec<String>>,
    /// Answer 403 to annotations (a token without `checks: read`).
    refuse_annotations: bool,
}

/// The stand-in's GitHub App: its id, public key, installation, and how long a token lives.
struct App {
    id: String,
    public_key: Vec<u8>,
    installation: u64,
    lifetime: i64,
}

#[derive(Clone)]
pub struct GithubStandIn {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

impl GithubStandIn {
    pub fn start() -> GithubStandIn {
        let path =
            crate::support::shared("github/examples").join("rest_run_github_openapi_example_workflow-run_queued.json");
        let template: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let jobs = crate::support::shared("github/examples").join("rest_jobs_pygithub_2023-01_5jobs_steps.json");
        let jobs: Value = serde_json::from_str(&std::fs::read_to_string(jobs).unwrap()).unwrap();
        let inner = Arc::new(Mutex::new(Inner { job_template: jobs["jobs"][0].clone(), ..Inner::default() }));
        let stand_in_state = (inner.clone(), Arc::new(template));
        let app = Router::new()
            .route("/repos/{owner}/{repo}", get(repository))
            .route("/repos/{owner}/{repo}/actions/runs", get(list))
            .route("/repos/{owner}/{repo}/actions/runs/{id}", get(one_run))
            .route("/repos/{owner}/{repo}/actions/runs/{id}/attempts/{attempt}/jobs", get(attempt_jobs))
            .route("/repos/{owner}/{repo}/check-runs/{id}/annotations", get(annotations))
            .route("/orgs/{org}/repos", get(org_repos))
            .route("/orgs/{org}/installation", get(installation))
            .route("/repos/{owner}/{repo}/installation", get(installation))
            .route("/app/installations/{id}/access_tokens", axum::routing::post(access_token))
            .with_state(stand_in_state);
        let addr = crate::support::serve(app);
        GithubStandIn { inner, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add(&self, runs: impl IntoIterator<Item = GhRun>) {
        self.inner.lock().unwrap().runs.extend(runs);
    }

    /// Changes the run with this id (completes it, re-runs it...).
    pub fn update(&self, id: u64, change: impl FnOnce(&mut GhRun)) {
        let mut inner = self.inner.lock().unwrap();
        change(inner.runs.iter_mut().find(|run| run.id == id).expect("a run with that id"));
    }

    /// The quota of the hour (spent requests count against it) and its reset, seconds from now.
    pub fn set_quota(&self, quota: u64, reset_in: i64) {
        let mut inner = self.inner.lock().unwrap();
        inner.quota = Some(quota);
        inner.spent = 0;
        inner.reset = Some(Utc::now().timestamp() + reset_in);
    }

    /// Answers the next `count` requests for jobs with 502 Bad Gateway.
    pub fn fail_jobs(&self, count: u32) {
        self.inner.lock().unwrap().failing_jobs = count;
    }

    /// The job with this id (run id x 100 + attempt x 10 + its index: `build` 0, `test` 1) fails,
    /// its check run annotated with these messages.
    pub fn fail_job(&self, job_id: u64, messages: &[&str]) {
        let messages = messages.iter().map(|message| (*message).to_owned()).collect();
        self.inner.lock().unwrap().failed_jobs.insert(job_id, messages);
    }

    /// Annotations answer 403, as for a token without `checks: read`.
    pub fn refuse_annotations(&self) {
        self.inner.lock().unwrap().refuse_annotations = true;
    }

    /// Answers the next `count` requests with 502 Bad Gateway.
    pub fn fail_next(&self, count: u32) {
        self.inner.lock().unwrap().failing = count;
    }

    /// Answers the next `count` requests with GitHub's secondary rate limit.
    pub fn secondary_limit(&self, count: u32) {
        self.inner.lock().unwrap().secondary = count;
    }

    /// A repository of an organisation (`org/name`), archived or not.
    pub fn add_repo(&self, full_name: &str, archived: bool) {
        self.inner.lock().unwrap().repos.push((full_name.to_owned(), archived));
    }

    /// Installs the test App (its key pair is in tests/data), whose installation tokens live
    /// `lifetime` seconds.
    pub fn install_app(&self, id: &str, installation: u64, lifetime: i64) {
        let public_key = std::fs::read(crate::support::data("github-app-test-key.pub.pem")).unwrap();
        self.inner.lock().unwrap().app = Some(App { id: id.to_owned(), public_key, installation, lifetime });
    }

    /// Installation tokens bought, and every token ever issued (to check none is printed).
    pub fn exchanges(&self) -> (u64, Vec<String>) {
        let inner = self.inner.lock().unwrap();
        (inner.exchanges, inner.issued.iter().map(|(token, _)| token.clone()).collect())
    }

    pub fn reject_token(&self) {
        self.inner.lock().unwrap().reject_token = true;
    }

    /// Requests that came while the primary limit was spent.
    pub fn over_limit(&self) -> u64 {
        self.inner.lock().unwrap().over_limit
    }

    /// Forgets the requests counted so far (the quota too).
    pub fn reset_usage(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.requests = 0;
        inner.not_modified = 0;
        inner.spent = 0;
        inner.urls.clear();
    }

    /// (requests, answered 304, quota spent).
    pub fn usage(&self) -> (u64, u64, u64) {
        let inner = self.inner.lock().unwrap();
        (inner.requests, inner.not_modified, inner.spent)
    }

    pub fn urls(&self) -> Vec<String> {
        self.inner.lock().unwrap().urls.clone()
    }
}

fn render(template: &Value, run: &GhRun) -> Value {
    let mut value = template.clone();
    let (owner, name) = run.repo.split_once('/').unwrap();
    value["id"] = json!(run.id);
    value["run_number"] = json!(run.id % 100_000);
    value["run_attempt"] = json!(run.attempt);
    value["status"] = json!(run.status);
    value["conclusion"] = json!(run.conclusion);
    value["created_at"] = json!(iso(run.created));
    value["run_started_at"] = json!(iso(run.started));
    value["updated_at"] = json!(iso(run.updated));
    value["url"] = json!(format!("https://api.github.com/repos/{}/actions/runs/{}", run.repo, run.id));
    value["html_url"] = json!(format!("https://github.com/{}/actions/runs/{}", run.repo, run.id));
    value["repository"]["full_name"] = json!(run.repo);
    value["repository"]["name"] = json!(name);
    value["repository"]["owner"]["login"] = json!(owner);
    value
}

fn iso(seconds: i64) -> String {
    DateTime::from_timestamp(seconds, 0).unwrap().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.timestamp());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|date| date.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp())
}

/// GitHub's `created` qualifier: `>=T`, `>T`, `<=T`, `<T`, `A..B`, or a date.
fn created_filter(value: &str) -> Option<(i64, i64)> {
    if let Some(rest) = value.strip_prefix(">=") {
        return Some((parse_time(rest)?, i64::MAX));
    }
    if let Some(rest) = value.strip_prefix('>') {
        return Some((parse_time(rest)? + 1, i64::MAX));
    }
    if let Some(rest) = value.strip_prefix("<=") {
        return Some((i64::MIN, parse_time(rest)?));
    }
    if let Some(rest) = value.strip_prefix('<') {
        return Some((i64::MIN, parse_time(rest)? - 1));
    }
    if let Some((from, to)) = value.split_once("..") {
        return Some((parse_time(from)?, parse_time(to)?));
    }
    let day = parse_time(value)?;
    Some((day, day + 86_399))
}

type StandInState = (Arc<Mutex<Inner>>, Arc<Value>);

/// The quota of the hour and its reset, as the rate-limit headers say them.
struct Limits {
    quota: u64,
    reset: i64,
}

impl Limits {
    fn headers(&self, remaining: u64) -> [(&'static str, String); 5] {
        [
            ("x-ratelimit-limit", self.quota.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-used", (self.quota - remaining).to_string()),
            ("x-ratelimit-reset", self.reset.to_string()),
            ("x-ratelimit-resource", "core".to_owned()),
        ]
    }
}

/// What every endpoint checks first, as GitHub does: the headers it asks of API clients, the
/// token, the secondary and the primary rate limits.
fn admit(inner: &mut Inner, headers: &HeaderMap, uri: &axum::http::Uri) -> Result<Limits, Box<Response>> {
    inner.requests += 1;
    inner.urls.push(uri.to_string());
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("");
    if header("accept") != "application/vnd.github+json"
        || header("x-github-api-version") != "2022-11-28"
        || !header("user-agent").starts_with("workflow-metrics/")
    {
        return Err(Box::new(
            (StatusCode::BAD_REQUEST, "missing Accept, X-GitHub-Api-Version or User-Agent").into_response(),
        ));
    }
    let now = Utc::now().timestamp();
    let bearer = header("authorization").strip_prefix("Bearer ").unwrap_or("");
    let installation_token = inner.issued.iter().any(|(token, expires)| token == bearer && *expires > now);
    if inner.reject_token || !(bearer == GITHUB_TOKEN || installation_token) {
        return Err(Box::new(
            (StatusCode::UNAUTHORIZED, json!({"message": "Bad credentials"}).to_string()).into_response(),
        ));
    }
    // The hour is over: the quota is whole again.
    if inner.reset.is_some_and(|reset| now >= reset) {
        inner.spent = 0;
        inner.reset = Some(now + 3600);
    }
    let limits = Limits { quota: inner.quota.unwrap_or(QUOTA), reset: inner.reset.unwrap_or(now + 3600) };
    if inner.failing > 0 {
        inner.failing -= 1;
        return Err(Box::new((StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response()));
    }
    if inner.secondary > 0 {
        inner.secondary -= 1;
        let message = json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."});
        let remaining = limits.quota - inner.spent;
        return Err(Box::new(
            (StatusCode::FORBIDDEN, [("retry-after", "0".to_owned())], limits.headers(remaining), message.to_string())
                .into_response(),
        ));
    }
    if inner.spent >= limits.quota {
        inner.over_limit += 1;
        let message = json!({"message": "API rate limit exceeded for user ID 1."});
        return Err(Box::new((StatusCode::FORBIDDEN, limits.headers(0), message.to_string()).into_response()));
    }
    Ok(limits)
}

/// The stand-in's state, locked, once [`admit`] let the request in.
fn admitted<'s>(
    inner: &'s Mutex<Inner>,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<(std::sync::MutexGuard<'s, Inner>, Limits), Box<Response>> {
    let mut inner = inner.lock().unwrap();
    let limits = admit(&mut inner, headers, uri)?;
    Ok((inner, limits))
}

/// A page of results: `304` without quota when the client's `If-None-Match` holds, else `200`
/// with its `ETag`, spending one request of the quota, and a `Link` to the next page if any.
fn answer(inner: &mut Inner, limits: &Limits, headers: &HeaderMap, body: String, next: Option<String>) -> Response {
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    let etag = format!("W/\"{:016x}\"", hasher.finish());
    if headers.get("if-none-match").and_then(|value| value.to_str().ok()) == Some(etag.as_str()) {
        inner.not_modified += 1;
        return (StatusCode::NOT_MODIFIED, [("etag", etag)], limits.headers(limits.quota - inner.spent))
            .into_response();
    }
    inner.spent += 1;
    let mut response = (
        StatusCode::OK,
        [("content-type", "application/json; charset=utf-8".to_owned()), ("etag", etag)],
        limits.headers(limits.quota - inner.spent),
        body,
    )
        .into_response();
    if let Some(next) = next {
        response.headers_mut().insert("link", format!("<{next}>; rel=\"next\"").parse().unwrap());
    }
    response
}

/// `per_page` (30 by default, at most 100, as GitHub has it) and `page` (from 1).
fn paging(query: &HashMap<String, String>) -> (usize, usize) {
    let number = |name: &str| query.get(name).and_then(|value| value.parse::<usize>().ok());
    (number("per_page").unwrap_or(30).min(100), number("page").unwrap_or(1).max(1))
}

/// The URL of the next page, as GitHub writes it: the query as asked, with the page number.
fn next_page(headers: &HeaderMap, uri: &axum::http::Uri, query: &HashMap<String, String>, page: usize) -> String {
    let mut next: Vec<(String, String)> =
        query.iter().filter(|(key, _)| *key != "page").map(|(key, value)| (key.clone(), value.clone())).collect();
    next.sort();
    next.push(("page".into(), (page + 1).to_string()));
    let encoded: Vec<String> = next
        .iter()
        .map(|(key, value)| format!("{key}={}", value.replace('>', "%3E").replace('=', "%3D").replace(':', "%3A")))
        .collect();
    let host = headers.get("host").and_then(|host| host.to_str().ok()).unwrap_or("");
    format!("http://{host}{}?{}", uri.path(), encoded.join("&"))
}

async fn list(
    State((inner, template)): State<StandInState>,
    Path((owner, repo)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let (mut inner, limits) = match admitted(&inner, &headers, &uri) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let (per_page, page) = paging(&query);
    let created = match query.get("created") {
        Some(value) => match created_filter(value) {
            Some(range) => Some(range),
            None => return (StatusCode::UNPROCESSABLE_ENTITY, "bad created qualifier").into_response(),
        },
        None => None,
    };
    let full_name = format!("{owner}/{repo}");
    let mut runs: Vec<&GhRun> = inner
        .runs
        .iter()
        .filter(|run| run.repo.eq_ignore_ascii_case(&full_name))
        .filter(|run| created.is_none_or(|(from, to)| run.created >= from && run.created <= to))
        .collect();
    runs.sort_by_key(|run| std::cmp::Reverse((run.created, run.id)));
    let total = runs.len();
    // A query with a `created` filter reaches its first 1,000 results only.
    let reachable = if created.is_some() { total.min(1000) } else { total };
    let start = (page - 1) * per_page;
    let shown: Vec<Value> = runs
        .iter()
        .skip(start)
        .take(per_page.min(reachable.saturating_sub(start)))
        .map(|run| render(&template, run))
        .collect();
    let body = json!({"total_count": total, "workflow_runs": shown}).to_string();
    let next = (start + per_page < reachable).then(|| next_page(&headers, &uri, &query, page));
    answer(&mut inner, &limits, &headers, body, next)
}

/// `GET /repos/{o}/{r}/actions/runs/{id}`: one run, or 404.
async fn one_run(
    State((inner, template)): State<StandInState>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let (mut inner, limits) = match admitted(&inner, &headers, &uri) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let full_name = format!("{owner}/{repo}");
    let Some(run) = inner.runs.iter().find(|run| run.id == id && run.repo.eq_ignore_ascii_case(&full_name)) else {
        return (StatusCode::NOT_FOUND, json!({"message": "Not Found"}).to_string()).into_response();
    };
    let body = render(&template, run).to_string();
    answer(&mut inner, &limits, &headers, body, None)
}

/// `GET /repos/{o}/{r}/actions/runs/{id}/attempts/{n}/jobs`: the attempt's two jobs, `build`
/// and `test`, made from a real job; completed when the run is, else `build` completed and
/// `test` in progress.
async fn attempt_jobs(
    State((inner, _)): State<StandInState>,
    Path((owner, repo, id, attempt)): Path<(String, String, u64, u32)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let (mut inner, limits) = match admitted(&inner, &headers, &uri) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    if inner.failing_jobs > 0 {
        inner.failing_jobs -= 1;
        return (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response();
    }
    let full_name = format!("{owner}/{repo}");
    let Some(run) = inner
        .runs
        .iter()
        .find(|run| run.id == id && run.attempt == attempt && run.repo.eq_ignore_ascii_case(&full_name))
    else {
        return (StatusCode::NOT_FOUND, json!({"message": "Not Found"}).to_string()).into_response();
    };
    let jobs: Vec<Value> = ["build", "test"]
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let mut job = inner.job_template.clone();
            let done = run.status == "completed" || index == 0;
            let started = run.started + 2 * index as i64;
            let id = run.id * 100 + u64::from(run.attempt) * 10 + index as u64;
            let failed = inner.failed_jobs.contains_key(&id);
            job["id"] = json!(id);
            job["run_id"] = json!(run.id);
            job["run_attempt"] = json!(run.attempt);
            job["name"] = json!(name);
            job["created_at"] = json!(iso(run.started - 1));
            job["started_at"] = json!(iso(started));
            job["status"] = json!(if done { "completed" } else { "in_progress" });
            job["conclusion"] = match (done, failed) {
                (false, _) => Value::Null,
                (true, false) => json!("success"),
                (true, true) => json!("failure"),
            };
            job["completed_at"] = if done { json!(iso(started + 60)) } else { Value::Null };
            job["run_url"] = json!(format!("https://api.github.com/repos/{}/actions/runs/{}", run.repo, run.id));
            job
        })
        .collect();
    let body = json!({"total_count": jobs.len(), "jobs": jobs}).to_string();
    answer(&mut inner, &limits, &headers, body, None)
}

/// `GET /repos/{o}/{r}/check-runs/{id}/annotations`: a failed job's annotations, shaped as
/// GitHub's documented example of a check annotation; none for other jobs.
async fn annotations(
    State((inner, _)): State<StandInState>,
    Path((_owner, _repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let (mut inner, limits) = match admitted(&inner, &headers, &uri) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    if inner.refuse_annotations {
        let message = json!({"message": "Resource not accessible by integration"});
        return (StatusCode::FORBIDDEN, limits.headers(limits.quota - inner.spent), message.to_string())
            .into_response();
    }
    let annotations: Vec<Value> = inner
        .failed_jobs
        .get(&id)
        .into_iter()
        .flatten()
        .map(|message| {
            json!({"path": ".github", "blob_href": null, "start_line": 1, "start_column": null, "end_line": 1,
                "end_column": null, "annotation_level": "failure", "title": "", "message": message, "raw_details": null})
        })
        .collect();
    let body = Value::Array(annotations).to_string();
    answer(&mut inner, &limits, &headers, body, None)
}

/// `GET /repos/{o}/{r}`: the repository, whose default branch is `main`.
async fn repository(
    State((inner, _)): State<StandInState>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let (mut inner, limits) = match admitted(&inner, &headers, &uri) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let body = json!({"id": 1, "name": repo, "full_name": format!("{owner}/{repo}"), "default_branch": "main",
        "archived": false, "disabled": false, "private": false});
    answer(&mut inner, &limits, &headers, body.to_string(), None)
}

/// `GET /orgs/{org}/repos`: a plain array of repositories, by name.
async fn org_repos(
    State((inner, _)): State<StandInState>,
    Path(org): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let (mut inner, limits) = match admitted(&inner, &headers, &uri) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let (per_page, page) = paging(&query);
    let mut repos: Vec<&(String, bool)> =
        inner.repos.iter().filter(|(full_name, _)| full_name.split('/').next() == Some(org.as_str())).collect();
    repos.sort();
    let start = (page - 1) * per_page;
    let shown: Vec<Value> = repos
        .iter()
        .skip(start)
        .take(per_page)
        .map(|(full_name, archived)| {
            let name = full_name.split('/').nth(1).unwrap();
            json!({"id": 1, "name": name, "full_name": full_name, "private": false, "archived": archived, "disabled": false, "fork": false})
        })
        .collect();
    let body = Value::Array(shown).to_string();
    let next = (start + per_page < repos.len()).then(|| next_page(&headers, &uri, &query, page));
    answer(&mut inner, &limits, &headers, body, next)
}

/// The App's JWT, checked as GitHub does: RS256 with the App's key, issued by its id, unexpired.
fn check_jwt(inner: &Inner, headers: &HeaderMap) -> Result<(), Box<Response>> {
    #[derive(serde::Deserialize)]
    struct Claims {}
    let refuse = |status: StatusCode, message: &str| {
        Box::new((status, json!({ "message": message }).to_string()).into_response())
    };
    let Some(app) = &inner.app else { return Err(refuse(StatusCode::NOT_FOUND, "Not Found")) };
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("");
    if header("accept") != "application/vnd.github+json" || header("x-github-api-version") != "2022-11-28" {
        return Err(refuse(StatusCode::BAD_REQUEST, "missing Accept or X-GitHub-Api-Version"));
    }
    let jwt = header("authorization").strip_prefix("Bearer ").unwrap_or("");
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&app.public_key).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[&app.id]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    match jsonwebtoken::decode::<Claims>(jwt, &key, &validation) {
        Ok(_) => Ok(()),
        Err(_) => Err(refuse(StatusCode::UNAUTHORIZED, "A JSON web token could not be decoded")),
    }
}

async fn installation(State((inner, _)): State<StandInState>, headers: HeaderMap) -> Response {
    let inner = inner.lock().unwrap();
    if let Err(response) = check_jwt(&inner, &headers) {
        return *response;
    }
    let id = inner.app.as_ref().map_or(0, |app| app.installation);
    (StatusCode::OK, json!({ "id": id, "app_id": 1 }).to_string()).into_response()
}

async fn access_token(State((inner, _)): State<StandInState>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    let mut inner = inner.lock().unwrap();
    if let Err(response) = check_jwt(&inner, &headers) {
        return *response;
    }
    let (installation, lifetime) = inner.app.as_ref().map_or((0, 0), |app| (app.installation, app.lifetime));
    if id != installation {
        return (StatusCode::NOT_FOUND, json!({ "message": "Not Found" }).to_string()).into_response();
    }
    inner.exchanges += 1;
    let token = format!("ghs_installation{:04}", inner.exchanges);
    let expires = Utc::now().timestamp() + lifetime;
    inner.issued.push((token.clone(), expires));
    let body = json!({ "token": token, "expires_at": iso(expires), "permissions": { "actions": "read" } });
    (StatusCode::CREATED, body.to_string()).into_response()
}
