//! Edge values through the whole embedded pipeline (issue 12 part 1): trips whose every
//! field sits at an edge (ids at and past the 64-bit limits, money of 20 digits and of
//! 18 places, exponents, `-0`, datetimes at the year edges with offsets up to ±23:59
//! and 0 to 9 fraction digits, any Unicode in `trip_id`) go through ingest, the trip
//! table and the export. Each event must either be dead-lettered with reasons naming
//! exactly the fields the generator made bad, or be read back from the export exactly
//! as an oracle that is not tripflow's code computes it; and the KPI queries must
//! still run over the table.
//!
//! The oracles: integers and datetimes are built from the numbers the generator chose
//! (datetimes with chrono's arithmetic); decimals are Arrow's own cast kernel over the
//! same value spelt out in plain text.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Decimal128Type, Int64Type, TimestampMicrosecondType};
use chrono::{NaiveDate, TimeDelta};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tripflow::config::Home;
use tripflow::ingest::IngestOptions;
use tripflow::ingest::deadletter::DeadLetterSink;
use tripflow::kpi::{self, DateSelection};
use tripflow::store::Projection;

use crate::common::{ingest, put_raw};

/// A generated value: its JSON text in the record, and what the table must hold
/// (`None`: validation must reject it).
#[derive(Debug, Clone)]
struct Edge<T> {
    json: String,
    expect: Option<T>,
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn integer() -> impl Strategy<Value = Edge<i64>> {
    let value = prop_oneof![
        Just(i128::from(i64::MIN)),
        Just(i128::from(i64::MAX)),
        Just(i128::from(i64::MIN) - 1),
        Just(i128::from(i64::MAX) + 1),
        Just(0i128),
        Just(-1i128),
        Just(10i128.pow(19)),
        any::<i64>().prop_map(i128::from),
        (-1000i128..1000),
    ];
    (value, 0u8..7, any::<bool>()).prop_map(|(v, spelling, as_string)| {
        let (text, whole) = match spelling {
            0 => (v.to_string(), true),
            1 => (format!("{v}.0"), true),
            2 => (format!("{v}.000"), true),
            3 => (format!("{v}e0"), true),
            4 if v == 0 => ("0.00e-2".to_owned(), true),
            4 => (format!("{v}00e-2"), true),
            5 if v == 0 => ("-0".to_owned(), true),
            _ => (format!("{v}.5"), false),
        };
        let json = if as_string { quoted(&text) } else { text };
        Edge { json, expect: i64::try_from(v).ok().filter(|_| whole) }
    })
}

/// What Arrow's cast kernel makes of plain text as `DECIMAL(38, 18)`.
fn by_kernel(plain: &str) -> Option<i128> {
    let safe = CastOptions { safe: true, ..Default::default() };
    let cast = cast_with_options(&StringArray::from(vec![plain]), &DataType::Decimal128(38, 18), &safe).unwrap();
    let cast = cast.as_primitive::<Decimal128Type>();
    cast.is_valid(0).then(|| cast.value(0))
}

fn decimal() -> impl Strategy<Value = Edge<i128>> {
    let digits = prop_oneof!["[1-9][0-9]{0,5}", "[1-9][0-9]{17,21}", "9{20,38}", "[1-9][0-9]{0,37}"];
    let special = prop_oneof![
        Just(("-0".to_owned(), Some(0))),
        Just(("-0.0".to_owned(), Some(0))),
        Just(("0e0".to_owned(), Some(0))),
        Just(("99999999999999999999.999999999999999999".to_owned(), Some(10i128.pow(38) - 1))),
        Just(("100000000000000000000".to_owned(), None)),
        Just(("\"NaN\"".to_owned(), None)),
        Just(("\"Infinity\"".to_owned(), None)),
        Just(("1e400".to_owned(), None)),
    ];
    prop_oneof![
        4 => (any::<bool>(), digits, -40i32..24, any::<bool>(), any::<bool>()).prop_map(
            |(negative, digits, exp, exponent_form, as_string)| {
                let plain = tripflow::fuzzing::spelt_out(negative, &digits, i64::from(exp));
                let text = if exponent_form {
                    format!("{}{digits}e{exp}", if negative { "-" } else { "" })
                } else {
                    plain.clone()
                };
                Edge { json: if as_string { quoted(&text) } else { text }, expect: by_kernel(&plain) }
            }
        ),
        1 => special.prop_map(|(json, expect)| Edge { json, expect }),
    ]
}

/// The first and last instants the table holds, in µs since the epoch.
fn instant_bounds() -> (i64, i64) {
    let first = NaiveDate::from_ymd_opt(1, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
    let last = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap().and_hms_micro_opt(23, 59, 59, 999_999).unwrap();
    (first.and_utc().timestamp_micros(), last.and_utc().timestamp_micros())
}

fn datetime() -> impl Strategy<Value = Edge<i64>> {
    let year = prop_oneof![0i32..=2, 9998i32..=9999, 1i32..=9999];
    let day = prop_oneof![Just((1u32, 1u32)), Just((12, 31)), (1u32..=12, 1u32..=28)];
    let time = (0u32..24, 0u32..60, 0u32..60);
    let fraction = "[0-9]{0,9}";
    let offset = prop_oneof![Just(None), (-1439i32..=1439).prop_map(Some)];
    (year, day, time, fraction, offset, any::<bool>()).prop_map(|(y, (mo, d), (h, mi, s), frac, offset, space)| {
        let zone = match offset {
            None => "Z".to_owned(),
            Some(m) => format!("{}{:02}:{:02}", if m < 0 { '-' } else { '+' }, m.abs() / 60, m.abs() % 60),
        };
        let dot = if frac.is_empty() { String::new() } else { format!(".{frac}") };
        let text = format!("{y:04}-{mo:02}-{d:02}{}{h:02}:{mi:02}:{s:02}{dot}{zone}", if space { ' ' } else { 'T' });
        // The wall time, less the offset, with the fraction cut to the microsecond.
        let micros: i64 = format!("{frac:0<6}")[..6].parse().unwrap();
        let wall = NaiveDate::from_ymd_opt(y, mo, d).unwrap().and_hms_micro_opt(h, mi, s, micros as u32).unwrap();
        let utc = wall - TimeDelta::minutes(i64::from(offset.unwrap_or(0)));
        let at = utc.and_utc().timestamp_micros();
        let (first, last) = instant_bounds();
        Edge { json: quoted(&text), expect: (first..=last).contains(&at).then_some(at) }
    })
}

fn trip_id() -> impl Strategy<Value = Edge<String>> {
    prop_oneof![
        4 => "\\PC{1,12}",
        2 => any::<String>(),
        1 => "[ \\t\\n\\u{3000}]{0,3}",
        1 => Just("x".repeat(1024)),
        1 => Just("é".repeat(513)),
    ]
    .prop_map(|id| {
        let blank = id.trim().is_empty();
        Edge { json: quoted(&id), expect: (!blank && id.len() <= 1024).then_some(id) }
    })
}

#[derive(Debug, Clone)]
struct Trip {
    id: Edge<String>,
    pickup_location_id: Edge<i64>,
    vendor_id: Edge<i64>,
    pickup_datetime: Edge<i64>,
    estimated_fare_amount: Edge<i128>,
    dropoff_datetime: Edge<i64>,
    fare_amount: Edge<i128>,
    tip_amount: Edge<i128>,
    payment_type: Edge<i128>,
}

fn trip() -> impl Strategy<Value = Trip> {
    (trip_id(), integer(), integer(), datetime(), decimal(), datetime(), decimal(), decimal(), decimal()).prop_map(
        |(
            id,
            pickup_location_id,
            vendor_id,
            pickup_datetime,
            estimated_fare_amount,
            dropoff_datetime,
            fare_amount,
            tip_amount,
            payment_type,
        )| Trip {
            id,
            pickup_location_id,
            vendor_id,
            pickup_datetime,
            estimated_fare_amount,
            dropoff_datetime,
            fare_amount,
            tip_amount,
            payment_type,
        },
    )
}

impl Trip {
    fn start(&self) -> (String, BTreeSet<&'static str>) {
        let json = format!(
            r#"{{"event_type":"trip_start","trip_id":{},"pickup_location_id":{},"dropoff_location_id":1,"vendor_id":{},"pickup_datetime":{},"estimated_fare_amount":{}}}"#,
            self.id.json,
            self.pickup_location_id.json,
            self.vendor_id.json,
            self.pickup_datetime.json,
            self.estimated_fare_amount.json
        );
        let bad = [
            ("trip_id", self.id.expect.is_none()),
            ("pickup_location_id", self.pickup_location_id.expect.is_none()),
            ("vendor_id", self.vendor_id.expect.is_none()),
            ("pickup_datetime", self.pickup_datetime.expect.is_none()),
            ("estimated_fare_amount", self.estimated_fare_amount.expect.is_none()),
        ];
        (json, bad.into_iter().filter(|(_, b)| *b).map(|(f, _)| f).collect())
    }

    fn end(&self) -> (String, BTreeSet<&'static str>) {
        let json = format!(
            r#"{{"event_type":"trip_end","trip_id":{},"dropoff_datetime":{},"fare_amount":{},"tip_amount":{},"payment_type":{}}}"#,
            self.id.json,
            self.dropoff_datetime.json,
            self.fare_amount.json,
            self.tip_amount.json,
            self.payment_type.json
        );
        let bad = [
            ("trip_id", self.id.expect.is_none()),
            ("dropoff_datetime", self.dropoff_datetime.expect.is_none()),
            ("fare_amount", self.fare_amount.expect.is_none()),
            ("tip_amount", self.tip_amount.expect.is_none()),
            ("payment_type", self.payment_type.expect.is_none()),
        ];
        (json, bad.into_iter().filter(|(_, b)| *b).map(|(f, _)| f).collect())
    }
}

/// The exported table, by trip_id: each row's batch and index.
fn by_trip(batches: &[RecordBatch]) -> BTreeMap<String, (RecordBatch, usize)> {
    let mut rows = BTreeMap::new();
    for b in batches {
        let ids = b.column_by_name("trip_id").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            rows.insert(ids.value(i).to_owned(), (b.clone(), i));
        }
    }
    rows
}

fn int(b: &RecordBatch, i: usize, name: &str) -> Option<i64> {
    let c = b.column_by_name(name).unwrap().as_primitive::<Int64Type>();
    c.is_valid(i).then(|| c.value(i))
}

fn micros(b: &RecordBatch, i: usize, name: &str) -> Option<i64> {
    let c = b.column_by_name(name).unwrap().as_primitive::<TimestampMicrosecondType>();
    c.is_valid(i).then(|| c.value(i))
}

fn dec(b: &RecordBatch, i: usize, name: &str) -> Option<i128> {
    let c = b.column_by_name(name).unwrap().as_primitive::<Decimal128Type>();
    c.is_valid(i).then(|| c.value(i))
}

/// One case: the trips (distinct ids) through ingest, export and the KPI queries.
fn check(trips: Vec<Trip>, rt: &tokio::runtime::Runtime) -> Result<(), TestCaseError> {
    let mut seen = BTreeSet::new();
    let trips: Vec<Trip> = trips.into_iter().filter(|t| seen.insert(t.id.json.clone())).collect();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path().join("home")).unwrap();
        let stream = home.stream(Some(2)).unwrap();
        let mut records = Vec::new();
        let mut expected_letters = Vec::new();
        for t in &trips {
            for (json, bad) in [t.start(), t.end()] {
                if !bad.is_empty() {
                    expected_letters.push((json.clone(), bad));
                }
                records.push(json.into_bytes());
            }
        }
        put_raw(&stream, &records).await;
        let counts = ingest(&home, &IngestOptions::default()).await.unwrap();
        prop_assert_eq!(counts.read, records.len() as u64);
        prop_assert_eq!(counts.dead_lettered, expected_letters.len() as u64);

        // Every dead letter names exactly the fields the generator made bad.
        let letters = home.dead_letters().unwrap().letters().await.unwrap();
        let mut named: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for l in &letters {
            let fields = l.reasons.iter().map(|r| r.split(':').next().unwrap().to_owned()).collect();
            named.insert(l.raw.clone().expect("records are text"), fields);
        }
        for (json, bad) in &expected_letters {
            let got = named.get(json);
            let want: BTreeSet<String> = bad.iter().map(|f| (*f).to_owned()).collect();
            prop_assert_eq!(got, Some(&want), "{}", json);
        }

        // Every accepted event is read back exactly.
        let store = home.store().unwrap();
        let rows = by_trip(&store.export(None, &Projection::all()).await.unwrap());
        for t in &trips {
            let start_ok = t.start().1.is_empty();
            let end_ok = t.end().1.is_empty();
            let Some(id) = &t.id.expect else { continue };
            let Some((b, i)) = rows.get(id) else {
                prop_assert!(!start_ok && !end_ok, "trip {:?} is missing", id);
                continue;
            };
            let i = *i;
            if start_ok {
                prop_assert_eq!(int(b, i, "pickup_location_id"), t.pickup_location_id.expect, "{:?}", id);
                prop_assert_eq!(int(b, i, "vendor_id"), t.vendor_id.expect);
                prop_assert_eq!(micros(b, i, "pickup_datetime"), t.pickup_datetime.expect);
                prop_assert_eq!(dec(b, i, "estimated_fare_amount"), t.estimated_fare_amount.expect);
            } else {
                prop_assert_eq!(micros(b, i, "pickup_datetime"), None);
            }
            if end_ok {
                prop_assert_eq!(micros(b, i, "dropoff_datetime"), t.dropoff_datetime.expect, "{:?}", id);
                prop_assert_eq!(dec(b, i, "fare_amount"), t.fare_amount.expect);
                prop_assert_eq!(dec(b, i, "tip_amount"), t.tip_amount.expect);
                prop_assert_eq!(dec(b, i, "payment_type"), t.payment_type.expect);
            } else {
                prop_assert_eq!(micros(b, i, "dropoff_datetime"), None);
            }
            let completed = b.column_by_name("trip_completed").unwrap().as_boolean();
            prop_assert_eq!(completed.value(i), start_ok && end_ok);
        }

        // And no accepted value stops the KPI job.
        let queries = kpi::queries::builtin();
        let run = kpi::run_queries(
            &*store,
            &queries,
            &tripflow::model::declared::Fields::default(),
            &DateSelection::All,
            kpi::ExportColumns::Queried,
            &tripflow::observe::progress::Quiet,
        )
        .await;
        prop_assert!(run.is_ok(), "the KPI queries failed: {}", run.err().unwrap());
        Ok(())
    })
}

#[test]
fn every_edge_value_is_dead_lettered_with_its_field_or_kept_exactly() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    runner.run(&prop::collection::vec(trip(), 1..8), |trips| check(trips, &rt)).unwrap_or_else(|e| panic!("{e}"));
}
