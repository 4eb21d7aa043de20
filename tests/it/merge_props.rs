//! Order-independence (docs/design.md §3): for random trips, any permutation of their events,
//! with random duplicates and any batch size, gives the same final table.

use proptest::prelude::*;
use tripflow::config::Home;
use tripflow::ingest::IngestOptions;

use crate::common::{end_event, ingest, put_raw, start_event};

/// A trip's events: one to three start versions and zero to three end versions.
fn trip_events(trip: usize) -> impl Strategy<Value = Vec<String>> {
    (proptest::collection::vec(0u32..5, 1..=3), proptest::collection::vec((0u32..5, 1u32..9999), 0..=3)).prop_map(
        move |(starts, ends)| {
            let id = format!("trip-{trip}");
            let mut events: Vec<String> =
                starts.iter().map(|m| start_event(&id, &format!("2024-05-25 13:1{m}:00"))).collect();
            // The fare depends on the version only, so equal versions are true duplicates.
            events.extend(
                ends.iter()
                    .map(|(m, _)| end_event(&id, &format!("2024-05-25 23:5{m}:00"), &format!("{}.{}", 10 + m, m * 7))),
            );
            events
        },
    )
}

fn scenario() -> impl Strategy<Value = (Vec<String>, Vec<usize>, usize, usize)> {
    (1usize..6)
        .prop_flat_map(|n| (0..n).map(trip_events).collect::<Vec<_>>())
        .prop_map(|trips| trips.concat())
        .prop_flat_map(|events| {
            let len = events.len();
            (Just(events).prop_shuffle(), proptest::collection::vec(0..len, 0..len + 1), 1usize..8, 1usize..8)
        })
}

async fn final_table(events: &[String], batch_rows: usize) -> Vec<arrow::array::RecordBatch> {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path()).unwrap();
    let stream = home.stream(Some(2)).unwrap();
    let records: Vec<Vec<u8>> = events.iter().map(|e| e.clone().into_bytes()).collect();
    put_raw(&stream, &records).await;
    let counts = ingest(&home, &IngestOptions { batch_rows, ..Default::default() }).await.unwrap();
    assert!(counts.balanced(), "{counts:?}");
    assert_eq!(counts.dead_lettered, 0);
    home.store().unwrap().export(None, &tripflow::store::Projection::all()).await.unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn any_order_and_duplication_gives_the_same_table(
        (events, dups, batch_a, batch_b) in scenario()
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut sorted = events.clone();
        sorted.sort();
        let reference = rt.block_on(final_table(&sorted, 1000));
        let mut shuffled = events.clone();
        for &i in &dups {
            shuffled.insert(i.min(shuffled.len()), events[i].clone());
        }
        let replayed = rt.block_on(final_table(&shuffled, batch_a));
        prop_assert_eq!(&reference, &replayed);
        shuffled.reverse();
        let reversed = rt.block_on(final_table(&shuffled, batch_b));
        prop_assert_eq!(&reference, &reversed);
    }
}
