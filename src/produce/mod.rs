//! Produce: CSV rows (or captured NDJSON records) → JSON events → the stream.
//!
//! Memory stays small whatever the file sizes: one pass reads each row's event time and
//! cells into runs of 8 MiB sorted by time, spilled to a temporary file (an external
//! merge sort, [`order`]), and the merge of the runs is sent in time order, a batch at a
//! time.
//!
//! Each CSV row becomes one event: a JSON number where the cell is a number, `null` for a
//! blank, a string otherwise (`trip_id` is always a string). Nothing is validated here;
//! that is ingest's job, so a producer never loses a record it could send. Events are
//! interleaved by event time (a start at its pickup, an end at its dropoff) and put with
//! the trip id as partition key. A row that cannot become a record (wrong field count,
//! over 1 MiB) is reported with its file and line and not sent; the rest still is.

pub mod csv_events;
pub mod order;
pub mod synthetic;

use std::io::BufRead;
use std::path::Path;

use compact_str::format_compact;
use serde::Serialize;
use tracing::info;

use crate::model::event::EventKind;
use crate::observe::progress::Progress;
use crate::stream::{PutRecord, StreamSink};
use crate::{Error, Result};

pub use self::csv_events::{CsvEvent, CsvFile, read_events};
use self::order::TimeOrder;

/// Records per call to the sink. The Kinesis sink splits a call into PutRecords of at
/// most 500; the embedded stream writes each call in one transaction, so a large call
/// saves commits.
pub const PUT_BATCH: usize = 8192;

/// What a produce run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProduceReport {
    /// Records the stream accepted.
    pub sent: u64,
    /// One line per row or record not sent: file, line and why.
    pub not_sent: Vec<String>,
}

/// Sends the events of a start and an end CSV file, interleaved by event time.
///
/// # Errors
/// When a file cannot be opened or its header is unusable, or the stream fails.
pub async fn produce_csv(
    sink: &dyn StreamSink,
    start: &Path,
    end: &Path,
    progress: &dyn Progress,
) -> Result<ProduceReport> {
    let mut report = ProduceReport::default();
    let files = [CsvFile::open(start, EventKind::Start)?, CsvFile::open(end, EventKind::End)?];
    // First pass: each row's event time, line and cells, in runs sorted by time; then
    // the runs merged (a start ahead of an end at the same time) and sent, a batch at a
    // time. No row is read from its file twice.
    let mut order = TimeOrder::default();
    let mut total = 0;
    for (i, f) in files.iter().enumerate() {
        f.rows_each(&mut report.not_sent, |time, line, cells| {
            total += 1;
            order.push(i as u8, time, line, cells)
        })?;
    }
    progress.produce_total(total);
    let mut sorted = order.into_sorted()?;
    let mut failed = None;
    let events = std::iter::from_fn(|| {
        let event = sorted.next_row().and_then(|row| {
            let Some(row) = row else { return Ok(None) };
            let file = &files[usize::from(row.file)];
            let e = file.event(row.time, row.line, row.bytes)?;
            Ok(Some((Line { path: file.path(), line: e.line }, e.record)))
        });
        event.unwrap_or_else(|e| {
            failed = Some(e);
            None
        })
    });
    send(sink, events, &mut report, progress).await?;
    if let Some(e) = failed {
        return Err(e);
    }
    info!(sent = report.sent, not_sent = report.not_sent.len(), "Produced events.");
    Ok(report)
}

/// Sends each non-empty line of an NDJSON file as one record, byte for byte, keyed by its
/// `trip_id` when it has one.
///
/// # Errors
/// When the file cannot be read, or the stream fails.
pub async fn produce_ndjson(sink: &dyn StreamSink, path: &Path, progress: &dyn Progress) -> Result<ProduceReport> {
    let file = std::fs::File::open(path).map_err(|e| Error::input_because(path, "cannot open", e, ""))?;
    let mut reader = std::io::BufReader::new(file);
    let mut records = Vec::new();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| Error::input_because(path, "cannot read", e, ""))?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let partition_key = trip_id_of(&line).map_or_else(|| format_compact!("line-{number}"), Into::into);
        records.push((format!("{}:{number}", path.display()), PutRecord { partition_key, data: line.clone() }));
    }
    let mut report = ProduceReport::default();
    progress.produce_total(records.len() as u64);
    send(sink, records.into_iter(), &mut report, progress).await?;
    Ok(report)
}

/// Where a CSV row came from, written `file:line` only when a report needs it.
struct Line<'a> {
    path: &'a Path,
    line: u32,
}

impl std::fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

fn trip_id_of(data: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        trip_id: Option<&'a serde_json::value::RawValue>,
    }
    let key: Key<'_> = serde_json::from_slice(data).ok()?;
    let raw = key.trip_id?.get();
    let id = serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_owned());
    (!id.is_empty()).then_some(id)
}

/// Puts the records a batch at a time. The next batch is read and built while the
/// stream stores the last one, so the CSV work and the stream's writes (and its sync to
/// disk) overlap.
async fn send<O: std::fmt::Display>(
    sink: &dyn StreamSink,
    mut records: impl Iterator<Item = (O, PutRecord)>,
    report: &mut ProduceReport,
    progress: &dyn Progress,
) -> Result<()> {
    let mut fill = |batch: &mut Vec<(O, PutRecord)>| {
        batch.clear();
        batch.extend(records.by_ref().take(PUT_BATCH));
    };
    let (mut batch, mut next) = (Vec::with_capacity(PUT_BATCH), Vec::with_capacity(PUT_BATCH));
    fill(&mut batch);
    let mut put = 0;
    while !batch.is_empty() {
        let (origins, puts): (Vec<O>, Vec<PutRecord>) = batch.drain(..).unzip();
        // The put is polled first, so its write is under way before the build runs.
        let (refused, ()) = futures::join!(sink.put_records(&puts), async { fill(&mut next) });
        let refused = refused?;
        for r in &refused {
            report.not_sent.push(format!("{}: {}; not sent", origins[r.index], r.reason));
        }
        report.sent += (puts.len() - refused.len()) as u64;
        put += puts.len() as u64;
        progress.produced(put);
        std::mem::swap(&mut batch, &mut next);
    }
    Ok(())
}
