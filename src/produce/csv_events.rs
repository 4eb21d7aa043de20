//! CSV rows → JSON events, in the shape of DESIGN §1.

use std::path::Path;

use chrono::{DateTime, NaiveDateTime};

use crate::event::{EventKind, END_FIELDS, START_FIELDS};
use crate::stream::PutRecord;
use crate::{Error, Result};

/// One event read from a CSV file.
#[derive(Debug, Clone)]
pub struct CsvEvent {
    /// Event time in microseconds (pickup for a start, dropoff for an end); `i64::MIN`
    /// when the cell is not a datetime, so such events go first and fail at ingest.
    pub time: i64,
    /// `file:line`, for reports.
    pub origin: String,
    /// The record to put.
    pub record: PutRecord,
}

/// True when `s` is a JSON number literal, so it can be sent as a number as written.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Event time of a datetime cell, loosely parsed; ingest does the strict check.
fn event_time(cell: &str) -> i64 {
    let cell = cell.trim();
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(cell, fmt) {
            return t.and_utc().timestamp_micros();
        }
    }
    DateTime::parse_from_rfc3339(cell).map_or(i64::MIN, |t| t.timestamp_micros())
}

/// Reads the events of one CSV file. Rows that cannot be sent are described in
/// `not_sent` and skipped.
///
/// # Errors
/// When the file cannot be opened, or its header lacks `trip_id` or a required field.
pub fn read_events(path: &Path, kind: EventKind, not_sent: &mut Vec<String>) -> Result<Vec<CsvEvent>> {
    let fail = |message: String| Error::Input { path: path.into(), message };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| fail(format!("cannot open: {}; check the path (--start / --end)", csv_message(&e))))?;
    let header = reader
        .headers()
        .map_err(|e| fail(format!("unreadable CSV header: {}", csv_message(&e))))?
        .clone();
    let names: Vec<String> = header.iter().map(|h| h.trim().trim_start_matches('\u{feff}').to_owned()).collect();
    let fields = match kind {
        EventKind::Start => START_FIELDS,
        EventKind::End => END_FIELDS,
    };
    let missing: Vec<&str> = std::iter::once("trip_id")
        .chain(fields.iter().filter(|f| f.required).map(|f| f.name))
        .filter(|n| !names.iter().any(|h| h == n))
        .collect();
    if !missing.is_empty() {
        return Err(fail(format!(
            "unreadable CSV header: no column {} for a {} file; the header was {:?}",
            missing.join(", "),
            kind.event_type(),
            names.join(",")
        )));
    }
    let id_col = names.iter().position(|h| h == "trip_id").expect("checked");
    let time_col = names.iter().position(|h| h == kind.version_field()).expect("checked");
    let keys: Vec<String> = names.iter().map(|n| serde_json::to_string(n).unwrap_or_default()).collect();
    let prefix = format!("{{\"event_type\":\"{}\"", kind.event_type());

    let mut events = Vec::new();
    let mut row = csv::StringRecord::new();
    loop {
        let line = reader.position().line() + 1;
        match reader.read_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                not_sent.push(format!("{}:{}: {}; not sent", path.display(), line.max(2) - 1, csv_message(&e)));
                continue;
            }
        }
        let line = row.position().map_or(line, |p| p.line());
        let origin = format!("{}:{line}", path.display());
        if row.len() != names.len() {
            not_sent.push(format!("{origin}: expected {} fields, found {}; not sent", names.len(), row.len()));
            continue;
        }
        let mut json = prefix.clone();
        for (i, (key, cell)) in keys.iter().zip(row.iter()).enumerate() {
            json.push(',');
            json.push_str(key);
            json.push(':');
            let cell = cell.trim();
            if cell.is_empty() {
                json.push_str("null");
            } else if i != id_col && is_json_number(cell) {
                json.push_str(cell);
            } else {
                json.push_str(&serde_json::to_string(cell).unwrap_or_default());
            }
        }
        json.push('}');
        events.push(CsvEvent {
            time: event_time(&row[time_col]),
            origin,
            record: PutRecord { partition_key: row[id_col].trim().to_owned(), data: json.into_bytes() },
        });
    }
    Ok(events)
}

fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Io(io) => io.to_string(),
        csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8 text ({err})"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_recognised_as_json_writes_them() {
        for yes in ["93", "5.0", "-0.5", "40.09620692463166", "1e400", "0"] {
            assert!(is_json_number(yes), "{yes}");
        }
        for no in ["", "-", "093", "1.", ".5", "NaN", "Infinity", "1e", "12ab", "0x10"] {
            assert!(!is_json_number(no), "{no}");
        }
    }

    #[test]
    fn rows_become_events_and_bad_rows_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trip_end.csv");
        std::fs::write(
            &path,
            "dropoff_datetime,rate_code,passenger_count,trip_distance,fare_amount,tip_amount,payment_type,trip_type,trip_id\n\
             2024-05-25 14:05:00,5.0,,0.1,40.09620692463166,0.0,3.0,2.0,123456\n\
             2024-05-25 14:06:00,5.0,1.0\n",
        )
        .unwrap();
        let mut not_sent = Vec::new();
        let events = read_events(&path, EventKind::End, &mut not_sent).unwrap();
        assert_eq!(events.len(), 1);
        let json: serde_json::Value = serde_json::from_slice(&events[0].record.data).unwrap();
        assert_eq!(json["event_type"], "trip_end");
        assert_eq!(json["trip_id"], "123456", "ids stay strings");
        assert_eq!(json["rate_code"], 5.0);
        assert!(json["passenger_count"].is_null());
        assert_eq!(events[0].record.partition_key, "123456");
        assert_eq!(not_sent, [format!("{}:3: expected 9 fields, found 3; not sent", path.display())]);
        let err = read_events(&path, EventKind::Start, &mut not_sent).unwrap_err().to_string();
        assert!(err.contains("unreadable CSV header: no column pickup_location_id"), "{err}");
    }
}
