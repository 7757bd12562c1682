//! What can go wrong talking to Datadog, and how each failure is classified for retries.

use std::time::Duration;

use crate::retry::Retriable;

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
}

impl Retriable for DatadogError {
    /// Worth another attempt: timeouts, refused or reset connections, 408, 429 and 5xx
    /// (Vector's `is_retriable`; 400 and 413 are the request's fault, 401/403 the key's).
    fn is_retriable(&self) -> bool {
        match self {
            DatadogError::Client(_) => false,
            DatadogError::Transport { .. } => true,
            DatadogError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
        }
    }

    /// How long the server asked us to wait (`Retry-After`, `X-RateLimit-Reset`).
    fn retry_after(&self) -> Option<Duration> {
        match self {
            DatadogError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
