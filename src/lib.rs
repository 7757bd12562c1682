//! workflow-metrics: forwards GitHub Actions workflow-run metrics to Datadog, once per run.
//! `ARCHITECTURE.md` has the module map; the modules below are in reading order.

pub mod cli;
pub mod config;
pub mod datadog;
pub mod error;
pub mod ledger;
pub mod metrics;
pub mod retry;
pub mod runlog;
pub mod source;
pub mod submit;

use chrono::Utc;

use crate::cli::{Cli, Command, LedgerAction, LedgerArgs, OutputFormat};
use crate::config::{CheckConfig, SendConfig};
use crate::runlog::{Header, RunLog};

pub use crate::error::{exit_code, Error};

/// What `main` prints and how it exits.
#[derive(Debug)]
pub struct Report {
    pub exit_code: i32,
    /// The closing line for stderr.
    pub summary_line: String,
    /// The summary as JSON, for stdout (`--output json`).
    pub json: Option<String>,
}

/// Runs one invocation.
///
/// # Errors
/// Configuration, ledger or run-log problems found before anything was sent.
pub fn run(cli: Cli) -> Result<Report, Error> {
    match cli.command {
        Command::Send(args) => send(SendConfig::from_args(args)?),
        Command::Check(args) => check(CheckConfig::from_args(args)?),
        Command::Ledger(args) => ledger_command(args),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // The pipeline runs on the main thread and the reader has its own: request tasks get the
    // remaining cores. On 2 cores that is one worker: with two, the pipeline thread (the critical
    // path of a backfill) was preempted more, busy 13-15 s instead of 12 s of a 1M-run send.
    let workers = std::thread::available_parallelism().map_or(1, |cores| cores.get().saturating_sub(1).max(1));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a tokio runtime builds on any supported platform")
}

fn send(config: SendConfig) -> Result<Report, Error> {
    let started = Utc::now();
    let mut log = RunLog::create(&config.log_dir, started)?;
    let inputs: Vec<String> = config.inputs.iter().map(ToString::to_string).collect();
    let endpoint = datadog::series_url(&config.endpoint.base_url);
    let options = format!(
        "prefix={} tags={} max_age={}s historical={} stamp_now={} compression={} batch_size={}",
        config.spec.prefix,
        if config.spec.extra_tags.is_empty() { "-".to_owned() } else { config.spec.extra_tags.join(",") },
        config.max_age.as_secs(),
        config.historical,
        config.stamp_now,
        config.compression.header(),
        config.batch_size,
    );
    log.header(&Header {
        dry_run: config.dry_run,
        started,
        inputs: &inputs,
        ledger: &config.ledger,
        endpoint: &endpoint,
        options: &options,
    });
    let result = runtime().block_on(submit::send(&config, &mut log));
    let mut summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            log.note(&format!("error: {}", error_chain(&error)));
            let _ = log.finish();
            return Err(error);
        }
    };
    let path = log.path().display().to_string();
    summary.log_file = Some(path);
    log.note(&format!("summary: {}", summary.line()));
    log.note(&format!("finished: {} exit_code={}", runlog::iso_millis(Utc::now()), summary.exit_code));
    if let Err(error) = log.finish() {
        summary.errors.push(error_chain(&error));
        summary.exit_code = summary.exit_code.max(exit_code::PARTIAL);
    }
    let json = (config.output == OutputFormat::Json)
        .then(|| serde_json::to_string(&summary).expect("the summary serialises: plain numbers and strings"));
    Ok(Report { exit_code: summary.exit_code, summary_line: summary.line(), json })
}

fn check(config: CheckConfig) -> Result<Report, Error> {
    let ledger = ledger::Ledger::open(&config.ledger, config.lock_timeout)?;
    let (sent, skipped) = ledger.counts()?;
    let client = datadog::Client::new(&config.endpoint.base_url, config.api_key, config.endpoint.request_timeout)?;
    runtime().block_on(client.validate())?;
    Ok(Report {
        exit_code: exit_code::OK,
        summary_line: format!(
            "ok: Datadog accepted the API key at {}; ledger {} ready (schema {}, {sent} run(s) sent, {skipped} recorded too old)",
            config.endpoint.base_url,
            config.ledger.display(),
            ledger::SCHEMA_VERSION
        ),
        json: None,
    })
}

fn ledger_command(args: LedgerArgs) -> Result<Report, Error> {
    let mut ledger = ledger::Ledger::open(&args.ledger, std::time::Duration::from_secs(args.lock_timeout))?;
    let (summary_line, json) = match args.action {
        LedgerAction::Dead => {
            let dead = ledger.dead_letters()?;
            let rows: Vec<String> = dead
                .iter()
                .map(|letter| {
                    serde_json::json!({
                        "run_key": letter.run_key,
                        "recorded_at": letter.recorded_at,
                        "error": letter.detail,
                    })
                    .to_string()
                })
                .collect();
            (
                format!("{} dead letter(s) in {}", dead.len(), args.ledger.display()),
                Some(rows.join("\n")).filter(|s| !s.is_empty()),
            )
        }
        LedgerAction::Requeue { keys, all } => {
            let freed = ledger.requeue(if all { None } else { Some(&keys) })?;
            (format!("requeued {freed} dead letter(s): the next send sends them again"), None)
        }
    };
    Ok(Report { exit_code: exit_code::OK, summary_line, json })
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
