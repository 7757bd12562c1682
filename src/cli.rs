//! The command line, as clap parses it. Doc comments here are the `--help` text.
//! Secrets never have a default value and never come from an argument.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The version and the git commit the binary was built from (`--version`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("WORKFLOW_METRICS_COMMIT"), ")");

/// Forward GitHub Actions workflow-run metrics to Datadog, once per run.
#[derive(Debug, Parser)]
#[command(name = "workflow-metrics", version = VERSION, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// More detail on stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors on stderr, and no closing line when all went well (for cron, which mails
    /// whatever a job prints).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Settings for the commands (TOML: their long options as keys, top level or in a [send],
    /// [check] or [ledger] table); flags and environment variables override it. Default:
    /// workflow-metrics.toml in the working directory, if there is one.
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Diagnostics on stderr as text, or as JSON (one object per line, the closing line too) for
    /// log shippers.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the `send` variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Send the completed runs of INPUT to Datadog, skipping those already sent.
    Send(SendArgs),
    /// Check the API key against Datadog and open (create, migrate) the ledger.
    Check(CheckArgs),
    /// Inspect and repair the ledger: list what it holds, dead letters, requeue them, verify it.
    Ledger(LedgerArgs),
    /// Print the completion script for SHELL on stdout, e.g.
    /// `workflow-metrics completions bash > ~/.local/share/bash-completion/completions/workflow-metrics`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the options COMMAND would run with and where each came from (command line,
    /// environment, configuration file, default), passwords redacted, secrets only as set or not.
    Config {
        #[arg(value_name = "COMMAND", value_parser = ["send", "check", "ledger"], default_value = "send")]
        command: String,
    },
    /// Print the man page (roff) on stdout, made from the same definitions as --help, e.g.
    /// `workflow-metrics man > ~/.local/share/man/man1/workflow-metrics.1`.
    Man,
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub action: LedgerAction,

    #[command(flatten)]
    pub ledger: LedgerLocationArgs,
}

/// Where the ledger is, and how long to wait for it: `send`, `check` and `ledger` share these.
#[derive(Debug, Args)]
pub struct LedgerLocationArgs {
    /// The ledger of items already sent: a SQLite file (created with its folder on first use),
    /// or a PostgreSQL database that many invocations share, as
    /// postgres://USER@HOST:PORT/DATABASE?sslmode=... (the password from the URL, PGPASSWORD or
    /// ~/.pgpass; never printed).
    #[arg(
        long,
        value_name = "PATH|URL",
        default_value = "cache/metrics.db",
        env = "WORKFLOW_METRICS_LEDGER",
        hide_env_values = true,
        global = true
    )]
    pub ledger: String,

    /// Seconds to wait for another invocation that holds a SQLite ledger (one writes at a time).
    #[arg(long, value_name = "SECONDS", default_value_t = 600, global = true)]
    pub lock_timeout: u64,

    /// PostgreSQL ledger: seconds an invocation's claim on the points it sends lasts, unless it
    /// marks or releases them first; the claims of an invocation that died lapse after this.
    #[arg(long, value_name = "SECONDS", default_value_t = 600, global = true)]
    pub claim_lease: u64,

    /// PostgreSQL ledger: seconds to wait for points another invocation holds (it is sending
    /// items there) before leaving those items to it; they stay unsent in this invocation and no
    /// cursor moves past them.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, global = true)]
    pub claim_wait: u64,
}

#[derive(Debug, Subcommand)]
pub enum LedgerAction {
    /// List the dead letters: runs Datadog rejected (400), with its error, one JSON line each.
    Dead,
    /// List the items in one state (default: sent), one key per line or (--output json) one
    /// object per line with its state, time and error; narrowed by repository and time. Reads
    /// the ledger without waiting for its lock.
    List {
        #[arg(long, value_enum, default_value_t = KeyStateArg::Sent)]
        state: KeyStateArg,
        #[command(flatten)]
        filter: ItemFilterArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Counts by state and by repository, the oldest and newest item of each, the cursors, the
    /// claims held (PostgreSQL) and the ledger's size. Reads without waiting for its lock.
    Stats {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Forget sent items and dead letters (by key, repository or time), so that the next send
    /// sends them again: after fixing a tag, or when Datadog lost a period. Shows what it would
    /// forget and asks, unless --yes (required when stdin is not a terminal).
    Forget {
        /// Keys to forget (with the filters, those of them that match).
        #[arg(value_name = "KEY")]
        keys: Vec<String>,
        #[command(flatten)]
        filter: ItemFilterArgs,
        /// Only sent items, or only dead letters (default: both).
        #[arg(long, value_enum)]
        state: Option<ForgetState>,
        /// Show what would be forgotten; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Forget without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// Check the ledger's integrity (reads it without waiting for its lock).
    Verify,
    /// Write the whole ledger on stdout, one JSON object per line (sent items with their points
    /// and values, skipped items, cursors): with `import`, how a ledger moves between backends,
    /// e.g. `ledger export --ledger cache/metrics.db | ledger import --ledger postgres://...`.
    Export,
    /// Read what `export` wrote (a file, or - / nothing for stdin) into this ledger. Rows it
    /// already holds stay as they are, so importing twice changes nothing.
    Import {
        /// The exported lines; stdin when absent or -.
        #[arg(value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Free dead letters so the next send sends them again.
    Requeue {
        /// Run keys (owner/repo:run_id:attempt) to requeue.
        #[arg(value_name = "KEY", required_unless_present = "all", conflicts_with = "all")]
        keys: Vec<String>,
        /// Requeue every dead letter.
        #[arg(long)]
        all: bool,
    },
}

/// Which items `ledger list` and `ledger forget` take.
#[derive(Debug, Args)]
pub struct ItemFilterArgs {
    /// Only this repository's items (owner/repo).
    #[arg(long, value_name = "OWNER/REPO")]
    pub repository: Option<String>,
    /// Only items at or after this time: a date (2025-09-01, or RFC 3339) or a duration ago (7d,
    /// 12h). An item's time is its point's timestamp (sent) or its completion.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only items before this time (as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ForgetState {
    Sent,
    Dead,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Files of workflow runs, or - for standard input. The shape is detected from the content:
    /// REST list bodies (also as gh api --paginate [--slurp] prints them), run objects, arrays,
    /// NDJSON, the workflow_run event payload, a github context dump, gh run list/view --json rows.
    /// Without INPUT (and without --github), the file named by $GITHUB_EVENT_PATH is read.
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<String>,

    /// Show what would be sent and skipped; no key needed, no network, the ledger is read but
    /// never written.
    #[arg(long)]
    pub dry_run: bool,

    /// With --dry-run: keep the dry run's own record in this SQLite file (never the real ledger),
    /// so the next dry run shows only what is new since this one.
    #[arg(long, value_name = "PATH", requires = "dry_run")]
    pub dry_run_record: Option<PathBuf>,

    #[command(flatten)]
    pub common: CommonArgs,

    /// Prefix of every metric name.
    #[arg(long, value_name = "PREFIX", default_value = "github.actions")]
    pub metric_prefix: String,

    /// Extra tag on every series, key:value (repeatable).
    #[arg(long = "tag", value_name = "KEY:VALUE")]
    pub tags: Vec<String>,

    /// The metrics to send, as globs on their names after the prefix, comma-separated or
    /// repeated; !GLOB excludes. E.g. 'workflow_run.*,job.*,!*.conclusion.*'. Each metric and tag
    /// set is a custom metric on the Datadog bill. Default: all.
    #[arg(long, value_name = "GLOBS")]
    pub metrics: Vec<String>,

    /// The tag keys to keep, as globs, comma-separated or repeated; !GLOB drops. E.g.
    /// '*,!branch,!run_attempt'. Items that then differ in no kept tag share their points (their
    /// counts are summed). Default: all.
    #[arg(long, value_name = "GLOBS")]
    pub tag_keys: Vec<String>,

    /// Fetch the runs of this repository from GitHub's API (repeatable): incremental, with a
    /// cursor per repository in the ledger. The token comes from GITHUB_TOKEN, else GH_TOKEN,
    /// else --github-token-file, and needs `actions: read`.
    #[arg(long = "github", value_name = "OWNER/REPO")]
    pub github: Vec<String>,

    /// Fetch the runs of every repository of this organisation (repeatable; archived and
    /// disabled repositories are left out).
    #[arg(long, value_name = "ORG")]
    pub github_org: Vec<String>,

    /// With --github-org: only the repositories whose name matches this glob (repeatable), for
    /// example 'api-*'.
    #[arg(long, value_name = "GLOB")]
    pub github_repos: Vec<String>,

    /// With --github-org: leave out the repositories whose name matches this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub github_exclude: Vec<String>,

    /// GitHub's API root (GitHub Enterprise Server: https://HOST/api/v3); else GITHUB_API_URL,
    /// else https://api.github.com.
    #[arg(long, value_name = "URL")]
    pub github_api_url: Option<String>,

    /// Read the GitHub token from this file when neither GITHUB_TOKEN nor GH_TOKEN is set.
    #[arg(long, value_name = "PATH")]
    pub github_token_file: Option<PathBuf>,

    /// Authenticate as this GitHub App (with --github-app-key-file) instead of with a token: its
    /// installation tokens are bought and renewed as they expire.
    #[arg(long, value_name = "ID", requires = "github_app_key_file")]
    pub github_app_id: Option<String>,

    /// The GitHub App's private key (PEM).
    #[arg(long, value_name = "PATH", requires = "github_app_id")]
    pub github_app_key_file: Option<PathBuf>,

    /// The GitHub App's installation; else found from the first --github-org, or the first
    /// --github repository.
    #[arg(long, value_name = "ID", requires = "github_app_id")]
    pub github_app_installation: Option<u64>,

    /// With --github: where a repository without a cursor starts, as a duration back from now
    /// (45m, 6h, 30d) or a date (2026-11-01, or RFC 3339). Default: --max-age.
    #[arg(long, value_name = "DURATION|DATE")]
    pub since: Option<String>,

    /// With --github: how far back from the cursor runs are listed again for their re-runs (a new
    /// attempt keeps its run's creation time); 0: never.
    #[arg(long, value_name = "DURATION", default_value = "1d")]
    pub rescan: String,

    /// With --github: how often a repository's older runs are listed again for re-runs.
    #[arg(long, value_name = "DURATION", default_value = "15m")]
    pub rescan_every: String,

    /// With --github: the longest wait, in seconds, for a spent rate limit to reset before
    /// stopping (the cursor stays, the next invocation goes on).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub github_max_wait: u64,

    /// Send job series too (job.total, job.conclusion.*, job.duration_second,
    /// job.queued_duration_second) for the jobs in the inputs (the jobs API's bodies and objects,
    /// workflow_job payloads).
    #[arg(long)]
    pub jobs: bool,

    /// Send step series too (step.total, step.conclusion.*, step.duration_second); implies --jobs.
    #[arg(long)]
    pub steps: bool,

    /// Also send the duration gauges as Datadog distributions (`<metric>.distribution`, through
    /// POST /api/v1/distribution_points), for percentiles across runs. Unlike gauges, they are
    /// not last-write-wins: a resend after a lost acknowledgement counts twice. Gauges stay.
    #[arg(long)]
    pub distributions: bool,

    /// Tags on request, comma-separated: sender, sender_type (who triggered a run: a series per
    /// person), pull_request_number (a series per pull request).
    #[arg(long, value_name = "FIELDS", value_delimiter = ',')]
    pub tag_fields: Vec<TagFieldArg>,

    /// Repository (owner/name) of gh run list rows that carry no url.
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: Option<String>,

    /// Runs completed longer ago than this are not sent with their real timestamp (Datadog drops
    /// points older than one hour): they are recorded as too old. Seconds, or with a unit: 45m, 1h.
    #[arg(long, value_name = "DURATION", default_value = "45m")]
    pub max_age: String,

    /// Send runs older than --max-age with their real timestamps anyway (for accounts with
    /// Datadog's historical metrics ingestion).
    #[arg(long, conflicts_with = "stamp_now")]
    pub historical: bool,

    /// Stamp runs older than --max-age with the send time instead (the ledger still sends each
    /// run once).
    #[arg(long)]
    pub stamp_now: bool,

    /// Body compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::Zstd)]
    pub compression: CompressionArg,

    /// Most runs in one request (requests are also cut by Datadog's size limits).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub batch_size: usize,

    /// Requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,

    /// Attempts per request, the first included (408, 429, 5xx and network errors are retried).
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub max_attempts: u32,

    /// Most time one request may spend retrying, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub retry_deadline: u64,

    /// First retry delay, milliseconds; doubles each attempt, with jitter.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub retry_delay_ms: u64,

    /// Longest retry delay, milliseconds (Retry-After may ask for more, within the deadline).
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub retry_max_delay_ms: u64,

    /// Seed of the retry jitter (tests).
    #[arg(long, value_name = "SEED", hide = true)]
    pub jitter_seed: Option<u64>,

    /// Stop sending after this many consecutive requests failed after their retries.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub circuit_breaker: u32,

    /// Mark runs before their request instead of after its 2xx: a crash may lose runs but never
    /// sends one twice.
    #[arg(long)]
    pub at_most_once: bool,

    /// Seconds requests in flight get to finish after SIGINT/SIGTERM.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub shutdown_grace: u64,

    /// Folder of the run logs.
    #[arg(long, value_name = "DIR", default_value = "log")]
    pub log_dir: PathBuf,

    /// How much the run log says of each request: `compact` (one line per tag set with all its
    /// series, points as epoch=value), `full` (one line per series, each point's ISO 8601 time as
    /// well), or `requests` (no send/points/series lines: the request lines still name every
    /// run key).
    #[arg(long, value_enum, default_value_t = LogDetail::Compact)]
    pub log_detail: LogDetail,

    /// Print the closing summary as JSON on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// With --dry-run: print a table on stdout after the summary (per repository and workflow:
    /// runs, conclusions, median duration, what is skipped and why). auto: when stdout is a
    /// terminal and --output is text.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = PreviewWhen::Auto)]
    pub preview: PreviewWhen,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub ledger: LedgerLocationArgs,

    /// Datadog site.
    #[arg(long, env = "DD_SITE", value_name = "SITE", default_value = "datadoghq.com")]
    pub site: String,

    /// API base URL instead of https://api.<site> (proxies, tests).
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,

    /// Read the API key from this file instead of the DD_API_KEY environment variable.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,

    /// Timeout of one HTTP request, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub request_timeout: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogDetail {
    Full,
    Compact,
    Requests,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PreviewWhen {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// `--compression`; `config` maps it to the protocol's own type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    /// zstd level 3 (`Content-Encoding: zstd1`): the default, fastest for its size.
    Zstd,
    /// gzip level 6.
    Gzip,
    /// zlib (`Content-Encoding: deflate`) level 6.
    Deflate,
}

/// `--tag-fields`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TagFieldArg {
    Sender,
    #[value(name = "sender_type")]
    SenderType,
    #[value(name = "pull_request_number")]
    PullRequestNumber,
}

/// `ledger list --state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyStateArg {
    Sent,
    TooOld,
    Dead,
}
