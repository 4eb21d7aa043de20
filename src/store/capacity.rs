//! What DynamoDB charges for: the capacity units each request consumed, as DynamoDB
//! reports them (`ReturnConsumedCapacity`), or, when the service (an emulator) reports
//! none, computed from the items' sizes by DynamoDB's rules; the totals say which.
//!
//! The rules (DynamoDB Developer Guide, "Read/write capacity mode" and "Item sizes"): a
//! write costs one unit per KB of the item, rounded up (the larger of the item before
//! and after, at least one), and as much again for each index item it writes; a read
//! costs one unit per 4 KB read, rounded up, half of it when eventually consistent. A
//! write whose condition fails still costs its units; DynamoDB does not report those,
//! so they are always computed, from the stored item its failure returns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aws_sdk_dynamodb::types::{AttributeValue, ConsumedCapacity};

use super::Consumed;

/// Capacity units consumed by one store, in thousandths of a unit (so that sums of
/// DynamoDB's half units stay exact integers).
#[derive(Debug, Default)]
pub struct Meter {
    write: AtomicU64,
    read: AtomicU64,
    computed: AtomicBool,
}

fn milli(units: f64) -> u64 {
    (units * 1000.0).round() as u64
}

impl Meter {
    /// Charges a write request: what DynamoDB reported, or else `computed()`.
    pub fn write(&self, reported: Option<&ConsumedCapacity>, computed: impl FnOnce() -> f64) {
        self.write.fetch_add(milli(self.units(reported, computed)), Ordering::Relaxed);
    }

    /// Charges a read request: what DynamoDB reported, or else `computed()`.
    pub fn read(&self, reported: Option<&ConsumedCapacity>, computed: impl FnOnce() -> f64) {
        self.read.fetch_add(milli(self.units(reported, computed)), Ordering::Relaxed);
    }

    /// Charges a read of `items` (a page, or a GetItem's item): what DynamoDB reported,
    /// or else their size's units.
    pub fn read_items<'a>(
        &self,
        reported: Option<&ConsumedCapacity>,
        items: impl IntoIterator<Item = &'a HashMap<String, AttributeValue>>,
        consistent: bool,
    ) {
        self.read(reported, || read_units(items.into_iter().map(item_size).sum(), consistent));
    }

    /// Charges write units DynamoDB never reports (a failed condition's).
    pub fn unreported_write(&self, units: f64) {
        self.write.fetch_add(milli(units), Ordering::Relaxed);
    }

    /// Whether a response came without its capacity, so that units are computed.
    pub fn computes(&self) -> bool {
        self.computed.load(Ordering::Relaxed)
    }

    fn units(&self, reported: Option<&ConsumedCapacity>, computed: impl FnOnce() -> f64) -> f64 {
        match reported.and_then(ConsumedCapacity::capacity_units) {
            Some(units) => units,
            None => {
                self.computed.store(true, Ordering::Relaxed);
                computed()
            }
        }
    }

    /// The totals so far.
    pub fn consumed(&self) -> Consumed {
        Consumed {
            write_milliunits: self.write.load(Ordering::Relaxed),
            read_milliunits: self.read.load(Ordering::Relaxed),
            computed: self.computes(),
        }
    }
}

/// The size of an attribute value, by DynamoDB's rules: a string's UTF-8 bytes, a
/// number's significant digits two to a byte plus one, one byte for a boolean or null.
pub fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => {
            let digits = n.trim_start_matches(['-', '+']).replace('.', "");
            let significant = digits.trim_start_matches('0').trim_end_matches('0').len().max(1);
            significant.div_ceil(2) + 1
        }
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) | AttributeValue::Ns(v) => v.iter().map(String::len).sum(),
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(m) => 3 + item_size(m) + m.len(),
        _ => 1,
    }
}

/// An item's size: each attribute's name and value.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(name, v)| name.len() + value_size(v)).sum()
}

/// Write units of an item of `size` bytes: one per KB, rounded up, at least one.
pub fn write_units(size: usize) -> f64 {
    size.div_ceil(1024).max(1) as f64
}

/// Read units of `size` bytes read in one request: one per 4 KB, rounded up, at least
/// one; half when eventually consistent.
pub fn read_units(size: usize, consistent: bool) -> f64 {
    let units = size.div_ceil(4096).max(1) as f64;
    if consistent { units } else { units / 2.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_dynamodb_s_rules() {
        let s = |v: &str| AttributeValue::S(v.into());
        let item = HashMap::from([
            ("trip_id".to_owned(), s("c66ce556bc")),
            ("fare".to_owned(), AttributeValue::N("25.50".into())),
        ]);
        // 7 + 10, then 4 + (3 significant digits: 2 bytes) + 1.
        assert_eq!(item_size(&item), 17 + 7);
        assert_eq!(value_size(&AttributeValue::N("-0.0012000".into())), 2);
        assert_eq!(value_size(&AttributeValue::Bool(true)), 1);
        assert_eq!((write_units(0), write_units(1024), write_units(1025)), (1.0, 1.0, 2.0));
        assert_eq!((read_units(10, false), read_units(10, true), read_units(4097, true)), (0.5, 1.0, 2.0));
    }

    #[test]
    fn reported_units_win_and_computed_ones_are_labelled() {
        let meter = Meter::default();
        let reported = ConsumedCapacity::builder().capacity_units(2.0).build();
        meter.write(Some(&reported), || unreachable!("reported"));
        assert!(!meter.consumed().computed);
        meter.read(None, || 0.5);
        meter.unreported_write(1.0);
        let c = meter.consumed();
        assert_eq!((c.write_milliunits, c.read_milliunits, c.computed), (3000, 500, true));
    }
}
