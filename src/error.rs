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
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => exit_code::USAGE,
            Error::Ledger(_) => exit_code::LEDGER,
            Error::Datadog(error) if error.is_auth() => exit_code::AUTH,
            Error::Datadog(_) => exit_code::PARTIAL,
            Error::RunLog(_) => exit_code::USAGE,
        }
    }
}
