//! The top-level error and the exit codes: the one place they are defined.

use crate::config::ConfigError;
use crate::datadog::DatadogError;
use crate::ledger::LedgerError;
use crate::runlog::RunLogError;

/// Exit codes, repeated in the README and asserted in tests.
pub mod exit_code {
    /// Everything sent, or nothing to do.
    pub const OK: i32 = 0;
    /// Some runs were not sent (Datadog failed after retries, or the run log is incomplete);
    /// they stay unmarked and the next invocation sends them.
    pub const PARTIAL: i32 = 1;
    /// Usage or configuration error (clap uses 2 as well).
    pub const USAGE: i32 = 2;
    /// Bad input: a file unreadable or not JSON, or records that are not valid runs.
    pub const INPUT: i32 = 3;
    /// The ledger cannot be opened, read or written.
    pub const LEDGER: i32 = 4;
    /// Datadog rejected the API key (401/403).
    pub const AUTH: i32 = 5;
}

/// Why a `send` stopped before its input ran out.
#[derive(Debug)]
pub enum Halt {
    /// Datadog rejected the API key (401/403).
    Auth(String),
    /// The ledger failed: nothing more can be recorded, so nothing more is sent.
    Ledger(String),
    /// The invocation is wrong for its input (every record would fail the same way).
    Input(String),
    /// `--circuit-breaker` consecutive requests failed after their retries.
    Breaker(String),
    /// SIGINT (130) or SIGTERM (143).
    Signal(i32),
    /// A source cannot work as configured (GitHub rejected the token).
    Config(String),
}

impl Halt {
    pub fn exit_code(&self) -> i32 {
        match self {
            Halt::Signal(code) => *code,
            Halt::Auth(_) => exit_code::AUTH,
            Halt::Ledger(_) => exit_code::LEDGER,
            Halt::Input(_) => exit_code::INPUT,
            Halt::Breaker(_) => exit_code::PARTIAL,
            Halt::Config(_) => exit_code::USAGE,
        }
    }

    /// What the summary says of it.
    pub fn describe(&self) -> String {
        match self {
            Halt::Auth(message)
            | Halt::Ledger(message)
            | Halt::Input(message)
            | Halt::Breaker(message)
            | Halt::Config(message) => message.clone(),
            Halt::Signal(code) => format!("signal (exit code {code})"),
        }
    }
}

/// The exit code of a `send`. When several apply, the first wins: why it halted (signal, key,
/// ledger, input, breaker, source configuration), then items not sent or not fetched (1), then
/// bad input or dead letters (3).
pub fn send_exit_code(halt: Option<&Halt>, not_sent: u64, bad_input: bool) -> i32 {
    match halt {
        Some(halt) => halt.exit_code(),
        None if not_sent > 0 => exit_code::PARTIAL,
        None if bad_input => exit_code::INPUT,
        None => exit_code::OK,
    }
}

/// Errors that stop an invocation before its pipeline runs. Problems met while sending are
/// counted in the `Summary` instead, so that the run log still gets its summary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Datadog(#[from] DatadogError),
    #[error(transparent)]
    RunLog(#[from] RunLogError),
    /// A source could not be set up (its HTTP client).
    #[error("{0}")]
    Source(String),
    /// Input that is not what the command reads (`ledger import`), named with its place.
    #[error("{0}")]
    Input(String),
    /// Standard output could not be written (`ledger export` into a closed pipe).
    #[error("cannot write standard output")]
    Output(#[source] std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => exit_code::USAGE,
            Error::Ledger(_) => exit_code::LEDGER,
            Error::Datadog(error) if error.is_auth() => exit_code::AUTH,
            Error::Datadog(_) => exit_code::PARTIAL,
            Error::RunLog(_) => exit_code::USAGE,
            Error::Source(_) => exit_code::USAGE,
            Error::Input(_) => exit_code::INPUT,
            Error::Output(_) => exit_code::PARTIAL,
        }
    }
}

/// An error and its causes on one line: `failed to open ledger at x: file is not a database`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
