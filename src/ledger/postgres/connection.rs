//! Connections to the ledger's database: the one the ledger works on (and when a failed
//! statement is tried again), the one that holds
//! source scope locks, TLS, and which errors mean the connection was lost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{Conn, PgLedger, PgTarget};
use crate::ledger::LedgerError;

/// The ledger's own connection, and what a failed statement means for it (`with_conn!`).
impl PgLedger {
    pub(super) async fn connect(&self) -> Result<Conn, tokio_postgres::Error> {
        // Look-ups by key never scan a whole table: a plan made while the ledger was nearly
        // empty (or with statistics that lag a backfill) joined `sent_metrics` by sequential
        // scans once it held a million rows (look-ups of sent points took 20 s instead of 1).
        // Statements with no index to use (a few, once per invocation) still scan, and JIT is
        // off: the penalty that steers plans from scans would make such a statement look
        // costly enough to compile (130 ms for the one-row schema table), and no statement here
        // is long enough to gain from it. A statement, not the startup packet's `options`:
        // PgBouncer refuses that parameter unless told to ignore it. (Forcing generic plans
        // saved a cron pass 1.5 ms of planning `= ANY($1)` over a thousand keys, and cost a
        // backfill 0.5 s of server CPU.)
        let client = connect(&self.target.config).await?;
        client.batch_execute("SET enable_seqscan = off; SET jit = off").await?;
        Ok(Conn { client, statements: HashMap::new() })
    }

    /// After `error`: whether to try again (the connection was lost and the deadline is not
    /// past: the connection is dropped and the wait slept), or the error that stands.
    pub(super) async fn retry_after(
        &mut self,
        error: tokio_postgres::Error,
        started: Instant,
        wait: &mut Duration,
        action: &'static str,
    ) -> Result<(), LedgerError> {
        // Refused credentials or a missing database stand at once; a lost connection is retried,
        // and so is a transaction the server aborted to break a deadlock or a serialisation
        // conflict with another invocation (every write here is idempotent).
        let conflict = error.as_db_error().is_some_and(|db| matches!(db.code().code(), "40P01" | "40001"));
        let lost = is_connection_error(&error) || self.conn.as_ref().is_some_and(|conn| conn.client.is_closed());
        if !(lost || conflict) || started.elapsed() + *wait > self.reconnect_deadline {
            return Err(self.error(action, error));
        }
        if conflict {
            tracing::debug!(ledger = %self.target, action, "a conflict with another invocation; trying again");
            tokio::time::sleep(Duration::from_millis(fastrand::u64(5..50))).await;
            return Ok(());
        }
        tracing::warn!(ledger = %self.target, error = %crate::error::error_chain(&error), "the ledger's database is unreachable; retrying");
        self.conn = None;
        tokio::time::sleep(*wait).await;
        *wait = (*wait * 2).min(Duration::from_secs(5));
        Ok(())
    }

    pub(super) fn error(&self, action: &'static str, source: tokio_postgres::Error) -> LedgerError {
        LedgerError::Query { path: self.target.to_string(), action, source: Box::new(source) }
    }
}

/// A connection to `target`, its driver spawned on the current runtime.
pub(super) async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move { drop(connection.await) });
        Ok(client)
    } else {
        let (client, connection) = config.connect(tls()).await?;
        tokio::spawn(async move { drop(connection.await) });
        Ok(client)
    }
}

/// Locks on source scopes (`pg_try_advisory_lock`), held by a connection of their own until the
/// invocation ends (the ledger keeps it, so the locks outlive the reading of the sources until
/// their cursors are saved): the server releases them when that connection closes, however the
/// process ends (kill -9 included), so no lease is needed. Used from the reader thread, which is
/// not in a runtime: each call drives the connection on a runtime of its own.
#[derive(Clone)]
pub(super) struct PgScopeLocks {
    target: PgTarget,
    held: std::sync::Arc<std::sync::Mutex<LockConnection>>,
}

/// The scope locks' connection and the runtime that drives it.
#[derive(Default)]
struct LockConnection {
    client: Option<Client>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for LockConnection {
    fn drop(&mut self) {
        // Closing the connection releases the locks; the runtime may be dropped from async code.
        self.client = None;
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgScopeLocks {
    /// Locks on `target`, connected at the first lock taken.
    pub(super) fn new(target: &PgTarget) -> PgScopeLocks {
        PgScopeLocks { target: target.clone(), held: std::sync::Arc::default() }
    }
}

impl crate::source::ScopeLocks for PgScopeLocks {
    fn try_lock(&mut self, scope: &str) -> Result<bool, String> {
        let describe = |error: tokio_postgres::Error| crate::error::error_chain(&error);
        let mut held = self.held.lock().map_err(|_| "the scope locks were poisoned".to_owned())?;
        if held.client.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            held.client = Some(runtime.block_on(connect(&self.target.config)).map_err(describe)?);
            held.runtime = Some(runtime);
        }
        let (Some(runtime), Some(client)) = (held.runtime.as_ref(), held.client.as_ref()) else {
            unreachable!("connected above")
        };
        let key = format!("workflow-metrics scope {scope}");
        runtime
            .block_on(client.query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&key]))
            .map(|row| row.get(0))
            .map_err(describe)
    }
}

/// The TLS connector for `sslmode=prefer|require`: rustls with the Mozilla roots.
fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// Whether `error` is about the connection (gone, refused, reset) rather than the statement.
pub(super) fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(db) = error.as_db_error() {
        // Class 08: connection exceptions; 57P01-57P03: the server shutting down or starting.
        let code = db.code().code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    // No server error: an I/O error on the socket.
    std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
}
