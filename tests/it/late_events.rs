//! Late events (docs/design.md §5): the nightly run recomputes its window and every date
//! whose trips changed since the last run, however old, and nothing else; it clears only
//! the marks it read, after writing. Every backend runs every body
//! ([`crate::store_suite::on_every_store`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use chrono::{Days, NaiveDate};
use tripflow::kpi::{self, DateSelection, Formats, KpiReport, OutputLocation};
use tripflow::store::{ChangedDate, EndGroup, MergeOutcome, Projection, StartGroup, TripItem, TripStore, TripUpdate};

use crate::common::{queries_dir, read_tree};

/// The night of the nightly runs below.
fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 6, 30).unwrap()
}

fn days_ago(n: u64) -> NaiveDate {
    today() - Days::new(n)
}

fn start(day: NaiveDate) -> StartGroup {
    let pickup = format!("{day}T08:00:00.000000Z");
    StartGroup::of([
        ("pickup_location_id", "93"),
        ("dropoff_location_id", "94"),
        ("vendor_id", "1"),
        ("pickup_datetime", pickup.as_str()),
    ])
}

fn end(day: NaiveDate, fare: &str) -> EndGroup {
    let dropoff = format!("{day}T09:00:00.000000Z");
    EndGroup::of([("dropoff_datetime", dropoff.as_str()), ("fare_amount", fare)])
}

fn trip(id: &str, day: NaiveDate, fare: &str) -> TripUpdate {
    TripUpdate { trip_id: id.into(), start: Some(start(day)), end: Some(end(day, fare)) }
}

async fn run(store: &dyn TripStore, dates: DateSelection, out: &Path) -> KpiReport {
    let queries = kpi::queries::load(&queries_dir()).unwrap();
    let out = OutputLocation::parse(out.to_str().unwrap(), None).unwrap();
    kpi::run(
        store,
        &queries,
        &tripflow::model::declared::Fields::default(),
        &dates,
        &out,
        Formats::default(),
        &tripflow::observe::progress::Quiet,
    )
    .await
    .unwrap()
}

/// The nightly run of [`today`], with a lookback of one day.
fn nightly() -> DateSelection {
    DateSelection::Nightly(vec![days_ago(1), today()])
}

/// The `kpi.json` files under `out`, by date.
fn kpi_json(out: &Path) -> BTreeMap<String, String> {
    read_tree(out)
        .into_iter()
        .filter_map(|(path, bytes)| {
            let date = path.strip_prefix("kpi_output/date=")?.strip_suffix("/kpi.json")?.to_owned();
            Some((date, String::from_utf8(bytes).unwrap()))
        })
        .collect()
}

/// The dates among `files` that have a `kpi.json` there.
fn json_dates(files: &[String]) -> Vec<String> {
    let dates = files.iter().filter_map(|f| f.split("date=").nth(1)?.strip_suffix("/kpi.json").map(str::to_owned));
    dates.collect()
}

/// A trip end for a date 40 days old arrives after that date's KPIs were written. The
/// next nightly run queries its window and that date, rewrites that date's file and
/// no other's, and leaves no mark behind.
pub async fn a_40_day_late_end_rewrites_exactly_its_date(store: &dyn TripStore) {
    let out = tempfile::tempdir().unwrap();
    let old = [41, 40, 39, 38].map(days_ago);
    let mut trips: Vec<TripUpdate> = old.iter().map(|d| trip(&format!("on-{d}"), *d, "10")).collect();
    trips.push(trip("yesterday", days_ago(1), "12"));
    // A trip of 40 days ago whose end is held up, on a phone that was offline.
    trips.push(TripUpdate { trip_id: "late".into(), start: Some(start(days_ago(40))), end: None });
    store.merge(trips).await.unwrap();
    let first = run(store, DateSelection::All, out.path()).await;
    assert_eq!(first.dates.len(), 5);
    assert_eq!(store.changed_dates().await.unwrap(), [], "the run over every date cleared every mark");
    let before = kpi_json(out.path());

    // A night without late events: the window only.
    let quiet = run(store, nightly(), out.path()).await;
    assert_eq!(quiet.queried, Some(vec![days_ago(1), today()]));
    assert_eq!((quiet.changed.len(), json_dates(&quiet.files)), (0, vec![days_ago(1).to_string()]));

    store
        .merge(vec![TripUpdate { trip_id: "late".into(), start: None, end: Some(end(days_ago(40), "30")) }])
        .await
        .unwrap();
    let night = run(store, nightly(), out.path()).await;
    assert_eq!(night.changed, [days_ago(40)]);
    assert_eq!(night.queried, Some(vec![days_ago(40), days_ago(1), today()]), "the window and the late date");
    assert_eq!(json_dates(&night.files), [days_ago(40).to_string(), days_ago(1).to_string()]);
    assert_eq!(night.files.len(), 2, "the two kpi.json and nothing else: {:?}", night.files);
    assert_eq!((night.removed.len(), night.cleared), (0, 1));

    let after = kpi_json(out.path());
    for (date, json) in &before {
        if *date == days_ago(40).to_string() {
            assert!(
                after[date].contains("\"total_trips\": 2") && json.contains("\"total_trips\": 1"),
                "{}",
                after[date]
            );
        } else {
            assert_eq!(&after[date], json, "{date} changed");
        }
    }
    assert_eq!(store.changed_dates().await.unwrap(), [], "the mark read was cleared");
    let next = run(store, nightly(), out.path()).await;
    assert_eq!((next.changed.len(), next.queried.unwrap().len()), (0, 2), "the next night is quiet again");
}

/// A trip store that merges one more update while the KPI job exports: a late event
/// arriving during the run.
struct MergesDuringExport<'s> {
    store: &'s dyn TripStore,
    late: Mutex<Option<TripUpdate>>,
}

impl MergesDuringExport<'_> {
    async fn merge_late(&self) {
        let late = self.late.lock().unwrap().take();
        if let Some(late) = late {
            self.store.merge(vec![late]).await.unwrap();
        }
    }
}

#[async_trait]
impl TripStore for MergesDuringExport<'_> {
    async fn merge(&self, updates: Vec<TripUpdate>) -> tripflow::Result<Vec<MergeOutcome>> {
        self.store.merge(updates).await
    }

    async fn get(&self, trip_id: &str) -> tripflow::Result<Option<TripItem>> {
        self.store.get(trip_id).await
    }

    async fn export(&self, dates: Option<Vec<NaiveDate>>, columns: &Projection) -> tripflow::Result<Vec<RecordBatch>> {
        let exported = self.store.export(dates, columns).await;
        self.merge_late().await;
        exported
    }

    async fn export_to(
        &self,
        dates: Option<Vec<NaiveDate>>,
        columns: &Projection,
        sink: tokio::sync::mpsc::Sender<RecordBatch>,
    ) -> tripflow::Result<()> {
        let exported = self.store.export_to(dates, columns, sink).await;
        self.merge_late().await;
        exported
    }

    async fn changed_dates(&self) -> tripflow::Result<Vec<ChangedDate>> {
        self.store.changed_dates().await
    }

    async fn clear_changed(&self, read: &[ChangedDate]) -> tripflow::Result<usize> {
        self.store.clear_changed(read).await
    }

    async fn seen_fields(&self) -> tripflow::Result<Vec<tripflow::store::ledger::SeenField>> {
        self.store.seen_fields().await
    }

    fn write_requests(&self) -> u64 {
        self.store.write_requests()
    }
}

/// A late event for a marked date that arrives while the run exports keeps the date
/// marked: the run may have read the day before it, and the next run counts it.
pub async fn a_mark_set_during_a_run_survives_it(store: &dyn TripStore) {
    let out = tempfile::tempdir().unwrap();
    let day = days_ago(20);
    store.merge(vec![trip("a", day, "10")]).await.unwrap();
    let meddled = MergesDuringExport { store, late: Mutex::new(Some(trip("b", day, "20"))) };
    let night = run(&meddled, nightly(), out.path()).await;
    assert_eq!(night.changed, [day]);
    assert!(meddled.late.lock().unwrap().is_none(), "the late trip was merged during the run");
    assert_eq!(night.cleared, 0);
    let marks = store.changed_dates().await.unwrap();
    assert_eq!(marks.iter().map(|m| m.date).collect::<Vec<_>>(), [day], "the mark set during the run stays");

    let next = run(store, nightly(), out.path()).await;
    assert_eq!(next.changed, [day]);
    assert!(kpi_json(out.path())[&day.to_string()].contains("\"total_trips\": 2"), "the next run counts it");
    assert_eq!(store.changed_dates().await.unwrap(), []);
}

/// A changed day left without completed trips (its one trip's end moved to another day)
/// loses its published files, and the run says so.
pub async fn a_day_whose_trips_moved_away_loses_its_files(store: &dyn TripStore) {
    let out = tempfile::tempdir().unwrap();
    let (from, to) = (days_ago(10), days_ago(9));
    store.merge(vec![trip("m", from, "10"), trip("n", to, "11")]).await.unwrap();
    run(store, DateSelection::All, out.path()).await;
    assert!(kpi_json(out.path()).contains_key(&from.to_string()));
    // A corrected end, later in time, on the next day.
    let moved = end(to, "10").with("dropoff_datetime", Some(&format!("{to}T10:00:00.000000Z")));
    store.merge(vec![TripUpdate { trip_id: "m".into(), start: None, end: Some(moved) }]).await.unwrap();
    let night = run(store, nightly(), out.path()).await;
    assert_eq!(night.changed, [from, to]);
    assert_eq!(night.removed, [from]);
    let files = kpi_json(out.path());
    assert!(!files.contains_key(&from.to_string()), "{files:?}");
    assert!(files[&to.to_string()].contains("\"total_trips\": 2"));
    let report = std::fs::read_to_string(out.path().join("kpi_output/report.html")).unwrap();
    assert!(!report.contains(&from.to_string()), "the report no longer lists the day");
}

crate::store_suite::on_every_store!(
    a_40_day_late_end_rewrites_exactly_its_date,
    a_mark_set_during_a_run_survives_it,
    a_day_whose_trips_moved_away_loses_its_files,
);

/// On `data/`, as a user meets it: `tripflow run`, then one late trip end (a corrected
/// fare, a minute later on the same day) through `produce --ndjson` and `ingest`, then
/// the nightly `tripflow kpi`. Of the KPI files, exactly that date's changes; the
/// report is rebuilt over them.
#[test]
fn on_data_one_late_event_changes_exactly_its_dates_file() {
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    crate::common::copy_dir(&crate::common::data_dir(), &tmp.path().join("data"));
    crate::common::copy_dir(&queries_dir(), &tmp.path().join("queries"));
    let tripflow = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tripflow")).current_dir(tmp.path()).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    tripflow(&["run"]);
    let before = read_tree(&tmp.path().join("tripflow-out"));
    assert!(before.len() > 4, "{:?}", before.keys());

    // data/trip_end.csv's first trip ends at 2024-05-24 01:39:00.
    let late = crate::common::end_event("f00e5c43e5", "2024-05-24 01:40:00", "120.5");
    std::fs::write(tmp.path().join("late.ndjson"), late + "\n").unwrap();
    tripflow(&["produce", "--ndjson", "late.ndjson"]);
    tripflow(&["ingest"]);
    let kpi = tripflow(&["kpi"]);
    assert!(kpi.contains("recomputed 1 date(s) whose trips changed since the last run: 2024-05-24"), "{kpi}");

    let after = read_tree(&tmp.path().join("tripflow-out"));
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    let changed: Vec<&String> = after.keys().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(changed, ["kpi_output/date=2024-05-24/kpi.json", "kpi_output/report.html"]);
    // The next night has nothing late to redo.
    let quiet = tripflow(&["kpi"]);
    assert!(!quiet.contains("recomputed"), "{quiet}");
}
