//! What the KPI job ([`crate::kpi`]) and ad-hoc SQL ([`crate::kpi::sql`]) share about the
//! tables they query: the read-only options both plan with, and the columns of the
//! Parquet snapshots the one writes and the other reads. Both depend on this module,
//! not on each other.

use datafusion::execution::context::SQLOptions;

use crate::model::event::TRIP_SCHEMA;

/// Options that let only queries through: no DDL, no DML, no `SET` or other statements.
pub fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// The columns of [`TRIP_SCHEMA`] a snapshot file holds: all but `trip_date`, which its
/// path carries (`snapshots/trip_date=YYYY-MM-DD/trips.parquet`).
pub fn snapshot_columns() -> Vec<usize> {
    let date_col = TRIP_SCHEMA.index_of("trip_date").expect("trip table has trip_date");
    (0..TRIP_SCHEMA.fields().len()).filter(|&i| i != date_col).collect()
}
