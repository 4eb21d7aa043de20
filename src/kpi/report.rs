//! The KPI report: `kpi_output/report.html`, one page that people can look at.
//!
//! It is built from the `kpi_output/date=YYYY-MM-DD/kpi.json` files under an output
//! location, never from the trip table, so `tripflow report` rebuilds it from outputs
//! alone and the KPI job writes it last, over every date reported so far. The page is
//! self-contained (no script, font, style sheet or image from anywhere else), so it
//! opens offline and from an S3 link. Charts are SVG drawn by `plotters`; each sits
//! beside the table of its numbers, which are the files' own decimal text. Nothing in it
//! depends on the clock, so the same files give the same bytes.
//!
//! A `kpi.json` that cannot be read is named on the page and skipped: an old or hand-edited
//! file must not stop every later KPI run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arrow::datatypes::{Decimal128Type, DecimalType};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use plotters::prelude::*;
use serde_json::value::RawValue;

use crate::Result;
use crate::error::Stage;
use crate::kpi::output::OutputLocation;

/// Where the report goes, under the output location.
pub const REPORT_KEY: &str = "kpi_output/report.html";

/// How many `kpi.json` files are read at once (one request each on S3).
const READ_CONCURRENCY: usize = 16;

/// One number as the file wrote it, and as a float to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Num {
    /// The exact decimal text.
    pub text: String,
    /// Its value, for chart geometry only.
    pub value: f64,
}

impl Num {
    fn from_raw(raw: &RawValue) -> Option<Num> {
        let text = raw.get();
        let value = text.parse::<f64>().ok().filter(|v| v.is_finite())?;
        Some(Num { text: text.to_owned(), value })
    }
}

/// One date's figures, read from its `kpi.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// `total_trips`, `total_fare`, `min_fare`, `avg_fare`, `max_fare` when present.
    pub figures: BTreeMap<&'static str, Num>,
    /// `trips_by_hour`: (`pickup_hour`, `trips`).
    pub by_hour: Option<Vec<(i64, Num)>>,
    /// `fares_by_payment_type`: (`payment_type` as text, `trips`, `total_fare`).
    pub by_payment: Option<Vec<(String, Num, Option<Num>)>>,
}

/// The daily figures the report draws, in the order of its tables.
const FIGURES: [&str; 5] = ["total_trips", "total_fare", "min_fare", "avg_fare", "max_fare"];

/// What the report is built from: the days, and the files it had to skip.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// Every readable date, in order.
    pub days: Vec<Day>,
    /// `(file, why)` for each `kpi.json` that could not be read.
    pub skipped: Vec<(String, String)>,
}

type Object = BTreeMap<String, Box<RawValue>>;

/// Reads one `kpi.json`.
///
/// # Errors
/// A message saying what is wrong with the file.
pub fn parse_day(date: &str, bytes: &[u8]) -> std::result::Result<Day, String> {
    let object: Object = serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object: {e}"))?;
    let mut day = Day { date: date.to_owned(), ..Day::default() };
    for name in FIGURES {
        if let Some(raw) = object.get(name).filter(|r| r.get() != "null") {
            let n = Num::from_raw(raw).ok_or_else(|| format!("{name} is not a number: {}", raw.get()))?;
            day.figures.insert(name, n);
        }
    }
    let rows = |stem: &str| -> std::result::Result<Option<Vec<Object>>, String> {
        object
            .get(stem)
            .map(|raw| serde_json::from_str(raw.get()).map_err(|e| format!("{stem} is not an array of rows: {e}")))
            .transpose()
    };
    let number = |row: &Object, stem: &str, field: &str| -> std::result::Result<Num, String> {
        let raw = row.get(field).ok_or_else(|| format!("a row of {stem} has no {field}"))?;
        Num::from_raw(raw).ok_or_else(|| format!("{stem}.{field} is not a number: {}", raw.get()))
    };
    if let Some(rows) = rows("trips_by_hour")? {
        let mut hours = Vec::with_capacity(rows.len());
        for row in &rows {
            let hour = number(row, "trips_by_hour", "pickup_hour")?;
            let hour = hour
                .text
                .parse::<i64>()
                .ok()
                .filter(|h| (0..24).contains(h))
                .ok_or_else(|| format!("trips_by_hour.pickup_hour is not an hour: {}", hour.text))?;
            hours.push((hour, number(row, "trips_by_hour", "trips")?));
        }
        day.by_hour = Some(hours);
    }
    if let Some(rows) = rows("fares_by_payment_type")? {
        let mut kinds = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind = match row.get("payment_type").map(|r| r.get()) {
                None | Some("null") => "none".to_owned(),
                Some(text) => serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_owned()),
            };
            let fare = row.get("total_fare").and_then(|r| Num::from_raw(r));
            kinds.push((kind, number(row, "fares_by_payment_type", "trips")?, fare));
        }
        day.by_payment = Some(kinds);
    }
    Ok(day)
}

/// The date of a `kpi_output/date=YYYY-MM-DD/kpi.json` key, relative to the prefix.
fn date_of(relative: &str) -> Option<&str> {
    let date = relative.strip_prefix("kpi_output/date=")?.strip_suffix("/kpi.json")?;
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok().map(|_| date)
}

/// Reads every `kpi.json` under `out`, in date order.
///
/// # Errors
/// When the location cannot be listed, or a listed file cannot be read (S3 refuses it,
/// say: the report would silently lose its days). A file that is gone by the time it is
/// read, or that does not parse, is skipped and named in [`Inputs::skipped`].
pub async fn read(out: &OutputLocation) -> Result<Inputs> {
    let (store, prefix) = out.store();
    let listing = prefix.clone().join("kpi_output");
    let metas: Vec<_> = store.list(Some(&listing)).try_collect().await.map_err(|e| {
        let context = format!("cannot list {}/kpi_output", out.display().trim_end_matches('/'));
        Stage::Output.error_then(context, e, "check --out")
    })?;
    let mut files: Vec<(String, ObjectPath)> = metas
        .into_iter()
        .filter_map(|m| {
            let relative = m.location.prefix_match(prefix)?.map(|p| p.as_ref().to_owned()).collect::<Vec<_>>();
            date_of(&relative.join("/")).map(|d| (d.to_owned(), m.location.clone()))
        })
        .collect();
    files.sort();
    let read = futures::stream::iter(files)
        .map(|(date, path)| async move {
            let name = format!("kpi_output/date={date}/kpi.json");
            let bytes = match store.get(&path).await {
                Ok(got) => got.bytes().await,
                Err(e) => Err(e),
            };
            match bytes {
                Ok(b) => Ok((name, parse_day(&date, &b))),
                Err(object_store::Error::NotFound { .. }) => {
                    Ok((name, Err("deleted while the report was read".into())))
                }
                Err(e) => {
                    Err(Stage::Output.error(format!("cannot read {}/{name}", out.display().trim_end_matches('/')), e))
                }
            }
        })
        .buffered(READ_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut inputs = Inputs::default();
    for read in read {
        match read? {
            (_, Ok(day)) => inputs.days.push(day),
            (name, Err(why)) => inputs.skipped.push((name, why)),
        }
    }
    Ok(inputs)
}

/// What [`write()`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Where the report went.
    pub path: String,
    /// How many dates it shows.
    pub dates: usize,
    /// `(file, why)` for each `kpi.json` it skipped; the caller says so.
    pub skipped: Vec<(String, String)>,
}

/// Reads the KPI files under `out` and writes `kpi_output/report.html` beside them.
///
/// # Errors
/// When the location cannot be listed or written.
pub async fn write(out: &OutputLocation) -> Result<Written> {
    let inputs = read(out).await?;
    let path = out.put(REPORT_KEY, render(&inputs).into_bytes()).await?;
    Ok(Written { path, dates: inputs.days.len(), skipped: inputs.skipped })
}

/// An exact sum of decimal texts, at the largest scale among them.
#[derive(Default)]
struct DecimalSum {
    texts: Vec<String>,
}

impl DecimalSum {
    fn add(&mut self, text: &str) {
        self.texts.push(text.to_owned());
    }

    /// The sum's text, or `None` when a term does not parse or the sum overflows.
    fn total(&self) -> Option<String> {
        let scale = self.texts.iter().map(|t| t.split_once('.').map_or(0, |(_, f)| f.len())).max().unwrap_or(0);
        let scale = i8::try_from(scale).ok().filter(|s| *s <= 38)?;
        let mut sum = 0i128;
        for t in &self.texts {
            sum = sum.checked_add(crate::model::decimal::parse_plain(t, 38, scale)?)?;
        }
        Decimal128Type::validate_decimal_precision(sum, 38, scale).ok()?;
        Some(Decimal128Type::format_decimal(sum, 38, scale))
    }
}

/// Hours and numeric payment types sort by number, anything else after them by text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum MixKey {
    Number(i64),
    Text(String),
}

impl MixKey {
    fn of(text: &str) -> MixKey {
        text.parse().map_or_else(|_| MixKey::Text(text.to_owned()), MixKey::Number)
    }

    fn label(&self) -> String {
        match self {
            MixKey::Number(n) => n.to_string(),
            MixKey::Text(t) => t.clone(),
        }
    }
}

const BLUE: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const TEAL: RGBColor = RGBColor(0x2c, 0x7a, 0x7b);
const RED: RGBColor = RGBColor(0xc0, 0x39, 0x2b);
const GREEN: RGBColor = RGBColor(0x38, 0x8e, 0x3c);
const CHART: (u32, u32) = (560, 300);

/// Draws one chart as SVG text: bars, or lines with a legend, over labelled segments.
fn chart(title: &str, labels: &[String], y_desc: &str, series: &[(&str, Vec<f64>, RGBColor)], bars: bool) -> String {
    let mut svg = String::new();
    let drawn = (|| -> std::result::Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, CHART).into_drawing_area();
        root.fill(&WHITE)?;
        // Headroom over the tallest value; lines leave room for their legend.
        let top = series.iter().flat_map(|s| s.1.iter().copied()).fold(0.0, f64::max) * if bars { 1.1 } else { 1.35 };
        let top = if top > 0.0 { top } else { 1.0 };
        let n = u32::try_from(labels.len()).unwrap_or(u32::MAX);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(70)
            // One segment per label: a segmented `0..last` has `last + 1` of them.
            .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0.0..top)?;
        let label = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        // Dates are wide: about six fit under a chart; hours are narrow.
        let fit = if labels.iter().any(|l| l.len() > 4) { 6 } else { 24 };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(labels.len().min(fit))
            .x_label_formatter(&label)
            .y_label_formatter(&|v| if top >= 10.0 { format!("{v:.0}") } else { format!("{v:.1}") })
            .y_desc(y_desc)
            .draw()?;
        for (name, values, color) in series {
            let color = *color;
            let points = values.iter().enumerate().map(|(i, v)| (u32::try_from(i).unwrap_or(u32::MAX), *v));
            if bars {
                // Rectangles in order, not `Histogram`, which draws from a hash map:
                // its bars would come out in a different order from run to run.
                chart.draw_series(points.map(|(i, v)| {
                    let mut bar = Rectangle::new(
                        [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), v)],
                        color.filled(),
                    );
                    bar.set_margin(0, 0, 3, 3);
                    bar
                }))?;
            } else {
                chart
                    .draw_series(
                        LineSeries::new(points.map(|(i, v)| (SegmentValue::CenterOf(i), v)), color.stroke_width(2))
                            .point_size(3),
                    )?
                    .label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
        }
        if !bars {
            chart
                .configure_series_labels()
                .border_style(BLACK.mix(0.3))
                .background_style(WHITE.mix(0.9))
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
        root.present()?;
        Ok(())
    })();
    match drawn {
        Ok(()) => svg,
        Err(e) => format!("<p class=\"note\">The chart could not be drawn: {}</p>", escape(&e.to_string())),
    }
}

/// Text for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table: the header, then one row per key with its cells by field.
fn table(id: &str, key: &str, fields: &[&str], rows: &[(String, Vec<String>)]) -> String {
    let mut html = format!("<table id=\"{id}\"><thead><tr><th>{}</th>", escape(key));
    for f in fields {
        let _ = write!(html, "<th>{}</th>", escape(f));
    }
    html.push_str("</tr></thead><tbody>\n");
    for (k, cells) in rows {
        let _ = write!(html, "<tr data-key=\"{0}\"><td>{0}</td>", escape(k));
        for (f, c) in fields.iter().zip(cells) {
            let _ = write!(html, "<td data-field=\"{}\">{}</td>", escape(f), escape(c));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody></table>");
    html
}

fn figure(name: &str, svg: &str) -> String {
    format!("<figure data-chart=\"{name}\">{svg}</figure>")
}

fn section(id: &str, title: &str, body: &str) -> String {
    format!("<section id=\"{id}\"><h2>{title}</h2><div class=\"row\">{body}</div></section>\n")
}

fn note(id: &str, title: &str, text: &str) -> String {
    format!("<section id=\"{id}\"><h2>{title}</h2><p class=\"note\">{text}</p></section>\n")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1300px}\
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}\
.row{display:flex;flex-wrap:wrap;gap:1.5rem;align-items:flex-start}\
figure{margin:0}svg{display:block}\
table{border-collapse:collapse;font-size:.85rem;font-variant-numeric:tabular-nums}\
th,td{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:right}\
th:first-child,td:first-child{text-align:left}.note{color:#666}";

/// The report's HTML.
pub fn render(inputs: &Inputs) -> String {
    let days = &inputs.days;
    let dates: Vec<String> = days.iter().map(|d| d.date.clone()).collect();
    let mut html = String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = write!(html, "<title>tripflow KPI report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n");
    html.push_str("<h1>Trip KPIs</h1>\n");
    let _ = match (dates.first(), dates.last()) {
        (Some(first), Some(last)) => writeln!(
            html,
            "<p id=\"summary\">{} date(s), {first} to {last}, from <code>kpi_output/date=…/kpi.json</code>. \
             Dates are the UTC day of dropoff; hours are the UTC hour of pickup.</p>",
            dates.len()
        ),
        _ => writeln!(html, "<p id=\"summary\">No <code>kpi.json</code> yet: run <code>tripflow kpi</code> first.</p>"),
    };
    if !inputs.skipped.is_empty() {
        html.push_str("<p class=\"note\" id=\"skipped\">Skipped, as they could not be read:</p><ul>");
        for (file, why) in &inputs.skipped {
            let _ = write!(html, "<li><code>{}</code>: {}</li>", escape(file), escape(why));
        }
        html.push_str("</ul>\n");
    }
    if days.is_empty() {
        html.push_str("</body>\n</html>\n");
        return html;
    }

    fn figure_of<'d>(day: &'d Day, name: &str) -> Option<&'d Num> {
        day.figures.get(name)
    }
    let series_of = |name: &str| days.iter().map(|d| figure_of(d, name).map_or(0.0, |n| n.value)).collect::<Vec<_>>();
    let cells = |fields: &[&str]| -> Vec<(String, Vec<String>)> {
        days.iter()
            .map(|d| {
                let row = fields.iter().map(|f| figure_of(d, f).map_or_else(String::new, |n| n.text.clone())).collect();
                (d.date.clone(), row)
            })
            .collect()
    };
    let has = |name: &str| days.iter().any(|d| d.figures.contains_key(name));

    if has("total_trips") && has("total_fare") {
        let body =
            figure(
                "trips-per-day",
                &chart("Trips per day", &dates, "trips", &[("trips", series_of("total_trips"), BLUE)], true),
            ) + &figure(
                "fare-per-day",
                &chart("Total fare per day", &dates, "fare", &[("total fare", series_of("total_fare"), TEAL)], true),
            ) + &table("daily", "trip_date", &["total_trips", "total_fare"], &cells(&["total_trips", "total_fare"]));
        html.push_str(&section("daily-kpis", "Trips and total fare per day", &body));
    } else {
        html.push_str(&note("daily-kpis", "Trips and total fare per day", "The files have no <code>total_trips</code> and <code>total_fare</code> (from <code>daily_kpis.sql</code>)."));
    }

    let fares = ["min_fare", "avg_fare", "max_fare"];
    if fares.iter().all(|f| has(f)) {
        let lines = [
            ("max", series_of("max_fare"), RED),
            ("average", series_of("avg_fare"), BLUE),
            ("min", series_of("min_fare"), GREEN),
        ];
        let body = figure("fares", &chart("Fare per trip: min, average, max", &dates, "fare", &lines, false))
            + &table("fares-table", "trip_date", &fares, &cells(&fares));
        html.push_str(&section("fare-range", "Fare per trip, per day", &body));
    } else {
        html.push_str(&note("fare-range", "Fare per trip, per day", "The files have no <code>min_fare</code>, <code>avg_fare</code> and <code>max_fare</code> (from <code>daily_kpis.sql</code>)."));
    }

    let hours = days.iter().filter_map(|d| d.by_hour.as_ref()).flatten().map(|(h, n)| (MixKey::Number(*h), n, None));
    html.push_str(&mix_section(
        hours,
        ("pickup-hours", "Trips by hour of pickup (UTC), over all dates", "pickup_hour"),
        days.iter().any(|d| d.by_hour.is_some()),
        "<code>trips_by_hour</code>",
        true,
    ));
    let kinds = days
        .iter()
        .filter_map(|d| d.by_payment.as_ref())
        .flatten()
        .map(|(k, n, fare)| (MixKey::of(k), n, fare.as_ref()));
    html.push_str(&mix_section(
        kinds,
        ("payment-types", "Payment-type mix, over all dates", "payment_type"),
        days.iter().any(|d| d.by_payment.is_some()),
        "<code>fares_by_payment_type</code>",
        false,
    ));
    html.push_str("</body>\n</html>\n");
    html
}

/// A section of trips summed over every date by key, its bar chart and its table.
fn mix_section<'a>(
    rows: impl Iterator<Item = (MixKey, &'a Num, Option<&'a Num>)>,
    (id, title, key): (&str, &str, &str),
    present: bool,
    stem: &str,
    every_hour: bool,
) -> String {
    if !present {
        return note(id, title, &format!("The files have no {stem} (from the shipped query of that name)."));
    }
    // Trips, and the total fare where the rows carry one, summed over every date per key.
    let mut mix: BTreeMap<MixKey, (DecimalSum, DecimalSum)> = BTreeMap::new();
    if every_hour {
        for h in 0..24 {
            mix.entry(MixKey::Number(h)).or_default();
        }
    }
    let mut with_fare = false;
    for (k, trips, fare) in rows {
        let entry = mix.entry(k).or_default();
        entry.0.add(&trips.text);
        if let Some(f) = fare {
            entry.1.add(&f.text);
            with_fare = true;
        }
    }
    let labels: Vec<String> = mix.keys().map(MixKey::label).collect();
    let totals: Vec<String> = mix.values().map(|(t, _)| t.total().unwrap_or_else(|| "0".into())).collect();
    let all: f64 = totals.iter().filter_map(|t| t.parse::<f64>().ok()).sum();
    let values: Vec<f64> = totals.iter().map(|t| t.parse().unwrap_or(0.0)).collect();
    let mut fields = vec!["trips", "share"];
    if with_fare {
        fields.push("total_fare");
    }
    let rows: Vec<(String, Vec<String>)> = labels
        .iter()
        .zip(&totals)
        .zip(mix.values())
        .map(|((label, trips), (_, fare))| {
            let share = trips.parse::<f64>().map_or(0.0, |t| if all > 0.0 { 100.0 * t / all } else { 0.0 });
            let mut cells = vec![trips.clone(), format!("{share:.1}%")];
            if with_fare {
                cells.push(fare.total().unwrap_or_default());
            }
            (label.clone(), cells)
        })
        .collect();
    let body = figure(
        id,
        &chart(title.split(',').next().unwrap_or(title), &labels, "trips", &[("trips", values, BLUE)], true),
    ) + &table(&format!("{id}-table"), key, &fields, &rows);
    section(id, title, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: &str = r#"{
  "trip_date": "2024-05-25",
  "total_trips": 3,
  "total_fare": 30.10,
  "min_fare": 5.00,
  "max_fare": 20.05,
  "avg_fare": 10.03,
  "fares_by_payment_type": [
    {"payment_type": 1, "trips": 2, "total_fare": 25.10, "total_tip": 1.00},
    {"payment_type": null, "trips": 1, "total_fare": 5.00, "total_tip": 0.00}
  ],
  "trips_by_hour": [
    {"pickup_hour": 0, "trips": 1, "avg_fare": 5.00},
    {"pickup_hour": 23, "trips": 2, "avg_fare": 12.55}
  ]
}"#;

    #[test]
    fn a_day_keeps_the_files_decimal_text() {
        let day = parse_day("2024-05-25", DAY.as_bytes()).unwrap();
        assert_eq!(day.figures["total_fare"].text, "30.10");
        assert_eq!(day.figures["min_fare"].text, "5.00");
        assert_eq!(day.by_hour.as_ref().unwrap()[1].0, 23);
        let kinds = day.by_payment.unwrap();
        assert_eq!(kinds[1].0, "none");
        assert_eq!(kinds[0].2.as_ref().unwrap().text, "25.10");
    }

    #[test]
    fn a_broken_file_says_what_is_wrong() {
        assert!(parse_day("d", b"[1]").unwrap_err().contains("not a JSON object"));
        let err = parse_day("d", br#"{"total_trips": "many"}"#).unwrap_err();
        assert!(err.contains("total_trips is not a number"), "{err}");
        let err = parse_day("d", br#"{"trips_by_hour": [{"pickup_hour": 24, "trips": 1}]}"#).unwrap_err();
        assert!(err.contains("not an hour: 24"), "{err}");
    }

    #[test]
    fn sums_are_exact_at_the_largest_scale() {
        let mut s = DecimalSum::default();
        for t in ["0.10", "0.2", "99999999999999999999.99"] {
            s.add(t);
        }
        assert_eq!(s.total().as_deref(), Some("100000000000000000000.29"));
        let mut over = DecimalSum::default();
        over.add("99999999999999999999999999999999999999");
        over.add("1");
        assert_eq!(over.total(), None);
    }

    #[test]
    fn keys_of_the_listing_are_dates_only() {
        assert_eq!(date_of("kpi_output/date=2024-05-25/kpi.json"), Some("2024-05-25"));
        assert_eq!(date_of("kpi_output/date=2024-02-30/kpi.json"), None);
        assert_eq!(date_of("kpi_output/date=2024-05-25/kpi.parquet"), None);
        assert_eq!(date_of("kpi_output/summary/x.json"), None);
    }

    #[test]
    fn the_page_is_self_contained_and_the_same_for_the_same_files() {
        let inputs = Inputs { days: vec![parse_day("2024-05-25", DAY.as_bytes()).unwrap()], skipped: vec![] };
        let html = render(&inputs);
        assert_eq!(html, render(&inputs));
        for outside in ["<script", "src=", "href=", "url(", "@import"] {
            assert!(!html.contains(outside), "{outside} in the page");
        }
        assert_eq!(html.matches("<svg").count(), 5);
        assert!(html.contains(r#"<tr data-key="none"><td>none</td><td data-field="trips">1</td>"#), "{html}");
        assert!(html.contains(r#"<td data-field="total_fare">30.10</td>"#));
    }

    #[test]
    fn missing_queries_and_unreadable_files_are_named_not_fatal() {
        let bare = parse_day("2024-05-25", br#"{"trip_date": "2024-05-25", "total_trips": 3}"#).unwrap();
        let inputs = Inputs {
            days: vec![bare],
            skipped: vec![("kpi_output/date=2024-05-26/kpi.json".into(), "not <json>".into())],
        };
        let html = render(&inputs);
        assert!(html.contains("The files have no <code>trips_by_hour</code>"), "{html}");
        assert!(html.contains("<code>kpi_output/date=2024-05-26/kpi.json</code>: not &lt;json&gt;"), "{html}");
        assert_eq!(html.matches("<svg").count(), 0);
    }
}
