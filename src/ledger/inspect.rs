//! `ledger stats`, `ledger list` with filters and `ledger forget`: what operators reach for when
//! the numbers look wrong. Built on the [`Ledger`] trait's paged export (`sent_rows`,
//! `skipped_rows`), so every backend answers the same, with no SQL of its own.

use std::collections::BTreeMap;

use super::{ExportRow, KeyState, Ledger, LedgerError};

/// Rows read per page.
const PAGE: usize = 10_000;

/// Which items: by state, repository (`owner/repo`, as keys spell it, lowercase), time (the
/// point's timestamp for sent items, the completion for the others; unix seconds, `since`
/// included, `until` excluded) and keys. Empty parts choose everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub states: Vec<KeyState>,
    pub repository: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub keys: Vec<String>,
}

/// One item of the ledger, as `ledger list` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Entry {
    pub key: String,
    #[serde(serialize_with = "state_name")]
    pub state: KeyState,
    /// The point's timestamp (sent) or the completion (too old, dead), unix seconds.
    pub time: i64,
    /// When it was sent or recorded, unix milliseconds.
    pub recorded_at: i64,
    /// Datadog's error, for a dead letter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn state_name<S: serde::Serializer>(state: &KeyState, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(match state {
        KeyState::Sent => "sent",
        KeyState::SkippedTooOld => "too_old",
        KeyState::Dead => "dead",
        KeyState::Unknown => "unknown",
    })
}

/// The repository part of a key (`owner/repo` of `owner/repo:123:1` or `owner/repo:job:9`).
#[must_use]
pub fn repository(key: &str) -> &str {
    key.split_once(':').map_or(key, |(repository, _)| repository)
}

impl Filter {
    #[must_use]
    pub fn matches(&self, entry: &Entry) -> bool {
        (self.states.is_empty() || self.states.contains(&entry.state))
            && self.repository.as_deref().is_none_or(|wanted| repository(&entry.key) == wanted)
            && self.since.is_none_or(|since| entry.time >= since)
            && self.until.is_none_or(|until| entry.time < until)
            && (self.keys.is_empty() || self.keys.contains(&entry.key))
    }
}

/// Calls `each` with every item `filter` chooses: sent items in key order, then the others.
///
/// # Errors
/// The ledger cannot be read.
pub async fn each(
    ledger: &mut dyn Ledger,
    filter: &Filter,
    mut each: impl FnMut(Entry) -> Result<(), LedgerError>,
) -> Result<(), LedgerError> {
    let wants = |state| filter.states.is_empty() || filter.states.contains(&state);
    if wants(KeyState::Sent) {
        let mut after: Option<String> = None;
        loop {
            let rows = ledger.sent_rows(after.as_deref(), PAGE).await?;
            let Some(ExportRow::Sent { key, .. }) = rows.last() else { break };
            after = Some(key.clone());
            for row in rows {
                if let Some(entry) = entry(row).filter(|entry| filter.matches(entry)) {
                    each(entry)?;
                }
            }
        }
    }
    if wants(KeyState::SkippedTooOld) || wants(KeyState::Dead) {
        for row in ledger.skipped_rows().await? {
            if let Some(entry) = entry(row).filter(|entry| filter.matches(entry)) {
                each(entry)?;
            }
        }
    }
    Ok(())
}

fn entry(row: ExportRow) -> Option<Entry> {
    match row {
        ExportRow::Sent { key, timestamp, sent_at, .. } => {
            Some(Entry { key, state: KeyState::Sent, time: timestamp, recorded_at: sent_at, detail: None })
        }
        ExportRow::Skipped { key, reason, completed_at, recorded_at, detail } => Some(Entry {
            key,
            state: if reason == "dead" { KeyState::Dead } else { KeyState::SkippedTooOld },
            time: completed_at,
            recorded_at,
            detail,
        }),
        ExportRow::Cursor { .. } => None,
    }
}

/// Counts for one state: how many, and the oldest and newest time among them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub items: u64,
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
}

impl Tally {
    fn add(&mut self, time: i64) {
        self.items += 1;
        self.oldest = Some(self.oldest.map_or(time, |oldest| oldest.min(time)));
        self.newest = Some(self.newest.map_or(time, |newest| newest.max(time)));
    }
}

/// Per state: sent, too old, dead letters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct States {
    pub sent: Tally,
    pub too_old: Tally,
    pub dead: Tally,
}

impl States {
    fn add(&mut self, entry: &Entry) {
        match entry.state {
            KeyState::Sent => self.sent.add(entry.time),
            KeyState::SkippedTooOld => self.too_old.add(entry.time),
            KeyState::Dead | KeyState::Unknown => self.dead.add(entry.time),
        }
    }
}

/// `ledger stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub ledger: String,
    pub schema_version: i64,
    pub total: States,
    pub repositories: BTreeMap<String, States>,
    /// Source cursors by scope (per repository with `--github`).
    pub cursors: BTreeMap<String, String>,
    /// Points other invocations (or this ledger's last ones) hold claims on: PostgreSQL only.
    pub claims: Option<u64>,
    pub size_bytes: Option<u64>,
}

/// Reads the whole ledger once.
///
/// # Errors
/// The ledger cannot be read.
pub async fn stats(ledger: &mut dyn Ledger, now_ms: i64) -> Result<Stats, LedgerError> {
    let mut stats = Stats { ledger: ledger.describe(), schema_version: ledger.schema_version(), ..Stats::default() };
    each(ledger, &Filter::default(), |entry| {
        stats.total.add(&entry);
        stats.repositories.entry(repository(&entry.key).to_owned()).or_default().add(&entry);
        Ok(())
    })
    .await?;
    stats.cursors = ledger.cursors("").await?.into_iter().collect();
    stats.claims = ledger.claims_held(now_ms).await?;
    stats.size_bytes = ledger.size_bytes().await?;
    Ok(stats)
}

/// What `forget` chose: sent items (unmarked) and dead letters (requeued). Items recorded too
/// old are never forgotten: `--historical` or `--stamp-now` send them again as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chosen {
    pub sent: Vec<String>,
    pub dead: Vec<String>,
}

/// The items `forget` would forget.
///
/// # Errors
/// The ledger cannot be read.
pub async fn choose(ledger: &mut dyn Ledger, filter: &Filter) -> Result<Chosen, LedgerError> {
    let mut filter = filter.clone();
    filter.states.retain(|state| matches!(state, KeyState::Sent | KeyState::Dead));
    if filter.states.is_empty() {
        filter.states = vec![KeyState::Sent, KeyState::Dead];
    }
    let mut chosen = Chosen::default();
    each(ledger, &filter, |entry| {
        match entry.state {
            KeyState::Sent => chosen.sent.push(entry.key),
            _ => chosen.dead.push(entry.key),
        }
        Ok(())
    })
    .await?;
    Ok(chosen)
}

/// Forgets `chosen`: the next send sends them again.
///
/// # Errors
/// The ledger cannot be written.
pub async fn forget(ledger: &mut dyn Ledger, chosen: &Chosen) -> Result<(), LedgerError> {
    for page in chosen.sent.chunks(PAGE) {
        let keys: Vec<&str> = page.iter().map(String::as_str).collect();
        ledger.unmark(&keys).await?;
    }
    if !chosen.dead.is_empty() {
        ledger.requeue(Some(&chosen.dead)).await?;
    }
    Ok(())
}
