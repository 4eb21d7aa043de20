//! The dead-letter conformance suite: one body per behaviour, written against
//! `DeadLetterSink`; the file sink, the object sink on a local folder and the object sink
//! on S3 (the emulator) each run all of it.

use tripflow::ingest::deadletter::{DeadLetter, DeadLetterLine, DeadLetterSink};
use tripflow::stream::SequenceNumber;

fn letter(stream: &str, shard: &str, seq: u64, raw: &[u8]) -> DeadLetter {
    DeadLetter {
        stream: stream.into(),
        shard: shard.into(),
        sequence_number: SequenceNumber::from_u64(seq),
        partition_key: format!("key-{seq}"),
        raw: raw.to_vec(),
        reasons: vec![format!("record {seq}: not JSON"), "trip_id: missing".into()],
        arrival: chrono::DateTime::from_timestamp(1_716_600_000 + seq as i64, 0).unwrap(),
    }
}

fn positions(letters: &[DeadLetterLine]) -> Vec<(String, String, u64)> {
    letters
        .iter()
        .map(|l| {
            (l.stream.clone(), l.shard.clone(), SequenceNumber(l.sequence_number.as_str().into()).as_u64().unwrap())
        })
        .collect()
}

const S0: &str = "shardId-000000000000";
const S1: &str = "shardId-000000000001";

/// Every field comes back as written: text records as `raw`, other bytes as base64.
pub async fn letters_keep_their_bytes_position_and_reasons(sink: &dyn DeadLetterSink) {
    let text = letter("embedded:a", S0, 7, "{\"trip_id\": \"ü\"".as_bytes());
    let binary = letter("embedded:a", S1, 3, &[0xff, 0x00, 0xfe]);
    sink.write(&[text.clone(), binary.clone()]).await.unwrap();
    let back = sink.letters().await.unwrap();
    assert_eq!(back.len(), 2);
    let (t, b) = (&back[0], &back[1]);
    assert_eq!((t.shard.as_str(), t.partition_key.as_str()), (S0, "key-7"));
    assert_eq!(t.raw.as_deref(), Some("{\"trip_id\": \"ü\""));
    assert_eq!(t.raw_base64, None);
    assert_eq!(t.reasons, text.reasons);
    assert_eq!(t.arrived_at.as_deref(), Some("2024-05-25T01:20:07.000000Z"));
    assert_eq!((b.raw.as_deref(), b.raw_base64.as_deref()), (None, Some("/wD+")));
    assert_eq!(SequenceNumber(b.sequence_number.as_str().into()), binary.sequence_number);
}

/// A replay from the last checkpoint (letters already held, then new ones) stores each
/// letter once, in one call or across calls.
pub async fn a_replay_is_not_stored_twice(sink: &dyn DeadLetterSink) {
    let first: Vec<DeadLetter> = (1..=5).map(|n| letter("kinesis:bolt", S0, n * 10, b"x")).collect();
    sink.write(&first).await.unwrap();
    // The crash came before the checkpoint: 30..50 are read again, with 60 and 70 new.
    let replay: Vec<DeadLetter> = (3..=7).map(|n| letter("kinesis:bolt", S0, n * 10, b"x")).collect();
    sink.write(&replay).await.unwrap();
    sink.write(&replay[3..]).await.unwrap();
    let want: Vec<(String, String, u64)> = (1..=7).map(|n| ("kinesis:bolt".into(), S0.into(), n * 10)).collect();
    assert_eq!(positions(&sink.letters().await.unwrap()), want);
}

/// Two streams, or two shards, with the same sequence numbers are different letters.
pub async fn equal_sequence_numbers_of_other_streams_and_shards_are_kept(sink: &dyn DeadLetterSink) {
    let a = letter("embedded:0001", S0, 1, b"a");
    let b = letter("kinesis:bolt", S0, 1, b"b");
    let c = letter("kinesis:bolt", S1, 1, b"c");
    sink.write(&[a]).await.unwrap();
    sink.write(&[b, c]).await.unwrap();
    let back = sink.letters().await.unwrap();
    assert_eq!(
        positions(&back),
        [
            ("embedded:0001".into(), S0.into(), 1),
            ("kinesis:bolt".into(), S0.into(), 1),
            ("kinesis:bolt".into(), S1.into(), 1)
        ]
    );
    let raws: Vec<&str> = back.iter().map(|l| l.raw.as_deref().unwrap()).collect();
    assert_eq!(raws, ["a", "b", "c"]);
}

/// An empty write stores nothing and does not fail.
pub async fn an_empty_write_is_a_no_op(sink: &dyn DeadLetterSink) {
    sink.write(&[]).await.unwrap();
    assert!(sink.letters().await.unwrap().is_empty());
}

/// The keys of redriven letters are kept beside the letters, each once, and are not
/// letters themselves.
pub async fn redriven_keys_are_kept_beside_the_letters(sink: &dyn DeadLetterSink) {
    assert!(sink.redriven().await.unwrap().is_empty());
    sink.mark_redriven(&["a".into(), "b".into()]).await.unwrap();
    sink.mark_redriven(&["b".into(), "c".into()]).await.unwrap();
    let mut keys: Vec<String> = sink.redriven().await.unwrap().into_iter().collect();
    keys.sort();
    assert_eq!(keys, ["a", "b", "c"]);
    assert!(sink.letters().await.unwrap().is_empty(), "the record of them is no letter");
}

macro_rules! suite {
    ($open:expr) => {
        #[tokio::test]
        async fn redriven_keys_are_kept_beside_the_letters() {
            let (sink, _keep) = $open.await;
            super::redriven_keys_are_kept_beside_the_letters(sink.as_ref()).await;
        }

        #[tokio::test]
        async fn letters_keep_their_bytes_position_and_reasons() {
            let (sink, _keep) = $open.await;
            super::letters_keep_their_bytes_position_and_reasons(sink.as_ref()).await;
        }

        #[tokio::test]
        async fn a_replay_is_not_stored_twice() {
            let (sink, _keep) = $open.await;
            super::a_replay_is_not_stored_twice(sink.as_ref()).await;
        }

        #[tokio::test]
        async fn equal_sequence_numbers_of_other_streams_and_shards_are_kept() {
            let (sink, _keep) = $open.await;
            super::equal_sequence_numbers_of_other_streams_and_shards_are_kept(sink.as_ref()).await;
        }

        #[tokio::test]
        async fn an_empty_write_is_a_no_op() {
            let (sink, _keep) = $open.await;
            super::an_empty_write_is_a_no_op(sink.as_ref()).await;
        }
    };
}

mod file {
    use tripflow::ingest::deadletter::{DeadLetterSink, FileDeadLetters};

    async fn open() -> (Box<dyn DeadLetterSink>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Box::new(FileDeadLetters::open(&dir.path().join("dead_letters.ndjson")).unwrap()), dir)
    }

    suite!(open());

    /// Reopened, the file sink still knows what it holds (the replay check survives a
    /// restart), and only as one mark per stream and shard.
    #[tokio::test]
    async fn a_reopened_file_still_refuses_a_replay() {
        let (sink, dir) = open().await;
        super::a_replay_is_not_stored_twice(sink.as_ref()).await;
        drop(sink);
        let again = FileDeadLetters::open(&dir.path().join("dead_letters.ndjson")).unwrap();
        let before = again.letters().await.unwrap().len();
        let replay: Vec<_> = (1..=7).map(|n| super::letter("kinesis:bolt", super::S0, n * 10, b"x")).collect();
        again.write(&replay).await.unwrap();
        assert_eq!(again.letters().await.unwrap().len(), before);
    }
}

mod local_objects {
    use std::sync::Arc;

    use tripflow::ingest::deadletter::{DeadLetterSink, ObjectDeadLetters};

    async fn open() -> (Box<dyn DeadLetterSink>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        (Box::new(ObjectDeadLetters::new(store, "run-1", "file://test")), dir)
    }

    suite!(open());
}

mod s3 {
    use tripflow::ingest::deadletter::{DeadLetterSink, ObjectDeadLetters};

    use crate::moto::{aws, unique};

    async fn open() -> (Box<dyn DeadLetterSink>, ()) {
        let aws = aws();
        let bucket = unique("dead-letters");
        aws.create_bucket_if_missing(&bucket).await.unwrap();
        let store = aws.s3(&bucket).unwrap();
        (Box::new(ObjectDeadLetters::new(store, "prefix/x", &format!("s3://{bucket}/prefix/x"))), ())
    }

    suite!(open());
}
