//! The embedded trip table: SQLite at `<home>/trips.sqlite`.
//!
//! Each batch is one IMMEDIATE transaction. For every trip it reads the stored versions,
//! decides which groups are newer, and writes them with one upsert whose SET clauses
//! repeat the same condition column by column, the way a DynamoDB conditional update
//! would. `trip_date`, `trip_completed` and `last_updated` are generated columns, so
//! they can never disagree with the groups; a partial index on `trip_date` serves
//! date-filtered exports like the sparse index of the DynamoDB backend. A batch visits
//! its trips in key order, so a merge walks the `trip_id` index once instead of at
//! random. (A WITHOUT ROWID table clustered on `trip_id` was tried and measured slower:
//! 1M-trip ingest 160 s against 94 s, as random keys then scatter whole rows.)

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use chrono::NaiveDate;
use rusqlite::types::ValueRef;
use rusqlite::{OptionalExtension, Row, params_from_iter};

use super::ledger::{self, SeenField, ShardLedger, Sighting};
use super::{
    Cell, ChangedDate, CompactString, EndGroup, ExportBuilder, MergeOutcome, Projection, STORED_COLUMNS, StartGroup,
    ToCompactString, TripItem, TripStore, TripUpdate, date_of, is_newer, marked_date, next_mark, touched_dates,
};
use crate::backend::sqlite::{Db, DbResult};
use crate::error::Stage;
use crate::model::event::{END_LEN, EventKind, FIELDS, FieldType, START_LEN, TRIP_SCHEMA};
use crate::model::extra::{EXTRAS_ATTRIBUTES, Extras};
use crate::{Error, Result};

/// The table: `trip_id`, a column per field of the registry (integers as INTEGER, the
/// rest as their stored text), and the derived columns.
static SCHEMA: LazyLock<String> = LazyLock::new(|| {
    let fields: String = FIELDS.iter().map(|f| format!("    {} {},\n", f.name, column_type(f.ty))).collect();
    let extras: String = EXTRAS_ATTRIBUTES.iter().map(|e| format!("    {e} TEXT,\n")).collect();
    let (pickup, dropoff) = (EventKind::Start.version_field(), EventKind::End.version_field());
    format!(
        "
CREATE TABLE IF NOT EXISTS trips (
    trip_id TEXT PRIMARY KEY,
{fields}{extras}    trip_date TEXT GENERATED ALWAYS AS (substr({dropoff}, 1, 10)) STORED,
    trip_completed INTEGER GENERATED ALWAYS AS
        ({pickup} IS NOT NULL AND {dropoff} IS NOT NULL) STORED,
    last_updated TEXT GENERATED ALWAYS AS
        (max(coalesce({pickup}, ''), coalesce({dropoff}, ''))) STORED
);
CREATE INDEX IF NOT EXISTS trips_by_date ON trips (trip_date) WHERE trip_date IS NOT NULL;
CREATE TABLE IF NOT EXISTS changed_dates (
    trip_date TEXT PRIMARY KEY,
    mark INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_fields (
    position TEXT PRIMARY KEY,
    ledger TEXT NOT NULL
);
"
    )
});

/// Page cache of the trip table (SQLite's default is 2 MiB): trip ids are random, so
/// merges touch the whole `trip_id` index, which must stay in memory to be fast.
const CACHE_MIB: i64 = 64;

/// The SQLite trip table, and the dates its merges changed (docs/design.md §5), marked in
/// `changed_dates` by the merge's own transaction.
pub struct SqliteStore {
    db: Db,
    writes: Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if needed) `<home>/trips.sqlite`.
    ///
    /// # Errors
    /// When the file cannot be opened or created.
    pub fn open(home: &Path) -> Result<Self> {
        let path = home.join("trips.sqlite");
        let db = Db::open(&path, &SCHEMA, CACHE_MIB, Stage::Store)?;
        add_new_fields(&db.blocking()).map_err(|e| Stage::Store.error(path.display(), e))?;
        Ok(SqliteStore { db, writes: Arc::default() })
    }
}

/// Adds a column for each field of the registry, and for each group's undeclared
/// fields, that a table made by an earlier build lacks: its rows read with them absent.
fn add_new_fields(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let mut info = conn.prepare("SELECT name FROM pragma_table_info('trips')")?;
    let have: Vec<String> = info.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    let wanted = FIELDS.iter().map(|f| (f.name, column_type(f.ty))).chain(EXTRAS_ATTRIBUTES.map(|e| (e, "TEXT")));
    for (name, ty) in wanted.filter(|(name, _)| !have.iter().any(|h| h == name)) {
        conn.execute_batch(&format!("ALTER TABLE trips ADD COLUMN {name} {ty}"))?;
    }
    Ok(())
}

fn column_type(ty: FieldType) -> &'static str {
    if ty == FieldType::Integer { "INTEGER" } else { "TEXT" }
}

/// `trip_id`, the registry's fields, then each group's undeclared fields.
fn all_columns() -> Vec<&'static str> {
    std::iter::once("trip_id").chain(FIELDS.iter().map(|f| f.name)).chain(EXTRAS_ATTRIBUTES).collect()
}

/// The upsert: each group's columns change only where the incoming version is newer.
/// In an UPDATE every right-hand side sees the old row, so the version column itself
/// can be assigned in the same statement.
fn upsert_sql() -> String {
    let cols = all_columns();
    let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let mut sets = Vec::new();
    let kinds = [EventKind::Start, EventKind::End];
    let extras = EXTRAS_ATTRIBUTES.iter().zip(kinds).map(|(&e, kind)| (e, kind));
    for (column, kind) in FIELDS.iter().map(|f| (f.name, f.kind)).chain(extras) {
        sets.push(format!(
            "{c} = CASE WHEN excluded.{version} > coalesce(trips.{version}, '') \
             THEN excluded.{c} ELSE trips.{c} END",
            c = column,
            version = kind.version_field(),
        ));
    }
    format!(
        "INSERT INTO trips ({}) VALUES ({}) ON CONFLICT (trip_id) DO UPDATE SET {}",
        cols.join(", "),
        placeholders.join(", "),
        sets.join(", ")
    )
}

fn select_sql() -> String {
    format!("SELECT {} FROM trips", all_columns().join(", "))
}

fn read_item(row: &Row<'_>) -> rusqlite::Result<TripItem> {
    let text = |i: usize| -> rusqlite::Result<Option<CompactString>> {
        Ok(match row.get_ref(i)? {
            ValueRef::Integer(v) => Some(v.to_compact_string()),
            value => value.as_str_or_null()?.map(CompactString::from),
        })
    };
    let group = |kind: EventKind| -> rusqlite::Result<Option<Vec<Option<CompactString>>>> {
        if text(kind.version_column())?.is_none() {
            return Ok(None);
        }
        let first = kind.first_column();
        (first..first + kind.fields().len()).map(text).collect::<rusqlite::Result<_>>().map(Some)
    };
    let extras = |g: usize| -> rusqlite::Result<Extras> {
        let text = row.get_ref(1 + FIELDS.len() + g)?.as_str_or_null()?;
        Extras::from_stored(text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1 + FIELDS.len() + g, rusqlite::types::Type::Text, e.into())
        })
    };
    let start = group(EventKind::Start)?.map(|mut v| StartGroup::from_fn(|i| v[i].take()));
    let end = group(EventKind::End)?.map(|mut v| EndGroup::from_fn(|i| v[i].take()));
    Ok(TripItem {
        trip_id: text(0)?.unwrap_or_default(),
        start: start.map(|g| extras(0).map(|x| g.with_extras(x))).transpose()?,
        end: end.map(|g| extras(1).map(|x| g.with_extras(x))).transpose()?,
    })
}

/// A stored value as the export reads it: integers and text as SQLite holds them.
fn cell(value: ValueRef<'_>, column: usize) -> Result<Cell<'_>> {
    match value {
        ValueRef::Null => Ok(Cell::Null),
        ValueRef::Integer(v) => Ok(Cell::Int(v)),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(Cell::Text)
            .map_err(|_| Error::store(format!("stored {} is not UTF-8 text", TRIP_SCHEMA.field(column).name()))),
        ValueRef::Real(_) | ValueRef::Blob(_) => {
            Err(Error::store(format!("stored {} is not text or an integer", TRIP_SCHEMA.field(column).name())))
        }
    }
}

#[async_trait]
impl TripStore for SqliteStore {
    async fn merge(&self, updates: Vec<TripUpdate>) -> Result<Vec<MergeOutcome>> {
        let writes = self.writes.clone();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                // Trips in key order: each B-tree page is visited once per batch, in
                // order, instead of at random.
                let mut order: Vec<usize> = (0..updates.len()).collect();
                order.sort_unstable_by(|&a, &b| updates[a].trip_id.cmp(&updates[b].trip_id));
                let mut outcomes = vec![MergeOutcome::default(); updates.len()];
                let mut written = 0;
                let mut touched = std::collections::BTreeSet::new();
                {
                    let mut versions = tx.prepare_cached(&format!(
                        "SELECT {}, {} FROM trips WHERE trip_id = ?1",
                        StartGroup::KIND.version_field(),
                        EndGroup::KIND.version_field()
                    ))?;
                    let mut upsert = tx.prepare_cached(&upsert_sql())?;
                    for &i in &order {
                        let u = &updates[i];
                        let (stored_start, stored_end): (Option<String>, Option<String>) = versions
                            .query_row([u.trip_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()?
                            .unwrap_or_default();
                        let outcome = MergeOutcome {
                            start_applied: is_newer(u.start.as_ref().map(StartGroup::version), stored_start.as_deref()),
                            end_applied: is_newer(u.end.as_ref().map(EndGroup::version), stored_end.as_deref()),
                        };
                        if outcome.start_applied || outcome.end_applied {
                            touched_dates(outcome, stored_end.as_deref().map(date_of), u, &mut touched);
                            let start = u.start.as_ref().filter(|_| outcome.start_applied);
                            let end = u.end.as_ref().filter(|_| outcome.end_applied);
                            let values: Vec<Option<CompactString>> = std::iter::once(Some(u.trip_id.clone()))
                                .chain(start.map_or([const { None }; START_LEN], |s| s.values().clone()))
                                .chain(end.map_or([const { None }; END_LEN], |e| e.values().clone()))
                                .chain(
                                    [start.map(|s| s.extras()), end.map(|e| e.extras())]
                                        .map(|x| x.and_then(Extras::as_json).map(CompactString::from)),
                                )
                                .collect();
                            upsert.execute(params_from_iter(values.iter().map(|v| v.as_deref())))?;
                            written += 1;
                        }
                        outcomes[i] = outcome;
                    }
                    let mut mark = tx.prepare_cached(
                        "INSERT INTO changed_dates (trip_date, mark) VALUES (?1, ?2) \
                         ON CONFLICT (trip_date) DO UPDATE SET mark = excluded.mark",
                    )?;
                    let value = i64::try_from(next_mark()).unwrap_or(i64::MAX);
                    for date in &touched {
                        mark.execute(rusqlite::params![date.as_str(), value])?;
                    }
                }
                tx.commit()?;
                writes.fetch_add(written, Ordering::Relaxed);
                Ok(outcomes)
            })
            .await
    }

    async fn get(&self, trip_id: &str) -> Result<Option<TripItem>> {
        let trip_id = trip_id.to_owned();
        self.db
            .call(move |conn| {
                let sql = format!("{} WHERE trip_id = ?1", select_sql());
                Ok(conn.query_row(&sql, [&trip_id], read_item).optional()?)
            })
            .await
    }

    async fn export(&self, dates: Option<Vec<NaiveDate>>, columns: &Projection) -> Result<Vec<RecordBatch>> {
        let columns = columns.clone();
        self.db
            .call(move |conn| {
                // Only the stored columns the kept ones need, read in place from each row.
                let stored = columns.stored();
                let mut names: Vec<&str> = stored.iter().map(|&i| TRIP_SCHEMA.field(i).name().as_str()).collect();
                let kept = columns.has_kept();
                if kept {
                    names.extend(EXTRAS_ATTRIBUTES);
                }
                let select = format!("SELECT {} FROM trips", names.join(", "));
                // Key order costs a B-tree seek per row (10M trips: 28 s against 6.5 s in
                // storage order), so only the whole table, which becomes the snapshot
                // files, is read in it.
                let order = if columns.is_all() { " ORDER BY trip_id" } else { "" };
                let mut builder = ExportBuilder::new(columns);
                let mut batches = Vec::new();
                let mut scan = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> DbResult<()> {
                    let mut stmt = conn.prepare(sql)?;
                    let mut rows = stmt.query(params)?;
                    while let Some(row) = rows.next()? {
                        let mut cells = [Cell::Null; STORED_COLUMNS];
                        for (k, &c) in stored.iter().enumerate() {
                            cells[c] = cell(row.get_ref(k)?, c)?;
                        }
                        let mut extras = [None; 2];
                        if kept {
                            for (g, extra) in extras.iter_mut().enumerate() {
                                *extra =
                                    row.get_ref(stored.len() + g)?.as_str_or_null().map_err(rusqlite::Error::from)?;
                            }
                        }
                        builder.push_with_extras(&cells, extras, &mut batches)?;
                    }
                    Ok(())
                };
                match dates {
                    None => scan(&format!("{select}{order}"), &[])?,
                    Some(mut dates) => {
                        dates.sort();
                        dates.dedup();
                        let sql = format!("{select} WHERE trip_date = ?1{order}");
                        for d in dates {
                            scan(&sql, &[&d.format("%Y-%m-%d").to_string()])?;
                        }
                    }
                }
                Ok(builder.finish_into(batches)?)
            })
            .await
    }

    async fn changed_dates(&self) -> Result<Vec<ChangedDate>> {
        self.db
            .call(|conn| {
                let mut stmt = conn.prepare("SELECT trip_date, mark FROM changed_dates ORDER BY trip_date")?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                let mut marks = Vec::new();
                for row in rows {
                    let (date, mark) = row?;
                    let date = marked_date(&date, &"trips.sqlite")?;
                    marks.push(ChangedDate { date, mark: mark.to_string(), settled: true });
                }
                Ok(marks)
            })
            .await
    }

    async fn clear_changed(&self, read: &[ChangedDate]) -> Result<usize> {
        let read = read.to_vec();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut cleared = 0;
                {
                    let mut delete = tx.prepare("DELETE FROM changed_dates WHERE trip_date = ?1 AND mark = ?2")?;
                    for m in read.iter().filter(|m| m.settled) {
                        let Ok(mark) = m.mark.parse::<i64>() else { continue };
                        cleared += delete.execute(rusqlite::params![m.date.format("%Y-%m-%d").to_string(), mark])?;
                    }
                }
                tx.commit()?;
                Ok(cleared)
            })
            .await
    }

    async fn add_sightings(&self, sightings: &[Sighting], now: &str) -> Result<Vec<String>> {
        let (sightings, now) = (sightings.to_vec(), now.to_owned());
        let new = self
            .db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut new = Vec::new();
                for (position, seen) in ledger::by_position(&sightings) {
                    let stored: Option<String> = tx
                        .query_row("SELECT ledger FROM seen_fields WHERE position = ?1", [position], |r| r.get(0))
                        .optional()?;
                    let mut entry = match stored {
                        Some(text) => ShardLedger::parse(&text, &"trips.sqlite")?,
                        None => ShardLedger::default(),
                    };
                    if let Some(first) = entry.add(seen, &now) {
                        new.extend(first);
                        tx.execute(
                            "INSERT INTO seen_fields (position, ledger) VALUES (?1, ?2) \
                             ON CONFLICT (position) DO UPDATE SET ledger = excluded.ledger",
                            rusqlite::params![position, entry.to_text()],
                        )?;
                    }
                }
                tx.commit()?;
                Ok(new)
            })
            .await?;
        Ok(new)
    }

    async fn seen_fields(&self) -> Result<Vec<SeenField>> {
        self.db
            .call(|conn| {
                let mut stmt = conn.prepare("SELECT ledger FROM seen_fields")?;
                let texts = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
                let entries =
                    texts.iter().map(|t| ShardLedger::parse(t, &"trips.sqlite")).collect::<Result<Vec<_>>>()?;
                Ok(ledger::combine(entries))
            })
            .await
    }

    fn write_requests(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_table_made_before_a_field_was_added_gains_its_column() {
        let home = tempfile::tempdir().unwrap();
        {
            // The table as a build without `trip_type` made it, with one trip.
            let conn = rusqlite::Connection::open(home.path().join("trips.sqlite")).unwrap();
            let without = SCHEMA.replace("    trip_type TEXT,\n", "");
            assert_ne!(without, *SCHEMA);
            conn.execute_batch(&without).unwrap();
            conn.execute(
                "INSERT INTO trips (trip_id, dropoff_datetime, fare_amount) VALUES ('t', '2024-05-25T10:00:00.000000Z', '7.5')",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(home.path()).unwrap();
        let end = store.get("t").await.unwrap().unwrap().end.unwrap();
        assert_eq!((end.get("fare_amount"), end.get("trip_type")), (Some("7.5"), None));
        let newer = end.with("dropoff_datetime", Some("2024-05-25T11:00:00.000000Z")).with("trip_type", Some("2"));
        store.merge(vec![TripUpdate { trip_id: "t".into(), start: None, end: Some(newer.clone()) }]).await.unwrap();
        assert_eq!(store.get("t").await.unwrap().unwrap().end, Some(newer));
    }

    #[test]
    fn upsert_guards_every_column_with_its_group_version() {
        let sql = upsert_sql();
        assert!(sql.contains("vendor_id = CASE WHEN excluded.pickup_datetime > coalesce(trips.pickup_datetime, '')"));
        assert!(
            sql.contains("fare_amount = CASE WHEN excluded.dropoff_datetime > coalesce(trips.dropoff_datetime, '')")
        );
    }
}
