//! The binary: parse the command line, run, print the summary, exit with its code.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use workflow_metrics::{cli::Cli, error_chain, run};

// Items are allocated on the reader thread and freed on the pipeline thread, a million of them
// in a backfill: mimalloc frees across threads without the consolidation work glibc's malloc
// does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let default_level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let code = match run(cli) {
        Ok(report) => {
            if let Some(json) = report.json {
                println!("{json}");
            }
            eprintln!("workflow-metrics: {}", report.summary_line);
            report.exit_code
        }
        Err(error) => {
            eprintln!("workflow-metrics: error: {}", error_chain(&error));
            error.exit_code()
        }
    };
    std::process::exit(code);
}
