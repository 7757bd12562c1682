//! Workflow runs in every shape the tool reads, built relative to now so that they fall inside
//! Datadog's intake window. The REST objects carry the full field set GitHub sends (nested
//! repository, head_commit, URLs) so that the reader skips what it does not need, as in real data.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct Spec {
    pub id: u64,
    pub attempt: u32,
    pub repo: &'static str,
    pub name: &'static str,
    pub workflow_id: u64,
    pub event: &'static str,
    pub branch: &'static str,
    pub status: &'static str,
    pub conclusion: Option<&'static str>,
    /// Seconds between completion (`updated_at`) and now.
    pub completed_ago: i64,
    /// Seconds the attempt ran (`updated_at - run_started_at`).
    pub duration: i64,
    /// Seconds it queued (`run_started_at - created_at`).
    pub queued: i64,
}

pub fn spec(id: u64) -> Spec {
    Spec {
        id,
        attempt: 1,
        repo: "octo-org/octo-repo",
        name: "CI",
        workflow_id: 161335,
        event: "push",
        branch: "main",
        status: "completed",
        conclusion: Some("success"),
        completed_ago: 120,
        duration: 300,
        queued: 15,
    }
}

impl Spec {
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }
    pub fn conclusion(mut self, conclusion: &'static str) -> Self {
        self.conclusion = Some(conclusion);
        self
    }
    pub fn in_progress(mut self) -> Self {
        self.status = "in_progress";
        self.conclusion = None;
        self
    }
    pub fn ago(mut self, seconds: i64) -> Self {
        self.completed_ago = seconds;
        self
    }
    pub fn branch(mut self, branch: &'static str) -> Self {
        self.branch = branch;
        self
    }
    pub fn repo(mut self, repo: &'static str) -> Self {
        self.repo = repo;
        self
    }

    pub fn key(&self) -> String {
        format!("{}:{}:{}", self.repo.to_lowercase(), self.id, self.attempt)
    }

    /// The completion time, as the point timestamp.
    pub fn completed_at(&self, now: i64) -> i64 {
        now - self.completed_ago
    }

    fn times(&self, now: i64) -> (String, String, String) {
        let updated = now - self.completed_ago;
        let started = updated - self.duration;
        // A re-run keeps the first attempt's creation time, days earlier.
        let created = if self.attempt > 1 { started - 3 * 86_400 } else { started - self.queued };
        (iso(created), iso(started), iso(updated))
    }
}

pub fn now() -> i64 {
    Utc::now().timestamp()
}

fn iso(seconds: i64) -> String {
    DateTime::from_timestamp(seconds, 0).unwrap().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn repository(full_name: &str) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap();
    let api = format!("https://api.github.com/repos/{full_name}");
    json!({
        "id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": name, "full_name": full_name,
        "private": false,
        "owner": {"login": owner, "id": 1, "node_id": "MDQ6VXNlcjE=", "type": "Organization", "site_admin": false,
                  "avatar_url": "https://github.com/images/error/octocat_happy.gif", "url": format!("https://api.github.com/users/{owner}")},
        "html_url": format!("https://github.com/{full_name}"), "description": "This your first repo!", "fork": false,
        "url": api, "forks_url": format!("{api}/forks"), "keys_url": format!("{api}/keys{{/key_id}}"),
        "hooks_url": format!("{api}/hooks"), "issues_url": format!("{api}/issues{{/number}}"),
        "pulls_url": format!("{api}/pulls{{/number}}"), "deployments_url": format!("{api}/deployments")
    })
}

/// A run object as `GET /repos/{o}/{r}/actions/runs/{id}` returns it.
pub fn rest_run(spec: &Spec, now: i64) -> Value {
    let (created, started, updated) = spec.times(now);
    let api = format!("https://api.github.com/repos/{}/actions/runs/{}", spec.repo, spec.id);
    json!({
        "id": spec.id, "name": spec.name, "node_id": "WFR_kwLOBp9g3s8AAAAB", "check_suite_id": 42,
        "check_suite_node_id": "MDEwOkNoZWNrU3VpdGU0Mg==", "head_branch": spec.branch,
        "head_sha": "acb5820ced9479c074f688cc328bf03f341a511d", "path": ".github/workflows/ci.yml",
        "display_title": "Update README.md", "run_number": 562, "event": spec.event, "status": spec.status,
        "conclusion": spec.conclusion, "workflow_id": spec.workflow_id, "url": api,
        "html_url": format!("https://github.com/{}/actions/runs/{}", spec.repo, spec.id),
        "pull_requests": [], "created_at": created, "updated_at": updated,
        "actor": {"login": "octocat", "id": 1, "type": "User"},
        "triggering_actor": {"login": "octocat", "id": 1, "type": "User"},
        "run_attempt": spec.attempt, "referenced_workflows": [], "run_started_at": started,
        "jobs_url": format!("{api}/jobs"), "logs_url": format!("{api}/logs"),
        "check_suite_url": "https://api.github.com/repos/octo-org/octo-repo/check-suites/42",
        "artifacts_url": format!("{api}/artifacts"), "cancel_url": format!("{api}/cancel"),
        "rerun_url": format!("{api}/rerun"),
        "previous_attempt_url": if spec.attempt > 1 { json!(format!("{api}/attempts/{}", spec.attempt - 1)) } else { Value::Null },
        "workflow_url": format!("https://api.github.com/repos/{}/actions/workflows/{}", spec.repo, spec.workflow_id),
        "head_commit": {"id": "acb5820ced9479c074f688cc328bf03f341a511d", "tree_id": "d23f6eedb1e1b9610bbc754ddb5197bfe7271223",
                        "message": "Create linter.yaml", "timestamp": created,
                        "author": {"name": "Octo Cat", "email": "octocat@github.com"},
                        "committer": {"name": "GitHub", "email": "noreply@github.com"}},
        "repository": repository(spec.repo), "head_repository": repository(spec.repo)
    })
}

/// `GET /repos/{o}/{r}/actions/runs` body.
pub fn rest_page(specs: &[Spec], now: i64) -> Value {
    json!({"total_count": specs.len(), "workflow_runs": specs.iter().map(|s| rest_run(s, now)).collect::<Vec<_>>()})
}

/// What `gh api --paginate` prints: pages back to back, no separator.
pub fn paginated(pages: &[&[Spec]], now: i64) -> String {
    pages.iter().map(|page| rest_page(page, now).to_string()).collect::<Vec<_>>().join("")
}

/// The `workflow_run` event payload at `$GITHUB_EVENT_PATH`.
pub fn event_payload(spec: &Spec, now: i64) -> Value {
    let action = if spec.status == "completed" { "completed" } else { "in_progress" };
    let mut run = rest_run(spec, now);
    // Webhook runs carry their own repository too; drop the name to exercise the fallback.
    run["name"] = json!("");
    json!({
        "action": action, "workflow_run": run,
        "workflow": {"id": spec.workflow_id, "name": spec.name, "path": ".github/workflows/ci.yml", "state": "active"},
        "repository": repository(spec.repo),
        "sender": {"login": "octocat", "id": 1}
    })
}

/// A dump of the `github` context (`${{ toJSON(github) }}`) in a workflow_run job.
pub fn github_context(spec: &Spec, now: i64) -> Value {
    json!({
        "token": "***", "job": "metrics", "ref": "refs/heads/main", "sha": "acb5820",
        "repository": spec.repo, "repository_owner": spec.repo.split('/').next().unwrap(),
        "run_id": "999", "run_number": "7", "run_attempt": "1", "workflow": "metrics",
        "event_name": "workflow_run", "event": event_payload(spec, now), "server_url": "https://github.com",
        "api_url": "https://api.github.com"
    })
}

/// A `gh run list --json <all fields>` row: camelCase, `""` for null strings, zero time for null times.
pub fn gh_row(spec: &Spec, now: i64) -> Value {
    let (created, started, updated) = spec.times(now);
    json!({
        "attempt": spec.attempt, "conclusion": spec.conclusion.unwrap_or(""), "createdAt": created,
        "databaseId": spec.id, "displayTitle": "Update README.md", "event": spec.event, "headBranch": spec.branch,
        "headSha": "acb5820ced9479c074f688cc328bf03f341a511d", "name": spec.name, "number": 562,
        "startedAt": started, "status": spec.status,
        "updatedAt": if spec.status == "completed" { updated } else { "0001-01-01T00:00:00Z".to_owned() },
        "url": format!("https://github.com/{}/actions/runs/{}", spec.repo, spec.id),
        "workflowDatabaseId": spec.workflow_id, "workflowName": spec.name
    })
}

/// `gh run list --json` output: one compact array and a newline.
pub fn gh_list(specs: &[Spec], now: i64) -> String {
    format!("{}\n", Value::Array(specs.iter().map(|s| gh_row(s, now)).collect()))
}

/// NDJSON of REST run objects.
pub fn ndjson(specs: &[Spec], now: i64) -> String {
    specs.iter().map(|s| format!("{}\n", rest_run(s, now))).collect()
}
