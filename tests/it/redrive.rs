//! Redrive: dead letters, fixed by hand, back through the pipeline; on the embedded
//! backends and on the emulator (letters on S3, records back on Kinesis). A second
//! redrive of the same letters sends nothing, and the counts balance both times.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use tripflow::config::{AwsEnv, DeadLetterUrl, Home};
use tripflow::ingest::deadletter::{DeadLetterLine, DeadLetterSink, FileDeadLetters};
use tripflow::ingest::redrive::{self, ALREADY_REDRIVEN, OTHER_REASON, RedriveOptions, RedriveReport};
use tripflow::ingest::{Ingest, IngestOptions};
use tripflow::store::TripStore;
use tripflow::store::dynamodb::DynamoStore;
use tripflow::stream::checkpoints_dynamodb::DynamoCheckpoints;
use tripflow::stream::kinesis::KinesisStream;
use tripflow::stream::{PutRecord, StreamSink};

use crate::common::{end_event, ingest, put_raw, start_event};
use crate::moto::{self, unique};

/// Two trips whose ends a producer wrote with a comma for a point, and one record that
/// is not JSON at all.
fn records() -> Vec<Vec<u8>> {
    [
        start_event("t1", "2024-05-25 13:19:00"),
        start_event("t2", "2024-05-25 13:20:00"),
        end_event("t1", "2024-05-25 14:05:00", r#""40,5""#),
        end_event("t2", "2024-05-25 14:06:00", r#""12,25""#),
        "garbage".to_owned(),
    ]
    .map(String::into_bytes)
    .to_vec()
}

/// The fix: a decimal point where the producer wrote a comma.
fn fixed(line: &str) -> String {
    line.replace("40,5", "40.5").replace("12,25", "12.25")
}

fn skipped(report: &RedriveReport) -> BTreeMap<&str, u64> {
    report.skipped.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

#[tokio::test]
async fn fixed_letters_go_through_once_and_a_second_redrive_sends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path()).unwrap();
    let stream = home.stream(Some(1)).unwrap();
    put_raw(&stream, &records()).await;
    let counts = ingest(&home, &IngestOptions::default()).await.unwrap();
    assert_eq!((counts.applied, counts.dead_lettered), (2, 3), "{counts:?}");

    // The user fixes the file by hand.
    let path = home.dead_letter_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.lines().map(|l| fixed(l) + "\n").collect::<String>()).unwrap();
    let letters = FileDeadLetters::open(&path).unwrap();

    // Only the fare letters: the garbage one has another reason.
    let fares = RedriveOptions { reason: Some("fare_amount".into()), ..Default::default() };
    let dry = redrive::redrive(&letters, &stream, &RedriveOptions { dry_run: true, ..fares.clone() }).await.unwrap();
    assert_eq!((dry.letters, dry.redriven, skipped(&dry)), (3, 2, BTreeMap::from([(OTHER_REASON, 1)])));
    assert!(letters.redriven().await.unwrap().is_empty(), "a dry run records nothing");

    let first = redrive::redrive(&letters, &stream, &fares).await.unwrap();
    assert_eq!((first.redriven, first.refused.len()), (2, 0));
    assert!(first.balanced(), "{first:?}");
    let counts = ingest(&home, &IngestOptions::default()).await.unwrap();
    assert_eq!((counts.read, counts.applied, counts.dead_lettered), (2, 2, 0), "{counts:?}");
    let t1 = home.store().unwrap().get("t1").await.unwrap().unwrap();
    assert!(t1.trip_completed());
    assert_eq!(t1.end.unwrap().get("fare_amount"), Some("40.5"));

    // Again: nothing is sent, and the counts say why.
    let second = redrive::redrive(&letters, &stream, &fares).await.unwrap();
    assert_eq!(second.redriven, 0);
    assert_eq!(skipped(&second), BTreeMap::from([(ALREADY_REDRIVEN, 2), (OTHER_REASON, 1)]));
    assert!(second.balanced(), "{second:?}");
    assert_eq!(ingest(&home, &IngestOptions::default()).await.unwrap().read, 0, "nothing new on the stream");

    // A letter edited again is new bytes, and goes.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("40.5", "41.5")).unwrap();
    let letters = FileDeadLetters::open(&path).unwrap();
    let third = redrive::redrive(&letters, &stream, &fares).await.unwrap();
    assert_eq!((third.redriven, skipped(&third)[ALREADY_REDRIVEN]), (1, 1));
}

#[tokio::test]
async fn since_takes_the_letters_that_arrived_from_then_on() {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path()).unwrap();
    let stream = home.stream(Some(1)).unwrap();
    put_raw(&stream, &records()[4..]).await;
    ingest(&home, &IngestOptions::default()).await.unwrap();
    let letters = home.dead_letters().unwrap();
    let arrived: Vec<DeadLetterLine> = letters.letters().await.unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(arrived[0].arrived_at.as_deref().unwrap()).unwrap().to_utc();
    let since = |t| RedriveOptions { since: Some(t), dry_run: true, ..Default::default() };
    let later = redrive::redrive(&letters, &stream, &since(at + chrono::Duration::seconds(1))).await.unwrap();
    assert_eq!((later.redriven, skipped(&later)), (0, BTreeMap::from([(redrive::BEFORE_SINCE, 1)])));
    assert_eq!(redrive::redrive(&letters, &stream, &since(at)).await.unwrap().redriven, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_aws_letters_on_s3_go_back_on_kinesis() {
    let aws = moto::aws();
    let (name, table, checkpoints, bucket) =
        (unique("redrive"), unique("redrive"), unique("checkpoints"), unique("letters").to_lowercase());
    let stream = KinesisStream::new(&aws, &name).with_read_interval(std::time::Duration::ZERO);
    assert!(stream.create_if_missing(1).await.unwrap());
    DynamoCheckpoints::create_if_missing(&aws, &checkpoints).await.unwrap();
    let checkpoints = DynamoCheckpoints::new(&aws, &checkpoints);
    let store = DynamoStore::new(&aws, &table);
    store.create_if_missing().await.unwrap();
    aws.create_bucket_if_missing(&bucket).await.unwrap();
    let home = Home::new("no-home-is-used").unwrap();
    let url = DeadLetterUrl::parse(Some(&format!("s3://{bucket}/nightly")), &home).unwrap();
    let (letters, _) = tripflow::config::open_dead_letters(&url, &AwsEnv::fixed(aws.clone())).await.unwrap();
    let puts: Vec<PutRecord> =
        records().into_iter().map(|data| PutRecord { partition_key: "p".into(), data }).collect();
    assert!(stream.put_records(&puts).await.unwrap().is_empty());
    let ingest =
        || Ingest { source: &stream, checkpoints: &checkpoints, store: &store, dead_letters: letters.as_ref() };
    let counts = ingest().run(&IngestOptions::default()).await.unwrap();
    assert_eq!((counts.applied, counts.dead_lettered), (2, 3), "{counts:?}");

    // The user fixes the letters on S3 in place.
    let s3 = aws.s3(&bucket).unwrap();
    let root = object_store::path::Path::from("nightly/dead_letters");
    let objects: Vec<_> = s3.list(Some(&root)).try_collect().await.unwrap();
    assert_eq!(objects.len(), 3);
    for o in objects {
        let text = String::from_utf8(s3.get(&o.location).await.unwrap().bytes().await.unwrap().to_vec()).unwrap();
        s3.put(&o.location, PutPayload::from(fixed(&text).into_bytes())).await.unwrap();
    }

    let fares = RedriveOptions { reason: Some("fare_amount".into()), ..Default::default() };
    let first = redrive::redrive(letters.as_ref(), &stream, &fares).await.unwrap();
    assert_eq!((first.letters, first.redriven), (3, 2));
    assert!(first.balanced(), "{first:?}");
    let counts = ingest().run(&IngestOptions::default()).await.unwrap();
    assert_eq!((counts.read, counts.applied, counts.dead_lettered), (2, 2, 0), "{counts:?}");
    assert_eq!(store.get("t2").await.unwrap().unwrap().end.unwrap().get("fare_amount"), Some("12.25"));

    let second = redrive::redrive(letters.as_ref(), &stream, &fares).await.unwrap();
    assert_eq!(second.redriven, 0);
    assert_eq!(skipped(&second), BTreeMap::from([(ALREADY_REDRIVEN, 2), (OTHER_REASON, 1)]));
    assert!(second.balanced(), "{second:?}");
}

/// An on-failure message as the Kinesis event source mapping writes it (Lambda's
/// documentation, "Configuring destinations for event source mappings").
fn on_failure_message(stream_arn: &str, shard: &str, start: &str, end: &str, first: &str) -> String {
    serde_json::json!({
        "requestContext": {
            "requestId": "c9b8fa9f-5a7f-4d8d-9f5e-2c6e2c2c8e1a",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:tripflow-ingest",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 2
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": "2024-05-25T14:10:00.000Z",
        "KinesisBatchInfo": {
            "shardId": shard,
            "startSequenceNumber": start,
            "endSequenceNumber": end,
            "approximateArrivalOfFirstRecord": first,
            "approximateArrivalOfLastRecord": first,
            "batchSize": 3,
            "streamArn": stream_arn
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_aws_a_failed_batch_in_the_queue_is_read_again_from_kinesis() {
    use tripflow::ingest::failures::{self, FailureQueue};
    use tripflow::stream::{StartPosition, StreamSource};
    let aws = moto::aws();
    let name = unique("failed");
    let stream = KinesisStream::new(&aws, &name).with_read_interval(std::time::Duration::ZERO);
    assert!(stream.create_if_missing(1).await.unwrap());
    let puts: Vec<PutRecord> = (0..5)
        .map(|i| PutRecord { partition_key: format!("trip-{i}").into(), data: format!("record {i}").into_bytes() })
        .collect();
    assert!(stream.put_records(&puts).await.unwrap().is_empty());
    let shard = stream.shards().await.unwrap().remove(0).id;
    let it = stream.iterator(&shard, &StartPosition::TrimHorizon).await.unwrap();
    let put = stream.read(&it, 100, usize::MAX).await.unwrap().records;
    assert_eq!(put.len(), 5);

    let queue = unique("failures");
    let url = aws.sqs().create_queue().queue_name(&queue).send().await.unwrap().queue_url.unwrap();
    let arn = format!("arn:aws:kinesis:us-east-1:123456789012:stream/{name}");
    let first = put[1].arrival.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let seq = |i: usize| put[i].sequence_number.to_string();
    // Records 1 to 3 failed; a second message names a range the stream no longer holds.
    let failed = on_failure_message(&arn, &shard, &seq(1), &seq(3), &first);
    let gone = on_failure_message(&arn, &shard, "0", "0", "2000-01-01T00:00:00.000Z");
    for body in [failed, gone, "not a failure message".to_owned()] {
        aws.sqs().send_message().queue_url(&url).message_body(body).send().await.unwrap();
    }

    let resolved = failures::queue_url(&aws, &FailureQueue::parse(&format!("sqs://{queue}")).unwrap()).await.unwrap();
    assert_eq!(resolved, url);
    let dry = failures::redrive_failures(&aws, &url, true).await.unwrap();
    assert_eq!((dry.messages, dry.redriven, dry.not_understood), (2, 3, 1), "{dry:?}");
    let report = failures::redrive_failures(&aws, &url, false).await.unwrap();
    assert_eq!(
        (report.messages, report.redriven, report.not_understood),
        (2, 3, 1),
        "a dry run leaves the queue as it was: {report:?}"
    );
    assert_eq!(report.past_retention, [format!("{shard} from 0 to 0")]);
    assert_eq!(report.refused, Vec::<String>::new());

    // Records 1 to 3 are on the stream again, with their partition keys.
    let after = stream.read(&it, 100, usize::MAX).await.unwrap().records;
    let again: Vec<(String, Vec<u8>)> =
        after[5..].iter().map(|r| (r.partition_key.to_string(), r.data.clone())).collect();
    let want: Vec<(String, Vec<u8>)> =
        put[1..4].iter().map(|r| (r.partition_key.to_string(), r.data.clone())).collect();
    assert_eq!(again, want);

    // A second run finds only the message it does not understand.
    let second = failures::redrive_failures(&aws, &url, false).await.unwrap();
    assert_eq!((second.messages, second.redriven, second.not_understood), (0, 0, 1), "{second:?}");
}
