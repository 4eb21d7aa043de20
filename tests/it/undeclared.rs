//! Undeclared fields (docs/design.md §2): kept with their group on every store, versioned
//! with it, and counted once per record in the ledger; and, from the command line, the
//! `reject` policy and `tripflow fields`.

use std::path::Path;
use std::process::{Command, Output};

use tripflow::model::declared::Fields;
use tripflow::model::extra::{Extras, JsonType};
use tripflow::store::ledger::Sighting;
use tripflow::store::{EndGroup, StartGroup, TripItem, TripStore, TripUpdate};
use tripflow::stream::SequenceNumber;

fn start(at: &str, extras: &[(&str, &str)]) -> StartGroup {
    let pickup = format!("2024-05-25T{at}:00.000000Z");
    StartGroup::of([
        ("pickup_location_id", "93"),
        ("dropoff_location_id", "94"),
        ("vendor_id", "1"),
        ("pickup_datetime", pickup.as_str()),
    ])
    .with_extras(Extras::from_pairs(extras.iter().copied()))
}

fn end(at: &str, extras: &[(&str, &str)]) -> EndGroup {
    let dropoff = format!("2024-05-25T{at}:00.000000Z");
    EndGroup::of([("dropoff_datetime", dropoff.as_str()), ("fare_amount", "12.5")])
        .with_extras(Extras::from_pairs(extras.iter().copied()))
}

/// A trip's events in one order: each a start or an end, with its fields.
fn events() -> Vec<(Option<StartGroup>, Option<EndGroup>)> {
    vec![
        (Some(start("10:00", &[("app", r#""v1""#)])), None),
        (Some(start("10:05", &[("app", r#""v2""#), ("surge", "1.5")])), None),
        (None, Some(end("10:30", &[("surge", "1.5"), ("tags", r#"["a"]"#)]))),
        (None, Some(end("10:40", &[]))),
    ]
}

/// Every order of [`events`], each delivered twice (a replay), gives the item of one
/// clean run: the newest start with its fields, the newest end with none (it carried
/// none, so the older end's fields are gone with it).
pub async fn kept_fields_go_with_the_winning_group(store: &dyn TripStore) {
    let all = events();
    let orders: Vec<Vec<usize>> = permutations(all.len());
    // One trip per order; each round merges the next event of every trip in one call.
    for round in 0..2 * all.len() {
        let updates = orders
            .iter()
            .enumerate()
            .map(|(k, order)| {
                let (s, e) = all[order[round % all.len()]].clone();
                TripUpdate { trip_id: format!("t{k}").into(), start: s, end: e }
            })
            .collect();
        store.merge(updates).await.unwrap();
    }
    let want_start = all[1].0.clone().unwrap();
    let want_end = all[3].1.clone().unwrap();
    for (k, order) in orders.iter().enumerate() {
        let item = store.get(&format!("t{k}")).await.unwrap().unwrap();
        assert_eq!(item.start.as_ref(), Some(&want_start), "order {order:?}");
        assert_eq!(item.end.as_ref(), Some(&want_end), "order {order:?}");
        assert_eq!(item.start.unwrap().extras().get("surge").as_deref(), Some("1.5"));
    }
    // A stale group brings nothing; an equal one (a duplicate with other fields) neither.
    let stale = TripUpdate { trip_id: "t0".into(), start: Some(start("09:00", &[("x", "1")])), end: None };
    let dup = TripUpdate { trip_id: "t1".into(), start: None, end: Some(end("10:40", &[("x", "1")])) };
    assert_eq!(store.merge(vec![stale, dup]).await.unwrap(), [Default::default(), Default::default()]);
    let t0: TripItem = store.get("t0").await.unwrap().unwrap();
    assert_eq!(t0.start, Some(want_start));
    assert!(store.get("t1").await.unwrap().unwrap().end.unwrap().extras().is_empty());
    // A newer end with fields stores them, nested values and all.
    let newer = end("11:00", &[("tags", r#"[1, {"a": "b c"}]"#), ("note", r#""é\"x""#)]);
    store.merge(vec![TripUpdate { trip_id: "t2".into(), start: None, end: Some(newer.clone()) }]).await.unwrap();
    let stored = store.get("t2").await.unwrap().unwrap().end.unwrap();
    assert_eq!(stored, newer);
    assert_eq!(stored.extras().as_json(), Some(r#"{"note":"é\"x","tags":[1,{"a":"b c"}]}"#));
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for rest in permutations(n - 1) {
        for at in 0..=rest.len() {
            let mut p = rest.clone();
            p.insert(at, n - 1);
            all.push(p);
        }
    }
    all
}

fn sighting(
    position: &str,
    seq: u64,
    kind: tripflow::model::event::EventKind,
    fields: &[(&str, JsonType)],
) -> Sighting {
    Sighting {
        position: position.into(),
        sequence: SequenceNumber::from_u64(seq),
        kind,
        event_time: Some("2024-05-25 10:30:00".into()),
        fields: fields.iter().map(|&(n, t)| (n.to_owned(), t)).collect(),
    }
}

/// The ledger counts each record once, however often its batch is replayed, sums the
/// shards, reports a type conflict, and stays out of the changed dates.
pub async fn the_ledger_counts_each_record_once(store: &dyn TripStore) {
    use tripflow::model::event::EventKind::{End, Start};
    assert!(store.seen_fields().await.unwrap().is_empty());
    let batch = [
        sighting("s/0", 1, End, &[("surge", JsonType::Number)]),
        sighting("s/1", 1, End, &[("surge", JsonType::String), ("app", JsonType::String)]),
        sighting("s/0", 2, Start, &[("app", JsonType::String)]),
    ];
    let mut first = store.record_fields(&batch[..2]).await.unwrap();
    first.sort();
    assert_eq!(first, ["end/app", "end/surge"]);
    // A replay of the whole batch after a crash: only the third record is new.
    assert_eq!(store.record_fields(&batch).await.unwrap(), ["start/app"]);
    assert!(store.record_fields(&batch).await.unwrap().is_empty());
    let seen = store.seen_fields().await.unwrap();
    let summary: Vec<(String, String, u64, bool)> =
        seen.iter().map(|f| (f.group.clone(), f.name.clone(), f.events, f.conflict())).collect();
    assert_eq!(
        summary,
        [
            ("start".into(), "app".into(), 1, false),
            ("end".into(), "app".into(), 1, false),
            ("end".into(), "surge".into(), 2, true),
        ]
    );
    let surge = &seen[2];
    assert_eq!((surge.types[&JsonType::Number], surge.types[&JsonType::String]), (1, 1));
    assert_eq!(surge.first_seen.event_time.as_deref(), Some("2024-05-25 10:30:00"));
    assert!(store.changed_dates().await.unwrap().is_empty(), "the ledger is no changed date");
}

/// Every kept field is a text column of `trips` under its own name, in exports and in
/// the KPI queries: a string's content, a number's literal, an object's JSON; the end's
/// value where both groups carry the name; a field named like a built-in column never
/// shadows it.
pub async fn kept_fields_are_text_columns_of_trips(store: &dyn TripStore) {
    use arrow::array::AsArray;
    use tripflow::model::event::EventKind::{End, Start};
    let trips = vec![
        TripUpdate {
            trip_id: "a".into(),
            start: Some(start("10:00", &[("app", r#""ios""#)])),
            end: Some(end("10:30", &[("surge", "1.50"), ("app", r#""android""#), ("trip_date", r#""x""#)])),
        },
        TripUpdate {
            trip_id: "b".into(),
            start: Some(start("11:00", &[("app", r#""ios""#)])),
            end: Some(end("11:30", &[("surge", r#"{"k": [1]}"#)])),
        },
        TripUpdate {
            trip_id: "c".into(),
            start: Some(start("12:00", &[])),
            end: Some(end("12:30", &[("surge", "2")])),
        },
    ];
    store.merge(trips).await.unwrap();
    let sightings = [
        sighting("s/0", 1, Start, &[("app", JsonType::String)]),
        sighting(
            "s/0",
            2,
            End,
            &[("surge", JsonType::Number), ("app", JsonType::String), ("trip_date", JsonType::String)],
        ),
    ];
    store.record_fields(&sightings).await.unwrap();
    let kept = tripflow::kpi::table_columns(store, &Fields::default()).await.unwrap();
    let names: Vec<&str> = kept.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "surge"], "trip_date is trips' own");

    let whole = tripflow::store::Projection::all_with(kept.clone());
    let batches = store.export(None, &whole).await.unwrap();
    let batch = arrow::compute::concat_batches(&whole.schema(), &batches).unwrap();
    assert_eq!(batch.schema().fields().len(), tripflow::model::event::TRIP_SCHEMA.fields().len() + 2);
    let column = |name: &str| -> Vec<Option<String>> {
        batch.column_by_name(name).unwrap().as_string::<i32>().iter().map(|v| v.map(str::to_owned)).collect()
    };
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(column("trip_id"), [s("a"), s("b"), s("c")]);
    assert_eq!(column("app"), [s("android"), s("ios"), None], "the end's value, else the start's");
    assert_eq!(column("surge"), [s("1.50"), s(r#"{"k":[1]}"#), s("2")]);

    // A KPI query over a kept field, read as text until it is declared.
    let q = tripflow::kpi::KpiQuery::parse(
        std::path::Path::new("by_app.sql"),
        "SELECT trip_date, app, count(*) AS trips, sum(CAST(surge AS DECIMAL(10, 2))) AS surge \
         FROM trips WHERE surge NOT LIKE '{%' GROUP BY trip_date, app ORDER BY app"
            .into(),
    );
    let (results, _) = tripflow::kpi::run_queries(
        store,
        &[q],
        &tripflow::model::declared::Fields::default(),
        &tripflow::kpi::DateSelection::All,
        tripflow::kpi::ExportColumns::Queried,
        &tripflow::observe::progress::Quiet,
    )
    .await
    .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&results[0].batches).unwrap().to_string();
    assert!(text.contains("| 2024-05-25 | android | 1     | 1.50  |"), "{text}");
    assert!(text.contains("| 2024-05-25 |         | 1     | 2.00  |"), "{text}");
    assert!(!text.contains("ios"), "{text}");
}

crate::store_suite::on_every_store!(
    kept_fields_go_with_the_winning_group,
    the_ledger_counts_each_record_once,
    kept_fields_are_text_columns_of_trips,
    a_declared_field_reads_its_kept_values_typed,
);

fn tripflow(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tripflow")).current_dir(dir).args(args).output().unwrap()
}

const START: &str = r#"{"event_type":"trip_start","trip_id":"T","pickup_location_id":93,"dropoff_location_id":93,"vendor_id":1,"pickup_datetime":"2024-05-25 13:19:00"}"#;

fn end_with(trip: &str, extra: &str) -> String {
    format!(
        r#"{{"event_type":"trip_end","trip_id":"{trip}","dropoff_datetime":"2024-05-25 14:05:00","fare_amount":40.5{extra}}}"#
    )
}

/// The records of the command-line tests: four trips, two of whose ends carry
/// undeclared fields (one of them twice, as a replay would).
fn records() -> String {
    let lines = [
        START.replace("\"T\"", "\"a\""),
        end_with("a", r#","surge_multiplier":1.25,"app":"ios""#),
        START.replace("\"T\"", "\"b\""),
        end_with("b", ""),
        end_with("c", r#","surge_multiplier":"high""#),
        end_with("c", r#","surge_multiplier":"high""#),
        end_with("d", ""),
    ];
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn counts(stdout: &str) -> &str {
    stdout.lines().find(|l| l.starts_with("read ")).unwrap_or_default()
}

#[test]
fn ingest_keeps_undeclared_fields_and_fields_lists_them() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("in.ndjson"), records()).unwrap();
    assert!(tripflow(tmp.path(), &["produce", "--ndjson", "in.ndjson"]).status.success());
    let out = tripflow(tmp.path(), &["ingest"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(counts(&stdout).starts_with("read 7 = applied 6 + duplicate_or_stale 1 + dead_lettered 0"), "{stdout}");

    let out = tripflow(tmp.path(), &["fields", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["declared"].as_array().unwrap().iter().any(|f| f["name"] == "fare_amount" && f["group"] == "end"));
    let undeclared = v["undeclared"].as_array().unwrap();
    let named = |n: &str| undeclared.iter().find(|f| f["name"] == n).unwrap_or_else(|| panic!("{n} in {v}"));
    let surge = named("surge_multiplier");
    // Three records carried it (the replayed duplicate too), as a number and as a string.
    assert_eq!((surge["group"].as_str(), surge["events"].as_u64()), (Some("end"), Some(3)));
    assert_eq!((surge["types"]["number"].as_u64(), surge["types"]["string"].as_u64()), (Some(1), Some(2)));
    assert_eq!(surge["conflict"], true);
    assert_eq!(surge["first_seen"]["event_time"], "2024-05-25 14:05:00");
    assert_eq!(named("app")["events"], 1);
    assert_eq!(undeclared.len(), 2);

    let table = tripflow(tmp.path(), &["fields"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("surge_multiplier") && table.contains("CONFLICT"), "{table}");

    // Ingesting again reads nothing new, and the counts stay.
    assert!(tripflow(tmp.path(), &["ingest"]).status.success());
    let again: serde_json::Value =
        serde_json::from_slice(&tripflow(tmp.path(), &["fields", "--format", "json"]).stdout).unwrap();
    assert_eq!(again["undeclared"], v["undeclared"]);

    // The kept fields are columns of the snapshots, and so of `tripflow sql`.
    let out = tripflow(tmp.path(), &["kpi", "--all", "--parquet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sql = "SELECT trip_id, surge_multiplier, app FROM trips ORDER BY trip_id";
    let out = tripflow(tmp.path(), &["sql", "--format", "csv", sql]);
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(csv.contains("a,1.25,ios") && csv.contains("c,high,"), "{csv}");

    // Declared a decimal, the field cannot hold trip c's "high": the check lists it
    // and fails. A KPI job whose queries do not read the field is not stopped; one that
    // exports it (the snapshots) stops with one line naming the trip.
    std::fs::write(
        tmp.path().join("fields.toml"),
        "[[field]]\nname = \"surge_multiplier\"\ngroup = \"end\"\ntype = \"decimal\"\n",
    )
    .unwrap();
    let out = tripflow(tmp.path(), &["fields", "check", "--fields", "fields.toml"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{listed}");
    assert!(listed.contains(r#"trip "c"  surge_multiplier  "high": not a finite decimal"#), "{listed}");
    assert!(!listed.contains(r#"trip "a""#), "{listed}");
    assert!(tripflow(tmp.path(), &["kpi", "--all", "--fields", "fields.toml"]).status.success());
    let out = tripflow(tmp.path(), &["kpi", "--all", "--parquet", "--fields", "fields.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error")).count(), 1, "{stderr}");
    assert!(stderr.contains(r#"trip "c""#) && stderr.contains("tripflow fields check"), "{stderr}");
}

#[test]
fn reject_dead_letters_exactly_the_records_with_undeclared_fields() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("in.ndjson"), records()).unwrap();
    assert!(tripflow(tmp.path(), &["produce", "--ndjson", "in.ndjson"]).status.success());
    let out = tripflow(tmp.path(), &["ingest", "--unknown-fields", "reject"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(counts(&stdout).starts_with("read 7 = applied 4 + duplicate_or_stale 0 + dead_lettered 3"), "{stdout}");
    let letters = std::fs::read_to_string(tmp.path().join("tripflow-data/dead_letters.ndjson")).unwrap();
    let letters: Vec<serde_json::Value> = letters.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), 3);
    let reasons: Vec<String> = letters.iter().map(|l| l["reasons"].to_string()).collect();
    assert!(reasons[0].contains("app: undeclared field") && reasons[0].contains("surge_multiplier: undeclared field"));
    assert!(reasons[1].contains("surge_multiplier: undeclared field") && !reasons[1].contains("app"));

    let bad = tripflow(tmp.path(), &["ingest", "--unknown-fields", "drop"]);
    assert_eq!(bad.status.code(), Some(2), "clap refuses a policy it does not know");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("[possible values: keep, reject]"));
}

/// `data/`'s events with undeclared fields added (two on every end, one on every start)
/// give the same KPI files, byte for byte, as the events without them; and the ledger
/// counts every record that carried them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kpi_files_are_byte_identical_with_undeclared_fields_in_the_events() {
    use crate::common::{data_dir, ingest, kpi_files, produce_dir, put_raw};
    use tripflow::config::Home;
    use tripflow::ingest::IngestOptions;

    let tmp = tempfile::tempdir().unwrap();
    let clean = Home::new(tmp.path().join("clean")).unwrap();
    let stream = clean.stream(Some(2)).unwrap();
    produce_dir(&stream, &data_dir()).await;
    let records = records_of(&stream).await;
    drop(stream);
    let counts = ingest(&clean, &IngestOptions::default()).await.unwrap();
    assert_eq!((counts.dead_lettered, counts.undeclared), (0, 0));

    let ends = records.iter().filter(|r| r.contains(r#""trip_end""#)).count();
    let with_fields: Vec<Vec<u8>> = records
        .iter()
        .map(|r| {
            let extra = if r.contains(r#""trip_end""#) {
                r#","surge_multiplier":1.25,"app_version":"4.2.0"}"#
            } else {
                r#","app_version":"4.1.9"}"#
            };
            format!("{}{extra}", r.strip_suffix('}').unwrap()).into_bytes()
        })
        .collect();
    let extended = Home::new(tmp.path().join("extended")).unwrap();
    put_raw(&extended.stream(Some(1)).unwrap(), &with_fields).await;
    let counts = ingest(&extended, &IngestOptions::default()).await.unwrap();
    assert_eq!((counts.read, counts.dead_lettered, counts.undeclared), (records.len() as u64, 0, records.len() as u64));

    let a = kpi_files(&clean, &tmp.path().join("out-clean")).await;
    let b = kpi_files(&extended, &tmp.path().join("out-extended")).await;
    let kpis = |files: &std::collections::BTreeMap<String, Vec<u8>>| -> Vec<(String, Vec<u8>)> {
        files.iter().filter(|(k, _)| k.starts_with("kpi_output/")).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    assert!(kpis(&a).len() >= 3);
    assert!(kpis(&a) == kpis(&b), "the KPI files differ once events carry undeclared fields");

    let store = extended.store().unwrap();
    let seen = store.seen_fields().await.unwrap();
    let counted: Vec<(String, String, u64)> =
        seen.iter().map(|f| (f.group.clone(), f.name.clone(), f.events)).collect();
    let starts = (records.len() - ends) as u64;
    assert_eq!(
        counted,
        [
            ("start".into(), "app_version".into(), starts),
            ("end".into(), "app_version".into(), ends as u64),
            ("end".into(), "surge_multiplier".into(), ends as u64),
        ]
    );
}

fn declared(text: &str) -> Fields {
    Fields::parse(text, "fields.toml").unwrap()
}

const SURGE_DECIMAL: &str = "[[field]]\nname = \"surge\"\ngroup = \"end\"\ntype = \"decimal\"\n";

/// A field declared after its values were kept is read into its typed column, with no
/// replay, by the rules validation applies; a kept value its type cannot read stops the
/// export with a message naming the trip, and `fields check` lists it first.
pub async fn a_declared_field_reads_its_kept_values_typed(store: &dyn TripStore) {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Decimal128Type;
    let trip = |id: &str, at: &str, surge: &str| TripUpdate {
        trip_id: id.into(),
        start: None,
        end: Some(end(at, &[("surge", surge), ("note", r#""x""#)])),
    };
    store
        .merge(vec![trip("a", "10:00", "1.50"), trip("b", "11:00", r#""2""#), trip("c", "12:00", "1e1")])
        .await
        .unwrap();
    store.merge(vec![TripUpdate { trip_id: "d".into(), start: None, end: Some(end("13:00", &[])) }]).await.unwrap();
    let fields = declared(SURGE_DECIMAL);
    let columns = tripflow::kpi::table_columns(store, &fields).await.unwrap();
    assert_eq!(columns[0].name, "surge");
    let whole = tripflow::store::Projection::all_with(columns);
    let batches = store.export(None, &whole).await.unwrap();
    let batch = arrow::compute::concat_batches(&whole.schema(), &batches).unwrap();
    let surge = batch.column_by_name("surge").unwrap().as_primitive::<Decimal128Type>();
    let scale = 10i128.pow(18);
    let values: Vec<Option<i128>> = (0..surge.len()).map(|i| surge.is_valid(i).then(|| surge.value(i))).collect();
    assert_eq!(values, [Some(15 * scale / 10), Some(2 * scale), Some(10 * scale), None]);
    assert!(tripflow::store::export::misfits(store, &fields).await.unwrap().is_empty());

    // A value a decimal cannot be: listed by the check, and the export names it.
    store.merge(vec![trip("e", "14:00", r#""high""#), trip("f", "14:30", "true")]).await.unwrap();
    let found = tripflow::store::export::misfits(store, &fields).await.unwrap();
    let listed: Vec<(&str, &str)> = found.iter().map(|m| (m.trip_id.as_str(), m.value.as_str())).collect();
    assert_eq!(listed, [("e", r#""high""#), ("f", "true")]);
    assert!(found[0].reason.contains("not a finite decimal"), "{found:?}");
    assert!(found[1].reason.contains("got a boolean"), "{found:?}");
    let e = store.export(None, &whole).await.unwrap_err().to_string();
    assert!(e.contains("trip \"e\"") || e.contains("trip \"f\""), "{e}");
    assert!(e.contains("tripflow fields check"), "{e}");
}

/// Ingest checks a declared field as it checks a built-in one: a bad value, a missing
/// required one, or a boolean, dead-letters the record with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_checks_declared_fields_as_built_in_ones() {
    use tripflow::config::Home;
    use tripflow::ingest::{FieldRules, IngestOptions};

    use crate::common::{ingest, put_raw};

    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path()).unwrap();
    let records = [
        end_with("a", r#","surge":"1.5""#),
        end_with("b", r#","surge":"high""#),
        end_with("c", ""),
        end_with("d", r#","surge":true"#),
        START.replace("\"T\"", "\"e\""),
    ];
    put_raw(&home.stream(Some(1)).unwrap(), &records.iter().map(|r| r.as_bytes().to_vec()).collect::<Vec<_>>()).await;
    let fields = declared(&SURGE_DECIMAL.replace("decimal\"\n", "decimal\"\nrequired = true\n"));
    let opts = IngestOptions { fields: FieldRules { declared: fields, ..Default::default() }, ..Default::default() };
    let counts = ingest(&home, &opts).await.unwrap();
    assert_eq!((counts.read, counts.applied, counts.dead_lettered, counts.undeclared), (5, 2, 3, 0));
    let letters = std::fs::read_to_string(tmp.path().join("dead_letters.ndjson")).unwrap();
    let reasons: Vec<String> =
        letters.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reasons"].to_string()).collect();
    assert!(reasons[0].contains(r#"surge: not a finite decimal within ±10^20: \"high\""#), "{reasons:?}");
    assert!(reasons[1].contains("surge: missing"), "{reasons:?}");
    assert!(reasons[2].contains("surge: wrong type: expected a string or a number, got a boolean"), "{reasons:?}");
    let store = home.store().unwrap();
    assert!(store.seen_fields().await.unwrap().is_empty(), "a declared field is not undeclared");
    assert_eq!(store.get("a").await.unwrap().unwrap().end.unwrap().extras().get("surge").as_deref(), Some(r#""1.5""#));
}

/// A KPI over a declared decimal field, kept before it was declared, gives the bytes the
/// same KPI gives over a built-in decimal field holding the same values: `data/`'s tips,
/// sent once as `tip_amount` and once as an undeclared `tip_kept` that is declared later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_field_gives_the_kpis_of_a_built_in_one() {
    use tripflow::config::Home;
    use tripflow::ingest::IngestOptions;
    use tripflow::kpi::sql::{Format, render};
    use tripflow::kpi::{DateSelection, ExportColumns, KpiQuery};

    use crate::common::{data_dir, ingest, produce_dir, put_raw};

    let tmp = tempfile::tempdir().unwrap();
    let built_in = Home::new(tmp.path().join("built-in")).unwrap();
    let stream = built_in.stream(Some(1)).unwrap();
    produce_dir(&stream, &data_dir()).await;
    let records = records_of(&stream).await;
    assert!(records.iter().filter(|r| r.contains(r#""tip_amount":"#)).count() > 1000);
    ingest(&built_in, &IngestOptions::default()).await.unwrap();
    let renamed: Vec<Vec<u8>> =
        records.iter().map(|r| r.replace(r#""tip_amount":"#, r#""tip_kept":"#).into_bytes()).collect();
    let kept = Home::new(tmp.path().join("kept")).unwrap();
    put_raw(&kept.stream(Some(1)).unwrap(), &renamed).await;
    ingest(&kept, &IngestOptions::default()).await.unwrap();

    let query = |column: &str| {
        KpiQuery::parse(
            std::path::Path::new("tips.sql"),
            format!(
                "SELECT trip_date, count({column}) AS n, sum({column}) AS total, min({column}) AS low, \
                 max({column}) AS high, avg({column}) AS mean FROM trips WHERE trip_completed \
                 GROUP BY trip_date ORDER BY trip_date"
            ),
        )
    };
    let run = |home: Home, column: &'static str, fields: Fields| async move {
        let store = home.store().unwrap();
        let quiet = tripflow::observe::progress::Quiet;
        let (results, _) = tripflow::kpi::run_queries(
            &*store,
            &[query(column)],
            &fields,
            &DateSelection::All,
            ExportColumns::Queried,
            &quiet,
        )
        .await
        .unwrap();
        render(&results[0].batches, Format::Ndjson).unwrap()
    };
    let want = run(built_in, "tip_amount", Fields::default()).await;
    let got =
        run(kept, "tip_kept", declared("[[field]]\nname = \"tip_kept\"\ngroup = \"end\"\ntype = \"decimal\"\n")).await;
    assert!(want.lines().count() >= 3, "{want}");
    assert_eq!(got, want);
}

/// A crash after some batches were merged, and the replay from the checkpoint, leave the
/// items and the ledger's counts of one clean run: each group's fields once, each record
/// counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_and_its_replay_keep_the_fields_and_count_each_record_once() {
    use tripflow::config::Home;
    use tripflow::ingest::IngestOptions;

    use crate::common::{ingest, put_raw};

    let mut records = Vec::new();
    for i in 0..20 {
        let id = format!("t{i}");
        records.push(START.replace("\"T\"", &format!("\"{id}\"")).replace('}', &format!(r#","app":"v{i}"}}"#)));
        let end = end_with(&id, &format!(r#","surge":{i},"tags":["x",{i}]"#));
        if i % 5 == 0 {
            records.push(end.clone()); // delivered twice
        }
        records.push(end);
    }
    let records: Vec<Vec<u8>> = records.into_iter().map(String::into_bytes).collect();
    let tmp = tempfile::tempdir().unwrap();
    let (crashed, clean) =
        (Home::new(tmp.path().join("crashed")).unwrap(), Home::new(tmp.path().join("clean")).unwrap());
    for home in [&crashed, &clean] {
        put_raw(&home.stream(Some(1)).unwrap(), &records).await;
    }
    let opts = IngestOptions { batch_rows: 7, ..Default::default() };
    let crash = IngestOptions { crash_after_batches: Some(3), ..opts.clone() };
    assert!(ingest(&crashed, &crash).await.is_err(), "the injected crash");
    let replay = ingest(&crashed, &opts).await.unwrap();
    assert!(replay.read < records.len() as u64, "the replay starts at the checkpoint");
    ingest(&clean, &opts).await.unwrap();

    let (a, b) = (crashed.store().unwrap(), clean.store().unwrap());
    for i in 0..20 {
        let id = format!("t{i}");
        let item = a.get(&id).await.unwrap().unwrap();
        assert_eq!(Some(&item), b.get(&id).await.unwrap().as_ref());
        assert_eq!(item.end.unwrap().extras().get("surge"), Some(i.to_string()));
    }
    let counted = |seen: Vec<tripflow::store::ledger::SeenField>| -> Vec<(String, String, u64)> {
        seen.into_iter().map(|f| (f.group, f.name, f.events)).collect()
    };
    let want =
        [("start".into(), "app".into(), 20), ("end".into(), "surge".into(), 24), ("end".into(), "tags".into(), 24)];
    assert_eq!(counted(a.seen_fields().await.unwrap()), want);
    assert_eq!(counted(b.seen_fields().await.unwrap()), want);
}

/// `tripflow sql --fields` reads a declared field as its type, also in snapshots written
/// before the declaration, where it was text.
#[test]
fn sql_reads_a_declared_field_typed_in_snapshots_written_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = [
        START.replace("\"T\"", "\"a\""),
        end_with("a", r#","surge_multiplier":1.25"#),
        START.replace("\"T\"", "\"b\""),
        end_with("b", r#","surge_multiplier":"2.5""#),
    ];
    std::fs::write(tmp.path().join("in.ndjson"), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    for step in [&["produce", "--ndjson", "in.ndjson"][..], &["ingest"], &["kpi", "--all", "--parquet"]] {
        let out = tripflow(tmp.path(), step);
        assert!(out.status.success(), "{step:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let sql = "SELECT sum(surge_multiplier) * 2 AS doubled, arrow_typeof(surge_multiplier) AS t FROM trips GROUP BY t";
    let text = tripflow(tmp.path(), &["sql", "--format", "csv", sql]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("Utf8") || !text.status.success());
    std::fs::write(
        tmp.path().join("fields.toml"),
        "[[field]]\nname = \"surge_multiplier\"\ngroup = \"end\"\ntype = \"decimal\"\n",
    )
    .unwrap();
    let typed = tripflow(tmp.path(), &["sql", "--format", "csv", "--fields", "fields.toml", sql]);
    let csv = String::from_utf8_lossy(&typed.stdout);
    assert!(typed.status.success(), "{}", String::from_utf8_lossy(&typed.stderr));
    assert!(csv.contains("7.5") && csv.contains("Decimal128(38, 18)"), "{csv}");
}

/// Every record of `stream`, shard by shard, each in its order, as text.
async fn records_of(stream: &tripflow::stream::embedded::EmbeddedStream) -> Vec<String> {
    use tripflow::stream::{StartPosition, StreamSource};
    let mut records = Vec::new();
    for shard in stream.shards().await.unwrap() {
        let mut it = stream.iterator(&shard.id, &StartPosition::TrimHorizon).await.unwrap();
        loop {
            let read = stream.read(&it, 10_000, usize::MAX).await.unwrap();
            records.extend(read.records.into_iter().map(|r| String::from_utf8(r.data).unwrap()));
            it = read.next;
            if read.caught_up {
                break;
            }
        }
    }
    records
}
