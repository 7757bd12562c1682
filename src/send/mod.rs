//! The `send` command: the pipeline and what stands beside it. `pipeline` decides, `request`
//! does one Datadog request, `summary` counts, `progress` draws, `signals` listens.

mod pipeline;
mod progress;
mod request;
mod signals;
mod summary;

pub use pipeline::send;
pub use summary::Summary;
