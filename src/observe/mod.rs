//! Watching the pipeline work: what long work tells a watcher ([`progress`], drawn as
//! the command line's bars), the live metrics of ingest ([`telemetry`]: Prometheus, or
//! CloudWatch EMF on Lambda), and handing freed memory back ([`memory`]); the
//! counts they report are [`IngestCounts`].

mod counts;
pub mod memory;
pub mod progress;
pub mod telemetry;

pub use counts::{IngestCounts, units};
