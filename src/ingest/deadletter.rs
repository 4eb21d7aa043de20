//! The dead-letter output: every rejected record, with its raw bytes, its position in
//! the stream and every reason it failed.
//!
//! A letter's position is its stream's identity, its shard and its sequence number: two
//! streams (the embedded one and a Kinesis one, say) have shards of the same names and
//! overlapping sequence numbers.
//!
//! The embedded sink is an NDJSON file under `--home`. A write is appended and synced
//! before the ingest checkpoint moves. After a crash the records since the checkpoint are
//! replayed. A shard's records are read, and so rejected, in sequence order, so the sink
//! keeps only the highest sequence number it holds per stream and shard: a replayed
//! rejection is at or below it and is not written twice, and the check's memory grows
//! with the shards, not with the history of the file. A line torn by the crash is cut
//! off when the file is reopened.
//! On S3 each letter is one object keyed by its position, so a replay overwrites it.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use md5::Digest;

use crate::error::{Context, Stage};
use crate::stream::{SequenceNumber, ShardId};
use crate::{Error, Result};

/// One rejected record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The [identity](crate::stream::StreamSource::identity) of the stream it was read from.
    pub stream: String,
    /// Shard it was read from.
    pub shard: ShardId,
    /// Its sequence number in the shard.
    pub sequence_number: SequenceNumber,
    /// The partition key it was put with.
    pub partition_key: String,
    /// The record's bytes, as read.
    pub raw: Vec<u8>,
    /// Every reason it was rejected, each naming the field and the rule.
    pub reasons: Vec<String>,
    /// When the stream accepted the record (so a replay writes the same letter).
    pub arrival: DateTime<Utc>,
}

/// The NDJSON form of a dead letter. `raw` holds the bytes when they are UTF-8 text,
/// `raw_base64` otherwise.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetterLine {
    /// The stream's identity (empty in files written before it was recorded).
    #[serde(default)]
    pub stream: String,
    /// Shard.
    pub shard: String,
    /// Sequence number.
    pub sequence_number: String,
    /// Partition key.
    pub partition_key: String,
    /// Reasons.
    pub reasons: Vec<String>,
    /// The record, when it is text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The record, when it is not text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
    /// When the stream accepted the record, RFC 3339 (absent in files written before it
    /// was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived_at: Option<String>,
}

impl DeadLetterLine {
    /// The record's bytes: `raw`, or `raw_base64` decoded; `None` when neither holds it.
    pub fn record(&self) -> Option<Vec<u8>> {
        match (&self.raw, &self.raw_base64) {
            (Some(text), _) => Some(text.as_bytes().to_vec()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
            (None, None) => None,
        }
    }
}

impl From<&DeadLetter> for DeadLetterLine {
    fn from(d: &DeadLetter) -> Self {
        let (raw, raw_base64) = match std::str::from_utf8(&d.raw) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(&d.raw))),
        };
        DeadLetterLine {
            stream: d.stream.clone(),
            shard: d.shard.clone(),
            sequence_number: d.sequence_number.0.to_string(),
            partition_key: d.partition_key.clone(),
            reasons: d.reasons.clone(),
            raw,
            raw_base64,
            arrived_at: Some(d.arrival.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        }
    }
}

/// Where rejected records go.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Durably stores the letters; a letter already stored (same stream, shard and
    /// sequence number) is not stored again. Within a call, a shard's letters come in
    /// sequence order, as the shard was read.
    ///
    /// # Errors
    /// When the output cannot be written; nothing is then known to be stored.
    async fn write(&self, letters: &[DeadLetter]) -> Result<()>;

    /// Every letter stored, ordered by stream, shard and sequence number: for audits,
    /// replays and the conformance suite.
    ///
    /// # Errors
    /// When the output cannot be read, or holds something that is not a dead letter.
    async fn letters(&self) -> Result<Vec<DeadLetterLine>>;

    /// The keys of the letters put back on a stream so far ([`super::redrive`]), kept
    /// beside the letters.
    ///
    /// # Errors
    /// When the record of them cannot be read.
    async fn redriven(&self) -> Result<HashSet<String>>;

    /// Records, durably, that the letters of `keys` were put back on a stream.
    ///
    /// # Errors
    /// When the record cannot be written.
    async fn mark_redriven(&self, keys: &[String]) -> Result<()>;
}

/// Orders letters by their position.
fn sort_by_position(letters: &mut [DeadLetterLine]) {
    letters.sort_by(|a, b| {
        (&a.stream, &a.shard).cmp(&(&b.stream, &b.shard)).then_with(|| {
            SequenceNumber(a.sequence_number.as_str().into()).cmp(&SequenceNumber(b.sequence_number.as_str().into()))
        })
    });
}

/// The highest sequence number held, per stream and shard.
type HighWater = HashMap<(String, ShardId), SequenceNumber>;

/// Dead letters in an NDJSON file.
pub struct FileDeadLetters {
    path: PathBuf,
    state: Mutex<(File, HighWater)>,
}

/// Raises the mark of `letter`'s shard to its sequence number; false when the letter is
/// at or below the mark already (a replay).
fn advance(marks: &mut HighWater, stream: &str, shard: &str, seq: &SequenceNumber) -> bool {
    match marks.get_mut(&(stream.to_owned(), shard.to_owned())) {
        Some(mark) if *mark >= *seq => false,
        Some(mark) => {
            *mark = seq.clone();
            true
        }
        None => {
            marks.insert((stream.to_owned(), shard.to_owned()), seq.clone());
            true
        }
    }
}

impl FileDeadLetters {
    /// Opens (creating if needed) the file at `path`, cutting off a torn last line.
    ///
    /// # Errors
    /// When the file cannot be opened, read or repaired.
    pub fn open(path: &Path) -> Result<Self> {
        let fail = |e: std::io::Error| {
            Stage::Output
                .error(format!("dead letters {} (choose a writable --dead-letter or --home)", path.display()), e)
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(fail)?;
        let mut marks = HighWater::new();
        let mut good_len = 0u64;
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(fail)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if let Ok(d) = serde_json::from_slice::<DeadLetterLine>(&line) {
                advance(&mut marks, &d.stream, &d.shard, &SequenceNumber(d.sequence_number.into()));
            }
            good_len += n as u64;
        }
        drop(reader);
        if file.metadata().map_err(fail)?.len() != good_len {
            file.set_len(good_len).map_err(fail)?;
            file.sync_all().map_err(fail)?;
        }
        file.seek(SeekFrom::End(0)).map_err(fail)?;
        Ok(FileDeadLetters { path: path.to_owned(), state: Mutex::new((file, marks)) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file beside it that keeps the keys of the letters redriven: `<file>.redriven`.
    fn ledger(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".redriven");
        PathBuf::from(name)
    }

    /// Reads every dead letter of an NDJSON file.
    ///
    /// # Errors
    /// When the file cannot be read or holds a line that is not a dead letter.
    pub fn read_all(path: &Path) -> Result<Vec<DeadLetterLine>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::input_because(path, "cannot read", e, ""))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| Error::input_because(path, format!("line {} is not a dead letter", i + 1), e, ""))
            })
            .collect()
    }
}

#[async_trait]
impl DeadLetterSink for FileDeadLetters {
    async fn write(&self, letters: &[DeadLetter]) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (file, marks) = &mut *state;
        // The marks move only once the lines are on disk.
        let mut moved = marks.clone();
        let mut buf = Vec::new();
        for d in letters {
            if !advance(&mut moved, &d.stream, &d.shard, &d.sequence_number) {
                continue;
            }
            serde_json::to_writer(&mut buf, &DeadLetterLine::from(d))
                .map_err(|e| Stage::Output.error("a dead letter as JSON", e))?;
            buf.push(b'\n');
        }
        if buf.is_empty() {
            return Ok(());
        }
        let context = || format!("dead letters {}", self.path.display());
        file.write_all(&buf).stage(Stage::Output, context())?;
        file.sync_data().stage(Stage::Output, context())?;
        *marks = moved;
        Ok(())
    }

    async fn letters(&self) -> Result<Vec<DeadLetterLine>> {
        let mut letters = Self::read_all(&self.path)?;
        sort_by_position(&mut letters);
        Ok(letters)
    }

    async fn redriven(&self) -> Result<HashSet<String>> {
        match std::fs::read_to_string(self.ledger()) {
            Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
            Err(e) => Err(Error::input_because(self.ledger(), "cannot read the redriven letters", e, "")),
        }
    }

    async fn mark_redriven(&self, keys: &[String]) -> Result<()> {
        let ledger = self.ledger();
        let context = || format!("the redriven letters {}", ledger.display());
        let mut file = OpenOptions::new().append(true).create(true).open(&ledger).stage(Stage::Output, context())?;
        let text = key_lines(keys);
        file.write_all(text.as_bytes()).stage(Stage::Output, context())?;
        file.sync_data().stage(Stage::Output, context())
    }
}

/// Dead letters in an object store (`--dead-letter s3://bucket/prefix`): one object per
/// rejected record, `<prefix>/dead_letters/<stream>/<shard>/<sequence number>.json`
/// (`<stream>` as `kinesis:NAME`), holding its NDJSON line. Keys are the record's
/// position, so a replay rewrites the same object.
pub struct ObjectDeadLetters {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    display: String,
}

impl ObjectDeadLetters {
    /// Dead letters under `prefix` of `store`; `display` names the location in messages.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, display: &str) -> Self {
        ObjectDeadLetters { store, prefix: ObjectPath::from(prefix), display: display.to_owned() }
    }

    /// Every object under `<prefix>/<dir>`, by path, with its bytes; `what` names them in
    /// an error.
    async fn read_dir(&self, dir: &str, what: &str) -> Result<Vec<(ObjectPath, Vec<u8>)>> {
        let fail =
            |e: object_store::Error| Stage::Output.error(format!("cannot read {what} under {}", self.display), e);
        let root = self.prefix.clone().join(dir);
        let objects: Vec<_> = self.store.list(Some(&root)).try_collect().await.map_err(fail)?;
        let mut read = Vec::with_capacity(objects.len());
        for object in objects {
            let bytes = self.store.get(&object.location).await.map_err(fail)?.bytes().await.map_err(fail)?;
            read.push((object.location, Vec::from(bytes)));
        }
        Ok(read)
    }
}

/// The keys of redriven letters as the ledger keeps them: a line each.
fn key_lines(keys: &[String]) -> String {
    keys.iter().map(|k| format!("{k}\n")).collect()
}

#[async_trait]
impl DeadLetterSink for ObjectDeadLetters {
    async fn write(&self, letters: &[DeadLetter]) -> Result<()> {
        // Indices, not references, keep the futures free of higher-ranked lifetimes.
        futures::stream::iter(0..letters.len())
            .map(|i| async move {
                let d = &letters[i];
                let mut line = serde_json::to_vec(&DeadLetterLine::from(d))
                    .map_err(|e| Stage::Output.error("a dead letter as JSON", e))?;
                line.push(b'\n');
                let path = self
                    .prefix
                    .clone()
                    .join("dead_letters")
                    .join(d.stream.as_str())
                    .join(d.shard.as_str())
                    .join(format!("{}.json", d.sequence_number));
                self.store.put(&path, PutPayload::from(line)).await.map_err(|e| {
                    let context =
                        format!("cannot write a dead letter under {} (choose a writable --dead-letter)", self.display);
                    Stage::Output.error(context, e)
                })?;
                Ok::<(), Error>(())
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn letters(&self) -> Result<Vec<DeadLetterLine>> {
        let objects = self.read_dir("dead_letters", "the dead letters").await?;
        let mut letters = Vec::with_capacity(objects.len());
        for (location, bytes) in objects {
            let letter = serde_json::from_slice(&bytes).map_err(|e| {
                Stage::Output.error(format!("{location} under {} is not a dead letter", self.display), e)
            })?;
            letters.push(letter);
        }
        sort_by_position(&mut letters);
        Ok(letters)
    }

    async fn redriven(&self) -> Result<HashSet<String>> {
        let mut keys = HashSet::new();
        for (_, bytes) in self.read_dir("redriven", "the redriven letters").await? {
            keys.extend(String::from_utf8_lossy(&bytes).lines().map(str::to_owned));
        }
        Ok(keys)
    }

    async fn mark_redriven(&self, keys: &[String]) -> Result<()> {
        // One object per call, named by its content: a call repeated after a crash
        // rewrites the same object.
        let text = key_lines(keys);
        let name = format!("{:x}.txt", md5::Md5::digest(text.as_bytes()));
        let path = self.prefix.clone().join("redriven").join(name);
        self.store.put(&path, PutPayload::from(text.into_bytes())).await.map_err(|e| {
            Stage::Output.error(format!("cannot record the redriven letters under {}", self.display), e)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(seq: u64, raw: &[u8]) -> DeadLetter {
        DeadLetter {
            stream: "embedded:0123456789abcdef".into(),
            shard: "shardId-000000000000".into(),
            sequence_number: SequenceNumber::from_u64(seq),
            partition_key: "k".into(),
            raw: raw.to_vec(),
            reasons: vec!["record: not JSON".into()],
            arrival: DateTime::from_timestamp(1_716_600_000, 0).unwrap(),
        }
    }

    #[tokio::test]
    async fn replays_are_not_written_twice_and_torn_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead_letters.ndjson");
        let sink = FileDeadLetters::open(&path).unwrap();
        sink.write(&[letter(1, b"x"), letter(2, &[0xff, 0xfe])]).await.unwrap();
        drop(sink);
        // A crash in the middle of the next append leaves half a line.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"shard\":").unwrap();
        let sink = FileDeadLetters::open(&path).unwrap();
        sink.write(&[letter(2, &[0xff, 0xfe]), letter(3, b"y")]).await.unwrap();
        let lines = FileDeadLetters::read_all(&path).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].raw_base64.as_deref(), Some("//4="));
        assert_eq!(lines[2].raw.as_deref(), Some("y"));
    }
}
