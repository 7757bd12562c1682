//! The binary: parse the command line, run, print the summary, exit with its code.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use workflow_metrics::cli::{Cli, LogFormat};
use workflow_metrics::{error_chain, run};

// Items are allocated on the reader thread and freed on the pipeline thread, a million of them
// in a backfill: mimalloc frees across threads without the consolidation work glibc's malloc
// does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // The configuration file's settings join the command line as the flags they stand for.
    let args = match workflow_metrics::config_file::apply(std::env::args_os().collect()) {
        Ok(applied) => applied.args,
        Err(message) => {
            eprintln!("workflow-metrics: error: {message}");
            std::process::exit(workflow_metrics::error::exit_code::USAGE);
        }
    };
    let cli = Cli::parse_from(args);
    let default_level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let diagnostics = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let (format, quiet) = (cli.log_format, cli.quiet);
    match format {
        LogFormat::Text => diagnostics.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => diagnostics.json().init(),
    }
    let code = match run(cli) {
        Ok(report) if report.summary_line.is_empty() => {
            // A command that only prints (completions, the man page).
            print!("{}", report.json.unwrap_or_default());
            report.exit_code
        }
        Ok(report) => {
            if let Some(json) = report.json {
                println!("{json}");
            }
            if !(quiet && report.exit_code == 0) {
                closing_line(format, if report.exit_code == 0 { "INFO" } else { "ERROR" }, &report.summary_line);
            }
            if let Some(preview) = report.preview {
                print!("{preview}");
            }
            report.exit_code
        }
        Err(error) => {
            closing_line(format, "ERROR", &format!("error: {}", error_chain(&error)));
            error.exit_code()
        }
    };
    std::process::exit(code);
}

/// The closing line on stderr: text, or (`--log-format json`) an object shaped as the
/// diagnostics before it are.
fn closing_line(format: LogFormat, level: &str, message: &str) {
    match format {
        LogFormat::Text => eprintln!("workflow-metrics: {message}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": level,
                "fields": { "message": format!("workflow-metrics: {message}") },
            })
        ),
    }
}
