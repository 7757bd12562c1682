//! The HTTP client for one Datadog site: URLs, headers, statuses and `Retry-After`.

use std::time::Duration;

use super::{ApiKey, Compression, DatadogError};

/// The answer to a request Datadog accepted.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub status: u16,
}

/// The HTTP client for one Datadog site (or `--api-url`).
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    api_key: ApiKey,
}

impl Client {
    /// # Errors
    /// The TLS backend cannot be initialised.
    pub fn new(base_url: &str, api_key: ApiKey, timeout: Duration) -> Result<Client, DatadogError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("workflow-metrics/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(DatadogError::Client)?;
        Ok(Client { http, base_url: base_url.trim_end_matches('/').to_owned(), api_key })
    }

    pub fn series_url(&self) -> String {
        series_url(&self.base_url)
    }

    /// Posts one compressed series body.
    ///
    /// # Errors
    /// A transport failure, or any status but 2xx (with the body Datadog sent).
    pub async fn post_series(&self, body: bytes::Bytes, compression: Compression) -> Result<Accepted, DatadogError> {
        self.post(self.series_url(), body, compression).await
    }

    /// Posts one compressed body of distribution points (`POST /api/v1/distribution_points`).
    ///
    /// # Errors
    /// As [`Client::post_series`].
    pub async fn post_distributions(
        &self,
        body: bytes::Bytes,
        compression: Compression,
    ) -> Result<Accepted, DatadogError> {
        self.post(format!("{}/api/v1/distribution_points", self.base_url), body, compression).await
    }

    async fn post(&self, url: String, body: bytes::Bytes, compression: Compression) -> Result<Accepted, DatadogError> {
        let request = self
            .http
            .post(&url)
            .header("DD-API-KEY", self.api_key.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, compression.header())
            .body(body);
        let response = request.send().await.map_err(|error| transport(&url, &error))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            // The body (`{"errors":[]}` or `{"status":"ok"}`) carries nothing we need; drain it so
            // the connection is reused.
            let _ = response.bytes().await;
            return Ok(Accepted { status });
        }
        Err(status_error(url, response).await)
    }

    /// Checks the key with `GET /api/v1/validate`.
    ///
    /// # Errors
    /// A transport failure or a non-2xx status (403 for a wrong key).
    pub async fn validate(&self) -> Result<(), DatadogError> {
        let url = format!("{}/api/v1/validate", self.base_url);
        let response = self
            .http
            .get(&url)
            .header("DD-API-KEY", self.api_key.expose())
            .send()
            .await
            .map_err(|error| transport(&url, &error))?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(status_error(url, response).await)
    }
}

/// The series endpoint under a base URL.
pub fn series_url(base_url: &str) -> String {
    format!("{}/api/v2/series", base_url.trim_end_matches('/'))
}

/// The API base URL of a Datadog site.
pub fn site_url(site: &str) -> String {
    format!("https://api.{site}")
}

fn transport(url: &str, error: &reqwest::Error) -> DatadogError {
    // reqwest's Display omits the cause ("error sending request"); the chain says what happened.
    DatadogError::Transport { url: url.to_owned(), reason: crate::error::error_chain(error) }
}

async fn status_error(url: String, response: reqwest::Response) -> DatadogError {
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    let mut body = body.trim().to_owned();
    if let Some((index, _)) = body.char_indices().nth(500) {
        body.truncate(index);
        body.push('…');
    }
    DatadogError::Status { url, status, body, retry_after }
}

/// `Retry-After` (seconds or an HTTP date) or Datadog's `X-RateLimit-Reset` (seconds).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);
    if let Some(value) = text("retry-after") {
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(date) = chrono::DateTime::parse_from_rfc2822(value) {
            let wait = date.timestamp() - chrono::Utc::now().timestamp();
            return Some(Duration::from_secs(u64::try_from(wait).unwrap_or(0)));
        }
    }
    text("x-ratelimit-reset").and_then(|value| value.parse::<u64>().ok()).map(Duration::from_secs)
}
