//! The embedded stream's records as an append-only log per shard, the way Kafka and
//! Kinesis store a shard.
//!
//! A shard is a folder of segment files. Each is named by the sequence number of its
//! first record (`00000000000000000001.log`), with an index beside it (`.idx`). Sequence
//! numbers count the shard's records from 1, so a number is also the record's offset.
//!
//! A put appends its records to each shard it touches as frames and syncs the segment
//! to disk. Only then does it append one index entry for that shard: the last sequence
//! number written, the byte where the chunk ends, and when it arrived. The index is the
//! commit mark: readers read no further than its last entry, so they never see a put
//! that is still being written. The index is sparse (one entry per put call and shard),
//! and it is what a read seeks with and what `AT_TIMESTAMP` searches.
//!
//! A frame is, little-endian: `u32` length of what follows, `u32` CRC-32 of what
//! follows the CRC, `u64` sequence number, `i64` arrival in ms since the epoch, `u16`
//! key length, the key, the data.
//!
//! Writers, in this process or another, hold an exclusive lock on `write.lock` for a
//! put. Before appending, a writer finds the shard's committed end from its index. Bytes
//! past it were left by a put that stopped before its index entry, or whose entry was
//! lost with the page cache (only the data is synced). Whole frames there whose checksums
//! and sequence numbers hold are indexed, since their put may have been acknowledged, and
//! a torn tail is cut off. A segment takes no more puts once it passes its size bound.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{TimeZone, Utc};
use compact_str::CompactString;

use crate::error::{Context, Stage};
use crate::stream::{SequenceNumber, StreamRecord};
use crate::{Error, Result};

/// A segment takes no more puts once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;

/// Bytes of a frame before its key: length, CRC, sequence number, arrival, key length.
const FRAME_HEADER: usize = 4 + 4 + 8 + 8 + 2;

/// Bytes of one index entry: last sequence number, end byte, arrival.
const ENTRY: u64 = 24;

/// A read fetches the segment in blocks of this size (or one frame, when larger).
const READ_BLOCK: usize = 4 * 1024 * 1024;

/// One index entry: the records up to `end_seq` end at byte `end_pos` of the segment,
/// and arrived at `arrival_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    end_seq: u64,
    end_pos: u64,
    arrival_ms: i64,
}

impl Entry {
    fn to_bytes(self) -> [u8; ENTRY as usize] {
        let mut b = [0u8; ENTRY as usize];
        b[..8].copy_from_slice(&self.end_seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.end_pos.to_le_bytes());
        b[16..].copy_from_slice(&self.arrival_ms.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Self {
        let word = |i: usize| <[u8; 8]>::try_from(&b[i..i + 8]).expect("8 bytes");
        Entry {
            end_seq: u64::from_le_bytes(word(0)),
            end_pos: u64::from_le_bytes(word(8)),
            arrival_ms: i64::from_le_bytes(word(16)),
        }
    }
}

/// One shard's part of a put: its records as frames, in order, not yet numbered,
/// stamped or checksummed (the writer does that under the lock).
pub(crate) struct ShardFrames {
    shard: u32,
    bytes: Vec<u8>,
}

/// Frames `rows` (shard, partition key, data) by shard, keeping their order within a
/// shard. Keys are at most 256 bytes and data 1 MiB ([`crate::stream::refusal`]).
pub(crate) fn encode<'a>(rows: impl Iterator<Item = (u32, &'a str, &'a [u8])>) -> Vec<ShardFrames> {
    let mut by_shard: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for (shard, key, data) in rows {
        let bytes = by_shard.entry(shard).or_insert_with(|| Vec::with_capacity(1 << 20));
        let key_len = u16::try_from(key.len()).expect("a partition key is at most 256 bytes");
        let len = u32::try_from(FRAME_HEADER - 4 + key.len() + data.len()).expect("a record is at most 1 MiB");
        bytes.extend_from_slice(&len.to_le_bytes());
        // CRC, sequence number and arrival, filled in by the writer.
        bytes.extend_from_slice(&[0; 20]);
        bytes.extend_from_slice(&key_len.to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(data);
    }
    by_shard.into_iter().map(|(shard, bytes)| ShardFrames { shard, bytes }).collect()
}

/// The shard logs of one stream, in `<dir>/shard-NNNNNNNNNNNN/`.
pub(crate) struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Serialises this process's writers; `write.lock` serialises processes.
    writing: Mutex<File>,
}

/// Where the last segment of a shard ends, found by a writer under the lock.
struct Tail {
    data: File,
    idx: File,
    data_path: PathBuf,
    /// The next index entry goes here.
    idx_len: u64,
    /// The last committed entry (`end_seq` is the segment's base − 1 when it is empty).
    last: Entry,
}

/// A frame read back.
struct Frame {
    seq: u64,
    arrival_ms: i64,
    key: CompactString,
    data: Vec<u8>,
}

fn segment_name(base: u64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

impl SegmentLog {
    /// The log in `dir` (created if missing).
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| crate::error::home_io(Stage::Stream, dir, e))?;
        let lock_path = dir.join("write.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| crate::error::home_io(Stage::Stream, &lock_path, e))?;
        Ok(SegmentLog { dir: dir.to_owned(), segment_bytes: SEGMENT_BYTES, writing: Mutex::new(lock) })
    }

    /// Segments roll over at `bytes` instead of [`SEGMENT_BYTES`] (tests use small ones).
    pub(crate) fn set_segment_bytes(&mut self, bytes: u64) {
        self.segment_bytes = bytes.max(1);
    }

    fn shard_dir(&self, shard: u32) -> PathBuf {
        self.dir.join(format!("shard-{shard:012}"))
    }

    /// The bases of a shard's segments, in order (none when nothing was put).
    fn segments(&self, shard: u32) -> Result<Vec<u64>> {
        let dir = self.shard_dir(shard);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Stage::Stream.error(dir.display(), e)),
        };
        let mut bases = Vec::new();
        for entry in entries {
            let name = entry.stage(Stage::Stream, dir.display())?.file_name();
            if let Some(base) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse().ok()) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        Ok(bases)
    }

    /// A segment's committed index entries (a torn last entry is not one).
    fn index(&self, shard: u32, base: u64) -> Result<Vec<Entry>> {
        let path = self.shard_dir(shard).join(segment_name(base, "idx"));
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Stage::Stream.error(path.display(), e)),
        };
        Ok(bytes.chunks_exact(ENTRY as usize).map(Entry::from_bytes).collect())
    }

    /// The last committed entry of a shard: its newest record and when it arrived
    /// (`None` when the shard is empty).
    fn newest(&self, shard: u32) -> Result<Option<Entry>> {
        for &base in self.segments(shard)?.iter().rev() {
            if let Some(&last) = self.index(shard, base)?.last() {
                return Ok(Some(last));
            }
        }
        Ok(None)
    }

    /// The sequence number of the shard's newest record, 0 when it has none.
    pub(crate) fn latest(&self, shard: u32) -> Result<u64> {
        Ok(self.newest(shard)?.map_or(0, |e| e.end_seq))
    }

    /// The sequence number just before the first record that arrived at or after `at_ms`
    /// (the shard's latest when none did).
    pub(crate) fn before_arrival(&self, shard: u32, at_ms: i64) -> Result<u64> {
        let mut before = 0;
        for base in self.segments(shard)? {
            let entries = self.index(shard, base)?;
            // Arrivals never decrease along a shard: a writer stamps a put with the
            // later of the clock and the shard's last arrival.
            let i = entries.partition_point(|e| e.arrival_ms < at_ms);
            if i < entries.len() {
                return Ok(if i == 0 { base - 1 } else { entries[i - 1].end_seq });
            }
            before = entries.last().map_or(before, |e| e.end_seq);
        }
        Ok(before)
    }

    /// Reads the records after `after`, up to `limit` of them, stopping after the one
    /// that brings their data to `max_bytes`. Returns them, and whether a bound stopped
    /// the read (rather than the end of the shard).
    pub(crate) fn read(
        &self,
        shard: u32,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StreamRecord>, bool)> {
        let bases = self.segments(shard)?;
        let mut records = Vec::new();
        let (mut after, mut bytes) = (after, 0usize);
        let first = bases.partition_point(|&b| b <= after + 1).saturating_sub(1);
        for &base in bases.iter().skip(first) {
            let entries = self.index(shard, base)?;
            // The first chunk holding a record past `after`.
            let chunk = entries.partition_point(|e| e.end_seq <= after);
            let Some(end) = entries.last().map(|e| e.end_pos) else { continue };
            if chunk == entries.len() {
                continue;
            }
            let start = if chunk == 0 { 0 } else { entries[chunk - 1].end_pos };
            let path = self.shard_dir(shard).join(segment_name(base, "log"));
            let file = File::open(&path).stage(Stage::Stream, path.display())?;
            let mut frames = Frames { file: &file, path: &path, pos: start, end, buf: Vec::new(), at: 0 };
            while let Some(frame) = frames.next()? {
                if frame.seq <= after {
                    continue;
                }
                if frame.seq != after + 1 {
                    return Err(Error::stream(format!(
                        "{} is damaged: record {} follows {after}; move the stream folder aside to start a new stream",
                        path.display(),
                        frame.seq
                    )));
                }
                after = frame.seq;
                bytes += frame.data.len();
                records.push(StreamRecord {
                    sequence_number: SequenceNumber::from_u64(frame.seq),
                    partition_key: frame.key,
                    data: frame.data,
                    arrival: Utc.timestamp_millis_opt(frame.arrival_ms).single().unwrap_or_default(),
                });
                if records.len() >= limit || bytes >= max_bytes {
                    return Ok((records, true));
                }
            }
        }
        Ok((records, false))
    }

    /// How far the shard's newest record arrived after `arrival_ms`.
    pub(crate) fn millis_after(&self, shard: u32, arrival_ms: i64) -> Result<Option<u64>> {
        Ok(self.newest(shard)?.map(|e| u64::try_from(e.arrival_ms - arrival_ms).unwrap_or(0)))
    }

    /// Appends each shard's frames (from [`encode`]), numbering and stamping them, and
    /// syncs each shard's segment before committing it.
    pub(crate) fn put(&self, shards: Vec<ShardFrames>) -> Result<()> {
        let lock = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lock.lock().stage(Stage::Stream, self.dir.join("write.lock").display())?;
        let now = Utc::now().timestamp_millis();
        let done = shards.into_iter().try_for_each(|frames| self.append(frames, now));
        let unlocked = lock.unlock().stage(Stage::Stream, self.dir.join("write.lock").display());
        done.and(unlocked)
    }

    fn append(&self, frames: ShardFrames, now_ms: i64) -> Result<()> {
        let ShardFrames { shard, mut bytes } = frames;
        let mut tail = self.tail(shard)?;
        if tail.last.end_pos >= self.segment_bytes {
            tail = self.new_segment(shard, tail.last.end_seq + 1, tail.last.arrival_ms)?;
        }
        let arrival_ms = now_ms.max(tail.last.arrival_ms);
        let (mut seq, mut at) = (tail.last.end_seq, 0);
        while at < bytes.len() {
            seq += 1;
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            let frame = &mut bytes[at..at + 4 + len];
            frame[8..16].copy_from_slice(&seq.to_le_bytes());
            frame[16..24].copy_from_slice(&arrival_ms.to_le_bytes());
            let crc = crc32fast::hash(&frame[8..]);
            frame[4..8].copy_from_slice(&crc.to_le_bytes());
            at += 4 + len;
        }
        let entry = Entry { end_seq: seq, end_pos: tail.last.end_pos + bytes.len() as u64, arrival_ms };
        let context = || tail.data_path.display().to_string();
        tail.data.write_all_at(&bytes, tail.last.end_pos).stage(Stage::Stream, context())?;
        tail.data.sync_data().stage(Stage::Stream, context())?;
        tail.idx.write_all_at(&entry.to_bytes(), tail.idx_len).stage(Stage::Stream, context())?;
        Ok(())
    }

    /// Starts a new, empty segment whose first record will be `base`.
    fn new_segment(&self, shard: u32, base: u64, arrival_ms: i64) -> Result<Tail> {
        let mut tail = self.open_segment(shard, base)?;
        let dir = self.shard_dir(shard);
        File::open(&dir).and_then(|d| d.sync_all()).stage(Stage::Stream, dir.display())?;
        tail.last = Entry { end_seq: base - 1, end_pos: 0, arrival_ms };
        Ok(tail)
    }

    /// Opens segment `base` of a shard for writing (creating its files if missing).
    fn open_segment(&self, shard: u32, base: u64) -> Result<Tail> {
        let dir = self.shard_dir(shard);
        let open = |ext: &str| {
            let path = dir.join(segment_name(base, ext));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .stage(Stage::Stream, path.display())?;
            Ok::<_, Error>((file, path))
        };
        // The index first: a segment is listed by its .log file, which then has one.
        let (idx, _) = open("idx")?;
        let (data, data_path) = open("log")?;
        let last = Entry { end_seq: base - 1, end_pos: 0, arrival_ms: i64::MIN };
        Ok(Tail { data, idx, data_path, idx_len: 0, last })
    }

    /// The last segment of a shard, made whole: a torn index entry is cut off, whole
    /// frames past the committed end are indexed, and a torn frame is cut off.
    fn tail(&self, shard: u32) -> Result<Tail> {
        let dir = self.shard_dir(shard);
        let Some(&base) = self.segments(shard)?.last() else {
            std::fs::create_dir_all(&dir).stage(Stage::Stream, dir.display())?;
            File::open(&self.dir).and_then(|d| d.sync_all()).stage(Stage::Stream, self.dir.display())?;
            return self.new_segment(shard, 1, i64::MIN);
        };
        let mut tail = self.open_segment(shard, base)?;
        let path = tail.data_path.clone();
        let context = || path.display().to_string();
        let idx_len = tail.idx.metadata().stage(Stage::Stream, context())?.len();
        tail.idx_len = idx_len - idx_len % ENTRY;
        if tail.idx_len != idx_len {
            tail.idx.set_len(tail.idx_len).stage(Stage::Stream, context())?;
        }
        if tail.idx_len > 0 {
            let mut b = [0u8; ENTRY as usize];
            tail.idx.read_exact_at(&mut b, tail.idx_len - ENTRY).stage(Stage::Stream, context())?;
            tail.last = Entry::from_bytes(&b);
        }
        let data_len = tail.data.metadata().stage(Stage::Stream, context())?.len();
        if data_len > tail.last.end_pos {
            let mut frames =
                Frames { file: &tail.data, path: &path, pos: tail.last.end_pos, end: data_len, buf: Vec::new(), at: 0 };
            let mut found = tail.last;
            while let Next::Frame(frame) = frames.next_raw()? {
                if frame.seq != found.end_seq + 1 {
                    break;
                }
                found = Entry {
                    end_seq: frame.seq,
                    end_pos: frames.offset(),
                    arrival_ms: frame.arrival_ms.max(found.arrival_ms),
                };
            }
            if found != tail.last {
                tail.idx.write_all_at(&found.to_bytes(), tail.idx_len).stage(Stage::Stream, context())?;
                tail.idx_len += ENTRY;
                tracing::warn!(file = %path.display(), records = found.end_seq - tail.last.end_seq, "indexed records an interrupted put left");
                tail.last = found;
            }
            if data_len > tail.last.end_pos {
                tail.data.set_len(tail.last.end_pos).stage(Stage::Stream, context())?;
                tracing::warn!(file = %path.display(), bytes = data_len - tail.last.end_pos, "cut off a torn write");
            }
        }
        Ok(tail)
    }
}

/// What [`Frames::next_raw`] found.
enum Next {
    Frame(Frame),
    End,
    Damaged(&'static str),
}

/// Reads frames forward from `pos` up to `end`, a block at a time.
struct Frames<'a> {
    file: &'a File,
    path: &'a Path,
    /// The file position of `buf[0]`.
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    /// The next frame starts at `buf[at]`.
    at: usize,
}

impl Frames<'_> {
    /// The file position of the next frame.
    fn offset(&self) -> u64 {
        self.pos + self.at as u64
    }

    fn damaged(&self, why: &str) -> Error {
        Error::stream(format!(
            "{} is damaged at byte {}: {why}; move the stream folder aside to start a new stream",
            self.path.display(),
            self.offset()
        ))
    }

    /// Makes `n` bytes from `at` available, or says the segment ends first.
    fn fill(&mut self, n: usize) -> Result<bool> {
        if self.buf.len() - self.at >= n {
            return Ok(true);
        }
        self.buf.drain(..self.at);
        self.pos += self.at as u64;
        self.at = 0;
        let want = (n.max(READ_BLOCK) as u64).min(self.end - self.pos) as usize;
        if want < n {
            return Ok(false);
        }
        let have = self.buf.len();
        self.buf.resize(want, 0);
        self.file
            .read_exact_at(&mut self.buf[have..], self.pos + have as u64)
            .stage(Stage::Stream, self.path.display())?;
        Ok(true)
    }

    /// The next frame; a frame that does not hold together is an error.
    fn next(&mut self) -> Result<Option<Frame>> {
        match self.next_raw()? {
            Next::Frame(frame) => Ok(Some(frame)),
            Next::End => Ok(None),
            Next::Damaged(why) => Err(self.damaged(why)),
        }
    }

    /// The next frame, the end, or why the bytes there are not a frame. Only a failed
    /// read is an error.
    fn next_raw(&mut self) -> Result<Next> {
        if self.offset() >= self.end {
            return Ok(Next::End);
        }
        if !self.fill(4)? {
            return Ok(Next::Damaged("a frame is cut short"));
        }
        let len = u32::from_le_bytes(self.buf[self.at..self.at + 4].try_into().expect("4 bytes")) as usize;
        if len < FRAME_HEADER - 4 {
            return Ok(Next::Damaged("a frame is shorter than its header"));
        }
        if !self.fill(4 + len)? {
            return Ok(Next::Damaged("a frame runs past the end"));
        }
        let f = &self.buf[self.at..self.at + 4 + len];
        let crc = u32::from_le_bytes(f[4..8].try_into().expect("4 bytes"));
        if crc32fast::hash(&f[8..]) != crc {
            return Ok(Next::Damaged("checksum mismatch"));
        }
        let seq = u64::from_le_bytes(f[8..16].try_into().expect("8 bytes"));
        let arrival_ms = i64::from_le_bytes(f[16..24].try_into().expect("8 bytes"));
        let key_len = u16::from_le_bytes(f[24..26].try_into().expect("2 bytes")) as usize;
        if FRAME_HEADER + key_len > f.len() {
            return Ok(Next::Damaged("a key runs past its frame"));
        }
        let Ok(key) = std::str::from_utf8(&f[FRAME_HEADER..FRAME_HEADER + key_len]) else {
            return Ok(Next::Damaged("a partition key is not UTF-8"));
        };
        let frame = Frame { seq, arrival_ms, key: key.into(), data: f[FRAME_HEADER + key_len..].to_vec() };
        self.at += 4 + len;
        Ok(Next::Frame(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(log: &SegmentLog, shard: u32, tags: &[&str]) {
        log.put(encode(tags.iter().map(|t| (shard, "key", t.as_bytes())))).unwrap();
    }

    fn read_all(log: &SegmentLog, shard: u32, after: u64, limit: usize) -> Vec<(u64, String)> {
        let (mut out, mut after) = (Vec::new(), after);
        loop {
            let (records, full) = log.read(shard, after, limit, usize::MAX).unwrap();
            for r in records {
                after = r.sequence_number.as_u64().unwrap();
                out.push((after, String::from_utf8(r.data).unwrap()));
            }
            if !full {
                return out;
            }
        }
    }

    fn file(dir: &Path, shard: u32, base: u64, ext: &str) -> PathBuf {
        dir.join(format!("shard-{shard:012}")).join(segment_name(base, ext))
    }

    #[test]
    fn reads_cross_segments_and_resume_after_any_record() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(tmp.path()).unwrap();
        log.set_segment_bytes(100);
        let tags: Vec<String> = (1..=30).map(|i| format!("r{i}")).collect();
        for chunk in tags.chunks(3) {
            put(&log, 1, &chunk.iter().map(String::as_str).collect::<Vec<_>>());
        }
        assert!(log.segments(1).unwrap().len() > 3, "{:?}", log.segments(1).unwrap());
        assert!(log.segments(0).unwrap().is_empty());
        let all = read_all(&log, 1, 0, 4);
        let expected: Vec<(u64, String)> = tags.iter().enumerate().map(|(i, t)| (i as u64 + 1, t.clone())).collect();
        assert_eq!(all, expected);
        for after in [0, 1, 2, 3, 17, 29, 30] {
            assert_eq!(read_all(&log, 1, after, 7), expected[after as usize..], "after {after}");
        }
        assert_eq!(log.latest(1).unwrap(), 30);
        assert_eq!(log.latest(0).unwrap(), 0);
    }

    #[test]
    fn at_timestamp_finds_the_first_record_that_arrived_at_or_after() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(tmp.path()).unwrap();
        log.set_segment_bytes(60);
        put(&log, 0, &["a", "b"]);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let cut = Utc::now().timestamp_millis();
        std::thread::sleep(std::time::Duration::from_millis(5));
        put(&log, 0, &["c"]);
        put(&log, 0, &["d"]);
        assert_eq!(log.before_arrival(0, cut).unwrap(), 2);
        assert_eq!(log.before_arrival(0, i64::MIN).unwrap(), 0);
        assert_eq!(log.before_arrival(0, i64::MAX).unwrap(), 4);
    }

    #[test]
    fn a_lost_index_entry_and_a_torn_write_are_repaired_by_the_next_put() {
        let tmp = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(tmp.path()).unwrap();
        put(&log, 0, &["a", "b"]);
        put(&log, 0, &["c"]);
        // The power went out: the second put's index entry never reached the disk, and a
        // third put's frame is half written.
        let idx = file(tmp.path(), 0, 1, "idx");
        let data = file(tmp.path(), 0, 1, "log");
        let f = OpenOptions::new().write(true).open(&idx).unwrap();
        f.set_len(ENTRY + 7).unwrap();
        let mut torn = std::fs::read(&data).unwrap()[..20].to_vec();
        torn[0] = 200;
        std::fs::write(&data, [std::fs::read(&data).unwrap(), torn].concat()).unwrap();
        // Readers see what is committed: the first put.
        assert_eq!(read_all(&log, 0, 0, 10), [(1, "a".into()), (2, "b".into())]);
        // The next writer indexes the whole frame and cuts the torn one off.
        put(&log, 0, &["d"]);
        let tags: Vec<String> = read_all(&log, 0, 0, 10).into_iter().map(|(_, t)| t).collect();
        assert_eq!(tags, ["a", "b", "c", "d"]);
        assert_eq!(std::fs::metadata(&idx).unwrap().len(), 3 * ENTRY);
    }

    #[test]
    fn a_damaged_frame_is_an_error_that_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(tmp.path()).unwrap();
        put(&log, 2, &["hello", "world"]);
        let data = file(tmp.path(), 2, 1, "log");
        let mut bytes = std::fs::read(&data).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&data, bytes).unwrap();
        let err = log.read(2, 0, 10, usize::MAX).unwrap_err().to_string();
        assert!(
            err.starts_with("stream: ") && err.contains("00000000000000000001.log") && err.contains("checksum"),
            "{err}"
        );
    }

    #[test]
    fn writers_in_two_handles_never_share_a_sequence_number() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (SegmentLog::open(tmp.path()).unwrap(), SegmentLog::open(tmp.path()).unwrap());
        std::thread::scope(|s| {
            for (log, tag) in [(&a, "a"), (&b, "b")] {
                s.spawn(move || {
                    for i in 0..50 {
                        put(log, 0, &[&format!("{tag}{i}"), &format!("{tag}{i}'")]);
                    }
                });
            }
        });
        let all = read_all(&a, 0, 0, 1000);
        assert_eq!(all.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=200).collect::<Vec<_>>());
        for tag in ["a", "b"] {
            let mine: Vec<&str> = all.iter().map(|(_, t)| t.as_str()).filter(|t| t.starts_with(tag)).collect();
            let expected: Vec<String> = (0..50).flat_map(|i| [format!("{tag}{i}"), format!("{tag}{i}'")]).collect();
            assert_eq!(mine, expected, "each writer's records stay in order");
        }
    }
}
