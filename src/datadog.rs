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

/// The wire form of a request body, serialised straight from the series (no copies).
struct WirePayload<'a>(&'a [Series]);

impl Serialize for WirePayload<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut payload = serializer.serialize_struct("MetricPayload", 1)?;
        payload.serialize_field("series", &WireList(self.0))?;
        payload.end()
    }
}

struct WireList<'a>(&'a [Series]);

impl Serialize for WireList<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(WireSeries))
    }
}

struct WireSeries<'a>(&'a Series);

impl Serialize for WireSeries<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let series = self.0;
        let mut wire = serializer.serialize_struct("MetricSeries", 5)?;
        wire.serialize_field("metric", &*series.metric)?;
        wire.serialize_field(
            "type",
            &match series.kind {
                MetricKind::Count => 1u8,
                MetricKind::Gauge => 3u8,
            },
        )?;
        wire.serialize_field("points", &WirePoints(&series.points))?;
        wire.serialize_field("tags", &*series.tags)?;
        if let Some(unit) = series.unit {
            wire.serialize_field("unit", unit)?;
        }
        wire.end()
    }
}

struct WirePoints<'a>(&'a [(i64, f64)]);

impl Serialize for WirePoints<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|&(timestamp, value)| WirePoint { timestamp, value }))
    }
}

#[derive(Serialize)]
struct WirePoint {
    timestamp: i64,
    value: f64,
}

/// The JSON body of a `/api/v2/series` request.
pub fn encode_series(series: &[Series]) -> Vec<u8> {
    serde_json::to_vec(&WirePayload(series)).expect("serialising plain structs of strings and numbers cannot fail")
}

/// A compressed request body and the size of the JSON it holds.
#[derive(Debug)]
pub struct Body {
    pub compressed: Vec<u8>,
    pub raw_bytes: usize,
}

/// A body over one of Datadog's limits: the request must be split. `compressed_bytes` is 0 when
/// the uncompressed limit cut the encoding short.
#[derive(Debug)]
pub struct TooLarge {
    pub raw_bytes: usize,
    pub compressed_bytes: usize,
}

/// The JSON of `series`, compressed as it is written: the uncompressed body is never held whole.
pub fn encode_compressed(series: &[Series], compression: Compression) -> Result<Body, TooLarge> {
    /// Counts what passes through, and refuses to go past Datadog's uncompressed limit.
    struct Counted<W> {
        inner: W,
        bytes: usize,
    }
    impl<W: Write> Write for Counted<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.bytes + buf.len() > MAX_RAW_BYTES {
                self.bytes += buf.len();
                return Err(std::io::Error::other("over Datadog's uncompressed limit"));
            }
            let written = self.inner.write(buf)?;
            self.bytes += written;
            Ok(written)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    fn write_through<E: Write>(series: &[Series], encoder: E) -> Result<(E, usize), usize> {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, Counted { inner: encoder, bytes: 0 });
        let written = serde_json::to_writer(&mut out, &WirePayload(series))
            .map_err(drop)
            .and_then(|()| out.flush().map_err(drop));
        let counted = out.into_inner().map_err(|error| error.into_inner().get_ref().bytes)?;
        match written {
            Ok(()) => Ok((counted.inner, counted.bytes)),
            Err(()) => Err(counted.bytes),
        }
    }
    let capacity = 64 * 1024;
    let cut = |raw_bytes| TooLarge { raw_bytes, compressed_bytes: 0 };
    let (compressed, raw_bytes) = match compression {
        Compression::Zstd => {
            let encoder = zstd::stream::write::Encoder::new(Vec::with_capacity(capacity), 3).map_err(|_| cut(0))?;
            let (encoder, raw) = write_through(series, encoder).map_err(cut)?;
            (encoder.finish().map_err(|_| cut(raw))?, raw)
        }
        Compression::Gzip => {
            let encoder = flate2::write::GzEncoder::new(Vec::with_capacity(capacity), flate2::Compression::new(6));
            let (encoder, raw) = write_through(series, encoder).map_err(cut)?;
            (encoder.finish().map_err(|_| cut(raw))?, raw)
        }
        Compression::Deflate => {
            let encoder = flate2::write::ZlibEncoder::new(Vec::with_capacity(capacity), flate2::Compression::new(6));
            let (encoder, raw) = write_through(series, encoder).map_err(cut)?;
            (encoder.finish().map_err(|_| cut(raw))?, raw)
        }
    };
    if compressed.len() > MAX_COMPRESSED_BYTES {
        return Err(TooLarge { raw_bytes, compressed_bytes: compressed.len() });
    }
    Ok(Body { compressed, raw_bytes })
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
    fn streamed_bodies_decode_to_the_encoded_json_within_limits() {
        use std::io::Read;
        let series: Vec<Series> = (0..500)
            .map(|index| Series {
                metric: "github.actions.workflow_run.total".into(),
                kind: MetricKind::Count,
                unit: None,
                tags: vec![format!("repository_name:repo-{index}"), "event:push".to_owned()].into(),
                points: vec![(1_700_000_000 + index, 1.0)],
            })
            .collect();
        let json = encode_series(&series);
        for compression in [Compression::Zstd, Compression::Gzip, Compression::Deflate] {
            let body = encode_compressed(&series, compression).unwrap();
            assert_eq!(body.raw_bytes, json.len());
            let mut out = Vec::new();
            match compression {
                Compression::Zstd => out = zstd::decode_all(&body.compressed[..]).unwrap(),
                Compression::Gzip => drop(flate2::read::GzDecoder::new(&body.compressed[..]).read_to_end(&mut out)),
                Compression::Deflate => {
                    drop(flate2::read::ZlibDecoder::new(&body.compressed[..]).read_to_end(&mut out))
                }
            }
            assert_eq!(out, json, "{compression:?}");
        }
        // Over 5,242,880 bytes of JSON: cut short, reported too large.
        let huge: Vec<Series> = (0..40_000).map(|index| series[index % 500].clone()).collect();
        let too_large = encode_compressed(&huge, Compression::Zstd).unwrap_err();
        assert!(too_large.raw_bytes > MAX_RAW_BYTES && too_large.compressed_bytes == 0, "{too_large:?}");
        // Random tags do not compress: over 512,000 bytes compressed, under the raw limit.
        let mut rng = fastrand::Rng::with_seed(1);
        let noisy: Vec<Series> = (0..9_000)
            .map(|_| Series {
                tags: vec![(0..80).map(|_| rng.alphanumeric()).collect::<String>()].into(),
                ..series[0].clone()
            })
            .collect();
        let too_large = encode_compressed(&noisy, Compression::Zstd).unwrap_err();
        assert!(
            too_large.raw_bytes <= MAX_RAW_BYTES && too_large.compressed_bytes > MAX_COMPRESSED_BYTES,
            "{too_large:?}"
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
