//! Look-ups ahead of the pipeline, on a ledger with a sibling (PostgreSQL: another connection):
//! each chunk of items is looked up in the ledger on its way from the reader, so the pipeline
//! finds its keys' states waiting instead of asking for them in turn. Only where the pipeline
//! looks items up again once it holds their points (`claims.rs`): an item sent after this
//! look-up is found then, and not sent twice.

use foldhash::HashMap as FastMap;
use tokio::sync::mpsc;

use crate::ledger::{KeyState, Ledger};
use crate::model::{Item, Validated};
use crate::source::Message;

/// What comes from the reader: its messages, and chunks whose keys were looked up on the way.
pub(super) enum Incoming {
    Message(Message),
    /// Records and the states of their keys the ledger knows (the others are unknown to it).
    LookedUp(Vec<Validated>, FastMap<Box<str>, KeyState>),
}

/// Which items the pipeline makes of records: jobs with `--jobs`, their steps with `--steps`.
#[derive(Clone, Copy)]
pub(super) struct Requested {
    pub jobs: bool,
    pub steps: bool,
}

/// Passes the reader's messages on in order, looking up each chunk's keys on `ledger` when
/// there is one, from the chunk after the first `inline` (left to the pipeline: a short input
/// never opens the sibling's connection). A look-up that fails leaves the chunk to the
/// pipeline's own.
pub(super) fn spawn(
    ledger: Option<Box<dyn Ledger>>,
    requested: Requested,
    inline: usize,
    mut from: mpsc::Receiver<Message>,
) -> mpsc::Receiver<Incoming> {
    let (to, receiver) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut ledger = ledger;
        let mut chunks = 0;
        loop {
            let message = tokio::select! {
                message = from.recv() => message,
                // The pipeline stopped reading: so does this, and the reader after it.
                () = to.closed() => None,
            };
            let Some(message) = message else { break };
            let incoming = match (message, ledger.as_mut()) {
                (Message::Items(records), Some(ledger)) if chunks >= inline => {
                    look_up(ledger.as_mut(), requested, records).await
                }
                (Message::Items(records), _) => {
                    chunks += 1;
                    Incoming::Message(Message::Items(records))
                }
                (message, _) => Incoming::Message(message),
            };
            if to.send(incoming).await.is_err() {
                break;
            }
        }
    });
    receiver
}

async fn look_up(ledger: &mut dyn Ledger, requested: Requested, records: Vec<Validated>) -> Incoming {
    let mut keys: Vec<&str> = Vec::with_capacity(records.len());
    for record in &records {
        if let Validated::Completed(item) = record {
            requested_keys(item, requested, &mut keys);
        }
    }
    let known = match ledger.states_ahead(&keys).await {
        Ok(states) => keys
            .iter()
            .zip(states)
            .filter(|(_, state)| *state != KeyState::Unknown)
            .map(|(key, state)| (Box::from(*key), state))
            .collect(),
        Err(error) => {
            tracing::debug!(error = %crate::error_chain(&error), "look-up ahead failed; the pipeline looks up");
            drop(keys);
            return Incoming::Message(Message::Items(records));
        }
    };
    drop(keys);
    Incoming::LookedUp(records, known)
}

/// The keys of the items a record becomes (as `Pipeline::requested` makes them).
fn requested_keys<'a>(item: &'a Item, requested: Requested, into: &mut Vec<&'a str>) {
    match item {
        Item::Job(job) if !requested.jobs => {}
        Item::Job(job) => {
            into.push(&job.key);
            if requested.steps {
                into.extend(job.steps.iter().map(|step| step.key.as_str()));
            }
        }
        item => into.push(item.key()),
    }
}
