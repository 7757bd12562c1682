//! SIGINT and SIGTERM: the first stops new requests and lets those in flight finish within
//! `--shutdown-grace`; the second exits at once.

use tokio::sync::watch;

/// Turns `Some(exit code)` at the first signal; requests and retries watch it.
pub type Shutdown = watch::Receiver<Option<i32>>;

/// The first SIGINT/SIGTERM sets the watched value to the exit code (130/143); a second one ends
/// the process at once. That is safe: runs are marked only after a 2xx, so nothing is lost, and
/// the ledger lock of a dead process is released by the kernel.
pub fn listen() -> Shutdown {
    let (sender, receiver) = watch::channel(None);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            return;
        };
        let first = tokio::select! {
            _ = interrupt.recv() => 130,
            _ = terminate.recv() => 143,
        };
        let _ = sender.send(Some(first));
        let second = tokio::select! {
            _ = interrupt.recv() => 130,
            _ = terminate.recv() => 143,
        };
        eprintln!("workflow-metrics: second signal, exiting now; unconfirmed runs stay unmarked");
        // The one exit outside `main`: a second signal means "now", whatever is in flight.
        std::process::exit(second);
    });
    receiver
}
