//! The `ledger stats` text and the `ledger forget` conversation (preview, confirmation): the
//! command-line side of `ledger::inspect`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use chrono::DateTime;

use crate::config::ConfigError;
use crate::error::Error;
use crate::ledger::inspect::{self, Filter, States, Stats, Tally};
use crate::ledger::{self, Location};

/// Keys shown before asking whether to forget them.
const PREVIEW: usize = 20;

fn time(seconds: Option<i64>) -> String {
    seconds
        .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
        .map_or_else(|| "-".to_owned(), |time| time.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

fn size(bytes: Option<u64>) -> String {
    match bytes {
        None => "size unknown".to_owned(),
        Some(bytes) if bytes >= 1 << 20 => format!("{:.1} MB", bytes as f64 / f64::from(1 << 20)),
        Some(bytes) => format!("{:.1} kB", bytes as f64 / 1024.0),
    }
}

/// `ledger stats` for a person: states, repositories, cursors.
#[must_use]
pub fn text(stats: &Stats) -> String {
    let mut out = format!("ledger {} (schema {}, {})\n", stats.ledger, stats.schema_version, size(stats.size_bytes));
    out.push_str(&format!("{:<10} {:>10}  {:<20}  {:<20}\n", "state", "items", "oldest", "newest"));
    let row = |name: &str, tally: &Tally| {
        format!("{name:<10} {:>10}  {:<20}  {:<20}\n", tally.items, time(tally.oldest), time(tally.newest))
    };
    out.push_str(&row("sent", &stats.total.sent));
    out.push_str(&row("too old", &stats.total.too_old));
    out.push_str(&row("dead", &stats.total.dead));
    if let Some(claims) = stats.claims {
        out.push_str(&format!("{:<10} {claims:>10}  (points under a live lease)\n", "claimed"));
    }
    out.push_str(&format!("\nrepositories ({}):\n", stats.repositories.len()));
    let width = stats.repositories.keys().map(String::len).max().unwrap_or(0);
    for (repository, states) in &stats.repositories {
        let States { sent, too_old, dead } = states;
        out.push_str(&format!(
            "  {repository:<width$}  sent {:>8}  too old {:>6}  dead {:>4}  newest {}\n",
            sent.items,
            too_old.items,
            dead.items,
            time([sent.newest, too_old.newest, dead.newest].into_iter().flatten().max())
        ));
    }
    out.push_str(&format!("\ncursors ({}):\n", stats.cursors.len()));
    for (scope, cursor) in &stats.cursors {
        out.push_str(&format!("  {scope}  {cursor}\n"));
    }
    out.trim_end().to_owned()
}

/// `ledger forget`: chooses, shows, asks (unless `yes`), forgets. The closing line, and the
/// keys (one per line) for stdout.
///
/// # Errors
/// The ledger cannot be opened, read or written; no terminal to ask and no `--yes`.
pub async fn forget(
    location: &Location,
    lock_timeout: Duration,
    filter: &Filter,
    dry_run: bool,
    yes: bool,
) -> Result<(String, Option<String>), Error> {
    // A preview only reads; forgetting takes the ledger as a send does (SQLite: its lock).
    let mut ledger = if dry_run {
        match ledger::open_read_only(location).await? {
            Some(ledger) => ledger,
            None => return Err(Error::Ledger(ledger::LedgerError::Missing { path: location.to_string() })),
        }
    } else {
        ledger::open(location, lock_timeout).await?
    };
    let chosen = inspect::choose(ledger.as_mut(), filter).await?;
    let (sent, dead) = (chosen.sent.len(), chosen.dead.len());
    let keys: Vec<&str> = chosen.sent.iter().chain(&chosen.dead).map(String::as_str).collect();
    let listed = Some(keys.join("\n")).filter(|keys| !keys.is_empty());
    if keys.is_empty() {
        return Ok((format!("nothing to forget in {location}: no sent item or dead letter matches"), None));
    }
    if dry_run {
        return Ok((
            format!("dry run: would forget {sent} sent item(s) and {dead} dead letter(s) in {location}"),
            listed,
        ));
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::Config(ConfigError::Refused(format!(
                "ledger forget would forget {sent} sent item(s) and {dead} dead letter(s): pass --yes (stdin is not a terminal to ask), or --dry-run to list them"
            ))));
        }
        let mut stderr = std::io::stderr().lock();
        for key in keys.iter().take(PREVIEW) {
            let _ = writeln!(stderr, "  {key}");
        }
        if keys.len() > PREVIEW {
            let _ = writeln!(stderr, "  ... and {} more", keys.len() - PREVIEW);
        }
        let _ = write!(
            stderr,
            "forget {sent} sent item(s) and {dead} dead letter(s) in {location}, to send them again? [y/N] "
        );
        let _ = stderr.flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer).map_err(Error::Output)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(("nothing forgotten".to_owned(), None));
        }
    }
    inspect::forget(ledger.as_mut(), &chosen).await?;
    Ok((
        format!("forgot {sent} sent item(s) and {dead} dead letter(s) in {location}: the next send sends them again"),
        listed,
    ))
}
