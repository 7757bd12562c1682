//! Validated configuration, built once from the command line and the environment. The only
//! module that reads the environment (`DD_API_KEY`, `GITHUB_EVENT_PATH`, `PGPASSWORD`...);
//! `clippy.toml` bans `std::env::var` everywhere else.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{
    CheckArgs, CommonArgs, CompressionArg, LedgerLocationArgs, LogDetail, OutputFormat, PreviewWhen, SendArgs,
    TagFieldArg,
};
use crate::datadog::{self, ApiKey, Compression};
use crate::ledger::{Location, PgTarget};
use crate::metrics::{self, Patterns, SeriesSpec, TagFields};
use crate::model;
use crate::retry::RetryPolicy;
use crate::source::github::{GithubApp, GithubAuth, GithubToken, Repositories, RescanPolicy};
use crate::source::Input;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{option}: {reason}")]
    Patterns { option: &'static str, reason: String },
    #[error("{option} {value:?}: give a date (2025-09-01, or RFC 3339) or a duration ago (7d, 12h)")]
    Time { option: &'static str, value: String },
    #[error("{0}")]
    Refused(String),
    /// The configuration file (`config_file`): its message names the file.
    #[error("{0}")]
    File(String),
    #[error(
        "no Datadog API key: set DD_API_KEY, or pass --api-key-file PATH (use --dry-run to preview without a key)"
    )]
    MissingApiKey,
    #[error("cannot read the API key file {path}")]
    ApiKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API key file {path} is empty")]
    EmptyApiKeyFile { path: PathBuf },
    #[error("--ledger {shown}: {reason}")]
    LedgerUrl { shown: String, reason: String },
    #[error("unknown Datadog site {site:?}; expected one of {}", datadog::SITES.join(", "))]
    UnknownSite { site: String },
    #[error("--api-url {url:?} is not an http:// or https:// URL")]
    ApiUrl { url: String },
    #[error("no INPUT given and GITHUB_EVENT_PATH is not set: name files of workflow runs, - for standard input, or --github OWNER/REPO")]
    NoInput,
    #[error("--github {value:?} is not owner/name")]
    GithubRepo { value: String },
    #[error("no GitHub token for --github: set GITHUB_TOKEN or GH_TOKEN, pass --github-token-file PATH (a token with `actions: read`), or authenticate as an App with --github-app-id and --github-app-key-file")]
    MissingGithubToken,
    #[error("cannot read the GitHub token file {path}")]
    GithubTokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the GitHub App's private key file {path}")]
    GithubAppKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a GitHub App's private key (an RSA key in PEM): {reason}")]
    GithubAppKey { path: PathBuf, reason: String },
    #[error("the GitHub token file {path} is empty")]
    EmptyGithubTokenFile { path: PathBuf },
    #[error("--github-api-url {url:?} is not an http:// or https:// URL")]
    GithubApiUrl { url: String },
    #[error("{flag} {value:?} is not a duration (seconds, or a number with s, m, h or d)")]
    Rescan { flag: &'static str, value: String },
    #[error("--since {value:?} is neither a duration (45m, 6h, 30d) nor a date (2026-11-01, RFC 3339)")]
    Since { value: String },
    #[error("standard input (-) can be read only once")]
    StdinTwice,
    #[error("--repo {value:?} is not owner/name")]
    Repo { value: String },
    #[error("--tag {value:?} is not a valid Datadog tag key:value (the key starts with a letter)")]
    Tag { value: String },
    #[error("--metric-prefix {value:?} must start with a letter and hold only letters, digits, _ and . (at most 150 characters)")]
    Prefix { value: String },
    #[error("--max-age {value:?} is not a duration (seconds, or a number with s, m or h), or is over 1h")]
    MaxAge { value: String },
    #[error("--batch-size must be between 1 and 100000")]
    BatchSize,
    #[error("--request-timeout must be between 1 and 600 seconds")]
    Timeout,
    #[error("--concurrency must be between 1 and 64")]
    Concurrency,
    #[error("--max-attempts and --circuit-breaker must be at least 1")]
    Attempts,
}

/// Where and how to reach Datadog.
#[derive(Debug)]
pub struct Endpoint {
    pub base_url: String,
    pub request_timeout: Duration,
}

#[derive(Debug)]
pub struct SendConfig {
    pub inputs: Vec<Input>,
    pub dry_run: bool,
    pub dry_run_record: Option<PathBuf>,
    pub ledger: Location,
    pub log_dir: PathBuf,
    pub endpoint: Endpoint,
    /// `None` only in a dry run.
    pub api_key: Option<ApiKey>,
    pub spec: SeriesSpec,
    pub default_repo: Option<(String, String)>,
    /// `--github`: runs fetched from GitHub's API.
    pub github: Option<GithubConfig>,
    /// `--jobs` (also set by `--steps`): job items are sent, not only counted.
    pub jobs: bool,
    /// `--steps`: a job's steps are items of their own.
    pub steps: bool,
    /// `--distributions`: duration gauges also go out as distribution points.
    pub distributions: bool,
    pub max_age: Duration,
    pub historical: bool,
    pub stamp_now: bool,
    pub compression: Compression,
    pub batch_size: usize,
    pub output: OutputFormat,
    /// A dry run prints its preview table on stdout.
    pub preview: bool,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub circuit_breaker: u32,
    pub at_most_once: bool,
    pub lock_timeout: Duration,
    /// `--claim-wait` (a shared ledger): how long points another invocation holds are waited for.
    pub claim_wait: Duration,
    pub shutdown_grace: Duration,
    pub log_detail: LogDetail,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

impl SendConfig {
    /// `--at-most-once` in a live run: items are marked before their request and unmarked if
    /// it fails. (A dry run marks only its own record, after its pretend request.)
    pub fn marks_before_request(&self) -> bool {
        self.at_most_once && !self.dry_run
    }
}

/// Where and how to fetch runs from GitHub.
#[derive(Debug)]
pub struct GithubConfig {
    pub repositories: Repositories,
    pub api_url: String,
    pub auth: GithubAuth,
    /// Where a repository without a cursor starts, unix seconds.
    pub since: i64,
    pub rescan: RescanPolicy,
    pub max_wait: Duration,
}

#[derive(Debug)]
pub struct CheckConfig {
    pub ledger: Location,
    pub lock_timeout: Duration,
    pub endpoint: Endpoint,
    pub api_key: ApiKey,
}

impl SendConfig {
    /// # Errors
    /// Any argument that does not hold, or a live run without an API key.
    pub fn from_args(args: SendArgs) -> Result<SendConfig, ConfigError> {
        let endpoint = endpoint(&args.common)?;
        let api_key = if args.dry_run { None } else { Some(api_key(&args.common)?) };
        #[allow(clippy::disallowed_methods, reason = "config is where the environment is read")]
        let event_path = std::env::var_os("GITHUB_EVENT_PATH").map(PathBuf::from);
        let inputs = if args.inputs.is_empty() && !(args.github.is_empty() && args.github_org.is_empty()) {
            Vec::new()
        } else {
            inputs(&args.inputs, event_path)?
        };
        let default_repo = match &args.repo {
            Some(value) => {
                Some(model::split_full_name(value).ok_or_else(|| ConfigError::Repo { value: value.clone() })?)
            }
            None => None,
        };
        let extra_tags = args.tags.iter().map(|tag| user_tag(tag)).collect::<Result<Vec<_>, _>>()?;
        let metrics =
            Patterns::parse(&args.metrics).map_err(|reason| ConfigError::Patterns { option: "--metrics", reason })?;
        let known = SeriesSpec::metric_names();
        if let Some(unknown) = metrics.unmatched(&known).next() {
            return Err(ConfigError::Patterns {
                option: "--metrics",
                reason: format!("{unknown} matches no metric; the metrics are {}", known.join(", ")),
            });
        }
        let tag_keys =
            Patterns::parse(&args.tag_keys).map_err(|reason| ConfigError::Patterns { option: "--tag-keys", reason })?;
        let prefix = prefix(&args.metric_prefix)?;
        let max_age = parse_duration(&args.max_age)
            .filter(|age| *age <= Duration::from_secs(3600))
            .ok_or_else(|| ConfigError::MaxAge { value: args.max_age.clone() })?;
        let github = github(&args, max_age)?;
        if !(1..=100_000).contains(&args.batch_size) {
            return Err(ConfigError::BatchSize);
        }
        if !(1..=64).contains(&args.concurrency) {
            return Err(ConfigError::Concurrency);
        }
        if args.max_attempts == 0 || args.circuit_breaker == 0 {
            return Err(ConfigError::Attempts);
        }
        let retry = RetryPolicy {
            max_attempts: args.max_attempts,
            deadline: Duration::from_secs(args.retry_deadline),
            base_delay: Duration::from_millis(args.retry_delay_ms.max(1)),
            max_delay: Duration::from_millis(args.retry_max_delay_ms.max(args.retry_delay_ms).max(1)),
            jitter_seed: args.jitter_seed,
        };
        Ok(SendConfig {
            inputs,
            dry_run: args.dry_run,
            dry_run_record: args.dry_run_record,
            ledger: location(&args.common.ledger)?,
            log_dir: args.log_dir,
            endpoint,
            api_key,
            spec: SeriesSpec {
                prefix,
                extra_tags,
                fields: TagFields {
                    sender: args.tag_fields.contains(&TagFieldArg::Sender),
                    sender_type: args.tag_fields.contains(&TagFieldArg::SenderType),
                    pull_request_number: args.tag_fields.contains(&TagFieldArg::PullRequestNumber),
                },
                metrics,
                tag_keys,
            },
            default_repo,
            github,
            jobs: args.jobs || args.steps,
            steps: args.steps,
            distributions: args.distributions,
            max_age,
            historical: args.historical,
            stamp_now: args.stamp_now,
            compression: match args.compression {
                CompressionArg::Zstd => Compression::Zstd,
                CompressionArg::Gzip => Compression::Gzip,
                CompressionArg::Deflate => Compression::Deflate,
            },
            batch_size: args.batch_size,
            output: args.output,
            preview: match args.preview {
                PreviewWhen::Always => true,
                PreviewWhen::Never => false,
                PreviewWhen::Auto => args.output == OutputFormat::Text && std::io::stdout().is_terminal(),
            } && args.dry_run,
            concurrency: args.concurrency,
            retry,
            circuit_breaker: args.circuit_breaker,
            at_most_once: args.at_most_once,
            lock_timeout: Duration::from_secs(args.common.ledger.lock_timeout),
            claim_wait: Duration::from_secs(args.common.ledger.claim_wait),
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
            log_detail: args.log_detail,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        })
    }
}

impl CheckConfig {
    /// # Errors
    /// A bad site or URL, or no API key.
    pub fn from_args(args: CheckArgs) -> Result<CheckConfig, ConfigError> {
        Ok(CheckConfig {
            endpoint: endpoint(&args.common)?,
            api_key: api_key(&args.common)?,
            lock_timeout: Duration::from_secs(args.common.ledger.lock_timeout),
            ledger: location(&args.common.ledger)?,
        })
    }
}

/// Where the ledger is, for the `ledger` subcommands.
///
/// # Errors
/// A `postgres://` URL libpq would not take.
pub fn ledger_location(args: &LedgerLocationArgs) -> Result<(Location, Duration), ConfigError> {
    Ok((location(args)?, Duration::from_secs(args.lock_timeout)))
}

/// A SQLite path, or a PostgreSQL URL whose password comes from the URL, `PGPASSWORD` or the
/// password file (`PGPASSFILE`, else `~/.pgpass`), as libpq has it.
fn location(args: &LedgerLocationArgs) -> Result<Location, ConfigError> {
    if !crate::ledger::postgres::is_url(&args.ledger) {
        return Ok(Location::Sqlite(PathBuf::from(&args.ledger)));
    }
    #[allow(clippy::disallowed_methods, reason = "config is where the environment is read")]
    let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let password = variable("PGPASSWORD");
    let pgpass_path = variable("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| variable("HOME").map(|home| Path::new(&home).join(".pgpass")));
    let pgpass = pgpass_path.and_then(|path| std::fs::read_to_string(path).ok());
    // Shown in errors without what follows `scheme://` up to `@` (user and password).
    let shown = match args.ledger.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.rsplit_once('@').map_or(rest, |(_, host)| host)),
        None => "(a PostgreSQL URL)".to_owned(),
    };
    let target = PgTarget::parse(&args.ledger, password.as_deref(), pgpass.as_deref())
        .map_err(|reason| ConfigError::LedgerUrl { shown, reason })?;
    Ok(Location::Postgres { target: Box::new(target), lease: Duration::from_secs(args.claim_lease.max(1)) })
}

fn endpoint(common: &CommonArgs) -> Result<Endpoint, ConfigError> {
    let base_url = match &common.api_url {
        Some(url) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::ApiUrl { url: url.clone() });
            }
            url.trim_end_matches('/').to_owned()
        }
        None => {
            let site = common.site.trim().trim_start_matches("api.").to_owned();
            if !datadog::SITES.contains(&site.as_str()) {
                return Err(ConfigError::UnknownSite { site: common.site.clone() });
            }
            datadog::site_url(&site)
        }
    };
    if !(1..=600).contains(&common.request_timeout) {
        return Err(ConfigError::Timeout);
    }
    Ok(Endpoint { base_url, request_timeout: Duration::from_secs(common.request_timeout) })
}

fn api_key(common: &CommonArgs) -> Result<ApiKey, ConfigError> {
    if let Some(path) = &common.api_key_file {
        return read_key_file(path);
    }
    #[allow(clippy::disallowed_methods, reason = "config is where the environment is read")]
    let key = std::env::var("DD_API_KEY");
    match key {
        Ok(key) if !key.trim().is_empty() => Ok(ApiKey::new(key.trim().to_owned())),
        _ => Err(ConfigError::MissingApiKey),
    }
}

fn github(args: &SendArgs, max_age: Duration) -> Result<Option<GithubConfig>, ConfigError> {
    if args.github.is_empty() && args.github_org.is_empty() {
        return Ok(None);
    }
    let repos = args
        .github
        .iter()
        .map(|value| model::split_full_name(value).ok_or_else(|| ConfigError::GithubRepo { value: value.clone() }))
        .collect::<Result<Vec<_>, _>>()?;
    #[allow(clippy::disallowed_methods, reason = "config is where the environment is read")]
    let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
    let api_url = match args.github_api_url.clone().or_else(|| variable("GITHUB_API_URL")) {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => url.trim_end_matches('/').to_owned(),
        Some(url) => return Err(ConfigError::GithubApiUrl { url }),
        None => "https://api.github.com".to_owned(),
    };
    let auth = if let (Some(app_id), Some(key_file)) = (&args.github_app_id, &args.github_app_key_file) {
        let pem = std::fs::read(key_file)
            .map_err(|source| ConfigError::GithubAppKeyFile { path: key_file.clone(), source })?;
        let discover = match (args.github_org.first(), repos.first()) {
            (Some(org), _) => format!("orgs/{org}/installation"),
            (None, Some((owner, name))) => format!("repos/{owner}/{name}/installation"),
            (None, None) => String::new(),
        };
        let origin = key_file.display().to_string();
        let app = GithubApp::new(app_id.clone(), &pem, origin, args.github_app_installation, discover)
            .map_err(|error| ConfigError::GithubAppKey { path: key_file.clone(), reason: error.to_string() })?;
        GithubAuth::App(app)
    } else if let Some(token) = variable("GITHUB_TOKEN") {
        GithubAuth::Token(GithubToken::new(token.trim().to_owned(), "GITHUB_TOKEN".into()))
    } else if let Some(token) = variable("GH_TOKEN") {
        GithubAuth::Token(GithubToken::new(token.trim().to_owned(), "GH_TOKEN".into()))
    } else if let Some(path) = &args.github_token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::GithubTokenFile { path: path.clone(), source })?;
        if text.trim().is_empty() {
            return Err(ConfigError::EmptyGithubTokenFile { path: path.clone() });
        }
        GithubAuth::Token(GithubToken::new(text.trim().to_owned(), path.display().to_string()))
    } else {
        return Err(ConfigError::MissingGithubToken);
    };
    let now = chrono::Utc::now().timestamp();
    let start = match &args.since {
        None => now - i64::try_from(max_age.as_secs()).unwrap_or(0),
        Some(value) => since(value, now).ok_or_else(|| ConfigError::Since { value: value.clone() })?,
    };
    let seconds = |flag: &'static str, value: &str| {
        since(value, 0)
            .filter(|back| *back <= 0)
            .map(|back| -back)
            .ok_or(ConfigError::Rescan { flag, value: value.to_owned() })
    };
    let rescan = RescanPolicy {
        window: seconds("--rescan", &args.rescan)?,
        every: seconds("--rescan-every", &args.rescan_every)?,
    };
    let repositories = Repositories {
        named: repos,
        orgs: args.github_org.clone(),
        include: args.github_repos.clone(),
        exclude: args.github_exclude.clone(),
    };
    Ok(Some(GithubConfig {
        repositories,
        api_url,
        auth,
        since: start,
        rescan,
        max_wait: Duration::from_secs(args.github_max_wait),
    }))
}

/// The items `ledger list` or `ledger forget` take: `args`, in `states`, among `keys` (none:
/// any key).
///
/// # Errors
/// A time that is neither a date nor a duration.
pub fn item_filter(
    args: &crate::cli::ItemFilterArgs,
    states: Vec<crate::ledger::KeyState>,
    keys: Vec<String>,
    now: i64,
) -> Result<crate::ledger::inspect::Filter, ConfigError> {
    let time = |option: &'static str, value: &Option<String>| {
        value
            .as_deref()
            .map(|text| since(text, now).ok_or_else(|| ConfigError::Time { option, value: text.to_owned() }))
            .transpose()
    };
    Ok(crate::ledger::inspect::Filter {
        states,
        repository: args.repository.as_ref().map(|repository| repository.to_lowercase()),
        since: time("--since", &args.since)?,
        until: time("--until", &args.until)?,
        keys,
    })
}

/// `--since`: a duration back from `now` (with `d` for days too), or a date.
fn since(value: &str, now: i64) -> Option<i64> {
    let value = value.trim();
    if let Some(days) = value.strip_suffix('d').and_then(|days| days.parse::<i64>().ok()) {
        return days.checked_mul(86_400).map(|seconds| now - seconds);
    }
    if let Some(duration) = parse_duration(value) {
        return i64::try_from(duration.as_secs()).ok().map(|seconds| now - seconds);
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(value) {
        return Some(time.timestamp());
    }
    chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|time| time.and_utc().timestamp())
}

fn read_key_file(path: &Path) -> Result<ApiKey, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::ApiKeyFile { path: path.to_owned(), source })?;
    let key = text.trim();
    if key.is_empty() {
        return Err(ConfigError::EmptyApiKeyFile { path: path.to_owned() });
    }
    Ok(ApiKey::new(key.to_owned()))
}

fn inputs(args: &[String], event_path: Option<PathBuf>) -> Result<Vec<Input>, ConfigError> {
    if args.is_empty() {
        return event_path.map(|path| vec![Input::File(path)]).ok_or(ConfigError::NoInput);
    }
    if args.iter().filter(|arg| *arg == "-").count() > 1 {
        return Err(ConfigError::StdinTwice);
    }
    Ok(args.iter().map(|arg| Input::from_arg(arg)).collect())
}

fn user_tag(value: &str) -> Result<String, ConfigError> {
    let error = || ConfigError::Tag { value: value.to_owned() };
    let (key, rest) = value.split_once(':').ok_or_else(error)?;
    if !key.chars().next().is_some_and(char::is_alphabetic) || rest.is_empty() {
        return Err(error());
    }
    Ok(metrics::normalise_tag(value))
}

fn prefix(value: &str) -> Result<String, ConfigError> {
    let valid = value.len() <= 150
        && value.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !value.ends_with('.');
    if valid {
        Ok(value.to_owned())
    } else {
        Err(ConfigError::Prefix { value: value.to_owned() })
    }
}

/// `90`, `90s`, `45m`, `1h`.
fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

/// Which secrets the environment holds (`workflow-metrics config`): names and whether each is
/// set, never a value.
#[must_use]
pub fn secrets_present() -> Vec<(&'static str, bool)> {
    ["DD_API_KEY", "GITHUB_TOKEN", "GH_TOKEN", "PGPASSWORD"]
        .into_iter()
        .map(|name| {
            #[allow(clippy::disallowed_methods, reason = "config is where the environment is read")]
            let set = std::env::var_os(name).is_some_and(|value| !value.is_empty());
            (name, set)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("45m"), Some(Duration::from_secs(2700)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration("m"), None);
    }

    #[test]
    fn user_tags_and_prefixes() {
        assert_eq!(user_tag("Team:CI Ops").unwrap(), "team:ci_ops");
        assert!(user_tag("nocolon").is_err());
        assert!(user_tag("1a:b").is_err());
        assert!(prefix("github.actions").is_ok());
        assert!(prefix("9x").is_err());
        assert!(prefix("a b").is_err());
    }

    #[test]
    fn since_takes_durations_and_dates() {
        let now = 1_800_000_000;
        assert_eq!(since("30d", now), Some(now - 30 * 86_400));
        assert_eq!(since("6h", now), Some(now - 6 * 3600));
        assert_eq!(since("2026-11-01", now), Some(1_793_491_200));
        assert_eq!(since("2026-11-01T12:00:00+01:00", now), Some(1_793_530_800));
        assert_eq!(since("yesterday", now), None);
    }

    #[test]
    fn inputs_default_to_the_event_path() {
        assert_eq!(inputs(&[], Some("/e.json".into())).unwrap(), [Input::File("/e.json".into())]);
        assert!(matches!(inputs(&[], None), Err(ConfigError::NoInput)));
        assert!(matches!(inputs(&["-".into(), "-".into()], None), Err(ConfigError::StdinTwice)));
    }
}
