//! Integration tests: the real binary, a real ledger (a SQLite file in a temp dir, or a fresh
//! database on a real PostgreSQL server with `WORKFLOW_METRICS_TEST_LEDGER=postgres`: the suite
//! runs against both), and a strict stand-in for Datadog's intake on 127.0.0.1. One test binary
//! (matklad's "Delete Cargo Integration Tests").

mod action;
mod cli;
mod cost;
mod dashboard;
mod github;
mod hostile;
mod int128;
mod ledger_ops;
mod reliability;
mod send;
mod shapes;
mod shared;
mod shell;
mod support;
