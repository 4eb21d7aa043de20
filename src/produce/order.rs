//! Row keys in event-time order, in bounded memory: an external merge sort.
//!
//! Keys arrive file by file, each file in its own order. They are kept in runs of at
//! most [`RUN_KEYS`] keys (24 bytes each, 12 MiB a run); each run is sorted stably by
//! time, and every run but the last is written to an anonymous temporary file. The runs
//! are then merged by time, a tie going to the earlier run, so the start file's rows
//! stay ahead of the end file's at equal times and the rows of one file keep their
//! order: the result is a stable sort of all the keys. The last run stays in memory;
//! 1M trips (2M keys) make four runs, three of them spilled (36 MB of disk).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use super::RowKey;
use crate::{Error, Result};

/// Keys in one run: 12 MiB of them, and up to 8 MB more while the stable sort runs. In `run`,
/// produce's runs share the process with ingest: runs of 2M keys (48 MiB) put the peak
/// of a 10M-trip `run` where produce's last runs merge beside ingest.
pub const RUN_KEYS: usize = 1 << 19;
const KEY_BYTES: usize = 24;

enum Source {
    Memory(std::vec::IntoIter<RowKey>),
    Disk { reader: BufReader<File>, left: usize },
}

/// A sorted run of one file's keys.
struct Run {
    file: u8,
    source: Source,
}

impl Run {
    fn next(&mut self) -> Result<Option<RowKey>> {
        match &mut self.source {
            Source::Memory(keys) => Ok(keys.next()),
            Source::Disk { left: 0, .. } => Ok(None),
            Source::Disk { reader, left } => {
                let mut b = [0u8; KEY_BYTES];
                reader.read_exact(&mut b).map_err(spill_error)?;
                *left -= 1;
                let word = |at: usize| <[u8; 8]>::try_from(&b[at..at + 8]).expect("8 bytes");
                let half = |at: usize| <[u8; 4]>::try_from(&b[at..at + 4]).expect("4 bytes");
                Ok(Some(RowKey {
                    time: i64::from_le_bytes(word(0)),
                    offset: u64::from_le_bytes(word(8)),
                    len: u32::from_le_bytes(half(16)),
                    line: u32::from_le_bytes(half(20)),
                }))
            }
        }
    }
}

fn spill_error(e: std::io::Error) -> Error {
    Error::output(format!(
        "cannot sort rows through a temporary file in {}: {e}; set TMPDIR to a folder with room",
        std::env::temp_dir().display()
    ))
}

/// Gathers row keys, then gives them back in time order.
pub struct TimeOrder {
    run_keys: usize,
    current: Vec<RowKey>,
    current_file: u8,
    runs: Vec<Run>,
}

impl Default for TimeOrder {
    fn default() -> Self {
        Self::with_run_keys(RUN_KEYS)
    }
}

impl TimeOrder {
    /// Runs of `run_keys` keys (tests use small ones to make several runs).
    pub fn with_run_keys(run_keys: usize) -> Self {
        TimeOrder { run_keys: run_keys.max(1), current: Vec::new(), current_file: 0, runs: Vec::new() }
    }

    /// Adds the next key of `file` (files in the order their ties should go).
    ///
    /// # Errors
    /// When a full run cannot be written to a temporary file.
    pub fn push(&mut self, file: u8, key: RowKey) -> Result<()> {
        if !self.current.is_empty() && (file != self.current_file || self.current.len() == self.run_keys) {
            self.spill()?;
        }
        self.current_file = file;
        self.current.push(key);
        Ok(())
    }

    fn sorted_current(&mut self) -> Vec<RowKey> {
        let mut keys = std::mem::take(&mut self.current);
        keys.sort_by_key(|k| k.time);
        keys
    }

    fn spill(&mut self) -> Result<()> {
        let keys = self.sorted_current();
        let mut out = BufWriter::with_capacity(1 << 20, tempfile::tempfile().map_err(spill_error)?);
        for k in &keys {
            out.write_all(&k.time.to_le_bytes()).map_err(spill_error)?;
            out.write_all(&k.offset.to_le_bytes()).map_err(spill_error)?;
            out.write_all(&k.len.to_le_bytes()).map_err(spill_error)?;
            out.write_all(&k.line.to_le_bytes()).map_err(spill_error)?;
        }
        let mut file = out.into_inner().map_err(|e| spill_error(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(spill_error)?;
        let source = Source::Disk { reader: BufReader::new(file), left: keys.len() };
        self.runs.push(Run { file: self.current_file, source });
        Ok(())
    }

    /// Every key added, in time order, each with its file.
    ///
    /// # Errors
    /// When a spilled run cannot be read back.
    pub fn into_sorted(mut self) -> Result<Sorted> {
        if !self.current.is_empty() {
            let file = self.current_file;
            let keys = self.sorted_current();
            self.runs.push(Run { file, source: Source::Memory(keys.into_iter()) });
        }
        let mut sorted =
            Sorted { heads: Vec::with_capacity(self.runs.len()), heap: BinaryHeap::new(), runs: self.runs };
        for i in 0..sorted.runs.len() {
            let head = sorted.runs[i].next()?;
            sorted.push_head(i, head);
        }
        Ok(sorted)
    }
}

/// The merge of the runs: yields `(key, file)` in time order.
pub struct Sorted {
    runs: Vec<Run>,
    heads: Vec<Option<RowKey>>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
}

impl Sorted {
    fn push_head(&mut self, run: usize, head: Option<RowKey>) {
        if let Some(k) = head {
            self.heap.push(Reverse((k.time, run)));
        }
        if run == self.heads.len() {
            self.heads.push(head);
        } else {
            self.heads[run] = head;
        }
    }
}

impl Iterator for Sorted {
    type Item = Result<(RowKey, u8)>;

    fn next(&mut self) -> Option<Self::Item> {
        let Reverse((_, run)) = self.heap.pop()?;
        let key = self.heads[run].take().expect("a run in the heap has a head");
        match self.runs[run].next() {
            Ok(head) => self.push_head(run, head),
            Err(e) => return Some(Err(e)),
        }
        Some(Ok((key, self.runs[run].file)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(time: i64, line: u32) -> RowKey {
        RowKey { time, offset: u64::from(line) * 100, len: line + 1, line }
    }

    proptest! {
        /// Whatever the run size, the merge is the stable sort of file 0's keys followed
        /// by file 1's.
        #[test]
        fn merges_to_a_stable_sort(
            starts in proptest::collection::vec(0i64..20, 0..60),
            ends in proptest::collection::vec(0i64..20, 0..60),
            run_keys in 1usize..25,
        ) {
            let mut order = TimeOrder::with_run_keys(run_keys);
            let mut expected = Vec::new();
            for (file, times) in [(0u8, &starts), (1u8, &ends)] {
                for (line, &t) in times.iter().enumerate() {
                    order.push(file, key(t, line as u32)).unwrap();
                    expected.push((t, file, line as u32));
                }
            }
            expected.sort_by_key(|&(t, _, _)| t);
            let got: Vec<(i64, u8, u32)> = order
                .into_sorted()
                .unwrap()
                .map(|r| r.map(|(k, file)| {
                    assert_eq!((k.offset, k.len), (u64::from(k.line) * 100, k.line + 1), "a key read back whole");
                    (k.time, file, k.line)
                }))
                .collect::<Result<_>>()
                .unwrap();
            prop_assert_eq!(got, expected);
        }
    }
}
