//! Rows in event-time order, in bounded memory: an external merge sort that carries
//! each row's bytes.
//!
//! Rows arrive file by file, each file in its own order, each with its event time, its
//! line and its bytes (the cells, as [`super::CsvFile`] packs them). They are kept in
//! runs of at most [`RUN_BYTES`], each a stretch of rows as they came; each run is sorted
//! stably by time and appended to one anonymous temporary file (input that fits in one
//! run stays in memory). The runs are then merged by time, a tie going to the earlier
//! run, so the start file's rows stay ahead of the end file's at equal times and the
//! rows of one file keep their order: the result is a stable sort of all the rows.
//!
//! The bytes travel with the sort so that no row is read from its file a second time:
//! an end file is in the trips' pickup order and is sent in dropoff order, and reading
//! it back at each row's place copied 140 times its size out of the page cache
//! (docs/performance.md, "produce's window misses on the end file"). The spill instead
//! takes about as much disk as the CSV files, written once and read once in order: 1M
//! trips make about 24 runs (190 MB).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use crate::{Error, Result};

/// Bytes of one run in memory: its rows' bytes and 24 bytes of index a row. While the
/// runs merge, each is read through a buffer of [`READ_BYTES`].
pub const RUN_BYTES: usize = 8 << 20;
/// Index bytes a row costs in a run in memory.
const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();
/// The buffer each spilled run is read back through.
const READ_BYTES: usize = 16 << 10;
/// A row in the spill file: time (8 bytes), line (4), length (4), file (1), then its
/// bytes.
const HEADER: usize = 17;

/// One row of a run in memory: its bytes are `bytes[at..at + len]` of the run.
#[derive(Debug, Clone, Copy)]
struct Entry {
    time: i64,
    line: u32,
    len: u32,
    at: u32,
    file: u8,
}

/// Time, line, length and file of a run's head row.
type Head = (i64, u32, u32, u8);

/// A row given back by the merge.
#[derive(Debug, Clone, Copy)]
pub struct SortedRow<'a> {
    /// Event time in microseconds.
    pub time: i64,
    /// The row's line in its file.
    pub line: u32,
    /// The file it came from, as given to [`TimeOrder::push`].
    pub file: u8,
    /// The bytes given with it.
    pub bytes: &'a [u8],
}

enum Source {
    /// The only run, when nothing was spilled: its rows in time order, and their bytes.
    Memory { entries: Vec<Entry>, bytes: Vec<u8>, next: usize },
    /// A spilled run: `buf[pos..]` holds the file's bytes from `at` on, up to `end`.
    Disk { at: u64, end: u64, buf: Vec<u8>, pos: usize },
}

/// A sorted run, and the row at its head.
struct Run {
    source: Source,
    /// The head row; its bytes are the next in `source`.
    head: Option<Head>,
}

impl Run {
    /// Reads the next row's header into `head`, its bytes made ready in the buffer.
    fn advance(&mut self, spill: Option<&File>) -> Result<()> {
        self.head = match &mut self.source {
            Source::Memory { entries, next, .. } => entries.get(*next).map(|e| (e.time, e.line, e.len, e.file)),
            Source::Disk { at, end, buf, pos } => {
                let spill = spill.expect("a spilled run has the spill file");
                if *at == *end && *pos == buf.len() {
                    None
                } else {
                    fill(spill, at, *end, buf, pos, HEADER)?;
                    let h = &buf[*pos..*pos + HEADER];
                    let time = i64::from_le_bytes(h[0..8].try_into().expect("8 bytes"));
                    let line = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
                    let len = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
                    let file = h[16];
                    fill(spill, at, *end, buf, pos, HEADER + len as usize)?;
                    Some((time, line, len, file))
                }
            }
        };
        Ok(())
    }

    /// The head row's bytes; the next [`Run::advance`] moves past them.
    fn take(&mut self) -> &[u8] {
        let (_, _, len, _) = self.head.expect("a run in the heap has a head");
        let len = len as usize;
        match &mut self.source {
            Source::Memory { entries, bytes, next } => {
                let at = entries[*next].at as usize;
                *next += 1;
                &bytes[at..at + len]
            }
            Source::Disk { buf, pos, .. } => {
                let from = *pos + HEADER;
                *pos = from + len;
                &buf[from..from + len]
            }
        }
    }
}

/// Makes `buf[pos..]` hold at least `want` bytes, reading the spill from `at` on (and
/// growing `buf` for a row longer than it).
fn fill(spill: &File, at: &mut u64, end: u64, buf: &mut Vec<u8>, pos: &mut usize, want: usize) -> Result<()> {
    if buf.len() - *pos >= want {
        return Ok(());
    }
    buf.drain(..*pos);
    *pos = 0;
    let room = want.max(READ_BYTES);
    let have = buf.len();
    let more = usize::try_from(end - *at).unwrap_or(usize::MAX).min(room - have);
    if have + more < want {
        return Err(spill_error(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a sorted run ends early")));
    }
    buf.resize(have + more, 0);
    spill.read_exact_at(&mut buf[have..], *at).map_err(spill_error)?;
    *at += more as u64;
    Ok(())
}

fn spill_error(e: std::io::Error) -> Error {
    Error::output(format!(
        "cannot sort rows through a temporary file in {}: {e}; set TMPDIR to a folder with room",
        std::env::temp_dir().display()
    ))
}

/// Gathers rows, then gives them back in time order.
pub struct TimeOrder {
    run_bytes: usize,
    entries: Vec<Entry>,
    bytes: Vec<u8>,
    /// The spill file and how much of it is written; created at the first spill.
    spill: Option<(BufWriter<File>, u64)>,
    /// Spilled runs: their byte ranges in the spill.
    spilled: Vec<(u64, u64)>,
}

impl Default for TimeOrder {
    fn default() -> Self {
        Self::with_run_bytes(RUN_BYTES)
    }
}

impl TimeOrder {
    /// Runs of about `run_bytes` in memory (tests use small ones to make several runs).
    pub fn with_run_bytes(run_bytes: usize) -> Self {
        // A row's place in its run's bytes is a `u32`.
        let run_bytes = run_bytes.min(u32::MAX as usize);
        TimeOrder { run_bytes, entries: Vec::new(), bytes: Vec::new(), spill: None, spilled: Vec::new() }
    }

    /// Adds the next row of `file` (files one after the other, in the order their ties
    /// should go).
    ///
    /// # Errors
    /// When a full run cannot be written to the temporary file, or a row is over 4 GiB.
    pub fn push(&mut self, file: u8, time: i64, line: u32, bytes: &[u8]) -> Result<()> {
        let len = u32::try_from(bytes.len()).map_err(|_| Error::output("a CSV row over 4 GiB cannot be sorted"))?;
        let size = self.bytes.len() + (self.entries.len() + 1) * ENTRY_BYTES + bytes.len();
        if !self.entries.is_empty() && size > self.run_bytes {
            self.spill()?;
        }
        let at = u32::try_from(self.bytes.len()).expect("a run's bytes stay under its bound");
        self.entries.push(Entry { time, line, len, at, file });
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    /// The current run's rows in time order (a stable sort), and their bytes.
    fn take_run(&mut self) -> (Vec<Entry>, Vec<u8>) {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_by_key(|e| e.time);
        (entries, std::mem::take(&mut self.bytes))
    }

    fn spill(&mut self) -> Result<()> {
        let (entries, bytes) = self.take_run();
        if self.spill.is_none() {
            let file = tempfile::tempfile().map_err(spill_error)?;
            self.spill = Some((BufWriter::with_capacity(1 << 20, file), 0));
        }
        let (out, written) = self.spill.as_mut().expect("created above");
        let start = *written;
        for e in &entries {
            out.write_all(&e.time.to_le_bytes()).map_err(spill_error)?;
            out.write_all(&e.line.to_le_bytes()).map_err(spill_error)?;
            out.write_all(&e.len.to_le_bytes()).map_err(spill_error)?;
            out.write_all(&[e.file]).map_err(spill_error)?;
            out.write_all(&bytes[e.at as usize..][..e.len as usize]).map_err(spill_error)?;
            *written += (HEADER + e.len as usize) as u64;
        }
        self.spilled.push((start, *written));
        (self.entries, self.bytes) = (entries, bytes);
        self.entries.clear();
        self.bytes.clear();
        Ok(())
    }

    /// Every row added, in time order, each with its file.
    ///
    /// # Errors
    /// When the temporary file cannot be written or read back.
    pub fn into_sorted(mut self) -> Result<Sorted> {
        // A last run beside spilled ones is spilled too: the merge then holds a read
        // buffer a run, and the run's memory is freed before it starts.
        if !self.entries.is_empty() && !self.spilled.is_empty() {
            self.spill()?;
            (self.entries, self.bytes) = (Vec::new(), Vec::new());
        }
        let spill = match self.spill.take() {
            Some((out, _)) => Some(out.into_inner().map_err(|e| spill_error(e.into_error()))?),
            None => None,
        };
        let mut runs: Vec<Run> = self
            .spilled
            .iter()
            .map(|&(at, end)| Run { source: Source::Disk { at, end, buf: Vec::new(), pos: 0 }, head: None })
            .collect();
        if !self.entries.is_empty() {
            let (entries, bytes) = self.take_run();
            runs.push(Run { source: Source::Memory { entries, bytes, next: 0 }, head: None });
        }
        let mut sorted = Sorted { spill, runs, heap: BinaryHeap::new(), taken: None };
        for i in 0..sorted.runs.len() {
            sorted.advance(i)?;
        }
        Ok(sorted)
    }
}

/// The merge of the runs: gives the rows back in time order, one at a time
/// ([`Sorted::next_row`]; each row's bytes are borrowed from the run they are in).
pub struct Sorted {
    /// The temporary file of the spilled runs; `None` when nothing was spilled.
    spill: Option<File>,
    runs: Vec<Run>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
    /// The run whose head was given out last, to move past at the next call.
    taken: Option<usize>,
}

impl Sorted {
    fn advance(&mut self, run: usize) -> Result<()> {
        self.runs[run].advance(self.spill.as_ref())?;
        if let Some((time, ..)) = self.runs[run].head {
            self.heap.push(Reverse((time, run)));
        }
        Ok(())
    }

    /// The next row in time order, or `None` after the last.
    ///
    /// # Errors
    /// When the temporary file cannot be read back.
    pub fn next_row(&mut self) -> Result<Option<SortedRow<'_>>> {
        if let Some(run) = self.taken.take() {
            self.advance(run)?;
        }
        let Some(Reverse((_, run))) = self.heap.pop() else {
            return Ok(None);
        };
        self.taken = Some(run);
        let r = &mut self.runs[run];
        let (time, line, _, file) = r.head.expect("a run in the heap has a head");
        Ok(Some(SortedRow { time, line, file, bytes: r.take() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Row `line`'s bytes: mostly short, every thirteenth longer than two read buffers.
    fn bytes_of(file: u8, line: u32) -> Vec<u8> {
        let len = if line % 13 == 5 { 2 * READ_BYTES + line as usize } else { line as usize % 50 };
        (0..len).map(|i| (i as u32 ^ line ^ u32::from(file)) as u8).collect()
    }

    #[test]
    fn input_that_fits_in_one_run_comes_back_sorted_without_a_spill() {
        let mut order = TimeOrder::default();
        for (line, t) in [(0u32, 5i64), (1, 3), (2, 5), (3, 1)] {
            order.push(0, t, line, &bytes_of(0, line)).unwrap();
        }
        order.push(1, 3, 0, b"end").unwrap();
        let mut sorted = order.into_sorted().unwrap();
        assert!(sorted.runs.iter().all(|r| matches!(r.source, Source::Memory { .. })), "nothing spilled");
        let mut got = Vec::new();
        while let Some(row) = sorted.next_row().unwrap() {
            got.push((row.time, row.file, row.line, row.bytes.to_vec()));
        }
        let want = [(1, 0, 3), (3, 0, 1), (3, 1, 0), (5, 0, 0), (5, 0, 2)];
        let want: Vec<_> =
            want.iter().map(|&(t, f, l)| (t, f, l, if f == 1 { b"end".to_vec() } else { bytes_of(0, l) })).collect();
        assert_eq!(got, want);
    }

    proptest! {
        /// Whatever the run size, the merge is the stable sort of file 0's rows followed
        /// by file 1's, each row with its own bytes.
        #[test]
        fn merges_to_a_stable_sort(
            starts in proptest::collection::vec(0i64..20, 0..60),
            ends in proptest::collection::vec(0i64..20, 0..60),
            run_bytes in 1usize..(4 * READ_BYTES),
        ) {
            let mut order = TimeOrder::with_run_bytes(run_bytes);
            let mut expected = Vec::new();
            for (file, times) in [(0u8, &starts), (1u8, &ends)] {
                for (line, &t) in times.iter().enumerate() {
                    order.push(file, t, line as u32, &bytes_of(file, line as u32)).unwrap();
                    expected.push((t, file, line as u32));
                }
            }
            expected.sort_by_key(|&(t, _, _)| t);
            let mut sorted = order.into_sorted().unwrap();
            let mut got = Vec::new();
            while let Some(row) = sorted.next_row().unwrap() {
                prop_assert_eq!(row.bytes, &bytes_of(row.file, row.line)[..], "row {} of file {}", row.line, row.file);
                got.push((row.time, row.file, row.line));
            }
            prop_assert_eq!(got, expected);
        }
    }
}
