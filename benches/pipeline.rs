//! Criterion benches of the pipeline's stages, in rows per second. Data is generated
//! deterministically here, so anyone can rerun them: `cargo bench --bench pipeline`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tripflow::ingest::{coalesce::coalesce, decode::decode, validate::validate};
use tripflow::store::TripStore;
use tripflow::store::sqlite::SqliteStore;

/// `n` trips as wire records, a start and an end each, like the producer writes them.
fn records(n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(2 * n);
    for i in 0..n {
        let (h, m) = (i / 60 % 24, i % 60);
        out.push(format!(
            r#"{{"event_type":"trip_start","trip_id":"{i:010x}","pickup_location_id":93,"dropoff_location_id":{},"vendor_id":1,"pickup_datetime":"2024-05-25 {h:02}:{m:02}:00","estimated_dropoff_datetime":"2024-05-25 {h:02}:{m:02}:30","estimated_fare_amount":34.18595283806629}}"#,
            i % 265
        ).into_bytes());
        out.push(format!(
            r#"{{"event_type":"trip_end","trip_id":"{i:010x}","dropoff_datetime":"2024-05-25 {h:02}:{m:02}:59","rate_code":5.0,"passenger_count":1.0,"trip_distance":0.1,"fare_amount":{}.09620692463166,"tip_amount":0.0,"payment_type":3.0,"trip_type":2.0}}"#,
            i % 90
        ).into_bytes());
    }
    out
}

fn decode_validate(c: &mut Criterion) {
    let batch = records(2048);
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
    let batch = records(2048);
    let validated = validate(&decode(batch.iter().map(Vec::as_slice))).unwrap();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.sample_size(10);
    g.bench_function("coalesce_merge_4096_events_sqlite", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(dir.path()).unwrap();
                (dir, store)
            },
            |(_dir, store)| {
                let updates = coalesce(&validated).updates;
                black_box(rt.block_on(store.merge(updates)).unwrap())
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, decode_validate, merge);
criterion_main!(benches);
