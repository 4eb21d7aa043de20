//! The stream conformance suite: sinks, sources and checkpoints, written against the
//! traits. Every backend runs all of it (see the `embedded` and `kinesis` modules below).

use tripflow::stream::{
    Checkpoint, CheckpointStore, PutRecord, SequenceNumber, StartPosition, StreamSink, StreamSource, shard_index,
};

fn records(keys: &[&str], tag: &str) -> Vec<PutRecord> {
    keys.iter().map(|k| PutRecord { partition_key: (*k).into(), data: format!("{k}:{tag}").into_bytes() }).collect()
}

async fn read_all(source: &dyn StreamSource, start: &StartPosition) -> Vec<(String, SequenceNumber, String)> {
    let mut out = Vec::new();
    for shard in source.shards().await.unwrap().into_iter().map(|s| s.id) {
        out.extend(read_shard(source, &shard, start).await);
    }
    out
}

async fn read_shard(
    source: &dyn StreamSource,
    shard: &str,
    start: &StartPosition,
) -> Vec<(String, SequenceNumber, String)> {
    let mut out = Vec::new();
    let mut it = source.iterator(&shard.to_owned(), start).await.unwrap();
    loop {
        let r = source.read(&it, 3, usize::MAX).await.unwrap();
        it = r.next;
        out.extend(
            r.records
                .into_iter()
                .map(|rec| (shard.to_owned(), rec.sequence_number, String::from_utf8(rec.data).unwrap())),
        );
        if r.caught_up {
            return out;
        }
    }
}

/// A key's records land on one shard, in order, with increasing sequence numbers.
pub async fn keys_keep_their_shard_and_order(sink: &dyn StreamSink, source: &dyn StreamSource) {
    let keys = ["a", "b", "c", "d", "e", "f", "g"];
    for tag in ["1", "2", "3"] {
        assert!(sink.put_records(&records(&keys, tag)).await.unwrap().is_empty());
    }
    let shards: Vec<String> = source.shards().await.unwrap().into_iter().map(|s| s.id).collect();
    let all = read_all(source, &StartPosition::TrimHorizon).await;
    assert_eq!(all.len(), keys.len() * 3);
    for key in keys {
        let mine: Vec<_> = all.iter().filter(|(_, _, d)| d.starts_with(&format!("{key}:"))).collect();
        let expected_shard = &shards[shard_index(key, shards.len() as u32) as usize];
        assert!(mine.iter().all(|(s, _, _)| s == expected_shard), "{key} moved shards");
        let tags: Vec<&str> = mine.iter().map(|(_, _, d)| &d[d.len() - 1..]).collect();
        assert_eq!(tags, ["1", "2", "3"]);
    }
    for shard in &shards {
        let seqs: Vec<&SequenceNumber> = all.iter().filter(|(s, _, _)| s == shard).map(|(_, q, _)| q).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers increase in {shard}");
    }
}

/// Reads start at the trim horizon, at latest, after a sequence number or at a time.
pub async fn start_positions(sink: &dyn StreamSink, source: &dyn StreamSource) {
    sink.put_records(&records(&["k"; 3], "old")).await.unwrap();
    let all = read_all(source, &StartPosition::TrimHorizon).await;
    assert_eq!(all.len(), 3);
    assert!(read_all(source, &StartPosition::Latest).await.is_empty(), "latest skips what exists");
    // A sequence number names a position in its own shard only (Kinesis refuses it
    // elsewhere).
    let shard = all[0].0.clone();
    let after_first = read_shard(source, &shard, &StartPosition::AfterSequenceNumber(all[0].1.clone())).await;
    assert_eq!(after_first.len(), 2);
    let latest = source.iterator(&shard, &StartPosition::Latest).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let cut = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(5));
    sink.put_records(&records(&["k"], "new")).await.unwrap();
    // The shard that holds a record after the cut: kinesalite never answers an
    // AT_TIMESTAMP GetShardIterator past a shard's last record (Kinesis does, with an
    // iterator that reads nothing).
    let since = read_shard(source, &shard, &StartPosition::AtTimestamp(cut)).await;
    assert_eq!(since.iter().map(|r| r.2.as_str()).collect::<Vec<_>>(), ["k:new"]);
    let r = source.read(&latest, 10, usize::MAX).await.unwrap();
    assert_eq!(r.records.len(), 1, "an iterator opened at latest sees what comes after");
}

/// Records over 1 MiB and empty keys are refused; the others in the call are stored.
pub async fn oversized_records_are_refused(sink: &dyn StreamSink, source: &dyn StreamSource) {
    let mut batch = records(&["a"], "ok");
    batch.push(PutRecord { partition_key: "b".into(), data: vec![b'x'; 1024 * 1024 + 1] });
    batch.push(PutRecord { partition_key: "".into(), data: b"x".to_vec() });
    let refused = sink.put_records(&batch).await.unwrap();
    assert_eq!(refused.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 2]);
    assert!(refused[0].reason.contains("1 MiB"), "{}", refused[0].reason);
    assert_eq!(read_all(source, &StartPosition::TrimHorizon).await.len(), 1);
}

/// Checkpoints are per consumer and shard and never move back.
pub async fn checkpoints_only_move_forward(checkpoints: &dyn CheckpointStore, shard: &str) {
    let shard = shard.to_owned();
    let at = |n| Checkpoint::At(SequenceNumber::from_u64(n));
    assert_eq!(checkpoints.get("c1", &shard).await.unwrap(), None);
    checkpoints.set("c1", &shard, &at(10)).await.unwrap();
    checkpoints.set("c1", &shard, &at(7)).await.unwrap();
    assert_eq!(checkpoints.get("c1", &shard).await.unwrap(), Some(at(10)));
    checkpoints.set("c1", &shard, &at(12)).await.unwrap();
    assert_eq!(checkpoints.get("c1", &shard).await.unwrap(), Some(at(12)));
    assert_eq!(checkpoints.get("c2", &shard).await.unwrap(), None);
    // The end of a shard is past every position, and stays.
    checkpoints.set("c1", &shard, &Checkpoint::ShardEnd).await.unwrap();
    assert_eq!(checkpoints.get("c1", &shard).await.unwrap(), Some(Checkpoint::ShardEnd));
    checkpoints.set("c1", &shard, &at(u64::MAX)).await.unwrap();
    assert_eq!(checkpoints.get("c1", &shard).await.unwrap(), Some(Checkpoint::ShardEnd));
    assert_eq!(checkpoints.get("c2", &shard).await.unwrap(), None, "per consumer");
}

/// The suite and the embedded stream's own tests, for a stream of 3 shards made by `$open`.
macro_rules! embedded_suite {
    ($name:ident, $open:expr) => {
        mod $name {
            use tripflow::stream::embedded::EmbeddedStream;

            fn open(dir: &std::path::Path) -> EmbeddedStream {
                let open: fn(&std::path::Path) -> EmbeddedStream = $open;
                open(dir)
            }

            #[tokio::test]
            async fn keys_keep_their_shard_and_order() {
                let tmp = tempfile::tempdir().unwrap();
                let s = open(tmp.path());
                super::keys_keep_their_shard_and_order(&s, &s).await;
            }

            #[tokio::test]
            async fn start_positions() {
                let tmp = tempfile::tempdir().unwrap();
                let s = open(tmp.path());
                super::start_positions(&s, &s).await;
            }

            #[tokio::test]
            async fn oversized_records_are_refused() {
                let tmp = tempfile::tempdir().unwrap();
                let s = open(tmp.path());
                super::oversized_records_are_refused(&s, &s).await;
            }

            #[tokio::test]
            async fn checkpoints_only_move_forward() {
                let tmp = tempfile::tempdir().unwrap();
                super::checkpoints_only_move_forward(&open(tmp.path()), "shardId-000000000001").await;
            }

            #[tokio::test]
            async fn a_read_stops_at_its_byte_bound_after_at_least_one_record() {
                use tripflow::stream::{StartPosition, StreamSink, StreamSource};
                let tmp = tempfile::tempdir().unwrap();
                let s = open(tmp.path());
                // Four records of 12 bytes ("k:0123456789") on the shard of key "k".
                for _ in 0..4 {
                    assert!(s.put_records(&super::records(&["k"], "0123456789")).await.unwrap().is_empty());
                }
                let shard = format!("shardId-{:012}", tripflow::stream::shard_index("k", 3));
                let it = s.iterator(&shard, &StartPosition::TrimHorizon).await.unwrap();
                let two = s.read(&it, 10, 13).await.unwrap();
                assert_eq!((two.records.len(), two.caught_up), (2, false), "12 bytes leave room, 24 reach 13");
                let one = s.read(&two.next, 10, 1).await.unwrap();
                assert_eq!(
                    (one.records.len(), one.caught_up),
                    (1, false),
                    "at least one record, however small the bound"
                );
                let rest = s.read(&one.next, 10, usize::MAX).await.unwrap();
                assert_eq!((rest.records.len(), rest.caught_up), (1, true));
                let seqs: Vec<_> = [&two.records[..], &one.records[..], &rest.records[..]]
                    .concat()
                    .into_iter()
                    .map(|r| r.sequence_number)
                    .collect();
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, none skipped or repeated: {seqs:?}");
            }

            #[tokio::test]
            async fn the_identity_is_the_files_own_and_survives_a_reopen() {
                use tripflow::stream::StreamSource;
                let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
                let first = open(a.path()).identity();
                assert!(first.starts_with("embedded:") && first.len() > "embedded:".len(), "{first}");
                assert_eq!(EmbeddedStream::open(a.path(), None).unwrap().identity(), first);
                assert_ne!(open(b.path()).identity(), first, "two streams, two identities");
            }

            #[tokio::test]
            async fn a_second_process_sees_what_the_first_put() {
                // Two handles on one file stand in for a producer and a consumer process.
                let tmp = tempfile::tempdir().unwrap();
                let producer = open(tmp.path());
                let consumer = EmbeddedStream::open(tmp.path(), None).unwrap();
                use tripflow::stream::StreamSink;
                producer.put_records(&super::records(&["x", "y"], "1")).await.unwrap();
                assert_eq!(super::read_all(&consumer, &tripflow::stream::StartPosition::TrimHorizon).await.len(), 2);
            }
        }
    };
}

embedded_suite!(embedded, |dir| EmbeddedStream::open(dir, Some(3)).unwrap());
// Segments of 40 bytes: about one record each, so every test crosses segments.
embedded_suite!(embedded_small_segments, |dir| EmbeddedStream::open(dir, Some(3)).unwrap().with_segment_bytes(40));
// The format of a home made before the log.
embedded_suite!(embedded_sqlite, |dir| EmbeddedStream::open_sqlite(dir, Some(3)).unwrap());

/// The suite and the Kinesis stream's own tests, on the Kinesis of `$kinesis` (an
/// endpoint) with checkpoints in the DynamoDB of `$dynamodb`.
macro_rules! kinesis_suite {
    ($name:ident, $kinesis:expr, $dynamodb:expr) => {
        mod $name {
            use std::time::Duration;

            use tripflow::backend::aws::Aws;
            use tripflow::stream::checkpoints_dynamodb::DynamoCheckpoints;
            use tripflow::stream::kinesis::KinesisStream;

            use crate::moto::unique;

            fn endpoint() -> String {
                $kinesis
            }

            fn aws() -> Aws {
                Aws::for_endpoint(&endpoint())
            }

            /// A new stream of 3 shards on the emulator, read without pauses.
            async fn open() -> KinesisStream {
                let s = KinesisStream::new(&aws(), &unique("suite")).with_read_interval(Duration::ZERO);
                assert!(s.create_if_missing(3).await.unwrap());
                s
            }

            #[tokio::test]
            async fn keys_keep_their_shard_and_order() {
                let s = open().await;
                super::keys_keep_their_shard_and_order(&s, &s).await;
            }

            #[tokio::test]
            async fn start_positions() {
                let s = open().await;
                super::start_positions(&s, &s).await;
            }

            #[tokio::test]
            async fn oversized_records_are_refused() {
                let s = open().await;
                super::oversized_records_are_refused(&s, &s).await;
            }

            #[tokio::test]
            async fn checkpoints_only_move_forward() {
                let aws = Aws::for_endpoint(&$dynamodb);
                let table = unique("checkpoints");
                assert!(DynamoCheckpoints::create_if_missing(&aws, &table).await.unwrap());
                assert!(!DynamoCheckpoints::create_if_missing(&aws, &table).await.unwrap(), "idempotent");
                super::checkpoints_only_move_forward(&DynamoCheckpoints::new(&aws, &table), "shardId-000000000001")
                    .await;
            }

            #[tokio::test]
            async fn an_expired_iterator_is_renewed_after_the_last_record_read() {
                let name = unique("expiring");
                let direct = KinesisStream::new(&aws(), &name).with_read_interval(Duration::ZERO);
                assert!(direct.create_if_missing(1).await.unwrap());
                let keys: Vec<String> = (0..20).map(|i| format!("trip-{i}")).collect();
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                use tripflow::stream::StreamSink;
                direct.put_records(&super::records(&keys, "1")).await.unwrap();

                let proxy = crate::moto::FaultProxy::expiring_iterators(&endpoint(), 2).await;
                let through =
                    KinesisStream::new(&Aws::for_endpoint(&proxy.url), &name).with_read_interval(Duration::ZERO);
                let all = super::read_all(&through, &tripflow::stream::StartPosition::TrimHorizon).await;
                let data: Vec<&str> = all.iter().map(|r| r.2.as_str()).collect();
                let expected: Vec<String> = keys.iter().map(|k| format!("{k}:1")).collect();
                assert_eq!(data, expected, "every record once, in order");
                assert!(proxy.counts.expired.load(std::sync::atomic::Ordering::Relaxed) >= 3);
            }

            #[tokio::test]
            async fn puts_of_more_than_500_records_are_split() {
                let s = open().await;
                let keys: Vec<String> = (0..1234).map(|i| format!("trip-{i}")).collect();
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                use tripflow::stream::StreamSink;
                assert!(s.put_records(&super::records(&keys, "1")).await.unwrap().is_empty());
                let all = super::read_all(&s, &tripflow::stream::StartPosition::TrimHorizon).await;
                assert_eq!(all.len(), 1234);
            }
        }
    };
}

kinesis_suite!(kinesis, crate::moto::require(), crate::moto::require());
// An independent Kinesis (kinesalite) and DynamoDB (dynalite), from npm.
kinesis_suite!(kinesalite, crate::emulators::kinesalite_endpoint(), crate::emulators::dynalite_endpoint());
