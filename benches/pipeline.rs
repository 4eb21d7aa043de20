//! Criterion benches of the pipeline's stages, in rows per second. Data is generated
//! deterministically here, so anyone can rerun them: `cargo bench --bench pipeline`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tripflow::ingest::{coalesce::coalesce, decode::decode, validate::validate};
use tripflow::kpi::ExportColumns;
use tripflow::store::TripStore;
use tripflow::store::lsm::LsmStore;
use tripflow::store::sqlite::SqliteStore;
use tripflow::stream::embedded::EmbeddedStream;
use tripflow::stream::{PutRecord, StartPosition, StreamSink, StreamSource};

/// Opens an engine's table in a folder.
type Open = fn(&std::path::Path) -> Box<dyn TripStore>;

/// The embedded trip-table engines, by name: the LSM table (the default) and SQLite.
const ENGINES: [(&str, Open); 2] = [
    ("lsm", |dir| Box::new(LsmStore::open(dir).unwrap())),
    ("sqlite", |dir| Box::new(SqliteStore::open(dir).unwrap())),
];

/// Trips `ids` as wire records, a start and an end each, like the producer writes them.
/// Trip ids are scattered (a bijective hash of the number), as real ids are random.
fn records(ids: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(2 * ids.len());
    for n in ids {
        let i = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (h, m) = (n / 60 % 24, n % 60);
        out.push(format!(
            r#"{{"event_type":"trip_start","trip_id":"{i:016x}","pickup_location_id":93,"dropoff_location_id":{},"vendor_id":1,"pickup_datetime":"2024-05-25 {h:02}:{m:02}:00","estimated_dropoff_datetime":"2024-05-25 {h:02}:{m:02}:30","estimated_fare_amount":34.18595283806629}}"#,
            n % 265
        ).into_bytes());
        out.push(format!(
            r#"{{"event_type":"trip_end","trip_id":"{i:016x}","dropoff_datetime":"2024-05-25 {h:02}:{m:02}:59","rate_code":5.0,"passenger_count":1.0,"trip_distance":0.1,"fare_amount":{}.09620692463166,"tip_amount":0.0,"payment_type":3.0,"trip_type":2.0}}"#,
            n % 90
        ).into_bytes());
    }
    out
}

/// Opens a format's stream of a number of shards in a folder.
type OpenStream = fn(&std::path::Path, u32) -> EmbeddedStream;
/// The embedded stream's formats, by name: the segment log (the default) and the
/// SQLite table of homes made before it.
const STREAMS: [(&str, OpenStream); 2] = [
    ("log", |dir, shards| EmbeddedStream::open(dir, Some(shards)).unwrap()),
    ("sqlite", |dir, shards| EmbeddedStream::open_sqlite(dir, Some(shards)).unwrap()),
];

/// A put call as produce makes it (8,192 events over 4 shards, synced), and a read of
/// 65,536 events as ingest makes it, on each format.
fn stream(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let puts: Vec<PutRecord> = records(0..4096)
        .into_iter()
        .enumerate()
        .map(|(i, data)| PutRecord {
            partition_key: format!("{:016x}", (i / 2).wrapping_mul(0x9E37_79B9)).into(),
            data,
        })
        .collect();
    let mut g = c.benchmark_group("stream");
    g.sample_size(20);
    for (format, open) in STREAMS {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 4);
        g.throughput(Throughput::Elements(puts.len() as u64));
        g.bench_function(format!("put_8192_events_{format}"), |b| {
            b.iter(|| black_box(rt.block_on(s.put_records(&puts)).unwrap()))
        });
        let one = tempfile::tempdir().unwrap();
        let s = open(one.path(), 1);
        for _ in 0..8 {
            rt.block_on(s.put_records(&puts)).unwrap();
        }
        let shard = "shardId-000000000000".to_string();
        let it = rt.block_on(s.iterator(&shard, &StartPosition::TrimHorizon)).unwrap();
        g.throughput(Throughput::Elements(65_536));
        g.bench_function(format!("read_65536_events_{format}"), |b| {
            b.iter(|| {
                let r = rt.block_on(s.read(&it, 65_536, usize::MAX)).unwrap();
                assert_eq!(r.records.len(), 65_536);
                black_box(r)
            })
        });
    }
    g.finish();
}

fn decode_validate(c: &mut Criterion) {
    let batch = records(0..2048);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("decode_validate_4096_events", |b| {
        b.iter(|| {
            let d = decode(batch.iter().map(Vec::as_slice));
            black_box(validate(&d).unwrap())
        })
    });
    g.finish();
}

fn merge(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let batch = records(0..2048);
    let validated = validate(&decode(batch.iter().map(Vec::as_slice))).unwrap();
    let n = table_trips();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.sample_size(10);
    for (engine, open) in ENGINES {
        g.bench_function(format!("coalesce_merge_4096_events_{engine}"), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().unwrap();
                    let store = open(dir.path());
                    (dir, store)
                },
                |(_dir, store)| {
                    let updates = coalesce(&validated, false).updates;
                    black_box(rt.block_on(store.merge(updates)).unwrap())
                },
                BatchSize::PerIteration,
            )
        });
        // The steady state: new trips into a table that is already big, where a
        // B-tree's pages no longer fit its cache. Each iteration brings 2,048 trips
        // not seen before, so the table grows as the bench runs.
        let table = std::cell::OnceCell::new();
        let mut next = n;
        g.bench_function(format!("merge_4096_events_into_{n}_trips_{engine}"), |b| {
            let store = &table.get_or_init(|| table_of(&rt, open, n)).1;
            b.iter_batched(
                || {
                    let fresh = records(next..next + 2048);
                    next += 2048;
                    coalesce(&validate(&decode(fresh.iter().map(Vec::as_slice))).unwrap(), false).updates
                },
                |updates| black_box(rt.block_on(store.merge(updates)).unwrap()),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// Trips in the table the export and KPI benches read: `TRIPFLOW_BENCH_TRIPS`, default
/// 1,000,000 under `cargo bench`, and 10,000 in the smoke run of `cargo test --benches`.
fn table_trips() -> usize {
    let benching = std::env::args().any(|a| a == "--bench");
    let default = if benching { 1_000_000 } else { 10_000 };
    std::env::var("TRIPFLOW_BENCH_TRIPS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A table of `n` completed trips over several days, built through the real merge.
fn table_of(rt: &tokio::runtime::Runtime, open: Open, n: usize) -> (tempfile::TempDir, Box<dyn TripStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for start in (0..n).step_by(16_384) {
        let chunk = records(start..n.min(start + 16_384));
        let validated = validate(&decode(chunk.iter().map(Vec::as_slice))).unwrap();
        rt.block_on(store.merge(coalesce(&validated, false).updates)).unwrap();
    }
    (dir, store)
}

fn export_and_kpis(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = table_trips();
    let queries =
        tripflow::kpi::queries::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/queries"))).unwrap();
    let mut g = c.benchmark_group("kpi");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    let every_column = tripflow::store::Projection::all();
    for (engine, open) in ENGINES {
        // Built on first use, so that benching another group does not build a table.
        let table = std::cell::OnceCell::new();
        let store = || &*table.get_or_init(|| table_of(&rt, open, n)).1;
        g.bench_function(format!("export_{n}_trips_{engine}"), |b| {
            let store = store();
            b.iter(|| black_box(rt.block_on(store.export(None, &every_column)).unwrap()))
        });
        for (name, columns) in [("queried", ExportColumns::Queried), ("all", ExportColumns::All)] {
            g.bench_function(format!("export_{name}_columns_and_queries_{n}_trips_{engine}"), |b| {
                let store = store();
                b.iter(|| {
                    let all = tripflow::kpi::DateSelection::All;
                    black_box(
                        rt.block_on(tripflow::kpi::run_queries(
                            store,
                            &queries,
                            &tripflow::model::declared::Fields::default(),
                            &all,
                            columns,
                            &tripflow::observe::progress::Quiet,
                        ))
                        .unwrap(),
                    )
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, stream, decode_validate, merge, export_and_kpis);
criterion_main!(benches);
