//! Redrive: dead letters back onto the stream, after a fix.
//!
//! Once a producer is corrected, or a validation rule relaxed, the rejected records can
//! go through the pipeline again. The dead letters are the user's to fix: a letter's
//! record may have been edited in the file before a redrive. Each letter is put with its
//! partition key, so a trip's events keep their shard.
//!
//! A letter is known by its position (stream, shard, sequence number) and the digest of
//! its bytes. The keys of the letters sent are kept beside the letters
//! ([`DeadLetterSink::mark_redriven`]), after each put, so a second redrive of the same
//! letters sends nothing and says so, while a letter edited since is new bytes and is
//! sent. Duplicates would be harmless to the merge; this keeps the counts honest. A
//! record redriven and rejected again is a new letter, at its new position.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use serde::Serialize;

use super::deadletter::{DeadLetterLine, DeadLetterSink};
use crate::Result;
use crate::stream::{PutRecord, StreamSink};

/// Records per put.
const CHUNK: usize = 500;

/// Which letters a redrive takes.
#[derive(Debug, Clone, Default)]
pub struct RedriveOptions {
    /// Only letters with a reason containing this text.
    pub reason: Option<String>,
    /// Only letters whose record the stream accepted at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Count, but put nothing and record nothing.
    pub dry_run: bool,
}

/// What a redrive did: `letters = redriven + skipped + refused`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// Letters read.
    pub letters: u64,
    /// Records put back on the stream (in a dry run, that would have been).
    pub redriven: u64,
    /// Letters not sent, by why.
    pub skipped: BTreeMap<String, u64>,
    /// Records the stream refused for good (too large, say), with why.
    pub refused: Vec<String>,
}

impl RedriveReport {
    /// True when every letter is accounted for.
    pub fn balanced(&self) -> bool {
        self.letters == self.redriven + self.skipped.values().sum::<u64>() + self.refused.len() as u64
    }

    fn skip(&mut self, why: &str) {
        *self.skipped.entry(why.to_owned()).or_default() += 1;
    }
}

/// Why a letter is skipped.
pub const ALREADY_REDRIVEN: &str = "already redriven";
/// Why a letter is skipped.
pub const OTHER_REASON: &str = "no reason contains --reason";
/// Why a letter is skipped.
pub const BEFORE_SINCE: &str = "arrived before --since";
/// Why a letter is skipped.
pub const NO_ARRIVAL: &str = "no arrival time recorded (written by an older tripflow)";
/// Why a letter is skipped.
pub const NO_RECORD: &str = "no record kept";

/// The key a letter is known by: its position and the digest of its bytes.
pub fn key(letter: &DeadLetterLine, record: &[u8]) -> String {
    let digest = Md5::digest(record);
    format!("{}/{}/{}/{:x}", letter.stream, letter.shard, letter.sequence_number, digest)
}

/// Puts the letters of `letters` that `options` take back on `stream`.
///
/// # Errors
/// When the letters or their record cannot be read or written, or the stream fails;
/// what was put before is recorded, so a second run goes on from there.
pub async fn redrive(
    letters: &dyn DeadLetterSink,
    stream: &dyn StreamSink,
    options: &RedriveOptions,
) -> Result<RedriveReport> {
    let all = letters.letters().await?;
    let mut done: HashSet<String> = letters.redriven().await?;
    let mut report = RedriveReport { letters: all.len() as u64, ..Default::default() };
    let mut todo: Vec<(String, PutRecord)> = Vec::new();
    for letter in &all {
        let Some(record) = letter.record() else {
            report.skip(NO_RECORD);
            continue;
        };
        if let Some(wanted) = &options.reason
            && !letter.reasons.iter().any(|r| r.contains(wanted.as_str()))
        {
            report.skip(OTHER_REASON);
            continue;
        }
        if let Some(since) = options.since {
            match letter.arrived_at.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()) {
                None => {
                    report.skip(NO_ARRIVAL);
                    continue;
                }
                Some(at) if at < since => {
                    report.skip(BEFORE_SINCE);
                    continue;
                }
                Some(_) => {}
            }
        }
        let key = key(letter, &record);
        if !done.insert(key.clone()) {
            report.skip(ALREADY_REDRIVEN);
            continue;
        }
        todo.push((key, PutRecord { partition_key: letter.partition_key.as_str().into(), data: record }));
    }
    if options.dry_run {
        report.redriven = todo.len() as u64;
        return Ok(report);
    }
    for chunk in todo.chunks(CHUNK) {
        let records: Vec<PutRecord> = chunk.iter().map(|(_, r)| r.clone()).collect();
        let refused = stream.put_records(&records).await?;
        report.redriven += (chunk.len() - refused.len()) as u64;
        report.refused.extend(refused.iter().map(|r| r.reason.clone()));
        // A refused record is recorded too: sending it again would be refused again.
        let keys: Vec<String> = chunk.iter().map(|(k, _)| k.clone()).collect();
        letters.mark_redriven(&keys).await?;
    }
    Ok(report)
}
