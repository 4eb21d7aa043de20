//! Parquet outputs and `tripflow sql` over them: Arrow types kept, partition pruning,
//! read-only refusal, output formats; and the messages of broken query files.

use std::path::Path;

use arrow::datatypes::{DataType, TimeUnit};
use tripflow::config::Home;
use tripflow::ingest::IngestOptions;
use tripflow::kpi::sql::{Format, SqlSession, render};
use tripflow::kpi::{self, DateSelection, Formats, OutputLocation};

use crate::common::{data_dir, ingest, queries_dir};

async fn home_from_data(dir: &Path) -> Home {
    let home = Home::new(dir.join("home")).unwrap();
    let stream = home.stream(Some(2)).unwrap();
    crate::common::produce_dir(&stream, &data_dir()).await;
    ingest(&home, &IngestOptions::default()).await.unwrap();
    home
}

async fn parquet_outputs(dir: &Path) -> (Home, std::path::PathBuf, Vec<chrono::NaiveDate>) {
    let home = home_from_data(dir).await;
    let out = dir.join("out");
    let location = OutputLocation::parse(out.to_str().unwrap(), None).unwrap();
    let queries = kpi::queries::load(&queries_dir()).unwrap();
    let report = kpi::run(
        &*home.store().unwrap(),
        &queries,
        &tripflow::model::declared::Fields::default(),
        &DateSelection::All,
        &location,
        Formats { parquet: true },
        &tripflow::observe::progress::Quiet,
    )
    .await
    .unwrap();
    (home, out, report.dates)
}

fn count(batches: &[arrow::array::RecordBatch]) -> i64 {
    let col = arrow::compute::cast(batches[0].column(0), &DataType::Int64).unwrap();
    arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&col).value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_keep_the_table_types_and_prune_by_date() {
    let tmp = tempfile::tempdir().unwrap();
    let (_home, out, dates) = parquet_outputs(tmp.path()).await;
    let session = SqlSession::open(out.to_str().unwrap(), None).await.unwrap();
    assert_eq!(session.tables(), ["trips", "kpis"]);

    let schema = session.query("SELECT * FROM trips LIMIT 1").await.unwrap()[0].schema();
    assert_eq!(
        schema.field_with_name("pickup_datetime").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(schema.field_with_name("fare_amount").unwrap().data_type(), &DataType::Decimal128(38, 18));
    assert_eq!(schema.field_with_name("trip_date").unwrap().data_type(), &DataType::Date32);

    // Every date's trips are in the snapshot, and agree with that date's KPI file.
    let day = dates[1];
    let kpi: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(format!("kpi_output/date={day}/kpi.json"))).unwrap()).unwrap();
    let sql = format!("SELECT count(*) FROM trips WHERE trip_date = DATE '{day}' AND trip_completed");
    assert_eq!(count(&session.query(&sql).await.unwrap()), kpi["total_trips"].as_i64().unwrap());
    let from_kpis = session.query(&format!("SELECT total_trips FROM kpis WHERE date = DATE '{day}'")).await.unwrap();
    assert_eq!(count(&from_kpis), kpi["total_trips"].as_i64().unwrap());

    // Pruning: spoil every other date's file; a query filtered on `day` never opens them.
    for other in dates.iter().filter(|d| **d != day) {
        std::fs::write(out.join(format!("snapshots/trip_date={other}/trips.parquet")), b"not parquet").unwrap();
    }
    let session = SqlSession::open(out.to_str().unwrap(), None).await.unwrap();
    assert_eq!(count(&session.query(&sql).await.unwrap()), kpi["total_trips"].as_i64().unwrap());
    assert!(session.query("SELECT count(*) FROM trips").await.is_err(), "unfiltered, it reads the spoiled files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_is_read_only_and_prints_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let (_home, out, _) = parquet_outputs(tmp.path()).await;
    let session = SqlSession::open(out.to_str().unwrap(), None).await.unwrap();
    for statement in [
        "CREATE TABLE x AS SELECT 1",
        "INSERT INTO trips SELECT * FROM trips",
        "DROP TABLE trips",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let err = session.query(statement).await.unwrap_err().to_string();
        assert!(err.contains("read-only"), "{statement}: {err}");
    }
    let batches = session.query("SELECT trip_date, total_trips FROM kpis ORDER BY trip_date LIMIT 2").await.unwrap();
    let table = render(&batches, Format::Table).unwrap();
    assert!(table.starts_with("+") && table.contains("| trip_date "), "{table}");
    let csv = render(&batches, Format::Csv).unwrap();
    assert_eq!(csv.lines().next(), Some("trip_date,total_trips"));
    assert_eq!(csv.lines().count(), 3);
    let json: serde_json::Value = serde_json::from_str(&render(&batches, Format::Json).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    let ndjson = render(&batches, Format::Ndjson).unwrap();
    assert_eq!(ndjson.lines().count(), 2);
    assert!(ndjson.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

#[tokio::test]
async fn a_location_without_snapshots_says_how_to_make_them() {
    let tmp = tempfile::tempdir().unwrap();
    let err = SqlSession::open(tmp.path().to_str().unwrap(), None).await.err().unwrap().to_string();
    assert!(err.contains("--parquet"), "{err}");
    let err = SqlSession::open("/no/such/dir", None).await.err().unwrap().to_string();
    assert!(err.contains("no such folder"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_query_files_are_named_with_their_line_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let home = home_from_data(tmp.path()).await;
    let cases = [
        ("syntax.sql", "-- name: broken\nSELECT trip_date,\n  COUNT(* AS n\nFROM trips", "syntax.sql:3"),
        ("unknown.sql", "SELECT trip_date,\n  no_such_column\nFROM trips", "no_such_column"),
    ];
    for (file, sql, expect) in cases {
        let queries = tmp.path().join(format!("q-{file}"));
        std::fs::create_dir_all(&queries).unwrap();
        std::fs::copy(queries_dir().join("daily_kpis.sql"), queries.join("daily_kpis.sql")).unwrap();
        std::fs::write(queries.join(file), sql).unwrap();
        let out = tmp.path().join(format!("out-{file}"));
        let location = OutputLocation::parse(out.to_str().unwrap(), None).unwrap();
        let loaded = kpi::queries::load(&queries).unwrap();
        let err = kpi::run(
            &*home.store().unwrap(),
            &loaded,
            &tripflow::model::declared::Fields::default(),
            &DateSelection::All,
            &location,
            Formats::default(),
            &tripflow::observe::progress::Quiet,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(file) && err.contains(expect), "{err}");
        assert!(crate::common::read_tree(&out).is_empty(), "a broken file writes nothing");
    }
}
