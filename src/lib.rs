//! workflow-metrics: forwards GitHub Actions workflow-run metrics to Datadog, once per run.
//! `ARCHITECTURE.md` has the module map; the modules below are in reading order.

pub mod cli;
pub mod config;
pub mod config_file;
pub mod datadog;
pub mod error;
pub mod ledger;
mod ledger_stats;
pub mod metrics;
pub mod model;
pub mod retry;
pub mod runlog;
pub mod send;
pub mod source;

use chrono::Utc;

use clap::CommandFactory;

use crate::cli::{Cli, Command, ForgetState, KeyStateArg, LedgerAction, LedgerArgs, OutputFormat};
use crate::config::{CheckConfig, SendConfig};
use crate::ledger::inspect;
use crate::ledger::KeyState;
use crate::runlog::{Header, RunLog};

pub use crate::error::{error_chain, exit_code, Error};

/// What `main` prints and how it exits.
#[derive(Debug)]
pub struct Report {
    pub exit_code: i32,
    /// The closing line for stderr.
    pub summary_line: String,
    /// The summary as JSON, for stdout (`--output json`).
    pub json: Option<String>,
    /// A dry run's table for a person, for stdout after the closing line.
    pub preview: Option<String>,
}

impl Report {
    /// A command that only prints `text` on stdout (no closing line).
    fn printing(text: String) -> Report {
        Report { exit_code: exit_code::OK, summary_line: String::new(), json: Some(text), preview: None }
    }
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
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "workflow-metrics", &mut script);
            Ok(Report::printing(String::from_utf8_lossy(&script).into_owned()))
        }
        Command::Config { command } => {
            let described = config_file::describe(cli.config.as_deref(), &command, &config::secrets_present())
                .map_err(|message| Error::Config(config::ConfigError::File(message)))?;
            Ok(Report::printing(described))
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page).map_err(Error::Output)?;
            Ok(Report::printing(String::from_utf8_lossy(&page).into_owned()))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // The pipeline runs on the main thread and the reader has its own: request tasks get the
    // remaining cores. On 2 cores that is one worker: with two, the pipeline thread (the critical
    // path of a backfill) is preempted more (measured in the commit that chose this).
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
    let ledger = config.ledger.to_string();
    let endpoint = datadog::series_url(&config.endpoint.base_url);
    let options = format!(
        "prefix={} tags={} metrics={} tag_keys={} max_age={}s historical={} stamp_now={} compression={} batch_size={} jobs={} steps={} distributions={}",
        config.spec.prefix,
        if config.spec.extra_tags.is_empty() { "-".to_owned() } else { config.spec.extra_tags.join(",") },
        config.spec.metrics,
        config.spec.tag_keys,
        config.max_age.as_secs(),
        config.historical,
        config.stamp_now,
        config.compression.header(),
        config.batch_size,
        config.jobs,
        config.steps,
        config.distributions,
    );
    log.header(&Header {
        dry_run: config.dry_run,
        started,
        inputs: &inputs,
        ledger: &ledger,
        endpoint: &endpoint,
        options: &options,
    });
    let result = runtime().block_on(send::send(&config, &mut log));
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
    let preview = summary.preview.take().filter(|_| config.preview);
    Ok(Report { exit_code: summary.exit_code, summary_line: summary.line(), json, preview })
}

fn check(config: CheckConfig) -> Result<Report, Error> {
    runtime().block_on(async {
        let mut ledger = ledger::open(&config.ledger, config.lock_timeout).await?;
        let counts = ledger.counts().await?;
        ledger.check_writes().await?;
        let client = datadog::Client::new(&config.endpoint.base_url, config.api_key, config.endpoint.request_timeout)?;
        client.validate().await?;
        Ok(Report {
            exit_code: exit_code::OK,
            summary_line: format!(
                "ok: Datadog accepted the API key at {}; ledger {} ready and writable (schema {}, {} item(s) sent, {} recorded too old, {} dead letter(s))",
                config.endpoint.base_url,
                ledger.describe(),
                ledger.schema_version(),
                counts.sent,
                counts.too_old,
                counts.dead,
            ),
            json: None,
            preview: None,
        })
    })
}

fn ledger_command(args: LedgerArgs) -> Result<Report, Error> {
    let (location, lock_timeout) = config::ledger_location(&args.ledger)?;
    runtime().block_on(async {
        let (summary_line, json) = match args.action {
            LedgerAction::Dead => {
                let dead = ledger::open(&location, lock_timeout).await?.dead_letters().await?;
                let rows: Vec<String> = dead
                    .iter()
                    .map(|letter| {
                        serde_json::json!({ "run_key": letter.key, "recorded_at": letter.recorded_at, "error": letter.detail })
                            .to_string()
                    })
                    .collect();
                (format!("{} dead letter(s) in {location}", dead.len()), Some(rows.join("\n")).filter(|s| !s.is_empty()))
            }
            LedgerAction::Requeue { keys, all } => {
                let freed = ledger::open(&location, lock_timeout).await?.requeue(if all { None } else { Some(&keys) }).await?;
                (format!("requeued {freed} dead letter(s): the next send sends them again"), None)
            }
            LedgerAction::List { state, filter, output } => {
                let state = match state {
                    KeyStateArg::Sent => KeyState::Sent,
                    KeyStateArg::TooOld => KeyState::SkippedTooOld,
                    KeyStateArg::Dead => KeyState::Dead,
                };
                let filter = config::item_filter(&filter, vec![state], Vec::new(), Utc::now().timestamp())?;
                let mut lines = Vec::new();
                if let Some(mut ledger) = ledger::open_read_only(&location).await? {
                    inspect::each(ledger.as_mut(), &filter, |entry| {
                        lines.push(match output {
                            OutputFormat::Text => entry.key,
                            OutputFormat::Json => serde_json::to_string(&entry).unwrap_or_default(),
                        });
                        Ok(())
                    })
                    .await?;
                }
                (format!("{} key(s) in {location}", lines.len()), Some(lines.join("\n")).filter(|s| !s.is_empty()))
            }
            LedgerAction::Stats { output } => {
                let Some(mut ledger) = ledger::open_read_only(&location).await? else {
                    return Err(Error::Ledger(ledger::LedgerError::Missing { path: location.to_string() }));
                };
                let stats = inspect::stats(ledger.as_mut(), Utc::now().timestamp_millis()).await?;
                let shown = match output {
                    OutputFormat::Text => ledger_stats::text(&stats),
                    OutputFormat::Json => serde_json::to_string_pretty(&stats).unwrap_or_default(),
                };
                let line = format!(
                    "{} sent, {} too old, {} dead letter(s) in {location}",
                    stats.total.sent.items, stats.total.too_old.items, stats.total.dead.items
                );
                (line, Some(shown))
            }
            LedgerAction::Forget { keys, filter, state, dry_run, yes } => {
                let states = match state {
                    Some(ForgetState::Sent) => vec![KeyState::Sent],
                    Some(ForgetState::Dead) => vec![KeyState::Dead],
                    None => Vec::new(),
                };
                if keys.is_empty() && filter.repository.is_none() && filter.since.is_none() && filter.until.is_none() {
                    return Err(Error::Config(config::ConfigError::Refused(
                        "ledger forget: name keys, --repository, --since or --until (to forget everything, start a new ledger)".to_owned(),
                    )));
                }
                let filter = config::item_filter(&filter, states, keys, Utc::now().timestamp())?;
                ledger_stats::forget(&location, lock_timeout, &filter, dry_run, yes).await?
            }
            LedgerAction::Export => {
                let Some(mut ledger) = ledger::open_read_only(&location).await? else {
                    return Err(Error::Ledger(ledger::LedgerError::Missing { path: location.to_string() }));
                };
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let mut write = |row: &ledger::ExportRow| -> Result<(), Error> {
                    serde_json::to_writer(&mut out, row).map_err(|error| Error::Output(error.into()))?;
                    std::io::Write::write_all(&mut out, b"\n").map_err(Error::Output)
                };
                let (mut sent, mut after) = (0u64, None::<String>);
                loop {
                    let rows = ledger.sent_rows(after.as_deref(), 10_000).await?;
                    let Some(ledger::ExportRow::Sent { key, .. }) = rows.last() else { break };
                    after = Some(key.clone());
                    sent += rows.len() as u64;
                    rows.iter().try_for_each(&mut write)?;
                }
                let skipped = ledger.skipped_rows().await?;
                skipped.iter().try_for_each(&mut write)?;
                let mut cursors: Vec<(String, String)> = ledger.cursors("").await?.into_iter().collect();
                cursors.sort();
                for (scope, cursor) in &cursors {
                    write(&ledger::ExportRow::Cursor { scope: scope.clone(), cursor: cursor.clone() })?;
                }
                std::io::Write::flush(&mut out).map_err(Error::Output)?;
                let line = format!(
                    "exported {sent} sent item(s), {} skipped, {} cursor(s) from {location}",
                    skipped.len(),
                    cursors.len()
                );
                (line, None)
            }
            LedgerAction::Import { input } => {
                let mut ledger = ledger::open(&location, lock_timeout).await?;
                let name = input.as_ref().filter(|path| path.as_os_str() != "-").map_or_else(
                    || "<stdin>".to_owned(),
                    |path| path.display().to_string(),
                );
                let reader: Box<dyn std::io::BufRead> = match input.as_ref().filter(|path| path.as_os_str() != "-") {
                    Some(path) => Box::new(std::io::BufReader::new(
                        std::fs::File::open(path).map_err(|error| Error::Input(format!("cannot read {name}: {error}")))?,
                    )),
                    None => Box::new(std::io::stdin().lock()),
                };
                let (mut totals, mut batch) = ((0, 0, 0), Vec::with_capacity(10_000));
                for (number, line) in std::io::BufRead::lines(reader).enumerate() {
                    let line = line.map_err(|error| Error::Input(format!("cannot read {name}: {error}")))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let row: ledger::ExportRow = serde_json::from_str(&line).map_err(|error| {
                        Error::Input(format!("{name} line {}: not a row of `ledger export`: {error}", number + 1))
                    })?;
                    batch.push(row);
                    if batch.len() == 10_000 {
                        let done = ledger::import_rows(ledger.as_mut(), &batch)
                            .await?
                            .map_err(|error| Error::Input(format!("{name} before line {}: {error}", number + 2)))?;
                        totals = (totals.0 + done.0, totals.1 + done.1, totals.2 + done.2);
                        batch.clear();
                    }
                }
                let done =
                    ledger::import_rows(ledger.as_mut(), &batch).await?.map_err(|error| Error::Input(format!("{name}: {error}")))?;
                totals = (totals.0 + done.0, totals.1 + done.1, totals.2 + done.2);
                let line = format!(
                    "imported {} sent item(s), {} skipped, {} cursor(s) from {name} into {location}",
                    totals.0, totals.1, totals.2
                );
                (line, None)
            }
            LedgerAction::Verify => {
                let Some(mut ledger) = ledger::open_read_only(&location).await? else {
                    return Err(Error::Ledger(ledger::LedgerError::Missing { path: location.to_string() }));
                };
                ledger.verify().await?;
                (format!("ledger {location} is consistent"), None)
            }
        };
        Ok(Report { exit_code: exit_code::OK, summary_line, json, preview: None })
    })
}
