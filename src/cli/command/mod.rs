//! Each command's work, one file a command; their flags, and the checks made before any
//! work starts, are in the parent module.

pub(super) mod fields;
pub(super) mod generate;
pub(super) mod ingest;
pub(super) mod kpi;
pub(super) mod produce;
pub(super) mod redrive;
pub(super) mod run;
pub(super) mod setup;
pub(super) mod sql;
