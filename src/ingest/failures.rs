//! Redrive from a Kinesis event source mapping's on-failure queue.
//!
//! When Lambda gives up on a batch (retries and record age spent), the mapping's
//! on-failure destination gets a message naming the shard and the sequence range, not
//! the records. [`redrive_failures`] reads those messages from SQS, reads the range
//! again from the stream while it is within retention, and puts the records back on
//! the same stream with their partition keys. A message is deleted once its records
//! are put, so a second run does not send them again. A part of a range the stream no
//! longer holds is reported, shard and sequence numbers, and its message is deleted too:
//! those records cannot come back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::aws::{Aws, describe};
use crate::stream::kinesis::KinesisStream;
use crate::stream::{PutRecord, SequenceNumber, StartPosition, StreamSink, StreamSource};
use crate::{Error, Result};

/// Records per read of the range.
const READ_LIMIT: usize = 1_000;

/// The part of an on-failure message that names the batch (the Lambda documentation's
/// `KinesisBatchInfo`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KinesisBatchInfo {
    /// The shard.
    pub shard_id: String,
    /// The batch's first record.
    pub start_sequence_number: String,
    /// The batch's last record.
    pub end_sequence_number: String,
    /// When the first record arrived: where the range is looked for.
    pub approximate_arrival_of_first_record: DateTime<Utc>,
    /// The stream, `arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`.
    pub stream_arn: String,
}

#[derive(Deserialize)]
struct FailureMessage {
    #[serde(rename = "KinesisBatchInfo")]
    batch: KinesisBatchInfo,
}

/// What a redrive from the queue did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FailuresReport {
    /// On-failure messages read (and deleted, unless a dry run).
    pub messages: u64,
    /// Records put back on their stream (in a dry run, that would have been).
    pub redriven: u64,
    /// Ranges the stream no longer holds: `shard from START to END`.
    pub past_retention: Vec<String>,
    /// Records the stream refused to take back, with its reason. Their message stays in
    /// the queue, so the next redrive tries its range again (the records it did take go
    /// again too, which the merge counts as duplicates).
    pub refused: Vec<String>,
    /// Messages that are not on-failure messages of a Kinesis mapping, left in the queue.
    pub not_understood: u64,
}

/// A queue as `--failures` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureQueue {
    /// `sqs://NAME`.
    Name(String),
    /// The queue's URL.
    Url(String),
}

impl FailureQueue {
    /// Parses `--failures`.
    ///
    /// # Errors
    /// When it is neither `sqs://NAME` nor an `https://` (or `http://`) URL.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.starts_with("https://") || text.starts_with("http://") {
            return Ok(FailureQueue::Url(text.to_owned()));
        }
        match text.strip_prefix("sqs://").map(|n| n.trim_end_matches('/')) {
            Some(name) if !name.is_empty() && !name.contains('/') => Ok(FailureQueue::Name(name.to_owned())),
            _ => Err(Error::config(format!(
                "--failures {text}: give sqs://QUEUE-NAME or the queue's URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
            ))),
        }
    }
}

/// The URL of the queue `failures` names.
///
/// # Errors
/// When the name is not known to SQS.
pub async fn queue_url(aws: &Aws, failures: &FailureQueue) -> Result<String> {
    let name = match failures {
        FailureQueue::Url(url) => return Ok(url.clone()),
        FailureQueue::Name(name) => name,
    };
    let out = aws.sqs().get_queue_url().queue_name(name).send().await.map_err(|e| {
        Error::config(format!(
            "--failures sqs://{name}: no such SQS queue ({}); check the name and region",
            describe(&e)
        ))
    })?;
    out.queue_url.ok_or_else(|| Error::stream(format!("SQS gave no URL for queue {name}")))
}

/// Reads every message of the queue at `url` and redrives the ranges they name.
///
/// # Errors
/// When SQS or Kinesis fails; what was put and deleted before stays so.
pub async fn redrive_failures(aws: &Aws, url: &str, dry_run: bool) -> Result<FailuresReport> {
    let sqs = aws.sqs();
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::stream(format!("SQS {what} on {url}: {e}"));
    let mut report = FailuresReport::default();
    // Messages left in the queue (a dry run's, and those not understood) are made
    // visible again at the end, so the next run sees them at once.
    let mut left = Vec::new();
    loop {
        let received = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(300)
            .wait_time_seconds(0)
            .send()
            .await
            .map_err(|e| fail("ReceiveMessage", &describe(&e)))?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            for receipt in left {
                sqs.change_message_visibility()
                    .queue_url(url)
                    .receipt_handle(receipt)
                    .visibility_timeout(0)
                    .send()
                    .await
                    .map_err(|e| fail("ChangeMessageVisibility", &describe(&e)))?;
            }
            return Ok(report);
        }
        for message in messages {
            let receipt = message.receipt_handle().unwrap_or_default().to_owned();
            let Ok(parsed) = serde_json::from_str::<FailureMessage>(message.body().unwrap_or_default()) else {
                report.not_understood += 1;
                left.push(receipt);
                continue;
            };
            report.messages += 1;
            // The records go back on the stream they were read from.
            let stream =
                KinesisStream::new(aws, stream_name(&parsed.batch.stream_arn)?).with_read_interval(Default::default());
            let (records, lost) = read_range(&stream, &parsed.batch).await?;
            report.past_retention.extend(lost);
            report.redriven += records.len() as u64;
            if dry_run {
                left.push(receipt);
                continue;
            }
            let mut refused = Vec::new();
            for chunk in records.chunks(500) {
                refused.extend(stream.put_records(chunk).await?.into_iter().map(|r| r.reason));
            }
            if !refused.is_empty() {
                report.redriven -= refused.len() as u64;
                report.refused.extend(refused);
                left.push(receipt);
                continue;
            }
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(receipt)
                .send()
                .await
                .map_err(|e| fail("DeleteMessage", &describe(&e)))?;
        }
    }
}

/// The stream's name in its ARN.
fn stream_name(arn: &str) -> Result<&str> {
    arn.rsplit_once(":stream/")
        .map(|(_, name)| name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::stream(format!("{arn:?} is not a Kinesis stream ARN")))
}

/// The records of the batch's range still in the stream, and the part it no longer holds.
async fn read_range(stream: &KinesisStream, batch: &KinesisBatchInfo) -> Result<(Vec<PutRecord>, Vec<String>)> {
    let start = SequenceNumber(batch.start_sequence_number.as_str().into());
    let end = SequenceNumber(batch.end_sequence_number.as_str().into());
    let shard = batch.shard_id.clone();
    let mut iterator =
        stream.iterator(&shard, &StartPosition::AtTimestamp(batch.approximate_arrival_of_first_record)).await?;
    let mut records = Vec::new();
    let mut first_seen: Option<SequenceNumber> = None;
    loop {
        let read = stream.read(&iterator, READ_LIMIT, usize::MAX).await?;
        let past_end = read.records.iter().any(|r| r.sequence_number > end);
        for r in read.records {
            first_seen.get_or_insert_with(|| r.sequence_number.clone());
            if r.sequence_number >= start && r.sequence_number <= end {
                records.push(PutRecord { partition_key: r.partition_key, data: r.data });
            }
        }
        if past_end || read.caught_up || read.closed {
            break;
        }
        iterator = read.next;
    }
    // The range begins with the record at `start`: if the stream's first record after the
    // batch's arrival is later, the records before it have left the stream.
    let lost = match first_seen {
        Some(first) if first <= start => Vec::new(),
        Some(first) if first <= end => vec![format!("{shard} from {start} to before {first}")],
        _ => vec![format!("{shard} from {start} to {end}")],
    };
    Ok((records, lost))
}
