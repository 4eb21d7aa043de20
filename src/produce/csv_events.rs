//! CSV rows → JSON events, in the shape of docs/design.md §1.

use std::path::Path;

use chrono::{DateTime, NaiveDateTime};

use crate::model::event::EventKind;
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
    file: std::fs::File,
    names: Vec<String>,
    keys: Vec<String>,
    id_col: usize,
    time_col: usize,
    prefix: String,
}

/// Where one sendable row is: its event time and its bytes in the file. A few bytes a
/// row, so the rows of both files can be ordered by time without holding them.
#[derive(Debug, Clone, Copy)]
pub struct RowKey {
    /// Event time in microseconds, as [`CsvEvent::time`].
    pub time: i64,
    /// Byte offset of the row in its file.
    pub offset: u64,
    /// Length of the row in bytes.
    pub len: u32,
    /// Line number, for reports.
    pub line: u32,
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
        let file = std::fs::File::open(path).map_err(|e| Error::input_because(path, "cannot open", e, ""))?;
        Ok(CsvFile {
            path: path.to_owned(),
            kind,
            file,
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

    /// Reads the file once, returning where each sendable row is and when it happened.
    /// Rows that cannot be sent are described in `not_sent` and skipped.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn index(&self, not_sent: &mut Vec<String>) -> Result<Vec<RowKey>> {
        let mut keys = Vec::new();
        self.index_each(not_sent, |k| {
            keys.push(k);
            Ok(())
        })?;
        Ok(keys)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`CsvFile::index`], handing each key to `each` as it is read.
    ///
    /// # Errors
    /// When the file cannot be read, or `each` fails.
    pub fn index_each(&self, not_sent: &mut Vec<String>, mut each: impl FnMut(RowKey) -> Result<()>) -> Result<()> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(&self.path)
            .map_err(|e| csv_error(&self.path, "cannot open", e, ""))?;
        let mut row = csv::StringRecord::new();
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
            let len = reader.position().byte() - start.byte();
            each(RowKey {
                time: event_time(&row[self.time_col]),
                offset: start.byte(),
                len: u32::try_from(len).unwrap_or(u32::MAX),
                line: u32::try_from(start.line()).unwrap_or(u32::MAX),
            })?;
        }
        Ok(())
    }

    /// The event of the row at `key`, read from the file again with `scratch`.
    ///
    /// # Errors
    /// When the file cannot be read or changed since it was indexed.
    pub fn event(&self, key: &RowKey, scratch: &mut Scratch) -> Result<CsvEvent> {
        use csv_core::ReadRecordResult;
        use std::os::unix::fs::FileExt;
        let changed = || {
            Error::input(&self.path, format!("line {} changed while it was being sent; send the file again", key.line))
        };
        let Scratch { input, output, ends, parser, windows } = scratch;
        let input: &[u8] = match windows.row(&self.file, key.offset, key.len as usize) {
            Some(row) => row,
            None => {
                // Not in a window (a long row, a short read): the row alone, whose
                // error says what went wrong.
                input.resize(key.len as usize, 0);
                self.file
                    .read_exact_at(input, key.offset)
                    .map_err(|e| Error::input_because(&self.path, format!("cannot read line {}", key.line), e, ""))?;
                input
            }
        };
        output.resize(input.len() + 1, 0);
        ends.resize(self.names.len() + 1, 0);
        parser.reset();
        let (mut result, read, _, mut fields) = parser.read_record(input, output, ends);
        if matches!(result, ReadRecordResult::InputEmpty) && read == input.len() {
            // The file's last row, without a newline: end of input finishes it.
            (result, _, _, fields) = parser.read_record(&[], output, ends);
        }
        if !matches!(result, ReadRecordResult::Record) || fields != self.names.len() {
            return Err(changed());
        }
        let text = std::str::from_utf8(&output[..ends[fields - 1]]).map_err(|_| changed())?;
        let mut cells = Vec::with_capacity(fields);
        let mut from = 0;
        for &end in &ends[..fields] {
            cells.push(&text[from..end]);
            from = end;
        }
        Ok(self.to_event(&cells, key))
    }

    fn to_event(&self, row: &[&str], key: &RowKey) -> CsvEvent {
        // Sized once: the keys, the cells, and room for quotes and escapes.
        let size = self.prefix.len() + self.keys.iter().map(|k| k.len() + 2).sum::<usize>() + key.len as usize + 32;
        let mut json = Vec::with_capacity(size);
        json.extend_from_slice(self.prefix.as_bytes());
        for (i, (name, cell)) in self.keys.iter().zip(row.iter()).enumerate() {
            json.push(b',');
            json.extend_from_slice(name.as_bytes());
            json.push(b':');
            let cell = cell.trim();
            if cell.is_empty() {
                json.extend_from_slice(b"null");
            } else if i != self.id_col && is_json_number(cell) {
                json.extend_from_slice(cell.as_bytes());
            } else {
                serde_json::to_writer(&mut json, cell).expect("a string is written to a Vec");
            }
        }
        json.push(b'}');
        CsvEvent {
            time: key.time,
            line: key.line,
            record: PutRecord { partition_key: row[self.id_col].trim().into(), data: json },
        }
    }
}

/// Buffers and a CSV parser reused from row to row by [`CsvFile::event`] (building a
/// parser costs more than parsing a row).
pub struct Scratch {
    input: Vec<u8>,
    output: Vec<u8>,
    ends: Vec<usize>,
    parser: csv_core::Reader,
    windows: Windows,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            input: Vec::new(),
            output: Vec::new(),
            ends: Vec::new(),
            parser: csv_core::Reader::new(),
            windows: Windows::default(),
        }
    }
}

/// Bytes read from each file around the row read last, by descriptor (a [`Scratch`]
/// serves the files that are open while it lives).
///
/// Rows sent in time order lie close together in a start file: `gen`'s and the lab's
/// are nearly in pickup order, and a window read serves about 230 rows of a 1M-trip
/// start file, where a read of each row cost a system call and a copy (`pread` was 3%
/// of a 1M `run`'s CPU). An end file in the same trip order is read in dropoff order,
/// which jumps across a trip's length of rows: 26 rows a read, at 1M as at 10M, where
/// that copies 102 GB out of the page cache for a 0.73 GB file (docs/performance.md,
/// "produce's window misses on the end file"). A row the window misses moves it.
#[derive(Default)]
struct Windows(Vec<Window>);

struct Window {
    fd: std::os::fd::RawFd,
    /// The offset in the file of `bytes[0]`.
    start: u64,
    bytes: Vec<u8>,
}

/// The bytes of a window. Rows read in time order also step back a little, so a window
/// starts a quarter of its size before the row that moved it.
const WINDOW_BYTES: usize = 256 << 10;

impl Windows {
    /// The `len` bytes at `offset` in `file`, from its window; `None` when they cannot be
    /// read into one (too long, past the end, or a read failed).
    fn row(&mut self, file: &std::fs::File, offset: u64, len: usize) -> Option<&[u8]> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let fd = file.as_raw_fd();
        let at = match self.0.iter().position(|w| w.fd == fd) {
            Some(at) => at,
            None => {
                self.0.push(Window { fd, start: 0, bytes: Vec::new() });
                self.0.len() - 1
            }
        };
        let w = &mut self.0[at];
        let end = offset.checked_add(len as u64)?;
        if offset < w.start || end > w.start + w.bytes.len() as u64 {
            if len > WINDOW_BYTES / 2 {
                return None;
            }
            w.start = offset.saturating_sub((WINDOW_BYTES / 4) as u64);
            w.bytes.resize(WINDOW_BYTES, 0);
            let mut filled = 0;
            while filled < WINDOW_BYTES {
                match file.read_at(&mut w.bytes[filled..], w.start + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            w.bytes.truncate(filled);
            if end > w.start + filled as u64 {
                return None;
            }
        }
        let from = usize::try_from(offset - w.start).ok()?;
        w.bytes.get(from..from + len)
    }
}

/// Reads the events of one CSV file. Rows that cannot be sent are described in
/// `not_sent` and skipped.
///
/// # Errors
/// When the file cannot be opened, or its header lacks `trip_id` or a required field.
pub fn read_events(path: &Path, kind: EventKind, not_sent: &mut Vec<String>) -> Result<Vec<CsvEvent>> {
    let file = CsvFile::open(path, kind)?;
    let mut scratch = Scratch::default();
    file.index(not_sent)?.iter().map(|k| file.event(k, &mut scratch)).collect()
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

    /// A start file of `rows` rows, row `i` with trip id `t{i}`, the row at `long` (if
    /// any) padded past half a read window.
    fn start_file(path: &Path, rows: usize, long: Option<usize>) {
        let mut text = String::from("trip_id,pickup_location_id,dropoff_location_id,vendor_id,pickup_datetime\n");
        for i in 0..rows {
            let id = if Some(i) == long { format!("t{i}{}", "x".repeat(WINDOW_BYTES)) } else { format!("t{i}") };
            text.push_str(&format!("{id},1,2,1,2024-05-25 14:{:02}:00\n", i % 60));
        }
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn rows_read_in_any_order_through_the_windows_are_the_files_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trip_start.csv");
        // About 40 bytes a row: 20,000 rows span several windows.
        start_file(&path, 20_000, Some(7_000));
        let file = CsvFile::open(&path, EventKind::Start).unwrap();
        let keys = file.index(&mut Vec::new()).unwrap();
        let mut scratch = Scratch::default();
        let forward: Vec<Vec<u8>> =
            keys.iter().map(|k| file.event(k, &mut scratch).unwrap().record.data.to_vec()).collect();
        for (i, data) in forward.iter().enumerate() {
            let json: serde_json::Value = serde_json::from_slice(data).unwrap();
            let id = json["trip_id"].as_str().unwrap();
            assert!(id == format!("t{i}") || (i == 7_000 && id.len() > WINDOW_BYTES), "row {i}: {id:.20}");
            assert_eq!(json["pickup_datetime"], format!("2024-05-25 14:{:02}:00", i % 60));
        }
        // Backward, and jumping about (a stride prime to the count), with a second
        // file's window beside this one's.
        let other_path = dir.path().join("other.csv");
        start_file(&other_path, 100, None);
        let other = CsvFile::open(&other_path, EventKind::Start).unwrap();
        let other_keys = other.index(&mut Vec::new()).unwrap();
        let n = keys.len();
        for order in [(0..n).rev().collect::<Vec<_>>(), (0..2_000).map(|i| i * 7_919 % n).collect()] {
            for (step, &i) in order.iter().enumerate() {
                assert_eq!(file.event(&keys[i], &mut scratch).unwrap().record.data.to_vec(), forward[i], "row {i}");
                let o = other.event(&other_keys[step % 100], &mut scratch).unwrap();
                assert_eq!(o.record.partition_key, format!("t{}", step % 100));
            }
        }
    }

    #[test]
    fn a_file_cut_short_after_it_was_indexed_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trip_start.csv");
        start_file(&path, 1_000, None);
        let file = CsvFile::open(&path, EventKind::Start).unwrap();
        let keys = file.index(&mut Vec::new()).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
        let mut scratch = Scratch::default();
        assert!(file.event(&keys[0], &mut scratch).is_ok());
        let err = file.event(&keys[999], &mut scratch).unwrap_err().to_string();
        assert!(err.contains("cannot read line 1001"), "{err}");
    }
}
