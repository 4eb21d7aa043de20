//! CSV rows → JSON events, in the shape of docs/design.md §1.

use std::path::Path;

use chrono::{DateTime, NaiveDateTime};

use crate::model::event::EventKind;
use crate::model::{put_varint, take_varint};
use crate::stream::PutRecord;
use crate::{Error, Result};

/// One event read from a CSV file.
#[derive(Debug, Clone)]
pub struct CsvEvent {
    /// Event time in microseconds (pickup for a start, dropoff for an end); `i64::MIN`
    /// when the cell is not a datetime, so such events go first and fail at ingest.
    pub time: i64,
    /// The row's line in its file, for reports.
    pub line: u32,
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
    if let Some(micros) = crate::model::timestamp::parse_plain(cell) {
        return micros;
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(cell, fmt) {
            return t.and_utc().timestamp_micros();
        }
    }
    DateTime::parse_from_rfc3339(cell).map_or(i64::MIN, |t| t.timestamp_micros())
}

/// A CSV file of one event kind, with its header checked.
pub struct CsvFile {
    path: std::path::PathBuf,
    kind: EventKind,
    names: Vec<String>,
    keys: Vec<String>,
    id_col: usize,
    time_col: usize,
    prefix: String,
}

impl CsvFile {
    /// Opens `path` and checks its header for `trip_id` and `kind`'s required fields.
    ///
    /// # Errors
    /// When the file cannot be opened, or its header lacks `trip_id` or a required field.
    pub fn open(path: &Path, kind: EventKind) -> Result<Self> {
        let fail = |message: String| Error::input(path, message);
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(path)
            .map_err(|e| csv_error(path, "cannot open", e, "; check the path (--start / --end)"))?;
        let header = reader.headers().map_err(|e| csv_error(path, "unreadable CSV header", e, ""))?.clone();
        let names: Vec<String> = header.iter().map(|h| h.trim().trim_start_matches('\u{feff}').to_owned()).collect();
        let fields = kind.fields();
        let missing: Vec<&str> = std::iter::once("trip_id")
            .chain(fields.iter().filter(|f| f.required).map(|f| f.csv_header))
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
        Ok(CsvFile {
            path: path.to_owned(),
            kind,
            id_col: names.iter().position(|h| h == "trip_id").expect("checked"),
            time_col: names.iter().position(|h| h == fields[kind.version_index()].csv_header).expect("checked"),
            // A column of the registry goes on the wire under its field's name; any other
            // under its own, which ingest ignores.
            keys: names
                .iter()
                .map(|n| fields.iter().find(|f| f.csv_header == n).map_or(n.as_str(), |f| f.name))
                .map(|n| serde_json::to_string(n).unwrap_or_default())
                .collect(),
            prefix: format!("{{\"event_type\":\"{}\"", kind.event_type()),
            names,
        })
    }

    /// The event kind of the file.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file once, handing `each` every sendable row: its event time, its line,
    /// and its cells packed ([`CsvFile::event`] makes the event of them). Rows that
    /// cannot be sent are described in `not_sent` and skipped.
    ///
    /// # Errors
    /// When the file cannot be read, or `each` fails.
    pub fn rows_each(
        &self,
        not_sent: &mut Vec<String>,
        mut each: impl FnMut(i64, u32, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(&self.path)
            .map_err(|e| csv_error(&self.path, "cannot open", e, ""))?;
        let mut row = csv::StringRecord::new();
        let mut packed = Vec::new();
        loop {
            let line = reader.position().line() + 1;
            match reader.read_record(&mut row) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    not_sent.push(format!(
                        "{}:{}: {}; not sent",
                        self.path.display(),
                        line.max(2) - 1,
                        csv_message(&e)
                    ));
                    continue;
                }
            }
            let start = row.position().expect("a record read from a file has a position");
            if row.len() != self.names.len() {
                not_sent.push(format!(
                    "{}:{}: expected {} fields, found {}; not sent",
                    self.path.display(),
                    start.line(),
                    self.names.len(),
                    row.len()
                ));
                continue;
            }
            packed.clear();
            for cell in &row {
                pack(&mut packed, cell.trim().as_bytes());
            }
            let line = u32::try_from(start.line()).unwrap_or(u32::MAX);
            each(event_time(&row[self.time_col]), line, &packed)?;
        }
        Ok(())
    }

    /// The event of a row [`CsvFile::rows_each`] gave, from its packed cells.
    ///
    /// # Errors
    /// When `packed` is not the packed cells of one of this file's rows.
    pub fn event(&self, time: i64, line: u32, packed: &[u8]) -> Result<CsvEvent> {
        let mut cells = Vec::with_capacity(self.names.len());
        let mut rest = packed;
        for _ in 0..self.names.len() {
            let cell = unpack(&mut rest).and_then(|c| std::str::from_utf8(c).ok());
            let Some(cell) = cell else {
                return Err(Error::output(format!(
                    "line {line} of {} came back from the sort's temporary file damaged; send the file again",
                    self.path.display()
                )));
            };
            cells.push(cell);
        }
        Ok(self.to_event(&cells, time, line, packed.len()))
    }

    fn to_event(&self, row: &[&str], time: i64, line: u32, row_bytes: usize) -> CsvEvent {
        // Sized once: the keys, the cells, and room for quotes and escapes.
        let size = self.prefix.len() + self.keys.iter().map(|k| k.len() + 2).sum::<usize>() + row_bytes + 32;
        let mut json = Vec::with_capacity(size);
        json.extend_from_slice(self.prefix.as_bytes());
        for (i, (name, cell)) in self.keys.iter().zip(row.iter()).enumerate() {
            json.push(b',');
            json.extend_from_slice(name.as_bytes());
            json.push(b':');
            if cell.is_empty() {
                json.extend_from_slice(b"null");
            } else if i != self.id_col && is_json_number(cell) {
                json.extend_from_slice(cell.as_bytes());
            } else {
                serde_json::to_writer(&mut json, cell).expect("a string is written to a Vec");
            }
        }
        json.push(b'}');
        CsvEvent { time, line, record: PutRecord { partition_key: row[self.id_col].into(), data: json } }
    }
}

/// Appends a cell to a packed row: its length as a LEB128 varint, then its bytes.
fn pack(out: &mut Vec<u8>, cell: &[u8]) {
    put_varint(out, cell.len() as u64);
    out.extend_from_slice(cell);
}

/// The next cell of a packed row, or `None` when the bytes end too soon.
fn unpack<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(take_varint(rest)?).ok()?;
    let (cell, tail) = rest.split_at_checked(len)?;
    *rest = tail;
    Some(cell)
}

/// Reads the events of one CSV file, in file order. Rows that cannot be sent are
/// described in `not_sent` and skipped.
///
/// # Errors
/// When the file cannot be opened, or its header lacks `trip_id` or a required field.
pub fn read_events(path: &Path, kind: EventKind, not_sent: &mut Vec<String>) -> Result<Vec<CsvEvent>> {
    let file = CsvFile::open(path, kind)?;
    let mut events = Vec::new();
    file.rows_each(not_sent, |time, line, packed| {
        events.push(file.event(time, line, packed)?);
        Ok(())
    })?;
    Ok(events)
}

/// An input error from the CSV reader: `context: what csv says; remedy`, the reader's
/// error kept as the source. (`remedy` starts with its own separator.)
fn csv_error(path: &Path, context: &str, e: csv::Error, remedy: &str) -> Error {
    Error::Input {
        path: path.into(),
        message: format!("{context}: {}{remedy}", csv_message(&e)),
        source: Some(e.into()),
    }
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

    #[test]
    fn quoted_and_long_cells_come_through_packed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trip_start.csv");
        let long = "é".repeat(200);
        std::fs::write(
            &path,
            format!(
                "trip_id,pickup_location_id,dropoff_location_id,vendor_id,pickup_datetime,note\n\
                 \" 7 \",1,2,1,2024-05-25 14:00:00,\"a, \"\"b\"\"\nc\"\n\
                 8,1,2,1,2024-05-25 14:01:00,{long}\n"
            ),
        )
        .unwrap();
        let mut not_sent = Vec::new();
        let events = read_events(&path, EventKind::Start, &mut not_sent).unwrap();
        assert!(not_sent.is_empty(), "{not_sent:?}");
        let json: Vec<serde_json::Value> =
            events.iter().map(|e| serde_json::from_slice(&e.record.data).unwrap()).collect();
        assert_eq!((json[0]["trip_id"].as_str(), events[0].record.partition_key.as_str()), (Some("7"), "7"));
        assert_eq!(json[0]["note"], "a, \"b\"\nc");
        assert_eq!(json[1]["note"], long.as_str(), "a cell of 400 bytes: a two-byte length");
        assert_eq!((events[0].line, events[1].line), (2, 4), "the quoted newline counts as a line");

        let file = CsvFile::open(&path, EventKind::Start).unwrap();
        let mut packed = Vec::new();
        file.rows_each(&mut not_sent, |_, _, p| {
            packed.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        let cut = &packed[1][..packed[1].len() - 1];
        let err = file.event(0, 3, cut).unwrap_err().to_string();
        assert!(err.contains("line 3 of") && err.contains("damaged"), "{err}");
    }
}
