//! One test per class of bad record: each goes to the dead letters with its reasons,
//! the good record batched beside it is still merged, and the counts balance.

use tripflow::config::Home;
use tripflow::ingest::IngestOptions;
use tripflow::ingest::deadletter::FileDeadLetters;

use crate::common::{end_event, ingest, kpi_files, put_raw, start_event};

const GOOD_TRIP: &str = "good-trip";

/// Ingests `bad` between two good events in one batch; returns each bad record's reasons.
async fn reasons(bad: &[&str]) -> Vec<Vec<String>> {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path()).unwrap();
    let stream = home.stream(Some(1)).unwrap();
    let mut records = vec![start_event(GOOD_TRIP, "2024-05-25 13:19:00").into_bytes()];
    records.extend(bad.iter().map(|r| r.as_bytes().to_vec()));
    records.push(end_event(GOOD_TRIP, "2024-05-25 14:05:00", "40.09620692463166").into_bytes());
    put_raw(&stream, &records).await;

    let counts = ingest(&home, &IngestOptions::default()).await.unwrap();
    assert_eq!(counts.batches, 1);
    assert_eq!(counts.dead_lettered, bad.len() as u64);
    assert_eq!(counts.applied, 2, "the good events beside the bad ones are merged");
    assert!(counts.balanced(), "{counts:?}");
    let item = home.store().unwrap().get(GOOD_TRIP).await.unwrap().unwrap();
    assert!(item.trip_completed());

    let letters = FileDeadLetters::read_all(&home.dead_letter_path()).unwrap();
    assert_eq!(letters.len(), bad.len());
    for (letter, raw) in letters.iter().zip(bad) {
        assert_eq!(letter.raw.as_deref(), Some(*raw), "the raw record is kept byte for byte");
        assert_eq!(letter.shard, "shardId-000000000000");
        assert!(!letter.sequence_number.is_empty());
    }
    letters.into_iter().map(|l| l.reasons).collect()
}

fn assert_reason(reasons: &[String], expected: &str) {
    assert!(reasons.iter().any(|r| r == expected), "expected {expected:?} in {reasons:?}");
}

#[tokio::test]
async fn not_json_truncated_json_and_non_objects() {
    let r =
        reasons(&["not json at all", r#"{"event_type":"trip_end","trip_id":"t1""#, r#"["trip_end","t1"]"#, "42"]).await;
    assert!(r[0][0].starts_with("record: not JSON"), "{:?}", r[0]);
    assert!(r[1][0].starts_with("record: not JSON"), "{:?}", r[1]);
    assert_eq!(r[2], ["record: JSON, but not an object"]);
    assert_eq!(r[3], ["record: JSON, but not an object"]);
}

#[tokio::test]
async fn unknown_event_type() {
    let r = reasons(&[&start_event("t1", "2024-05-25 13:19:00").replace("trip_start", "trip_pause")]).await;
    assert_eq!(r[0], ["event_type: unknown \"trip_pause\" (expected trip_start, trip_end, start or end)"]);
}

#[tokio::test]
async fn each_required_field_missing() {
    let start = start_event("t1", "2024-05-25 13:19:00");
    let end = end_event("t1", "2024-05-25 14:05:00", "12.5");
    let mut bad = Vec::new();
    let mut expected = Vec::new();
    for (event, field) in [
        (&start, "trip_id"),
        (&start, "pickup_location_id"),
        (&start, "dropoff_location_id"),
        (&start, "vendor_id"),
        (&end, "trip_id"),
        (&end, "fare_amount"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(event).unwrap();
        v.as_object_mut().unwrap().remove(field);
        bad.push(v.to_string());
        expected.push(format!("{field}: missing"));
    }
    // Without its version field an event's kind is still known from event_type.
    for (event, field) in [(&start, "pickup_datetime"), (&end, "dropoff_datetime")] {
        let mut v: serde_json::Value = serde_json::from_str(event).unwrap();
        v.as_object_mut().unwrap().remove(field);
        bad.push(v.to_string());
        expected.push(format!("{field}: missing"));
    }
    let refs: Vec<&str> = bad.iter().map(String::as_str).collect();
    let r = reasons(&refs).await;
    for (got, want) in r.iter().zip(&expected) {
        assert_eq!(got, std::slice::from_ref(want));
    }
}

#[tokio::test]
async fn a_missing_event_type_is_inferred_or_reasoned() {
    let r = reasons(&[r#"{"trip_id":"t1","fare_amount":3}"#]).await;
    assert_eq!(r[0], ["event_type: missing, and neither pickup_datetime nor dropoff_datetime tells the kind"]);
}

#[tokio::test]
async fn wrong_types() {
    let r = reasons(&[
        &end_event("t1", "2024-05-25 14:05:00", "true"),
        &start_event("t2", "2024-05-25 13:19:00").replace(r#""vendor_id":1"#, r#""vendor_id":{"id":1}"#),
        &start_event("t3", "2024-05-25 13:19:00").replace(r#""vendor_id":1"#, r#""vendor_id":"one""#),
        &end_event("t4", "2024-05-25 14:05:00", "1").replace(r#""trip_id":"t4""#, r#""trip_id":[4]"#),
    ])
    .await;
    assert_eq!(r[0], ["fare_amount: wrong type: expected a string or a number, got a boolean"]);
    assert_eq!(r[1], ["vendor_id: wrong type: expected a string or a number, got an object"]);
    assert_eq!(r[2], ["vendor_id: not an integer: \"one\""]);
    assert_eq!(r[3], ["trip_id: wrong type: expected a string or a number, got an array"]);
}

#[tokio::test]
async fn non_iso_datetimes() {
    let r = reasons(&[
        &start_event("t1", "25-05-2024 13:19"),
        &end_event("t2", "2024-05-25", "1"),
        &end_event("t3", "2024-13-45 25:00:00", "1"),
    ])
    .await;
    assert_eq!(r[0], ["pickup_datetime: not ISO 8601: \"25-05-2024 13:19\""]);
    assert_eq!(r[1], ["dropoff_datetime: not ISO 8601: \"2024-05-25\""]);
    assert_eq!(r[2], ["dropoff_datetime: not ISO 8601: \"2024-13-45 25:00:00\""]);
}

#[tokio::test]
async fn fractional_ids() {
    let r =
        reasons(&[&start_event("t1", "2024-05-25 13:19:00")
            .replace(r#""pickup_location_id":93"#, r#""pickup_location_id":93.5"#)])
        .await;
    assert_eq!(r[0], ["pickup_location_id: not a whole number: \"93.5\""]);
}

#[tokio::test]
async fn nan_infinity_and_overflowing_numbers() {
    let r = reasons(&[
        &end_event("t1", "2024-05-25 14:05:00", "\"NaN\""),
        &end_event("t2", "2024-05-25 14:05:00", "\"Infinity\""),
        &end_event("t3", "2024-05-25 14:05:00", "1e400"),
        &end_event("t4", "2024-05-25 14:05:00", "NaN"),
    ])
    .await;
    for (got, value) in r.iter().zip(["\"NaN\"", "\"Infinity\"", "\"1e400\""]) {
        assert_eq!(got, &[format!("fare_amount: not a finite decimal within ±10^20: {value}")]);
    }
    assert!(r[3][0].starts_with("record: not JSON"), "bare NaN is not JSON: {:?}", r[3]);
}

#[tokio::test]
async fn empty_trip_ids() {
    let r = reasons(&[&start_event("", "2024-05-25 13:19:00"), &end_event("   ", "2024-05-25 14:05:00", "1")]).await;
    assert_eq!(r[0], ["trip_id: empty"]);
    assert_eq!(r[1], ["trip_id: empty"]);
}

#[tokio::test]
async fn every_reason_of_a_record_is_given() {
    let r = reasons(&[
        r#"{"event_type":"start","trip_id":"","pickup_location_id":1.5,"vendor_id":"x","pickup_datetime":"yesterday"}"#,
    ])
    .await;
    assert_reason(&r[0], "trip_id: empty");
    assert_reason(&r[0], "pickup_location_id: not a whole number: \"1.5\"");
    assert_reason(&r[0], "dropoff_location_id: missing");
    assert_reason(&r[0], "vendor_id: not an integer: \"x\"");
    assert_reason(&r[0], "pickup_datetime: not ISO 8601: \"yesterday\"");
    assert_eq!(r[0].len(), 5);
}

/// Valid ISO 8601 whose instant falls outside years 0001–9999 once in UTC: stored, such a
/// value stopped every later KPI run (`store: stored pickup_datetime does not convert`).
#[tokio::test]
async fn instants_outside_years_0001_to_9999_in_utc() {
    let r = reasons(&[
        &start_event("p1", "0000-01-01T00:30:00+01:00"),
        &start_event("p2", "9999-12-31T23:30:00-01:00"),
        &end_event("p3", "0000-12-31 23:59:59", "1"),
        &start_event("p4", "2024-05-25 13:19:00").replace("2024-05-25 14:03:00", "0001-01-01T00:00:00+00:01"),
    ])
    .await;
    let outside = |field: &str, value: &str, utc: &str| {
        vec![format!("{field}: outside years 0001-9999 once in UTC: \"{value}\" is {utc}")]
    };
    assert_eq!(r[0], outside("pickup_datetime", "0000-01-01T00:30:00+01:00", "-0001-12-31T23:30:00.000000Z"));
    assert_eq!(r[1], outside("pickup_datetime", "9999-12-31T23:30:00-01:00", "+10000-01-01T00:30:00.000000Z"));
    assert_eq!(r[2], outside("dropoff_datetime", "0000-12-31 23:59:59", "0000-12-31T23:59:59.000000Z"));
    assert_eq!(r[3], outside("estimated_dropoff_datetime", "0001-01-01T00:00:00+00:01", "0000-12-31T23:59:00.000000Z"));
}

/// The first and last representable instants are stored and reported exactly, and a
/// poison record beside them leaves `kpi --all` working.
#[tokio::test]
async fn edge_instants_are_kept_and_poison_ones_never_stop_the_kpi_job() {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path()).unwrap();
    let stream = home.stream(Some(1)).unwrap();
    let records = [
        start_event("first", "0001-01-01T00:00:00Z"),
        end_event("first", "0001-01-01T01:00:00+01:00", "12.5"),
        start_event("last", "9999-12-31T23:59:59.999999Z"),
        end_event("last", "9999-12-31T22:59:59.9999999-01:00", "7.25"),
        start_event("poison", "0000-01-01T00:30:00+01:00"),
        end_event("poison", "2024-05-25 14:05:00", "3"),
    ];
    put_raw(&stream, &records.map(String::into_bytes)).await;
    let counts = ingest(&home, &IngestOptions::default()).await.unwrap();
    assert_eq!((counts.read, counts.applied, counts.dead_lettered), (6, 5, 1), "{counts:?}");

    let store = home.store().unwrap();
    let first = store.get("first").await.unwrap().unwrap();
    assert_eq!(first.start.unwrap().version(), "0001-01-01T00:00:00.000000Z");
    assert_eq!(first.end.unwrap().version(), "0001-01-01T00:00:00.000000Z");
    let last = store.get("last").await.unwrap().unwrap();
    assert_eq!(last.end.unwrap().version(), "9999-12-31T23:59:59.999999Z");
    assert!(store.get("poison").await.unwrap().unwrap().start.is_none(), "the poison start is not stored");

    let files = kpi_files(&home, &tmp.path().join("out")).await;
    let kpi = |date: &str| -> serde_json::Value {
        serde_json::from_slice(&files.get(&format!("kpi_output/date={date}/kpi.json")).expect(date)[..]).unwrap()
    };
    assert_eq!(kpi("0001-01-01")["total_fare"].as_f64(), Some(12.5));
    assert_eq!(kpi("9999-12-31")["max_fare"].as_f64(), Some(7.25));
    assert!(!files.contains_key("kpi_output/date=2024-05-25/kpi.json"), "the poison trip never completed");
}
