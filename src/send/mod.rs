//! The `send` command: the pipeline and what stands beside it. `pipeline` decides, `request`
//! does one Datadog request, `summary` counts, `progress` draws, `signals` listens.

mod checkpoints;
mod pending;
mod pipeline;
mod preview;
mod progress;
mod request;
mod signals;
mod summary;

pub use pipeline::{send, send_from};
pub use preview::Preview;
pub use summary::Summary;

#[cfg(test)]
mod tests;
