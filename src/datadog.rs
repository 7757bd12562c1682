//! The Datadog API: URLs, headers, wire JSON, compression and status codes. The only module that
//! knows HTTP. The request and response contract is `/api/v2/series` of Datadog's OpenAPI spec
//! (see ../shared/datadog/ in the project's workspace).

use std::fmt;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use crate::metrics::{MetricKind, Series};

/// Datadog's limits for one `/api/v2/series` request.
pub const MAX_COMPRESSED_BYTES: usize = 512_000;
pub const MAX_RAW_BYTES: usize = 5_242_880;

/// The sites Datadog's API client knows; `--site` accepts these.
pub const SITES: &[&str] = &[
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "uk1.datadoghq.com",
    "datadoghq.eu",
    "ddog-gov.com",
    "us2.ddog-gov.com",
];

/// The API key. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> ApiKey {
        ApiKey(key)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// `Content-Encoding` of the series body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// zstd level 3 (`Content-Encoding: zstd1`): the default, fastest for its size.
    Zstd,
    /// gzip level 6.
    Gzip,
    /// zlib (`Content-Encoding: deflate`) level 6.
    Deflate,
}

impl Compression {
    pub fn header(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd1",
            Compression::Gzip => "gzip",
            Compression::Deflate => "deflate",
        }
    }

    /// Compresses a request body.
    ///
    /// # Errors
    /// Only an encoder failure; writing into memory does not fail otherwise.
    pub fn compress(self, raw: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Compression::Zstd => zstd::bulk::compress(raw, 3),
            Compression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 8), flate2::Compression::new(6));
                encoder.write_all(raw)?;
                encoder.finish()
            }
            Compression::Deflate => {
                let mut encoder =
                    flate2::write::ZlibEncoder::new(Vec::with_capacity(raw.len() / 8), flate2::Compression::new(6));
                encoder.write_all(raw)?;
                encoder.finish()
            }
        }
    }
}

#[derive(Serialize)]
struct WirePayload<'a> {
    series: Vec<WireSeries<'a>>,
}

#[derive(Serialize)]
struct WireSeries<'a> {
    metric: &'a str,
    #[serde(rename = "type")]
    kind: u8,
    points: Vec<WirePoint>,
    tags: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
}

#[derive(Serialize)]
struct WirePoint {
    timestamp: i64,
    value: f64,
}

/// The JSON body of a `/api/v2/series` request.
pub fn encode_series(series: &[Series]) -> Vec<u8> {
    let payload = WirePayload {
        series: series
            .iter()
            .map(|series| WireSeries {
                metric: &series.metric,
                kind: match series.kind {
                    MetricKind::Count => 1,
                    MetricKind::Gauge => 3,
                },
                points: series.points.iter().map(|&(timestamp, value)| WirePoint { timestamp, value }).collect(),
                tags: &series.tags,
                unit: series.unit,
            })
            .collect(),
    };
    serde_json::to_vec(&payload).expect("serialising plain structs of strings and numbers cannot fail")
}

#[derive(Debug, thiserror::Error)]
pub enum DatadogError {
    #[error("failed to build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("request to {url} failed: {reason}")]
    Transport { url: String, reason: String },
    #[error("Datadog answered {status} at {url}: {body}")]
    Status { url: String, status: u16, body: String, retry_after: Option<Duration> },
}

impl DatadogError {
    /// The HTTP status, if Datadog answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            DatadogError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// 401 and 403: the key is wrong, and every further request would fail the same way.
    pub fn is_auth(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// Worth another attempt: timeouts, refused or reset connections, 408, 429 and 5xx
    /// (Vector's `is_retriable`; 400 and 413 are the request's fault, 401/403 the key's).
    pub fn is_retriable(&self) -> bool {
        match self {
            DatadogError::Client(_) => false,
            DatadogError::Transport { .. } => true,
            DatadogError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
        }
    }

    /// How long the server asked us to wait (`Retry-After`, `X-RateLimit-Reset`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DatadogError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

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
        let url = self.series_url();
        let request = self
            .http
            .post(&url)
            .header("DD-API-KEY", &self.api_key.0)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, compression.header())
            .body(body);
        let response = request.send().await.map_err(|error| transport(&url, &error))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            // The body (`{"errors":[]}`) carries nothing we need; drain it so the connection is reused.
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
            .header("DD-API-KEY", &self.api_key.0)
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
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    DatadogError::Transport { url: url.to_owned(), reason }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_series_as_the_spec_says() {
        let series = [Series {
            metric: "m".into(),
            kind: MetricKind::Gauge,
            unit: Some("second"),
            tags: vec!["a:b".to_owned()].into(),
            points: vec![(10, 1.5)],
        }];
        assert_eq!(
            String::from_utf8(encode_series(&series)).unwrap(),
            r#"{"series":[{"metric":"m","type":3,"points":[{"timestamp":10,"value":1.5}],"tags":["a:b"],"unit":"second"}]}"#
        );
    }

    #[test]
    fn compression_round_trips() {
        use std::io::Read;
        let raw = b"{\"series\":[]}".repeat(100);
        let zstd = Compression::Zstd.compress(&raw).unwrap();
        assert_eq!(zstd::decode_all(&zstd[..]).unwrap(), raw);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&Compression::Gzip.compress(&raw).unwrap()[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, raw);
        out.clear();
        flate2::read::ZlibDecoder::new(&Compression::Deflate.compress(&raw).unwrap()[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, raw);
    }

    #[test]
    fn api_key_is_redacted_in_debug() {
        assert_eq!(format!("{:?}", ApiKey::new("secret".into())), "ApiKey(<redacted>)");
    }
}
