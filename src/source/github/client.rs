//! The HTTP client for GitHub's REST API: the token, the headers GitHub asks of API clients,
//! conditional requests (`If-None-Match`, `304 Not Modified` costs no quota), `Link` paging, and
//! the primary and secondary rate limits. The only module besides `datadog` that knows HTTP; it
//! shares nothing with the Datadog client but the [`Retriable`] seam.
//!
//! Requests go one at a time, as GitHub asks of API clients.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::model::Quota;
use crate::retry::Retriable;

/// A GitHub token. It has no `Display`, and its `Debug` never shows it.
#[derive(Clone)]
pub struct GithubToken {
    token: String,
    /// Where it came from (`GITHUB_TOKEN`, `GH_TOKEN` or the file), for messages.
    pub origin: String,
}

impl GithubToken {
    pub fn new(token: String, origin: String) -> GithubToken {
        GithubToken { token, origin }
    }
}

impl std::fmt::Debug for GithubToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GithubToken(<redacted>, from {})", self.origin)
    }
}

/// A GitHub App: its id and private key sign a JWT, which buys an installation token that
/// expires after an hour and is renewed before it does. Neither is ever printed.
#[derive(Clone)]
pub struct GithubApp {
    pub app_id: String,
    key: jsonwebtoken::EncodingKey,
    /// The key file, for messages.
    pub key_origin: String,
    /// The installation, when given; else found with `discover`.
    pub installation: Option<u64>,
    /// `orgs/{org}/installation` or `repos/{o}/{r}/installation`: where to find the installation.
    pub discover: String,
}

impl GithubApp {
    /// # Errors
    /// The key is not an RSA private key in PEM.
    pub fn new(
        app_id: String,
        pem: &[u8],
        key_origin: String,
        installation: Option<u64>,
        discover: String,
    ) -> Result<GithubApp, jsonwebtoken::errors::Error> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem)?;
        Ok(GithubApp { app_id, key, key_origin, installation, discover })
    }

    /// The app's JWT (RS256): issued a minute ago against clock drift, valid nine minutes.
    fn jwt(&self) -> Result<String, GithubError> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            iat: i64,
            exp: i64,
            iss: &'a str,
        }
        let now = Utc::now().timestamp();
        let claims = Claims { iat: now - 60, exp: now + 540, iss: &self.app_id };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &self.key)
            .map_err(|error| self.failed(&format!("cannot sign its JWT with {}: {error}", self.key_origin)))
    }

    fn failed(&self, detail: &str) -> GithubError {
        GithubError::App { app_id: self.app_id.clone(), detail: detail.to_owned() }
    }
}

impl std::fmt::Debug for GithubApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GithubApp({}, key <redacted> from {})", self.app_id, self.key_origin)
    }
}

/// How requests authenticate.
#[derive(Clone, Debug)]
pub enum GithubAuth {
    Token(GithubToken),
    App(GithubApp),
}

/// An installation token is renewed when it has less than this left, seconds.
const RENEW_BEFORE: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("failed to build the HTTP client for GitHub")]
    Client(#[source] reqwest::Error),
    #[error("request to {url} failed: {reason}")]
    Transport { url: String, reason: String },
    #[error("GitHub rejected the token from {origin} ({status} at {url}): it needs read access to Actions (`actions: read`) on the repository")]
    Token { url: String, status: u16, origin: String },
    #[error("GitHub App {app_id} could not get an installation token: {detail}")]
    App { app_id: String, detail: String },
    #[error("GitHub's rate limit for this token is spent until {reset} (more than --github-max-wait away); the cursor stays where it was")]
    RateLimited { reset: DateTime<Utc> },
    #[error("GitHub answered {status} at {url}: {body}")]
    Status { url: String, status: u16, body: String, retry_after: Option<Duration> },
}

impl Retriable for GithubError {
    /// Timeouts and connection errors, 5xx, and the secondary rate limit (429, or 403 saying
    /// so); never a rejected token or a spent primary limit.
    fn is_retriable(&self) -> bool {
        match self {
            GithubError::Transport { .. } => true,
            GithubError::Status { status, body, retry_after, .. } => {
                *status >= 500 || *status == 429 || (*status == 403 && (retry_after.is_some() || is_secondary(body)))
            }
            GithubError::Client(_)
            | GithubError::Token { .. }
            | GithubError::App { .. }
            | GithubError::RateLimited { .. } => false,
        }
    }

    /// `retry-after`, or for a secondary limit without one, a minute, as GitHub asks.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            GithubError::Status { retry_after: Some(wait), .. } => Some(*wait),
            GithubError::Status { status: 403 | 429, body, .. } if is_secondary(body) => Some(Duration::from_secs(60)),
            _ => None,
        }
    }
}

fn is_secondary(body: &str) -> bool {
    body.to_ascii_lowercase().contains("secondary rate limit")
}

/// One answer: a page of results, or `304` for an unchanged one.
#[derive(Debug)]
pub struct Page {
    /// 200, or 304 (then `body` is empty).
    pub status: u16,
    pub body: Bytes,
    pub etag: Option<String>,
    /// The `Link` header's `rel="next"`.
    pub next: Option<String>,
}

/// What the client did, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    pub not_modified: u64,
}

pub struct GithubClient {
    http: reqwest::Client,
    api_url: String,
    auth: GithubAuth,
    /// The installation token of an App, and when it expires (unix seconds).
    installation_token: tokio::sync::Mutex<Option<(String, i64)>>,
    /// How long to wait for a spent primary limit to reset before giving up.
    max_wait: Duration,
    /// The rate limit, from the last answer that stated it.
    limit: Mutex<Option<Quota>>,
    requests: AtomicU64,
    not_modified: AtomicU64,
}

impl GithubClient {
    /// # Errors
    /// The TLS backend cannot be initialised.
    pub fn new(
        api_url: &str,
        auth: GithubAuth,
        timeout: Duration,
        max_wait: Duration,
    ) -> Result<GithubClient, GithubError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("workflow-metrics/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(GithubError::Client)?;
        Ok(GithubClient {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            auth,
            installation_token: tokio::sync::Mutex::new(None),
            max_wait,
            limit: Mutex::new(None),
            requests: AtomicU64::new(0),
            not_modified: AtomicU64::new(0),
        })
    }

    /// `{api}/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.api_url, path.trim_start_matches('/'))
    }

    pub fn usage(&self) -> Usage {
        Usage {
            requests: self.requests.load(Ordering::Relaxed),
            not_modified: self.not_modified.load(Ordering::Relaxed),
        }
    }

    /// The rate limit as GitHub stated it last.
    pub fn quota(&self) -> Option<Quota> {
        self.limit.lock().expect("the quota lock is never held across a panic").clone()
    }

    /// One GET, conditional when `etag` is given. Waits for a spent primary rate limit to reset
    /// if that is within `--github-max-wait`.
    ///
    /// # Errors
    /// A transport failure, a rejected token, a spent rate limit, or any other status.
    pub async fn get(&self, url: &str, etag: Option<&str>) -> Result<Page, GithubError> {
        self.wait_for_quota().await?;
        let bearer = self.bearer().await?;
        let mut request = self
            .http
            .get(url)
            .bearer_auth(&bearer)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let response = request.send().await.map_err(|error| GithubError::Transport {
            url: url.to_owned(),
            reason: crate::error::error_chain(&error),
        })?;
        let headers = response.headers();
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);
        let number = |name: &str| header(name).and_then(|value| value.parse::<u64>().ok());
        let remaining = number("x-ratelimit-remaining");
        let reset = header("x-ratelimit-reset").and_then(|value| value.parse::<i64>().ok());
        if let (Some(limit), Some(remaining), Some(reset)) = (number("x-ratelimit-limit"), remaining, reset) {
            let quota = Quota {
                limit,
                remaining,
                used: number("x-ratelimit-used").unwrap_or(limit.saturating_sub(remaining)),
                reset,
                resource: header("x-ratelimit-resource").unwrap_or("core").to_owned(),
            };
            *self.limit.lock().expect("the quota lock is never held across a panic") = Some(quota);
        }
        let retry_after = header("retry-after").and_then(|value| value.parse::<u64>().ok()).map(Duration::from_secs);
        let etag = header("etag").map(str::to_owned);
        let next = header("link").and_then(next_link);
        let status = response.status().as_u16();
        match status {
            200..=299 => {
                let body = response.bytes().await.map_err(|error| GithubError::Transport {
                    url: url.to_owned(),
                    reason: crate::error::error_chain(&error),
                })?;
                Ok(Page { status, body, etag, next })
            }
            304 => {
                self.not_modified.fetch_add(1, Ordering::Relaxed);
                Ok(Page { status, body: Bytes::new(), etag, next: None })
            }
            401 => Err(match &self.auth {
                GithubAuth::Token(token) => {
                    GithubError::Token { url: url.to_owned(), status, origin: token.origin.clone() }
                }
                GithubAuth::App(app) => app.failed(&format!("its installation token was rejected (401 at {url})")),
            }),
            403 | 429 if remaining == Some(0) && retry_after.is_none() => {
                // The primary limit ran out under us: wait for it as before any request.
                let reset = reset.and_then(|seconds| DateTime::from_timestamp(seconds, 0));
                Err(GithubError::RateLimited { reset: reset.unwrap_or_else(Utc::now) })
            }
            _ => {
                let body = response.text().await.unwrap_or_default();
                let mut body = body.trim().to_owned();
                if let Some((index, _)) = body.char_indices().nth(300) {
                    body.truncate(index);
                }
                Err(GithubError::Status { url: url.to_owned(), status, body, retry_after })
            }
        }
    }

    /// The bearer of the next request: the token, or the App's installation token, bought or
    /// renewed when it has less than a minute left.
    async fn bearer(&self) -> Result<String, GithubError> {
        let app = match &self.auth {
            GithubAuth::Token(token) => return Ok(token.token.clone()),
            GithubAuth::App(app) => app,
        };
        let mut current = self.installation_token.lock().await;
        if let Some((token, expires)) = current.as_ref() {
            if *expires - Utc::now().timestamp() > RENEW_BEFORE {
                return Ok(token.clone());
            }
        }
        let jwt = app.jwt()?;
        let installation = match app.installation {
            Some(id) => id,
            None => {
                #[derive(serde::Deserialize)]
                struct Installation {
                    id: u64,
                }
                let url = self.url(&app.discover);
                let body = self.app_request(app, self.http.get(&url), &jwt, &url, 200).await?;
                serde_json::from_slice::<Installation>(&body)
                    .map_err(|error| app.failed(&format!("{url} did not name an installation: {error}")))?
                    .id
            }
        };
        #[derive(serde::Deserialize)]
        struct Token {
            token: String,
            expires_at: String,
        }
        let url = self.url(&format!("app/installations/{installation}/access_tokens"));
        let body = self.app_request(app, self.http.post(&url), &jwt, &url, 201).await?;
        let token: Token =
            serde_json::from_slice(&body).map_err(|error| app.failed(&format!("{url} answered no token: {error}")))?;
        let expires = DateTime::parse_from_rfc3339(&token.expires_at)
            .map_err(|error| app.failed(&format!("{url} answered an expiry that is not a time: {error}")))?;
        *current = Some((token.token.clone(), expires.timestamp()));
        Ok(token.token)
    }

    /// A request the App makes with its JWT (finding its installation, buying a token).
    async fn app_request(
        &self,
        app: &GithubApp,
        request: reqwest::RequestBuilder,
        jwt: &str,
        url: &str,
        expected: u16,
    ) -> Result<Bytes, GithubError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let response = request
            .bearer_auth(jwt)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(|error| GithubError::Transport {
                url: url.to_owned(),
                reason: crate::error::error_chain(&error),
            })?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|error| GithubError::Transport {
            url: url.to_owned(),
            reason: crate::error::error_chain(&error),
        })?;
        match status {
            _ if status == expected => Ok(body),
            500..=599 => Err(GithubError::Status {
                url: url.to_owned(),
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
                retry_after: None,
            }),
            _ => Err(app.failed(&format!(
                "{url} answered {status}: {} (check the app id, its key in {}, and that it is installed with `actions: read`)",
                String::from_utf8_lossy(&body).chars().take(200).collect::<String>(),
                app.key_origin
            ))),
        }
    }

    /// Before a request: if the last answer said the quota is spent, wait for its reset when it
    /// is near enough, else give up saying when it resets.
    async fn wait_for_quota(&self) -> Result<(), GithubError> {
        let Some(reset) = self.quota().filter(|quota| quota.remaining == 0).map(|quota| quota.reset) else {
            return Ok(());
        };
        let reset = DateTime::from_timestamp(reset, 0).unwrap_or_else(Utc::now);
        let wait = (reset - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if wait > self.max_wait {
            return Err(GithubError::RateLimited { reset });
        }
        tracing::warn!(reset = %reset, wait_s = wait.as_secs(), "GitHub's rate limit is spent; waiting for it to reset");
        tokio::time::sleep(wait + Duration::from_secs(1)).await;
        *self.limit.lock().expect("the quota lock is never held across a panic") = None;
        Ok(())
    }
}

/// The `rel="next"` URL of a `Link` header: `<url>; rel="next", <url>; rel="last"`.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|param| param.trim() == "rel=\"next\"");
        is_next.then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_are_read_from_the_header_not_built() {
        let header = "<https://api.github.com/repositories/1/actions/runs?page=2&per_page=100>; rel=\"next\", \
                      <https://api.github.com/repositories/1/actions/runs?page=9&per_page=100>; rel=\"last\"";
        assert_eq!(
            next_link(header).as_deref(),
            Some("https://api.github.com/repositories/1/actions/runs?page=2&per_page=100")
        );
        assert_eq!(next_link("<https://x/?page=1>; rel=\"prev\", <https://x/?page=1>; rel=\"first\""), None);
    }

    #[test]
    fn secondary_limits_are_retried_after_a_minute_at_least_and_tokens_never() {
        let status = |status: u16, body: &str, retry_after: Option<u64>| GithubError::Status {
            url: "u".into(),
            status,
            body: body.into(),
            retry_after: retry_after.map(Duration::from_secs),
        };
        let secondary = status(403, "You have exceeded a secondary rate limit", None);
        assert!(secondary.is_retriable());
        assert_eq!(secondary.retry_after(), Some(Duration::from_secs(60)));
        assert_eq!(status(429, "", Some(7)).retry_after(), Some(Duration::from_secs(7)));
        assert!(status(502, "", None).is_retriable());
        assert!(!status(403, "Resource not accessible by integration", None).is_retriable());
        assert!(!status(404, "", None).is_retriable());
        let token = GithubError::Token { url: "u".into(), status: 401, origin: "GITHUB_TOKEN".into() };
        assert!(!token.is_retriable());
        assert!(token.to_string().contains("GITHUB_TOKEN") && token.to_string().contains("actions: read"));
    }

    #[test]
    fn the_token_never_prints() {
        let token = GithubToken::new("ghp_secret".into(), "GH_TOKEN".into());
        assert!(!format!("{token:?}").contains("ghp_secret"));
    }
}
