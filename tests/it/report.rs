//! The KPI report in a real browser: headless Chromium (Debian's `chromium`, which
//! `.ci/run` installs) renders `kpi_output/report.html` of a real run, and the test reads
//! back the DOM it built. Without Chromium these tests fail, saying how to install it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use scraper::{Html, Selector};

use crate::common::{data_dir, read_tree};

/// The browser: `TRIPFLOW_TEST_CHROMIUM`, or Debian's `/usr/bin/chromium`.
fn chromium() -> PathBuf {
    let path =
        std::env::var_os("TRIPFLOW_TEST_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: the report tests need Chromium. Install it (`apt-get install chromium`, as `bash .ci/run` does) \
         or point TRIPFLOW_TEST_CHROMIUM at one.",
        path.display()
    );
    path
}

/// Runs headless Chromium on `page` with `args`, in a fresh profile, with the network
/// features that would reach out turned off. Console messages go to stderr.
fn browse(page: &Path, profile: &Path, args: &[&str]) -> Output {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// What the page logged to the console: every line Chromium tags `CONSOLE`.
fn console(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(str::to_owned).collect()
}

fn tripflow(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tripflow")).current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn select<'a>(doc: &'a Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
    doc.select(&Selector::parse(css).unwrap()).collect()
}

/// A table's cells as text, by row key and field.
fn table(doc: &Html, id: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut rows = BTreeMap::new();
    for tr in select(doc, &format!("table#{id} tbody tr")) {
        let key = tr.value().attr("data-key").unwrap().to_owned();
        let cells = tr
            .select(&Selector::parse("td[data-field]").unwrap())
            .map(|td| (td.value().attr("data-field").unwrap().to_owned(), td.text().collect::<String>()))
            .collect();
        rows.insert(key, cells);
    }
    rows
}

/// Cents of a `123.45` text, exactly (the shipped queries round money to cents).
fn cents(text: &str) -> i128 {
    let (units, fraction) = text.split_once('.').unwrap_or((text, ""));
    assert!(fraction.len() <= 2, "{text}");
    let sign = if units.starts_with('-') { -1 } else { 1 };
    let units: i128 = units.parse().unwrap();
    units * 100 + sign * format!("{fraction:0<2}").parse::<i128>().unwrap()
}

fn money(cents: i128) -> String {
    format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100)
}

#[test]
fn chromium_draws_every_chart_of_a_runs_report_with_the_kpi_files_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, out) = (tmp.path().join("home"), tmp.path().join("out"));
    let run = tripflow(
        tmp.path(),
        &[
            "run",
            "--home",
            home.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--start",
            data_dir().join("trip_start.csv").to_str().unwrap(),
            "--end",
            data_dir().join("trip_end.csv").to_str().unwrap(),
        ],
    );
    let page = out.join("kpi_output/report.html");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains(&format!("report: {}", page.display())), "{stdout}");

    // The numbers the report must show, read from the KPI files by this test.
    let files = read_tree(&out.join("kpi_output"));
    let days: BTreeMap<String, serde_json::Value> = files
        .iter()
        .filter_map(|(path, bytes)| {
            let date = path.strip_prefix("date=")?.strip_suffix("/kpi.json")?;
            Some((date.to_owned(), serde_json::from_slice(bytes).unwrap()))
        })
        .collect();
    assert_eq!(days.len(), 4, "the README's data set spans four dropoff dates");
    // Exact text, as written: serde_json keeps 105390.52, but prints 186.00 as 186.0.
    let text = |date: &str, field: &str| -> String {
        let raw = String::from_utf8_lossy(&files[&format!("date={date}/kpi.json")]).into_owned();
        let at = raw.find(&format!("\"{field}\": ")).unwrap() + field.len() + 4;
        raw[at..].split([',', '\n']).next().unwrap().to_owned()
    };

    let profile = tmp.path().join("profile");
    let dom = browse(&page, &profile, &["--dump-dom"]);
    assert_eq!(console(&dom), Vec::<String>::new(), "the page logged to the console");
    let doc = Html::parse_document(&String::from_utf8(dom.stdout.clone()).unwrap());

    // Every chart is there and drawn: an SVG with one bar per date or key, or one line
    // per series.
    let charts: BTreeMap<String, scraper::ElementRef> = select(&doc, "figure[data-chart]")
        .into_iter()
        .map(|f| (f.value().attr("data-chart").unwrap().to_owned(), f))
        .collect();
    assert_eq!(
        charts.keys().map(String::as_str).collect::<Vec<_>>(),
        ["fare-per-day", "fares", "payment-types", "pickup-hours", "trips-per-day"]
    );
    let bars = |name: &str| {
        charts[name]
            .select(&Selector::parse("svg rect").unwrap())
            .filter(|r| r.value().attr("fill") != Some("#FFFFFF") && r.value().attr("height") != Some("0"))
            .count()
    };
    assert_eq!(bars("trips-per-day"), 4);
    assert_eq!(bars("fare-per-day"), 4);
    assert_eq!(bars("pickup-hours"), 24, "every hour has trips in this data set");
    assert_eq!(bars("payment-types"), 5, "types 1 to 4 and none");
    let polyline = Selector::parse("svg polyline").unwrap();
    let lines = charts["fares"]
        .select(&polyline)
        .filter(|l| l.value().attr("points").is_some_and(|p| p.split_whitespace().count() == 4));
    assert_eq!(lines.count(), 3, "min, average and max, one point per date");
    for (name, figure) in &charts {
        let text: String = figure.select(&Selector::parse("svg text").unwrap()).flat_map(|t| t.text()).collect();
        assert!(!text.trim().is_empty(), "chart {name} has no labels");
    }

    // The tables show the KPI files' numbers, exactly.
    let daily = table(&doc, "daily");
    let fares = table(&doc, "fares-table");
    assert_eq!(daily.keys().collect::<Vec<_>>(), days.keys().collect::<Vec<_>>());
    for date in days.keys() {
        for field in ["total_trips", "total_fare"] {
            assert_eq!(daily[date][field], text(date, field), "{date} {field}");
        }
        for field in ["min_fare", "avg_fare", "max_fare"] {
            assert_eq!(fares[date][field], text(date, field), "{date} {field}");
        }
    }
    let mut by_hour: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_type: BTreeMap<String, (i64, i128)> = BTreeMap::new();
    for (date, day) in &days {
        for row in day["trips_by_hour"].as_array().unwrap() {
            *by_hour.entry(row["pickup_hour"].to_string()).or_default() += row["trips"].as_i64().unwrap();
        }
        let raw = String::from_utf8_lossy(&files[&format!("date={date}/kpi.json")]).into_owned();
        for line in raw.lines().filter(|l| l.contains("\"payment_type\"")) {
            let row: serde_json::Value = serde_json::from_str(line.trim().trim_end_matches(',')).unwrap();
            let fare = line.split("\"total_fare\": ").nth(1).unwrap().split(',').next().unwrap();
            let key = if row["payment_type"].is_null() { "none".to_owned() } else { row["payment_type"].to_string() };
            let entry = by_type.entry(key).or_default();
            entry.0 += row["trips"].as_i64().unwrap();
            entry.1 += cents(fare);
        }
    }
    let hours = table(&doc, "pickup-hours-table");
    assert_eq!(hours.len(), 24);
    for (hour, trips) in &by_hour {
        assert_eq!(hours[hour]["trips"], trips.to_string(), "hour {hour}");
    }
    let types = table(&doc, "payment-types-table");
    assert_eq!(types.keys().collect::<Vec<_>>(), by_type.keys().collect::<Vec<_>>());
    let all: i64 = by_type.values().map(|t| t.0).sum();
    for (kind, (trips, fare)) in &by_type {
        assert_eq!(types[kind]["trips"], trips.to_string(), "payment type {kind}");
        assert_eq!(types[kind]["total_fare"], money(*fare), "payment type {kind}");
        assert_eq!(types[kind]["share"], format!("{:.1}%", 100.0 * *trips as f64 / all as f64));
    }

    // A screenshot: a real PNG of the size asked for.
    let shot = tmp.path().join("report.png");
    let taken = browse(
        &page,
        &profile,
        &["--window-size=1300,2000", "--hide-scrollbars", &format!("--screenshot={}", shot.display())],
    );
    assert_eq!(console(&taken), Vec::<String>::new());
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((size(16), size(20)), (1300, 2000));

    // Offline by construction: nothing the page could fetch.
    let html = std::fs::read_to_string(&page).unwrap();
    for outside in ["<script", "src=", "href=", "url(", "@import", "<link"] {
        assert!(!html.contains(outside), "the report refers outside itself: {outside}");
    }

    // `tripflow report` rebuilds it from the files alone, byte for byte.
    std::fs::remove_file(&page).unwrap();
    let rebuilt = tripflow(tmp.path(), &["report", "--out", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&rebuilt.stdout).contains("report over 4 date(s)"));
    assert_eq!(std::fs::read_to_string(&page).unwrap(), html);
}

#[test]
fn the_console_check_sees_what_a_broken_page_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("broken.html");
    std::fs::write(&page, "<!DOCTYPE html><p>x</p><script>console.error('drawn badly'); missing();</script>").unwrap();
    let out = browse(&page, &tmp.path().join("profile"), &["--dump-dom"]);
    let logged = console(&out).join("\n");
    assert!(logged.contains("drawn badly") && logged.contains("missing is not defined"), "{logged}");
}

#[test]
fn an_unreadable_kpi_file_is_named_on_the_page_and_the_rest_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let day = |date: &str, trips: u32| {
        let dir = out.join(format!("kpi_output/date={date}"));
        std::fs::create_dir_all(&dir).unwrap();
        let body = format!(
            "{{\"trip_date\": \"{date}\", \"total_trips\": {trips}, \"total_fare\": 10.50, \"min_fare\": 1.00, \
             \"max_fare\": 9.50, \"avg_fare\": 5.25}}"
        );
        std::fs::write(dir.join("kpi.json"), body).unwrap();
    };
    day("2024-05-24", 2);
    day("2024-05-26", 7);
    std::fs::create_dir_all(out.join("kpi_output/date=2024-05-25")).unwrap();
    std::fs::write(out.join("kpi_output/date=2024-05-25/kpi.json"), "{\"total_trips\": ").unwrap();
    let rebuilt = tripflow(tmp.path(), &["report", "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&rebuilt.stderr);
    assert!(stderr.contains("warning: skipped kpi_output/date=2024-05-25/kpi.json: not a JSON object"), "{stderr}");
    let html = std::fs::read_to_string(out.join("kpi_output/report.html")).unwrap();
    let doc = Html::parse_document(&html);
    assert_eq!(table(&doc, "daily").keys().collect::<Vec<_>>(), ["2024-05-24", "2024-05-26"]);
    assert_eq!(table(&doc, "daily")["2024-05-26"]["total_trips"], "7");
    assert!(select(&doc, "#skipped").len() == 1 && html.contains("<code>kpi_output/date=2024-05-25/kpi.json</code>"));
    assert!(html.contains("The files have no <code>trips_by_hour</code>"));
}
