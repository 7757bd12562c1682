//! The progress bar on stderr, drawn only when stderr is a terminal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Summary;

/// The progress bar on stderr: input bytes read (with ETA when the inputs are files), runs read,
/// sent and skipped, and the rate. Hidden unless stderr is a terminal, so cron and CI see only the
/// closing summary.
pub struct Progress {
    bar: ProgressBar,
    /// Input bytes read so far, added to by the reader thread.
    pub bytes_read: Arc<AtomicU64>,
    started: Instant,
    last_drawn: Instant,
}

impl Progress {
    /// `draw`: stderr is a terminal; `total_bytes`: what the sources will read, if known.
    pub fn new(draw: bool, total_bytes: Option<u64>) -> Progress {
        let bar = if !draw {
            ProgressBar::hidden()
        } else if let Some(total) = total_bytes {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg} ETA {eta}")
                    .expect("the template is valid"),
            );
            bar
        } else {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{spinner} {bytes} {msg}").expect("the template is valid"));
            bar
        };
        let now = Instant::now();
        Progress { bar, bytes_read: Arc::new(AtomicU64::new(0)), started: now, last_drawn: now }
    }

    pub fn update(&mut self, summary: &Summary) {
        if self.bar.is_hidden() || self.last_drawn.elapsed() < std::time::Duration::from_millis(100) {
            return;
        }
        self.last_drawn = Instant::now();
        self.bar.set_position(self.bytes_read.load(Ordering::Relaxed));
        let skipped = summary.already_sent
            + summary.not_completed
            + summary.duplicates
            + summary.too_old
            + summary.too_old_before
            + summary.dead_before;
        let rate = summary.records as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let sent = if summary.dry_run { summary.would_send } else { summary.sent };
        self.bar.set_message(format!(
            "read {} · sent {sent} · skipped {skipped} · failed {} · {rate:.0} runs/s",
            summary.records, summary.failed
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
