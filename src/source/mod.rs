//! Where items come from. A [`Source`] yields validated items (and, where it reads a whole input,
//! the failure that cut it short); `file` reads files and standard input. A source that can tell
//! "everything before this point has been yielded" (the GitHub fetch, later) says so with a
//! [`SourceEvent::Checkpoint`], so that its cursor is saved only after all items before it are
//! settled in the ledger.
//!
//! Sources run on their own thread ([`spawn_reader`]): reading and validation are pure work that
//! costs as much as the rest of the pipeline, so they run beside it, handing over bounded chunks.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::model::{Quota, Validated};

pub mod file;
pub mod github;

pub use file::{FileSource, SourceError, Stop};

/// Where the records come from: a file or standard input (`-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
    /// A response body (a page of GitHub's API), named for messages.
    Remote(String),
}

impl Input {
    pub fn from_arg(arg: &str) -> Input {
        if arg == "-" {
            Input::Stdin
        } else {
            Input::File(PathBuf::from(arg))
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Stdin => f.write_str("<stdin>"),
            Input::File(path) => write!(f, "{}", path.display()),
            Input::Remote(name) => f.write_str(name),
        }
    }
}

/// What a source hands over.
#[derive(Debug)]
pub enum SourceEvent {
    /// One record, validated (or why it is not an item).
    Item(Validated),
    /// An input could not be read to its end; what it yielded before stays yielded.
    InputFailed { input: String, message: String },
    /// A remote source could not be reached or would not answer (after its retries): what it
    /// did not yield is fetched by a later invocation.
    Unavailable { input: String, message: String },
    /// The source cannot work as configured (a rejected token): the invocation stops.
    Fatal { input: String, message: String },
    /// A line for the run log (a request the source made).
    Log(String),
    /// What a remote source spent, once, at its end.
    Usage(SourceUsage),
    /// Everything of `scope` up to `cursor` has been yielded: once all items before this event
    /// are settled (sent, recorded as skipped, or dead-lettered), the ledger may keep the cursor.
    Checkpoint(Checkpoint),
}

/// Locks on cursor scopes (one repository each) held for the rest of an invocation, so that
/// invocations sharing a ledger never work on one scope at the same moment (a repository polled
/// twice spends quota twice). Given by the ledger; the source knows nothing more of it.
pub trait ScopeLocks: Send {
    /// Takes the lock of `scope` without waiting: false when another invocation holds it. Errors
    /// are the lock's to report (as a log line) and count as held elsewhere.
    fn try_lock(&mut self, scope: &str) -> Result<bool, String>;
}

/// Requests a remote source made, and the quota its service said is left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceUsage {
    pub requests: u64,
    /// Answered `304 Not Modified` (free of quota).
    pub not_modified: u64,
    pub quota: Option<Quota>,
}

/// A position a source can resume from (for instance a repository's newest run seen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub scope: String,
    pub cursor: String,
}

/// A producer of items. It runs to its end on the reader thread, handing each event to `emit`,
/// and returns early when `emit` answers [`Stop`] (the pipeline has gone).
pub trait Source: Send {
    /// What it reads, for the run log's header.
    fn describe(&self) -> Vec<String>;
    /// Bytes it will read, if known (the progress bar's ETA).
    fn size(&self) -> Option<u64>;
    /// The prefix of the cursor scopes it keeps (none for files).
    fn scope_prefix(&self) -> Option<String> {
        None
    }
    /// The cursors the ledger kept under [`Source::scope_prefix`], before [`Source::run`].
    fn resume(&mut self, cursors: HashMap<String, String>) {
        let _ = cursors;
    }
    /// A ledger many invocations share lends its scope locks, before [`Source::run`]: the
    /// source works on a scope only while it holds the scope's lock.
    fn share_scopes(&mut self, locks: Box<dyn ScopeLocks>) {
        let _ = locks;
    }
    fn run(&mut self, bytes_read: &AtomicU64, emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>);
}

/// Items handed from the reader thread at a time.
pub const CHUNK: usize = 1024;

/// What the reader thread sends the pipeline.
pub enum Message {
    /// Validated records, up to [`CHUNK`] of them.
    Items(Vec<Validated>),
    InputFailed {
        input: String,
        message: String,
    },
    Unavailable {
        input: String,
        message: String,
    },
    Fatal {
        input: String,
        message: String,
    },
    Log(String),
    Usage(SourceUsage),
    Checkpoint(Checkpoint),
}

/// Runs `sources` one after the other on a thread of their own, sending chunks of items through
/// `sender` (bounded: a slow pipeline holds the reader back). Dropping the receiver stops it.
pub fn spawn_reader(
    mut sources: Vec<Box<dyn Source>>,
    bytes_read: Arc<AtomicU64>,
    sender: mpsc::Sender<Message>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = Vec::with_capacity(CHUNK);
        for source in &mut sources {
            let mut emit = |event: SourceEvent| -> Result<(), Stop> {
                let message = match event {
                    SourceEvent::Item(item) => {
                        chunk.push(item);
                        if chunk.len() < CHUNK {
                            return Ok(());
                        }
                        Message::Items(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))
                    }
                    // Items before a failure or a checkpoint go first, in order.
                    SourceEvent::InputFailed { input, message } => {
                        flush(&mut chunk, &sender)?;
                        Message::InputFailed { input, message }
                    }
                    SourceEvent::Unavailable { input, message } => {
                        flush(&mut chunk, &sender)?;
                        Message::Unavailable { input, message }
                    }
                    SourceEvent::Fatal { input, message } => {
                        flush(&mut chunk, &sender)?;
                        Message::Fatal { input, message }
                    }
                    SourceEvent::Log(line) => Message::Log(line),
                    SourceEvent::Usage(usage) => Message::Usage(usage),
                    SourceEvent::Checkpoint(checkpoint) => {
                        flush(&mut chunk, &sender)?;
                        Message::Checkpoint(checkpoint)
                    }
                };
                sender.blocking_send(message).map_err(|_| Stop)
            };
            source.run(&bytes_read, &mut emit);
        }
        let _ = flush(&mut chunk, &sender);
    })
}

fn flush(chunk: &mut Vec<Validated>, sender: &mpsc::Sender<Message>) -> Result<(), Stop> {
    if chunk.is_empty() {
        return Ok(());
    }
    let full = std::mem::replace(chunk, Vec::with_capacity(CHUNK));
    sender.blocking_send(Message::Items(full)).map_err(|_| Stop)
}
