//! tripflow: ride-hailing trip events into a consistent trip table and nightly KPI reports.
//!
//! # Layout
//!
//! The modules follow the pipeline, left to right:
//!
//! ```text
//!  CSV files ──produce──▶ stream ──ingest──▶ store ──kpi──▶ kpi_output/date=…/kpi.json
//! ```
//!
//! - [`produce`]: CSV rows (or captured NDJSON records) become JSON events, interleaved by
//!   event time, and are put on a stream with the trip id as partition key.
//! - [`stream`]: the [`stream::StreamSink`], [`stream::StreamSource`] and
//!   [`stream::CheckpointStore`] traits; `stream::embedded` keeps shards in SQLite.
//! - [`ingest`]: micro-batches records, decodes them into Arrow, validates whole columns,
//!   coalesces a trip's events, merges them into the store, dead-letters the rest and only
//!   then moves the checkpoints.
//! - [`store`]: the [`store::TripStore`] trait and its conditional merge; `store::sqlite`
//!   is the embedded trip table.
//! - [`deadletter`]: where rejected records go, with every reason.
//! - [`kpi`]: exports the table to Arrow and runs `queries/*.sql` with DataFusion;
//!   [`sql`] asks ad-hoc SQL of its outputs; [`tables`] holds what the two share;
//!   [`report`] draws `kpi_output/report.html` from the KPI files.
//! - [`lambda`]: the ingest and KPI stages as AWS Lambda functions (`tripflow-lambda`).
//! - [`synthetic`]: deterministic synthetic input shaped like the real exports.
//! - [`event`]: event kinds, field names and the Arrow schemas shared by all stages;
//!   [`decimal`] and [`timestamp`]: exact, fast text ↔ Arrow values, for validation,
//!   the store and export ([`cast`] holds what the two share).
//! - [`config`]: checked settings shared by the commands, with backends chosen by URL
//!   through one parser, [`location`]; [`pipeline`] chains the stages for `tripflow run`;
//!   [`progress`] is what long work tells a watcher (the command line's bars), and
//!   [`telemetry`] the live metrics of ingest (Prometheus, or CloudWatch EMF on Lambda).
#![warn(missing_docs)]

pub mod aws;
pub mod cast;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod decimal;
pub mod error;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod kpi;
pub mod lambda;
pub mod location;
pub mod memory;
pub mod pipeline;
pub mod produce;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod sql;
mod sqlite;
pub mod store;
pub mod stream;
pub mod synthetic;
pub mod tables;
pub mod telemetry;
pub mod timestamp;

pub use error::{Error, Result};
