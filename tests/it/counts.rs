//! The run's counts against numbers the test knows on its own: how many distinct events
//! it wrote, how many exact copies, how many stale versions and how many bad records.
//! `duplicate_or_stale` is derived inside ingest; here it is pinned from outside.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use tripflow::config::Home;
use tripflow::ingest::IngestOptions;

use crate::common::{end_event, ingest, put_raw, start_event};

#[tokio::test]
async fn applied_duplicates_and_dead_letters_are_what_the_test_wrote() {
    const TRIPS: usize = 300;
    const COPIES: usize = 170;
    const BAD: usize = 23;
    let distinct: Vec<String> = (0..TRIPS)
        .flat_map(|t| {
            let trip = format!("trip-{t}");
            let minute = t % 60;
            [
                start_event(&trip, &format!("2024-05-25 10:{minute:02}:00")),
                end_event(&trip, &format!("2024-05-25 11:{minute:02}:00"), &format!("{}.25", 10 + t)),
            ]
        })
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    // Exact copies: whichever of a pair comes first is applied, the other is a duplicate,
    // in any order and any batch split.
    let copies: Vec<String> = (0..COPIES).map(|i| distinct[(i * 7) % distinct.len()].clone()).collect();
    let bad: Vec<String> = (0..BAD)
        .map(|i| match i % 3 {
            0 => format!("not json {i}"),
            1 => start_event(&format!("bad-{i}"), "0000-01-01T00:30:00+01:00"),
            _ => end_event(&format!("bad-{i}"), "2024-05-25 11:00:00", "\"NaN\""),
        })
        .collect();
    let mut records: Vec<Vec<u8>> =
        distinct.iter().chain(&copies).chain(&bad).map(|r| r.clone().into_bytes()).collect();
    records.shuffle(&mut rng);
    // Stale versions, put after everything else: an earlier pickup or dropoff of a trip
    // whose later version is already stored.
    const STALE: usize = 40;
    records.extend((0..STALE).map(|t| {
        let trip = format!("trip-{t}");
        let event = if t % 2 == 0 {
            start_event(&trip, "2024-05-25 09:00:00")
        } else {
            end_event(&trip, "2024-05-25 10:59:59", "1")
        };
        event.into_bytes()
    }));

    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path()).unwrap();
    // One shard: the stale versions are read after the versions they are older than.
    let stream = home.stream(Some(1)).unwrap();
    put_raw(&stream, &records).await;
    let counts = ingest(&home, &IngestOptions { batch_rows: 97, ..Default::default() }).await.unwrap();

    assert_eq!(counts.read, (2 * TRIPS + COPIES + BAD + STALE) as u64);
    assert_eq!(counts.applied, (2 * TRIPS) as u64, "{counts:?}");
    assert_eq!(counts.duplicate_or_stale, (COPIES + STALE) as u64, "{counts:?}");
    assert_eq!(counts.dead_lettered, BAD as u64, "{counts:?}");
    assert_eq!(counts.batches, counts.read.div_ceil(97), "{counts:?}");
}
