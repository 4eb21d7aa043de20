//! Coalescing: a trip's events within one micro-batch become one [`TripUpdate`].
//!
//! Per trip and kind only the newest version in the batch is kept (the first of equal
//! versions); the others could never be applied, so they are counted as duplicates or
//! stale without a write. A trip whose start and end share a batch costs one write.

use std::collections::HashMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;

use super::validate::{Typed, Validated};
use crate::model::event::EventKind;
use crate::store::{EndGroup, Extras, StartGroup, TripUpdate};

/// The updates of a batch.
#[derive(Debug, Default)]
pub struct Coalesced {
    /// One update per trip, in order of the trip's first valid event in the batch.
    pub updates: Vec<TripUpdate>,
    /// Valid events that a newer or equal event of the same trip and kind superseded.
    pub superseded: usize,
    /// With `steps` asked for: per update, the rows that raised a group's version, in
    /// row order, each with its group (the live state on DynamoDB, [`crate::store::Step`]).
    pub steps: Vec<Vec<RaisedRow>>,
}

/// A row that raised a group's version within its batch: its index and its group.
pub type RaisedRow = (usize, Option<StartGroup>, Option<EndGroup>);

/// Coalesces the valid rows of `v`; with `steps`, also keeps [`Coalesced::steps`].
pub fn coalesce(v: &Validated, steps: bool) -> Coalesced {
    let ids = v.trip_ids();
    let version = |kind: EventKind| v.batch.column(kind.version_column()).as_primitive::<TimestampMicrosecondType>();
    let (pickup, dropoff) = (version(EventKind::Start), version(EventKind::End));
    let mut order: Vec<&str> = Vec::new();
    let mut newest: HashMap<&str, [Option<usize>; 2]> = HashMap::new();
    let mut raised: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut superseded = 0;

    for row in (0..v.reasons.len()).filter(|&r| v.is_valid(r)) {
        let (slot, version) = if v.is_start.value(row) { (0, pickup) } else { (1, dropoff) };
        let id = ids.value(row);
        let entry = newest.entry(id).or_insert_with(|| {
            order.push(id);
            [None, None]
        });
        let raises = match entry[slot] {
            Some(kept) => {
                superseded += 1;
                version.value(kept) < version.value(row)
            }
            None => true,
        };
        if raises {
            entry[slot] = Some(row);
            if steps {
                raised.entry(id).or_default().push(row);
            }
        }
    }

    // Each column is typed once per batch, not once per value.
    let (starts, ends) = (columns(v, StartGroup::KIND), columns(v, EndGroup::KIND));
    let extras = |row: usize| Extras::from_canonical(v.extras.is_valid(row).then(|| v.extras.value(row)));
    let start_of = |r: usize| StartGroup::from_fn(|i| starts[i].stored_text(r)).with_extras(extras(r));
    let end_of = |r: usize| EndGroup::from_fn(|i| ends[i].stored_text(r)).with_extras(extras(r));
    let steps =
        if steps {
            order
                .iter()
                .map(|id| {
                    raised[id]
                        .iter()
                        .map(|&r| {
                            if v.is_start.value(r) { (r, Some(start_of(r)), None) } else { (r, None, Some(end_of(r))) }
                        })
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
    let updates = order
        .into_iter()
        .map(|id| {
            let [start, end] = newest[id];
            TripUpdate { trip_id: id.into(), start: start.map(start_of), end: end.map(end_of) }
        })
        .collect();
    Coalesced { updates, superseded, steps }
}

/// The validated columns of `kind`'s group, in the registry's order.
fn columns(v: &Validated, kind: EventKind) -> Vec<Typed<'_>> {
    kind.fields().iter().enumerate().map(|(i, spec)| v.typed(kind.first_column() + i, spec)).collect()
}

#[cfg(test)]
mod tests {
    use super::super::{decode::decode, validate::validate};
    use super::*;

    fn end(id: &str, at: &str, fare: &str) -> String {
        format!(r#"{{"event_type":"end","trip_id":"{id}","dropoff_datetime":"{at}","fare_amount":{fare}}}"#)
    }

    fn start(id: &str, at: &str) -> String {
        format!(
            r#"{{"event_type":"start","trip_id":"{id}","pickup_location_id":1,"dropoff_location_id":2,"vendor_id":1,"pickup_datetime":"{at}"}}"#
        )
    }

    #[test]
    fn a_trip_in_one_batch_is_one_update_with_its_newest_versions() {
        let records = [
            end("a", "2024-05-25 10:00:00", "10"),
            start("a", "2024-05-25 09:00:00"),
            end("a", "2024-05-25 11:00:00", "12"),
            end("a", "2024-05-25 11:00:00", "99"),
            start("b", "2024-05-25 09:30:00"),
            "garbage".into(),
        ];
        let v = validate(&decode(records.iter().map(|r| r.as_bytes()))).unwrap();
        let c = coalesce(&v, true);
        assert_eq!(c.updates.len(), 2);
        assert_eq!(c.superseded, 2);
        let a = &c.updates[0];
        assert_eq!(a.trip_id, "a");
        assert_eq!(a.end.as_ref().unwrap().get("fare_amount"), Some("12"), "newest wins, first of equals kept");
        assert_eq!(a.start.as_ref().unwrap().version(), "2024-05-25T09:00:00.000000Z");
        assert_eq!(a.start.as_ref().unwrap().get("vendor_id"), Some("1"));
        assert!(c.updates[1].end.is_none());
        // The rows that raised a version, in order: a's end at 10:00, its start, its end at 11:00.
        let raised: Vec<usize> = c.steps[0].iter().map(|(r, _, _)| *r).collect();
        assert_eq!(raised, [0, 1, 2]);
        assert_eq!(c.steps[0][2].2.as_ref().unwrap().get("fare_amount"), Some("12"));
    }
}
