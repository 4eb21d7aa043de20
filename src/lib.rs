//! tripflow: ride-hailing trip events into a consistent trip table and nightly KPI reports.
//!
//! # Layout
//!
//! The stages, left to right, each in one folder, over a few shared layers:
//!
//! ```text
//!  CSV files ──produce──▶ stream ──ingest──▶ store ──kpi──▶ kpi_output/date=…/kpi.json
//! ```
//!
//! - [`produce`]: CSV rows (or captured NDJSON records) become JSON events, interleaved by
//!   event time, and are put on a stream with the trip id as partition key;
//!   `produce::synthetic` makes deterministic input shaped like the real exports.
//! - [`stream`]: the [`stream::StreamSink`], [`stream::StreamSource`] and
//!   [`stream::CheckpointStore`] traits; `stream::embedded` keeps shards in a segment log
//!   per shard, `stream::kinesis` on Kinesis.
//! - [`ingest`]: micro-batches records, decodes them into Arrow, validates whole columns,
//!   coalesces a trip's events, merges them into the store, dead-letters the rest
//!   (`ingest::deadletter`) and only then moves the checkpoints.
//! - [`store`]: the [`store::TripStore`] trait and its conditional merge; `store::lsm`
//!   is the embedded trip table, `store::dynamodb` the table on DynamoDB;
//!   `store::ledger` counts the fields events carry that no field names, and
//!   `store::capacity` the DynamoDB capacity units the requests consume.
//! - [`kpi`]: exports the table to Arrow and runs `queries/*.sql` with DataFusion;
//!   `kpi::report` draws `kpi_output/report.html`, `kpi::schedule` runs the job on a
//!   cron, `kpi::sql` asks ad-hoc SQL of its outputs, and `kpi::live` keeps the KPIs
//!   live as ingest merges and certifies them against the nightly run.
//! - [`lambda`]: the ingest and KPI stages as AWS Lambda functions (`tripflow-lambda`);
//!   [`pipeline`] chains the stages for `tripflow run`; [`cli`] is the command line, whose
//!   flags become each command's checked settings once (`cli::settings`).
//!
//! The shared layers: [`model`] (event kinds, the registry of the trip's fields
//! `model::event::FIELDS` and those a fields file declares beside them
//! (`model::declared`), the undeclared fields an event carries (`model::extra`), Arrow
//! schemas, the rules that type a field's text, exact decimals and datetimes), [`backend`] (AWS
//! clients and their retry budget, and the places each backend flag takes), [`observe`] (progress, metrics,
//! memory), [`config`] (the backends' URLs, each embedded one with its home, and their
//! openers) and [`error`].
#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod kpi;
pub mod lambda;
pub mod model;
pub mod observe;
pub mod pipeline;
pub mod produce;
pub mod store;
pub mod stream;

pub use error::{Error, Result};
