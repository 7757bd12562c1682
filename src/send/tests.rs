//! The pipeline with sources that send checkpoints (the file source sends none).

use std::sync::atomic::AtomicU64;

use chrono::Utc;
use clap::Parser;

use super::{send_from, Summary};
use crate::cli::{Cli, Command};
use crate::config::SendConfig;
use crate::ledger::{Ledger, SqliteLedger};
use crate::model::testing::{completed, raw, with};
use crate::model::{validate_run, Scalar};
use crate::runlog::RunLog;
use crate::source::{Checkpoint, Source, SourceEvent, Stop};

/// Hands over the events it was given, in order.
struct Script(Vec<SourceEvent>);

impl Source for Script {
    fn describe(&self) -> Vec<String> {
        vec!["script".into()]
    }

    fn size(&self) -> Option<u64> {
        None
    }

    fn run(&mut self, _: &AtomicU64, emit: &mut dyn FnMut(SourceEvent) -> Result<(), Stop>) {
        for event in self.0.drain(..) {
            if emit(event).is_err() {
                return;
            }
        }
    }
}

fn run(id: u64) -> SourceEvent {
    SourceEvent::Item(validate_run(&raw(&with(completed(), "id", Scalar::UInt(id))), None))
}

fn checkpoint(cursor: &str) -> SourceEvent {
    SourceEvent::Checkpoint(Checkpoint { scope: "octo-org/repo".into(), cursor: cursor.into() })
}

async fn send_script(dir: &std::path::Path, args: &[&str], events: Vec<SourceEvent>) -> Summary {
    let ledger = dir.join("ledger.db");
    let log_dir = dir.join("log");
    let mut argv = vec!["workflow-metrics", "send", "--historical", "--ledger", ledger.to_str().unwrap()];
    argv.extend(["--log-dir", log_dir.to_str().unwrap(), "--retry-delay-ms", "1", "--max-attempts", "1"]);
    argv.extend(args);
    argv.push("never-read.json");
    let Command::Send(args) = Cli::try_parse_from(argv).unwrap().command else { unreachable!() };
    let config = SendConfig::from_args(args).unwrap();
    let mut log = RunLog::create(&config.log_dir, Utc::now()).unwrap();
    send_from(&config, &mut log, vec![Box::new(Script(events))]).await.unwrap()
}

#[tokio::test]
async fn a_dry_run_keeps_the_cursor_of_every_settled_checkpoint_in_its_own_record() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.db");
    let events = vec![checkpoint("0"), run(1), run(2), checkpoint("2"), run(3), checkpoint("3")];
    let summary = send_script(dir.path(), &["--dry-run", "--dry-run-record", record.to_str().unwrap()], events).await;
    assert_eq!(summary.would_send, 3);
    let mut record = SqliteLedger::open(&record, std::time::Duration::ZERO).unwrap();
    assert_eq!(record.cursor("octo-org/repo").await.unwrap().as_deref(), Some("3"));
    assert!(!dir.path().join("ledger.db").exists(), "a dry run wrote the real ledger");
}

#[tokio::test]
async fn a_cursor_never_moves_past_an_item_that_was_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "test-key").unwrap();
    // Nothing listens on port 1: the request fails, its run stays unsent.
    let args = ["--api-key-file", key.to_str().unwrap(), "--api-url", "http://127.0.0.1:1"];
    let summary = send_script(dir.path(), &args, vec![checkpoint("0"), run(1), checkpoint("1")]).await;
    assert_eq!((summary.sent, summary.failed), (0, 1));
    let mut ledger = SqliteLedger::open(&dir.path().join("ledger.db"), std::time::Duration::ZERO).unwrap();
    assert_eq!(ledger.cursor("octo-org/repo").await.unwrap().as_deref(), Some("0"));
}
