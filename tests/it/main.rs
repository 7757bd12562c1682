//! Integration tests: the real binary, a real SQLite file in a temp dir, and a strict stand-in for
//! Datadog's intake on 127.0.0.1. One test binary (matklad's "Delete Cargo Integration Tests").

mod cli;
mod github;
mod hostile;
mod reliability;
mod send;
mod shapes;
mod support;
