//! The configuration file: what a cron host sets once (`workflow-metrics.toml` in the working
//! directory, or `--config PATH`). Its keys are the long options of a command: top-level keys
//! go to every command that has the option (`ledger`, `lock-timeout`, ...), a `[send]`,
//! `[check]` or `[ledger]` table to that command alone. A key becomes the option on the command
//! line unless the command line or the environment set that option already (flags override the
//! environment, which overrides the file), so the file is validated exactly as flags are.
//! Secrets have no option: they come from the environment or their files.
//!
//! ```toml
//! ledger = "postgres://metrics@db.internal/metrics"
//! [send]
//! site = "datadoghq.eu"
//! tag = ["team:platform"]
//! github-org = ["acme"]
//! jobs = true
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use crate::cli::Cli;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_FILE: &str = "workflow-metrics.toml";

/// The commands whose options a file may set, as its tables.
const COMMANDS: [&str; 3] = ["send", "check", "ledger"];

/// The command line with the file's settings added, and what they were.
#[derive(Debug, Default)]
pub struct Applied {
    pub args: Vec<OsString>,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// Option ids (as clap names them) that came from the file.
    pub from_file: Vec<String>,
}

/// Adds the settings of the configuration file to `args` (the process's arguments): the file
/// `--config` names, else [`DEFAULT_FILE`] if there is one. A command line clap cannot parse is
/// given back as it is, for clap to report.
///
/// # Errors
/// The file cannot be read, is not TOML, names an option the command does not have, or gives
/// an option a value it cannot take; the message names the file.
pub fn apply(args: Vec<OsString>) -> Result<Applied, String> {
    let Ok(matches) = Cli::command().try_get_matches_from(&args) else {
        return Ok(Applied { args, ..Applied::default() });
    };
    let Some((command, sub)) = matches.subcommand() else { return Ok(Applied { args, ..Applied::default() }) };
    let named = matches.get_one::<PathBuf>("config").cloned();
    let path = match named {
        Some(path) => path,
        None if Path::new(DEFAULT_FILE).is_file() => PathBuf::from(DEFAULT_FILE),
        None => return Ok(Applied { args, ..Applied::default() }),
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path)
        .map_err(|error| format!("cannot read the configuration file {shown}: {error}"))?;
    let table: toml::Table = text.parse().map_err(|error| format!("{shown} is not valid TOML: {error}"))?;
    if !COMMANDS.contains(&command) {
        return Ok(Applied { args, file: Some(path), from_file: Vec::new() });
    }
    let definition = Cli::command();
    let options = definition.find_subcommand(command).expect("the command was just parsed");
    let mut added: Vec<OsString> = Vec::new();
    let mut from_file = Vec::new();
    let mut settings: Vec<(String, &toml::Value)> = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(inner) if COMMANDS.contains(&key.as_str()) => {
                if key == command {
                    settings.extend(inner.iter().map(|(key, value)| (format!("[{command}] {key}"), value)));
                }
            }
            toml::Value::Table(_) => {
                return Err(format!("{shown}: unknown table [{key}] (tables are [send], [check] and [ledger])"));
            }
            // A top-level key belongs to every command that has it; a key no command has is a
            // mistake wherever it is.
            value => {
                let known = COMMANDS
                    .iter()
                    .any(|name| definition.find_subcommand(name).is_some_and(|sub| long_option(sub, key).is_some()));
                if !known {
                    return Err(format!("{shown}: unknown option {key} (keys are the long options of the commands, as --help lists them)"));
                }
                if long_option(options, key).is_some() {
                    settings.push((key.clone(), value));
                }
            }
        }
    }
    for (place, value) in settings {
        let key = place.rsplit(' ').next().unwrap_or(&place);
        let Some(arg) = long_option(options, key) else {
            return Err(format!("{shown}: {place}: `workflow-metrics {command}` has no option --{key}"));
        };
        let id = arg.get_id().as_str();
        if matches!(explicit_source(sub, id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            value => vec![value],
        };
        for value in values {
            match value {
                toml::Value::Boolean(true) if !takes_value => added.push(format!("--{key}").into()),
                toml::Value::Boolean(false) if !takes_value => {}
                toml::Value::String(text) if takes_value => added.push(format!("--{key}={text}").into()),
                toml::Value::Integer(_) | toml::Value::Float(_) if takes_value => {
                    added.push(format!("--{key}={value}").into());
                }
                _ if takes_value => return Err(format!("{shown}: {place}: give a string or a number")),
                _ => return Err(format!("{shown}: {place}: a switch, give true or false")),
            }
        }
        from_file.push(id.to_owned());
    }
    // Before a `--` that ends the options, if any.
    let mut args = args;
    let at = args.iter().position(|arg| arg == "--").unwrap_or(args.len());
    args.splice(at..at, added);
    if let Err(error) = Cli::command().try_get_matches_from(&args) {
        return Err(format!("{shown}: {}", error.render().to_string().trim_start_matches("error: ").trim_end()));
    }
    Ok(Applied { args, file: Some(path), from_file })
}

/// The argument of `command` whose long option is `key`.
fn long_option<'a>(command: &'a clap::Command, key: &str) -> Option<&'a clap::Arg> {
    command.get_arguments().find(|arg| arg.get_long() == Some(key))
}

/// Where the value of `id` came from in `matches` (or in its nested subcommand, for the
/// `ledger` actions, which share its options).
fn explicit_source(matches: &ArgMatches, id: &str) -> Option<ValueSource> {
    matches
        .try_get_raw(id)
        .ok()
        .flatten()
        .and(matches.value_source(id))
        .or_else(|| matches.subcommand().and_then(|(_, nested)| explicit_source(nested, id)))
}

/// `workflow-metrics config`: the options `command` would run with (`config`: the `--config`
/// given, if any), each with where it came from (the command line, the environment, the file,
/// the default), passwords in URLs redacted, and which secrets the environment holds (never
/// their values).
///
/// # Errors
/// As [`apply`].
pub fn describe(config: Option<&Path>, command: &str, secrets: &[(&str, bool)]) -> Result<String, String> {
    let mut args: Vec<OsString> = vec!["workflow-metrics".into(), command.into()];
    if command == "ledger" {
        args.push("verify".into());
    }
    if let Some(config) = config {
        args.extend(["--config".into(), config.as_os_str().to_owned()]);
    }
    let applied = apply(args)?;
    let mut out = String::new();
    match &applied.file {
        Some(file) => out.push_str(&format!("# configuration file: {}\n", file.display())),
        None => {
            out.push_str(&format!("# configuration file: none ({DEFAULT_FILE} is not here; --config PATH names one)\n"))
        }
    }
    out.push_str(&format!("# the options of `workflow-metrics {command}` and where each came from\n"));
    let matches = Cli::command().try_get_matches_from(&applied.args).map_err(|error| error.to_string())?;
    let sub = matches.subcommand().map(|(_, sub)| sub).expect("a command was given");
    let definition = Cli::command();
    let options = definition.find_subcommand(command).expect("a known command");
    for arg in options.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else { continue };
        if matches!(long, "help" | "version" | "config") {
            continue;
        }
        let Some(values) = sub.try_get_raw(id).ok().flatten() else { continue };
        let values: Vec<String> = values.map(|value| toml_value(&redact(&value.to_string_lossy()))).collect();
        let source = if applied.from_file.iter().any(|from| from == id) {
            "file"
        } else {
            match sub.value_source(id) {
                Some(ValueSource::EnvVariable) => "environment",
                Some(ValueSource::CommandLine) => "command line",
                _ => "default",
            }
        };
        let value = match values.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        out.push_str(&format!("{long} = {value}  # {source}\n"));
    }
    let secrets: Vec<String> =
        secrets.iter().map(|(name, set)| format!("{name} {}", if *set { "set" } else { "unset" })).collect();
    out.push_str(&format!("# secrets (from the environment or their files, never shown): {}\n", secrets.join(", ")));
    Ok(out)
}

fn toml_value(text: &str) -> String {
    if text == "true" || text == "false" || text.parse::<f64>().is_ok() {
        text.to_owned()
    } else {
        toml::Value::String(text.to_owned()).to_string()
    }
}

/// A URL without its password: `postgres://user:secret@host` shows as `postgres://user@host`.
fn redact(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else { return value.to_owned() };
    let Some((credentials, host)) = rest.split_once('@') else { return value.to_owned() };
    let user = credentials.split_once(':').map_or(credentials, |(user, _)| user);
    format!("{scheme}://{user}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact("postgres://metrics:s3cret@db:5432/m?sslmode=require"),
            "postgres://metrics@db:5432/m?sslmode=require"
        );
        assert_eq!(redact("postgres://metrics@db/m"), "postgres://metrics@db/m");
        assert_eq!(redact("cache/metrics.db"), "cache/metrics.db");
    }
}
