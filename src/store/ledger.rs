//! The ledger of undeclared fields: every field an event carried that no declared field
//! names, with its group, where and when it was first seen, how many records carried it
//! and the JSON types it came as (docs/design.md §2).
//!
//! It is kept beside the trip table, one entry per stream shard, each entry saying how
//! far into its shard it has counted. A batch adds only the records past that point, so
//! a replay after a crash, a retried Lambda batch or a bisected one counts each record
//! once. The shard's records reach it in order, which the ingest loop and Lambda's event
//! source mapping (with its default parallelization factor of one) both keep.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::event::EventKind;
use crate::model::extra::JsonType;
use crate::stream::SequenceNumber;

/// The names a built-in column of `trips` already has besides the registry's fields: a
/// kept field of such a name is kept and counted, but is no column of `trips`.
pub const RESERVED_NAMES: [&str; 4] = ["trip_id", "trip_date", "trip_completed", "last_updated"];

/// One record that carried undeclared fields, as ingest read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// The stream and shard it was read from, as `stream/shard`: the ledger entry it counts in.
    pub position: String,
    /// Its sequence number in that shard.
    pub sequence: SequenceNumber,
    /// Its kind: the group its fields belong to.
    pub kind: EventKind,
    /// Its version (`pickup_datetime` or `dropoff_datetime`) as sent, if it had one.
    pub event_time: Option<String>,
    /// Each undeclared field's name and JSON type.
    pub fields: Vec<(String, JsonType)>,
}

/// Where and when a field was first seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstSeen {
    /// When ingest read it (RFC 3339, UTC).
    pub at: String,
    /// The stream and shard (`stream/shard`).
    pub position: String,
    /// The record's sequence number.
    pub sequence: String,
    /// The record's event time, as sent.
    pub event_time: Option<String>,
}

/// One undeclared field of one group, as counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenField {
    /// `start` or `end`.
    pub group: String,
    /// Its name on the wire.
    pub name: String,
    /// Records read with it (whether their group won the merge or not, valid or not).
    pub events: u64,
    /// How many of them carried it as each JSON type.
    pub types: BTreeMap<JsonType, u64>,
    /// Its first sighting.
    pub first_seen: FirstSeen,
}

impl SeenField {
    /// True when it came as more than one JSON type.
    pub fn conflict(&self) -> bool {
        self.types.len() > 1
    }

    /// True when its name is a built-in column of `trips` (see [`RESERVED_NAMES`]).
    pub fn reserved(&self) -> bool {
        RESERVED_NAMES.contains(&self.name.as_str())
    }
}

/// A shard's entry in the ledger, kept by each store as JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLedger {
    /// The last sequence number counted.
    pub through: Option<String>,
    /// The fields, keyed `group/name`.
    pub fields: BTreeMap<String, SeenField>,
}

impl ShardLedger {
    /// Reads a stored entry.
    ///
    /// # Errors
    /// When `text` is not an entry: the message says so.
    pub fn parse(text: &str, place: &dyn std::fmt::Display) -> crate::Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            crate::Error::store(format!(
                "the ledger of undeclared fields in {place} has an entry that is not one ({e}); delete that entry \
                 and its counts start again"
            ))
        })
    }

    /// The entry as stored.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a ledger serializes")
    }

    /// Counts the `sightings` of this entry's shard that lie past [`ShardLedger::through`]
    /// (in order), read at `now`. Returns the fields seen for the first time; `None`
    /// when no sighting was new, and the entry is unchanged.
    pub fn add<'a>(&mut self, sightings: impl IntoIterator<Item = &'a Sighting>, now: &str) -> Option<Vec<String>> {
        let mut through = self.through.clone().map(|s| SequenceNumber(s.into()));
        let mut new = Vec::new();
        let mut changed = false;
        for s in sightings {
            if through.as_ref().is_some_and(|t| s.sequence <= *t) {
                continue;
            }
            changed = true;
            through = Some(s.sequence.clone());
            let group = group_name(s.kind);
            for (name, ty) in &s.fields {
                let key = format!("{group}/{name}");
                let field = self.fields.entry(key.clone()).or_insert_with(|| {
                    new.push(key);
                    SeenField {
                        group: group.to_owned(),
                        name: name.clone(),
                        events: 0,
                        types: BTreeMap::new(),
                        first_seen: FirstSeen {
                            at: now.to_owned(),
                            position: s.position.clone(),
                            sequence: s.sequence.0.to_string(),
                            event_time: s.event_time.clone(),
                        },
                    }
                });
                field.events += 1;
                *field.types.entry(*ty).or_default() += 1;
            }
        }
        self.through = through.map(|t| t.0.to_string());
        changed.then_some(new)
    }
}

/// `start` or `end`.
pub fn group_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Start => "start",
        EventKind::End => "end",
    }
}

/// The ledger as a whole: every shard's entries summed, one field per group and name,
/// first seen where the earliest sighting was, sorted by group and name.
pub fn combine(entries: impl IntoIterator<Item = ShardLedger>) -> Vec<SeenField> {
    let mut all: BTreeMap<(String, String), SeenField> = BTreeMap::new();
    for entry in entries {
        for field in entry.fields.into_values() {
            match all.entry((field.group.clone(), field.name.clone())) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(field);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let kept = o.get_mut();
                    kept.events += field.events;
                    for (ty, n) in field.types {
                        *kept.types.entry(ty).or_default() += n;
                    }
                    if field.first_seen.at < kept.first_seen.at {
                        kept.first_seen = field.first_seen;
                    }
                }
            }
        }
    }
    // Start fields first, as in the table.
    let mut fields: Vec<SeenField> = all.into_values().collect();
    fields.sort_by(|a, b| (a.group != "start", &a.name).cmp(&(b.group != "start", &b.name)));
    fields
}

/// Of the fields `new_in_entries` (`group/name`) that a call read at `now` found new to
/// their entries, those that no other entry had before: their first sighting in the
/// whole ledger (`all`, read after the call) is the call's own. Each once.
pub fn first_sightings(new_in_entries: Vec<String>, all: &[SeenField], now: &str) -> Vec<String> {
    let mut first: Vec<String> = new_in_entries
        .into_iter()
        .filter(|key| all.iter().any(|f| format!("{}/{}", f.group, f.name) == *key && f.first_seen.at.as_str() >= now))
        .collect();
    first.sort();
    first.dedup();
    first
}

/// The sightings grouped by their ledger entry, each group in stream order.
pub fn by_position(sightings: &[Sighting]) -> BTreeMap<&str, Vec<&Sighting>> {
    let mut by: BTreeMap<&str, Vec<&Sighting>> = BTreeMap::new();
    for s in sightings {
        by.entry(s.position.as_str()).or_default().push(s);
    }
    by
}

/// Now, as the ledger writes it.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(seq: u64, kind: EventKind, fields: &[(&str, JsonType)]) -> Sighting {
        Sighting {
            position: "s/0".into(),
            sequence: SequenceNumber::from_u64(seq),
            kind,
            event_time: Some(format!("2024-05-25 10:00:{seq:02}")),
            fields: fields.iter().map(|&(n, t)| (n.to_owned(), t)).collect(),
        }
    }

    #[test]
    fn a_replayed_record_is_counted_once_and_types_conflict() {
        let batch = [
            seen(1, EventKind::End, &[("surge", JsonType::Number)]),
            seen(2, EventKind::End, &[("surge", JsonType::String), ("app", JsonType::String)]),
            seen(3, EventKind::Start, &[("surge", JsonType::Number)]),
        ];
        let mut ledger = ShardLedger::default();
        let new = ledger.add(&batch[..2], "t1").unwrap();
        assert_eq!(new, ["end/surge", "end/app"]);
        // A replay from record 1, longer this time: only record 3 is new.
        assert_eq!(ledger.add(&batch, "t2").unwrap(), ["start/surge"]);
        assert_eq!(ledger.add(&batch, "t3"), None, "nothing new, nothing changed");
        let again = ShardLedger::parse(&ledger.to_text(), &"test").unwrap();
        assert_eq!(again, ledger);
        let fields = combine([ledger.clone(), ledger]);
        let names: Vec<_> = fields.iter().map(|f| format!("{}/{}", f.group, f.name)).collect();
        assert_eq!(names, ["start/surge", "end/app", "end/surge"]);
        let surge = &fields[2];
        assert_eq!(surge.events, 4, "two shards' entries add up");
        assert!(surge.conflict() && !fields[1].conflict());
        assert_eq!(surge.first_seen.sequence, SequenceNumber::from_u64(1).0.as_str());
        assert_eq!(surge.first_seen.at, "t1");
    }
}
