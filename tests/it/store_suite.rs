//! The `TripStore` conformance suite: one body per behaviour of docs/design.md §3, written
//! against the trait. Every backend runs all of it (see the `lsm`, `sqlite` and
//! `dynamodb` modules below).

use chrono::NaiveDate;
use tripflow::store::{EndGroup, MergeOutcome, Projection, StartGroup, TripStore, TripUpdate};

fn start(at: &str, vendor: i64) -> StartGroup {
    let (pickup, vendor) = (format!("2024-05-25T{at}:00.000000Z"), vendor.to_string());
    StartGroup::of([
        ("pickup_location_id", "93"),
        ("dropoff_location_id", "94"),
        ("vendor_id", vendor.as_str()),
        ("pickup_datetime", pickup.as_str()),
        ("estimated_fare_amount", "34.18595283806629"),
    ])
}

fn end(at: &str, fare: &str) -> EndGroup {
    let dropoff = format!("2024-05-25T{at}:00.000000Z");
    EndGroup::of([
        ("dropoff_datetime", dropoff.as_str()),
        ("rate_code", "5"),
        ("trip_distance", "0.1"),
        ("fare_amount", fare),
        ("tip_amount", "0"),
        ("payment_type", "3"),
    ])
}

fn update(id: &str, s: Option<StartGroup>, e: Option<EndGroup>) -> TripUpdate {
    TripUpdate { trip_id: id.into(), start: s, end: e }
}

const APPLIED_BOTH: MergeOutcome = MergeOutcome { start_applied: true, end_applied: true };

/// Newer versions win, equal ones are duplicates, older ones are stale, per group.
pub async fn newer_wins_per_group(store: &dyn TripStore) {
    let o = store.merge(vec![update("t", Some(start("10:00", 1)), None)]).await.unwrap();
    assert_eq!(o, [MergeOutcome { start_applied: true, end_applied: false }]);
    let o = store.merge(vec![update("t", Some(start("10:00", 2)), None)]).await.unwrap();
    assert_eq!(o, [MergeOutcome::default()], "an equal version is a duplicate");
    let o = store.merge(vec![update("t", Some(start("09:00", 3)), None)]).await.unwrap();
    assert_eq!(o, [MergeOutcome::default()], "an older version is stale");
    assert_eq!(store.get("t").await.unwrap().unwrap().start.unwrap().get("vendor_id"), Some("1"));
    let o = store.merge(vec![update("t", Some(start("11:00", 4)), None)]).await.unwrap();
    assert!(o[0].start_applied);
    assert_eq!(store.get("t").await.unwrap().unwrap().start.unwrap().get("vendor_id"), Some("4"));
}

/// An end that arrives first does not block its start, and completion follows both.
pub async fn groups_are_independent(store: &dyn TripStore) {
    store.merge(vec![update("t", None, Some(end("23:50", "12.5")))]).await.unwrap();
    let item = store.get("t").await.unwrap().unwrap();
    assert!(!item.trip_completed());
    assert_eq!(item.trip_date(), Some("2024-05-25"));
    // A start whose version is older than the stored end's is still stored.
    let o = store.merge(vec![update("t", Some(start("23:00", 1)), None)]).await.unwrap();
    assert!(o[0].start_applied);
    let item = store.get("t").await.unwrap().unwrap();
    assert!(item.trip_completed());
    assert_eq!(item.last_updated(), "2024-05-25T23:50:00.000000Z");
    assert_eq!(item.end.unwrap().get("fare_amount"), Some("12.5"));
}

/// Both groups in one update are one write; a fully stale update stores nothing and
/// costs at most the one conditional write that finds it stale (DynamoDB), or none
/// (the embedded store reads the versions first).
pub async fn one_write_per_trip_per_batch(store: &dyn TripStore) {
    let before = store.write_requests();
    let o = store
        .merge(vec![
            update("a", Some(start("10:00", 1)), Some(end("10:30", "7"))),
            update("b", Some(start("10:05", 1)), Some(end("10:40", "8"))),
        ])
        .await
        .unwrap();
    assert_eq!(o, [APPLIED_BOTH, APPLIED_BOTH]);
    assert_eq!(store.write_requests() - before, 2);
    store.merge(vec![update("a", Some(start("10:00", 1)), Some(end("10:30", "7")))]).await.unwrap();
    assert!(store.write_requests() - before <= 3, "a duplicate costs at most one write");
    assert_eq!(store.get("a").await.unwrap().unwrap().end.unwrap().get("fare_amount"), Some("7"));
}

/// The export holds the table's Arrow types and honours a date filter.
pub async fn export_by_date(store: &dyn TripStore) {
    store
        .merge(vec![
            update("a", Some(start("10:00", 1)), Some(end("10:30", "7.25"))),
            update("b", Some(start("10:00", 1)), None),
            update("c", None, Some(end("00:00", "3").with("dropoff_datetime", Some("2024-05-26T00:10:00.000000Z")))),
        ])
        .await
        .unwrap();
    let all = store.export(None, &Projection::all()).await.unwrap();
    assert_eq!(all.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    assert_eq!(all[0].schema(), *tripflow::model::event::TRIP_SCHEMA);
    let day = NaiveDate::from_ymd_opt(2024, 5, 26).unwrap();
    let one = store.export(Some(vec![day]), &Projection::all()).await.unwrap();
    assert_eq!(one.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let ids = arrow::compute::cast(one[0].column(0), &arrow::datatypes::DataType::Utf8).unwrap();
    assert_eq!(arrow::array::AsArray::as_string::<i32>(&ids).value(0), "c");

    // Some columns, derived ones among them: the same values as the whole export's.
    let schema = tripflow::model::event::TRIP_SCHEMA.clone();
    let keep: Vec<usize> = ["fare_amount", "trip_date", "trip_completed", "last_updated"]
        .iter()
        .map(|c| schema.index_of(c).unwrap())
        .collect();
    let some = store.export(None, &Projection::of(keep.clone())).await.unwrap();
    let expected: Vec<_> = all.iter().map(|b| b.project(&keep).unwrap()).collect();
    assert_eq!(some, expected);
}

/// `export_to` hands over, batch by batch, what `export` returns, and stops with an
/// error when its reader is gone.
pub async fn export_to_sends_what_export_returns(store: &dyn TripStore) {
    store
        .merge(vec![
            update("a", Some(start("10:00", 1)), Some(end("10:30", "7.25"))),
            update("b", Some(start("11:00", 2)), None),
        ])
        .await
        .unwrap();
    let every = Projection::all();
    for dates in [None, Some(vec![NaiveDate::from_ymd_opt(2024, 5, 25).unwrap()])] {
        let whole = store.export(dates.clone(), &Projection::all()).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let read = async {
            let mut got = Vec::new();
            while let Some(batch) = rx.recv().await {
                got.push(batch);
            }
            got
        };
        let (sent, got) = tokio::join!(store.export_to(dates, &every, tx), read);
        sent.unwrap();
        assert_eq!(got, whole);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(rx);
    let err = store.export_to(None, &every, tx).await.unwrap_err();
    assert!(err.to_string().contains("stopped"), "{err}");
}

/// A newer end on another day moves the trip to that day's export, and out of the old
/// day's: the date index follows the stored end.
pub async fn a_newer_end_moves_the_trip_to_its_day(store: &dyn TripStore) {
    let on = |day: &str| end("00:00", "3").with("dropoff_datetime", Some(&format!("{day}T23:59:00.000000Z")));
    store.merge(vec![update("m", Some(start("10:00", 1)), Some(on("2024-05-25")))]).await.unwrap();
    store.merge(vec![update("m", None, Some(on("2024-05-27")))]).await.unwrap();
    let rows = async |day: u32| {
        let date = NaiveDate::from_ymd_opt(2024, 5, day).unwrap();
        store.export(Some(vec![date]), &Projection::all()).await.unwrap().iter().map(|b| b.num_rows()).sum::<usize>()
    };
    assert_eq!(rows(25).await, 0, "the old day no longer has the trip");
    assert_eq!(rows(27).await, 1);
    // A stale end from the first day does not move it back.
    store.merge(vec![update("m", None, Some(on("2024-05-25")))]).await.unwrap();
    assert_eq!((rows(25).await, rows(27).await), (0, 1));
}

/// The dates marked changed, as text.
async fn marked(store: &dyn TripStore) -> Vec<String> {
    store.changed_dates().await.unwrap().iter().map(|m| m.date.to_string()).collect()
}

/// Reads the marks and clears them, as a KPI run does once its files are written.
async fn clear_all(store: &dyn TripStore) {
    let read = store.changed_dates().await.unwrap();
    assert_eq!(store.clear_changed(&read).await.unwrap(), read.len(), "every settled mark read is cleared");
    assert_eq!(marked(store).await, Vec::<String>::new());
}

/// docs/design.md §5: a merge marks every date whose KPIs it changes, and only those: the
/// day of an end it stores, the day that end moved the trip from, and the day of an end
/// that a late start completes. A start without an end changes no day.
pub async fn merges_mark_the_dates_they_change(store: &dyn TripStore) {
    let on =
        |day: &str, fare: &str| end("00:00", fare).with("dropoff_datetime", Some(&format!("{day}T23:59:00.000000Z")));
    store.merge(vec![update("t", Some(start("10:00", 1)), None)]).await.unwrap();
    assert_eq!(marked(store).await, Vec::<String>::new(), "a start alone changes no date");
    store.merge(vec![update("t", None, Some(on("2024-04-15", "7")))]).await.unwrap();
    assert_eq!(marked(store).await, ["2024-04-15"]);
    clear_all(store).await;

    // A newer end on another day: both days change.
    store.merge(vec![update("t", None, Some(on("2024-04-17", "8")))]).await.unwrap();
    assert_eq!(marked(store).await, ["2024-04-15", "2024-04-17"]);
    clear_all(store).await;

    // An end first, then its start: the day is marked again when the trip completes.
    store.merge(vec![update("u", None, Some(on("2024-03-01", "9")))]).await.unwrap();
    assert_eq!(marked(store).await, ["2024-03-01"]);
    clear_all(store).await;
    store.merge(vec![update("u", Some(start("09:00", 1)), None)]).await.unwrap();
    assert_eq!(marked(store).await, ["2024-03-01"], "the late start completes the trip on its end's day");
    clear_all(store).await;

    // One batch over several trips and days: each day once.
    store
        .merge(vec![
            update("a", Some(start("10:00", 1)), Some(on("2024-01-02", "5"))),
            update("b", Some(start("10:00", 1)), Some(on("2024-01-02", "6"))),
            update("c", Some(start("10:00", 1)), Some(on("2024-01-03", "6"))),
        ])
        .await
        .unwrap();
    assert_eq!(marked(store).await, ["2024-01-02", "2024-01-03"]);
}

/// A date marked again between a KPI run's read of the marks and its clear keeps its
/// mark: the run may have exported the day before that change.
pub async fn a_date_marked_again_after_the_read_keeps_its_mark(store: &dyn TripStore) {
    let on = |day: &str| end("00:00", "3").with("dropoff_datetime", Some(&format!("{day}T12:00:00.000000Z")));
    store.merge(vec![update("a", Some(start("10:00", 1)), Some(on("2024-02-01")))]).await.unwrap();
    store.merge(vec![update("b", Some(start("10:00", 1)), Some(on("2024-02-02")))]).await.unwrap();
    let read = store.changed_dates().await.unwrap();
    assert_eq!(read.len(), 2);
    store.merge(vec![update("c", Some(start("10:00", 1)), Some(on("2024-02-02")))]).await.unwrap();
    assert_eq!(store.clear_changed(&read).await.unwrap(), 1, "only the mark that did not change");
    assert_eq!(marked(store).await, ["2024-02-02"]);
    // Clearing what was read again changes nothing; the next read clears it.
    assert_eq!(store.clear_changed(&read).await.unwrap(), 0);
    clear_all(store).await;
}

/// One `#[tokio::test]` per body and backend: a module per backend (`lsm`, `sqlite`,
/// `dynamodb` on moto, `dynalite`), each test on a new store, calling the body of the
/// same name in the invoking module with it. The DynamoDB stores' marks settle at once:
/// each body is one writer that waits for its merges.
macro_rules! on_every_store {
    ($($body:ident),+ $(,)?) => {
        mod lsm {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    let tmp = tempfile::tempdir().unwrap();
                    super::$body(&tripflow::store::lsm::LsmStore::open(tmp.path()).unwrap()).await;
                }
            )+
        }

        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    let tmp = tempfile::tempdir().unwrap();
                    super::$body(&tripflow::store::sqlite::SqliteStore::open(tmp.path()).unwrap()).await;
                }
            )+
        }

        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    let store = $crate::store_suite::dynamodb_store(&$crate::moto::aws()).await;
                    super::$body(&store).await;
                }
            )+
        }

        /// An independent DynamoDB: dynalite answers a failed condition without the
        /// stored item, so every merge that needs a second write goes through the GetItem
        /// fallback.
        mod dynalite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    let store = $crate::store_suite::dynamodb_store(&$crate::emulators::dynalite()).await;
                    super::$body(&store).await;
                }
            )+
        }
    };
}
pub(crate) use on_every_store;

/// A new DynamoDB trip table (and its table of changed dates) on `aws`, whose marks
/// settle at once.
pub async fn dynamodb_store(aws: &tripflow::backend::aws::Aws) -> tripflow::store::dynamodb::DynamoStore {
    use tripflow::store::dynamodb::DynamoStore;
    let store = DynamoStore::new(aws, &crate::moto::unique("suite"))
        .with_scan_segments(3)
        .with_mark_grace(std::time::Duration::ZERO);
    assert!(store.create_if_missing().await.unwrap());
    assert!(!store.create_if_missing().await.unwrap(), "idempotent");
    store
}

on_every_store!(
    newer_wins_per_group,
    groups_are_independent,
    one_write_per_trip_per_batch,
    export_by_date,
    export_to_sends_what_export_returns,
    a_newer_end_moves_the_trip_to_its_day,
    merges_mark_the_dates_they_change,
    a_date_marked_again_after_the_read_keeps_its_mark,
);

/// What only DynamoDB's marks do: they are written before the trips.
mod dynamodb_marks {
    use tripflow::store::TripStore;
    use tripflow::store::dynamodb::DynamoStore;

    use crate::moto::{aws, unique};

    fn late_end(trip: &str) -> tripflow::store::TripUpdate {
        super::update(trip, None, Some(super::end("10:00", "7")))
    }

    /// A mark is written before the trips it covers, so a mark younger than the time a
    /// batch may take can cover writes still on their way: a run recomputes its date but
    /// leaves the mark for the next run.
    #[tokio::test]
    async fn a_mark_younger_than_a_batch_may_take_is_recomputed_but_not_cleared() {
        let store = DynamoStore::new(&aws(), &unique("young"));
        store.create_if_missing().await.unwrap();
        store.merge(vec![late_end("t")]).await.unwrap();
        let read = store.changed_dates().await.unwrap();
        assert_eq!(read.len(), 1);
        assert!(!read[0].settled, "just written");
        assert_eq!(store.clear_changed(&read).await.unwrap(), 0);
        assert_eq!(store.changed_dates().await.unwrap(), read, "still marked, unchanged");
    }

    /// The marks go first: a merge that cannot write them writes no trip, so no crash
    /// between the two can leave a changed trip unmarked.
    #[tokio::test]
    async fn a_merge_that_cannot_mark_its_dates_writes_no_trip() {
        let table = unique("unmarked");
        let store = DynamoStore::new(&aws(), &table);
        store.create_if_missing().await.unwrap();
        let marks = tripflow::store::dynamodb::changed_dates_table(&table);
        aws().dynamodb().delete_table().table_name(&marks).send().await.unwrap();
        let err = store.merge(vec![late_end("t")]).await.unwrap_err().to_string();
        assert!(err.contains(&marks) && err.contains("tripflow setup"), "{err}");
        assert_eq!(store.get("t").await.unwrap(), None, "the trip was not written");
        let err = store.check_exists().await.unwrap_err().to_string();
        assert!(err.contains(&marks), "a check at start says so too: {err}");
    }
}
