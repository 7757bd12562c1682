//! A stand-in for Datadog's intake on 127.0.0.1, as strict as the real one where it matters: it
//! checks the API key, the content type and encoding, Datadog's size limits, and validates every
//! body against the spec's schema (tests/data/v2-series.schema.json, the strict variant that also
//! rejects unknown fields). Points outside Datadog's time window are accepted with 202 but
//! recorded as dropped, as Datadog silently drops them.
//!
//! `/api/v1/distribution_points` is checked the same way (key, content type, deflate, limits; its
//! body by hand against the documented shape, unknown fields rejected); its values are kept as
//! Datadog keeps them, every one added to the distribution, never overwritten.
//!
//! Responses can be scripted per request: a queue of statuses (with headers and body) or dropped
//! connections; when the queue is empty every valid request gets 202.

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

pub const API_KEY: &str = "test-api-key-0123456789abcdef";
pub const MAX_COMPRESSED: usize = 512_000;
pub const MAX_RAW: usize = 5_242_880;

/// A scripted answer to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Close the connection without an answer.
    Drop,
    /// Wait this long, then answer as usual (accept a valid request).
    Delay(std::time::Duration),
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Status { status, headers: Vec::new(), body: format!("{{\"errors\":[\"scripted {status}\"]}}") }
    }

    pub fn with_header(status: u16, name: &str, value: &str) -> Reply {
        Reply::Status {
            status,
            headers: vec![(name.to_owned(), value.to_owned())],
            body: format!("{{\"errors\":[\"scripted {status}\"]}}"),
        }
    }
}

/// Called for each valid series request with its 0-based number, before it is answered;
/// returns false to answer 503 without accepting (the hook killed the client, say).
pub type Hook = Box<dyn Fn(usize) -> bool + Send + Sync>;

/// One point Datadog would keep: metric, sorted tags, timestamp, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub metric: String,
    pub tags: Vec<String>,
    pub timestamp: i64,
    pub value: f64,
    pub kind: i64,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    /// Every request to /api/v2/series, with the status answered.
    requests: Vec<Request>,
    /// Points in accepted requests, in arrival order.
    accepted: Vec<Point>,
    /// Points Datadog would drop silently (outside its time window).
    dropped: Vec<Point>,
    /// Requests carrying a series with this tag are answered 400 (a run Datadog rejects).
    poison_tag: Option<String>,
    /// Every valid request waits this long before it is answered.
    latency: std::time::Duration,
    hook: Option<Arc<Hook>>,
    valid_requests: usize,
    /// Distribution values accepted: (metric, sorted tags, timestamp, value).
    distributions: Vec<(String, Vec<String>, i64, f64)>,
    /// Statuses for the next distribution requests (then 202).
    distribution_script: VecDeque<u16>,
    /// Distribution requests, with the status answered and the error if any.
    distribution_requests: Vec<(u16, Option<String>)>,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub status: u16,
    pub encoding: Option<String>,
    pub compressed_bytes: usize,
    pub raw_bytes: usize,
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct Intake {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

impl Intake {
    /// Starts the intake on its own thread and runtime; it lives as long as the test process.
    pub fn start() -> Intake {
        silence_dropped_connection_panics();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let state = inner.clone();
        let app = Router::new()
            .route("/api/v2/series", post(series))
            .route("/api/v1/validate", get(validate))
            .route("/api/v1/distribution_points", post(distribution_points))
            .with_state(state);
        let addr = super::serve(app);
        Intake { inner, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    pub fn poison(&self, tag: &str) {
        self.inner.lock().unwrap().poison_tag = Some(tag.to_owned());
    }

    pub fn clear_poison(&self) {
        self.inner.lock().unwrap().poison_tag = None;
    }

    pub fn latency(&self, latency: std::time::Duration) {
        self.inner.lock().unwrap().latency = latency;
    }

    pub fn hook(&self, hook: Hook) {
        self.inner.lock().unwrap().hook = Some(Arc::new(hook));
    }

    /// Reports the number of each valid request as it arrives, before it is answered.
    pub fn arrivals(&self) -> std::sync::mpsc::Receiver<usize> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let sender = Mutex::new(sender);
        self.hook(Box::new(move |number| {
            let _ = sender.lock().unwrap().send(number);
            true
        }));
        receiver
    }

    /// SIGKILLs `pid` when a request arrives, and never accepts that request.
    pub fn kill_on_arrival(&self, pid: u32) {
        self.hook(Box::new(move |_| {
            super::kill(pid, "-9");
            false
        }));
    }

    pub fn clear_script(&self) {
        self.inner.lock().unwrap().script.clear();
    }

    pub fn clear_hook(&self) {
        self.inner.lock().unwrap().hook = None;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn accepted(&self) -> Vec<Point> {
        self.inner.lock().unwrap().accepted.clone()
    }

    pub fn dropped(&self) -> Vec<Point> {
        self.inner.lock().unwrap().dropped.clone()
    }

    /// Distribution values accepted: (metric, sorted tags, timestamp, value), in arrival order.
    pub fn distributions(&self) -> Vec<(String, Vec<String>, i64, f64)> {
        self.inner.lock().unwrap().distributions.clone()
    }

    /// Distribution requests: (status answered, error).
    pub fn distribution_requests(&self) -> Vec<(u16, Option<String>)> {
        self.inner.lock().unwrap().distribution_requests.clone()
    }

    /// Answers the next distribution requests with these statuses, the values not taken.
    pub fn script_distributions(&self, statuses: impl IntoIterator<Item = u16>) {
        self.inner.lock().unwrap().distribution_script.extend(statuses);
    }

    /// What Datadog would show: for each metric, tags and timestamp, the last value written.
    pub fn stored(&self) -> Vec<Point> {
        let mut stored: Vec<Point> = Vec::new();
        let mut index: std::collections::HashMap<(String, Vec<String>, i64), usize> = Default::default();
        for point in self.accepted() {
            let key = (point.metric.clone(), point.tags.clone(), point.timestamp);
            match index.get(&key) {
                Some(&at) => stored[at] = point,
                None => {
                    index.insert(key, stored.len());
                    stored.push(point);
                }
            }
        }
        stored
    }

    /// Sum of the stored values of one metric (for counts: the number of runs Datadog shows).
    pub fn total(&self, metric: &str) -> f64 {
        self.stored().iter().filter(|p| p.metric == metric).map(|p| p.value).sum()
    }
}

fn silence_dropped_connection_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<DroppedConnection>().is_none() {
                previous(info);
            }
        }));
    });
}

fn schema_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let text = include_str!("../../data/v2-series.schema.json");
        let mut schema: Value = serde_json::from_str(text).expect("schema is JSON");
        // The strict variant: unknown fields are errors, so a typo in a field name fails a test.
        schema["$ref"] = json!("#/$defs/StrictMetricPayload");
        jsonschema::validator_for(&schema).expect("schema compiles")
    })
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, [("content-type", "application/json")], json!({ "errors": [message] }).to_string()).into_response()
}

async fn validate(headers: HeaderMap) -> Response {
    if headers.get("dd-api-key").and_then(|v| v.to_str().ok()) == Some(API_KEY) {
        (StatusCode::OK, json!({"valid": true}).to_string()).into_response()
    } else {
        error(StatusCode::FORBIDDEN, "Forbidden")
    }
}

async fn series(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> Response {
    let encoding = headers.get("content-encoding").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut request =
        Request { status: 0, encoding: encoding.clone(), compressed_bytes: body.len(), raw_bytes: 0, error: None };
    let (mut verdict, points) = check(&headers, encoding.as_deref(), &body, &mut request);
    let (reply, latency, hook, number) = {
        let mut inner = inner.lock().unwrap();
        if verdict.is_ok() {
            if let Some(tag) = &inner.poison_tag {
                if points.iter().any(|point| point.tags.contains(tag)) {
                    let message = format!("poisoned tag {tag}");
                    request.error = Some(message.clone());
                    verdict = Err(error(StatusCode::BAD_REQUEST, &message));
                }
            }
        }
        let number = inner.valid_requests;
        if verdict.is_ok() {
            inner.valid_requests += 1;
        }
        // A scripted reply replaces a success only: a broken request is always answered as broken.
        let reply = if verdict.is_ok() { inner.script.pop_front() } else { None };
        (reply, inner.latency, inner.hook.clone(), number)
    };
    // The hook sees the request on arrival, while the client waits for the answer.
    if verdict.is_ok() {
        if let Some(hook) = hook {
            if !hook(number) {
                let mut inner = inner.lock().unwrap();
                inner.requests.push(Request { status: 503, error: Some("hook".into()), ..request });
                return error(StatusCode::SERVICE_UNAVAILABLE, "hook");
            }
        }
    }
    let mut accept = verdict.is_ok();
    let response = match (verdict, reply) {
        (Err(response), _) => {
            accept = false;
            response
        }
        (Ok(()), Some(Reply::Drop)) => {
            inner.lock().unwrap().requests.push(Request { status: 0, error: Some("dropped".into()), ..request });
            // Ends this connection's task: the client sees the connection closed, no answer.
            std::panic::panic_any(DroppedConnection);
        }
        (Ok(()), Some(Reply::Status { status, headers, body })) => {
            accept = false;
            let mut builder = Response::builder().status(status).header("content-type", "application/json");
            for (name, value) in headers {
                builder = builder.header(name, value);
            }
            builder.body(axum::body::Body::from(body)).expect("response")
        }
        (Ok(()), Some(Reply::Delay(delay))) => {
            tokio::time::sleep(delay).await;
            accepted()
        }
        (Ok(()), None) => accepted(),
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut inner = inner.lock().unwrap();
    if accept {
        let now = chrono::Utc::now().timestamp();
        for point in points {
            if point.timestamp < now - 3600 || point.timestamp > now + 600 {
                inner.dropped.push(point.clone());
            }
            inner.accepted.push(point);
        }
    }
    request.status = response.status().as_u16();
    inner.requests.push(request);
    response
}

/// `POST /api/v1/distribution_points`, as Datadog documents it: `{"series": [{"metric",
/// "points": [[timestamp, [values]]], "tags", "type": "distribution", "host"}]}`, deflate.
async fn distribution_points(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> Response {
    let verdict = check_distributions(&headers, &body);
    let mut inner = inner.lock().unwrap();
    let (status, response) = match verdict {
        Err((status, message)) => {
            inner.distribution_requests.push((status.as_u16(), Some(message.clone())));
            return error(status, &message);
        }
        Ok(values) => match inner.distribution_script.pop_front() {
            Some(status) => (status, error(StatusCode::from_u16(status).unwrap(), "scripted")),
            None => {
                inner.distributions.extend(values);
                (202, (StatusCode::ACCEPTED, json!({"status": "ok"}).to_string()).into_response())
            }
        },
    };
    inner.distribution_requests.push((status, None));
    response
}

type DistributionValues = Vec<(String, Vec<String>, i64, f64)>;

fn check_distributions(headers: &HeaderMap, body: &[u8]) -> Result<DistributionValues, (StatusCode, String)> {
    let bad = |message: String| Err((StatusCode::BAD_REQUEST, message));
    if headers.get("dd-api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        return Err((StatusCode::FORBIDDEN, "Forbidden".into()));
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return bad("content-type must be application/json".into());
    }
    if body.len() > MAX_COMPRESSED {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "payload too large".into()));
    }
    let mut raw = Vec::new();
    match headers.get("content-encoding").and_then(|v| v.to_str().ok()) {
        None => raw.extend_from_slice(body),
        Some("deflate") => {
            if let Err(error) = flate2::read::ZlibDecoder::new(body).take((MAX_RAW + 1) as u64).read_to_end(&mut raw) {
                return bad(format!("cannot decode deflate body: {error}"));
            }
        }
        Some(other) => return bad(format!("unsupported content-encoding {other} (deflate only)")),
    }
    if raw.len() > MAX_RAW {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "decompressed payload is too large".into()));
    }
    let payload: Value =
        serde_json::from_slice(&raw).map_err(|e| (StatusCode::BAD_REQUEST, format!("not JSON: {e}")))?;
    let Some(object) = payload.as_object().filter(|o| o.keys().all(|k| k == "series")) else {
        return bad("the body is an object with only `series`".into());
    };
    let Some(series) = object.get("series").and_then(Value::as_array) else {
        return bad("`series` is required".into());
    };
    let mut values = Vec::new();
    for one in series {
        let Some(one) = one.as_object() else { return bad("a series is an object".into()) };
        if let Some(unknown) = one.keys().find(|k| !["metric", "points", "tags", "type", "host"].contains(&k.as_str()))
        {
            return bad(format!("unknown field {unknown}"));
        }
        let Some(metric) = one.get("metric").and_then(Value::as_str) else { return bad("`metric` is required".into()) };
        if one.get("type").is_some_and(|t| t != "distribution") {
            return bad(format!("type must be distribution, found {}", one["type"]));
        }
        let mut tags: Vec<String> = match one.get("tags") {
            None => Vec::new(),
            Some(Value::Array(tags)) if tags.iter().all(Value::is_string) => {
                tags.iter().map(|t| t.as_str().unwrap().to_owned()).collect()
            }
            Some(_) => return bad("tags are strings".into()),
        };
        tags.sort();
        let Some(points) = one.get("points").and_then(Value::as_array) else {
            return bad("`points` is required".into());
        };
        for point in points {
            let (Some(timestamp), Some(list)) =
                (point.get(0).and_then(Value::as_f64), point.get(1).and_then(Value::as_array))
            else {
                return bad(format!("a point is [timestamp, [values]], found {point}"));
            };
            if point.as_array().map(Vec::len) != Some(2) || list.iter().any(|v| !v.is_number()) {
                return bad(format!("a point is [timestamp, [values]], found {point}"));
            }
            for value in list {
                values.push((metric.to_owned(), tags.clone(), timestamp as i64, value.as_f64().unwrap()));
            }
        }
    }
    Ok(values)
}

/// The panic payload of a scripted dropped connection (silenced by the panic hook in `start`).
struct DroppedConnection;

fn accepted() -> Response {
    (StatusCode::ACCEPTED, [("content-type", "application/json")], "{\"errors\":[]}").into_response()
}

fn check(
    headers: &HeaderMap,
    encoding: Option<&str>,
    body: &[u8],
    request: &mut Request,
) -> (Result<(), Response>, Vec<Point>) {
    let mut fail = |status: StatusCode, message: String| {
        request.error = Some(message.clone());
        (Err(error(status, &message)), Vec::new())
    };
    if headers.get("dd-api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        return fail(StatusCode::FORBIDDEN, "Forbidden".into());
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return fail(StatusCode::BAD_REQUEST, "content-type must be application/json".into());
    }
    if body.len() > MAX_COMPRESSED {
        return fail(StatusCode::PAYLOAD_TOO_LARGE, format!("payload of {} bytes is too large", body.len()));
    }
    let mut raw = Vec::new();
    // Read at most one byte past the limit: a zip bomb stops there.
    let limit = (MAX_RAW + 1) as u64;
    let decoded = match encoding {
        None => {
            let _: () = raw.extend_from_slice(body);
            Ok(())
        }
        Some("gzip") => flate2::read::GzDecoder::new(body).take(limit).read_to_end(&mut raw).map(drop),
        Some("deflate") => flate2::read::ZlibDecoder::new(body).take(limit).read_to_end(&mut raw).map(drop),
        Some("zstd1") => {
            zstd::stream::read::Decoder::new(body).and_then(|d| d.take(limit).read_to_end(&mut raw)).map(drop)
        }
        Some(other) => return fail(StatusCode::BAD_REQUEST, format!("unsupported content-encoding {other}")),
    };
    if let Err(error) = decoded {
        return fail(StatusCode::BAD_REQUEST, format!("cannot decode {encoding:?} body: {error}"));
    }
    request.raw_bytes = raw.len();
    if raw.len() > MAX_RAW {
        return fail(StatusCode::PAYLOAD_TOO_LARGE, "decompressed payload is too large".into());
    }
    let payload: Value = match serde_json::from_slice(&raw) {
        Ok(payload) => payload,
        Err(error) => return fail(StatusCode::BAD_REQUEST, format!("body is not JSON: {error}")),
    };
    let errors: Vec<String> =
        schema_validator().iter_errors(&payload).map(|e| format!("{e} at {}", e.instance_path)).collect();
    if !errors.is_empty() {
        return fail(StatusCode::BAD_REQUEST, format!("schema: {}", errors.join("; ")));
    }
    let mut points = Vec::new();
    for series in payload["series"].as_array().expect("schema checked") {
        let metric = series["metric"].as_str().expect("schema checked").to_owned();
        let mut tags: Vec<String> = series["tags"]
            .as_array()
            .map(|tags| tags.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        if let Some(tag) = tags.iter().find(|tag| tag.chars().count() > 200) {
            return fail(StatusCode::BAD_REQUEST, format!("tag longer than 200 characters: {tag}"));
        }
        tags.sort();
        let kind = series["type"].as_i64().unwrap_or(0);
        for point in series["points"].as_array().expect("schema checked") {
            points.push(Point {
                metric: metric.clone(),
                tags: tags.clone(),
                timestamp: point["timestamp"].as_i64().expect("schema: int64"),
                value: point["value"].as_f64().expect("schema: number"),
                kind,
            });
        }
    }
    (Ok(()), points)
}
