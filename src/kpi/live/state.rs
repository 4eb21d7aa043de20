//! The live state of a maintained query: per date, per group, the row count and each
//! aggregate's running value, folded from rows as they were (retracted) and as they are
//! (added).
//!
//! - COUNT keeps its count; SUM and AVG keep the count of non-null values and their
//!   exact sum, as an integer at the argument's scale (256 bits): the same sum whatever
//!   the order the rows came in, so the same bytes as the batch's.
//! - MIN and MAX keep the extreme, as a row of `arrow-row` (whose bytes order as the
//!   values do), and how many rows hold it. Retracting the last of them leaves the
//!   extreme *unknown*, with the old one as a bound: a later value at or before the
//!   bound is the extreme again; otherwise the date is recomputed from the table before
//!   it is published ([`Folder::unknown_dates`]). A change that retracts a day's only
//!   cheapest fare is rare, and this keeps the state a few bytes per group where
//!   ordered counts of every value would keep hundreds of thousands a day
//!   (docs/performance.md, Live KPIs).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt64Array, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Date32Type, Decimal256Type, i256};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{HashMap, ScalarValue};

use super::plan::{Kind, Maintained};
use crate::error::{Context, Stage};
use crate::model::{put_varint, take_varint};
use crate::{Error, Result};

/// One aggregate's running value within a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Running {
    /// COUNT: the rows whose argument is not null.
    Count(i64),
    /// SUM, AVG: the non-null values and their sum, at the argument's scale.
    Sum { n: i64, sum: i256 },
    /// MIN, MAX: the non-null values, the extreme (a row of the argument's converter)
    /// and how many values equal it; `unknown` when the last of those was retracted.
    Extreme { n: i64, value: Option<Box<[u8]>>, ties: i64, unknown: bool },
}

/// A group's rows and running values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub rows: i64,
    pub running: Vec<Running>,
}

/// One date's groups, by their key (the grouping values as a row).
pub(crate) type DateGroups = HashMap<Box<[u8]>, Group>;

/// The arrays an expression evaluated to over one batch, by the expression's text:
/// the queries share their filters and arguments (`trip_completed`, the fare as a
/// DECIMAL(76, 18)), which are then evaluated once a batch.
pub(crate) type Evaluated = std::collections::HashMap<String, ArrayRef>;

/// The live state of one maintained query.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct QueryState {
    /// Per date (days since the epoch), its groups.
    pub dates: BTreeMap<i32, DateGroups>,
}

/// A maintained query with what folding needs: converters for its groups and extremes.
pub(crate) struct Folder<'a> {
    pub query: &'a Maintained,
    groups: RowConverter,
    /// Per aggregate, the converter of its argument (MIN and MAX only).
    extremes: Vec<Option<RowConverter>>,
}

/// An aggregate's argument over a batch, ready to fold.
enum Input {
    Count(ArrayRef),
    Sum(ArrayRef),
    Extreme(Rows, ArrayRef),
}

fn engine(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Stage::Store.error("the live KPIs' fold", e)
}

/// The scale of a sum's argument: a decimal's, or 0 for an integer.
fn scale_of(ty: &DataType) -> i8 {
    match ty {
        DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => *s,
        _ => 0,
    }
}

impl<'a> Folder<'a> {
    pub fn new(query: &'a Maintained) -> Result<Self> {
        let fields = query.group_types.iter().map(|t| SortField::new(t.clone())).collect();
        let groups = RowConverter::new(fields).map_err(engine)?;
        let extremes = query
            .aggregates
            .iter()
            .map(|a| match a.kind {
                Kind::Min | Kind::Max => RowConverter::new(vec![SortField::new(a.arg_type.clone())]).map(Some),
                _ => Ok(None),
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(engine)?;
        Ok(Folder { query, groups, extremes })
    }

    /// Adds `batch`'s rows to `state` (a change is two such states, the rows added and
    /// those retracted, which [`QueryState::absorb`] takes in); adds to `touched` the
    /// dates it added to. `evaluated` holds what other queries evaluated over the same
    /// batch.
    pub fn fold(
        &self,
        state: &mut QueryState,
        batch: &RecordBatch,
        touched: &mut BTreeSet<i32>,
        evaluated: &mut Evaluated,
    ) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let q = self.query;
        let mut eval = |e: &Arc<dyn datafusion::physical_expr::PhysicalExpr>| -> Result<ArrayRef> {
            let key = e.to_string();
            if let Some(array) = evaluated.get(&key) {
                return Ok(array.clone());
            }
            let array = e.evaluate(batch).and_then(|v| v.into_array(n)).map_err(engine)?;
            evaluated.insert(key, array.clone());
            Ok(array)
        };
        let keep: Option<BooleanArray> = match &q.filter {
            Some(f) => {
                Some(eval(f)?.as_boolean_opt().cloned().ok_or_else(|| Error::store("a live filter is not boolean"))?)
            }
            None => None,
        };
        let group_values = q.groups.iter().map(&mut eval).collect::<Result<Vec<_>>>()?;
        let dates = group_values[q.date].as_primitive_opt::<Date32Type>().cloned();
        let dates = dates.ok_or_else(|| Error::store("trip_date is not a date"))?;
        let keys = self.groups.convert_columns(&group_values).map_err(engine)?;
        let mut inputs = Vec::with_capacity(q.aggregates.len());
        for (a, converter) in q.aggregates.iter().zip(&self.extremes) {
            let values = eval(&a.arg)?;
            inputs.push(match a.kind {
                Kind::Count => Input::Count(values),
                Kind::Sum | Kind::Avg => {
                    let wide = DataType::Decimal256(76, scale_of(&a.arg_type));
                    Input::Sum(cast(&values, &wide).stage(Stage::Store, "the live KPIs' sums")?)
                }
                Kind::Min | Kind::Max => {
                    let converter = converter.as_ref().expect("an extreme has a converter");
                    let rows = converter.convert_columns(std::slice::from_ref(&values)).map_err(engine)?;
                    Input::Extreme(rows, values)
                }
            });
        }
        let mut last_date = None;
        for row in 0..n {
            if keep.as_ref().is_some_and(|k| !(k.is_valid(row) && k.value(row))) || dates.is_null(row) {
                continue;
            }
            let date = dates.value(row);
            if last_date != Some(date) {
                touched.insert(date);
                last_date = Some(date);
            }
            let groups = state.dates.entry(date).or_default();
            let key = keys.row(row);
            let group = match groups.get_mut(key.as_ref()) {
                Some(g) => g,
                None => groups.entry(key.as_ref().into()).or_insert_with(|| Group {
                    rows: 0,
                    running: q.aggregates.iter().map(|a| empty_running(a.kind)).collect(),
                }),
            };
            group.rows += 1;
            for ((running, input), a) in group.running.iter_mut().zip(&inputs).zip(&q.aggregates) {
                apply(running, input, row, a.kind == Kind::Max);
            }
        }
        Ok(())
    }

    /// The Aggregate node's output for `dates`: the grouping values, then each
    /// aggregate's result, computed by DataFusion's own accumulator from the kept values
    /// (so an AVG rounds as the batch's does), as columns `c0`, `c1`, …
    pub fn output(&self, state: &QueryState, dates: &[i32]) -> Result<RecordBatch> {
        let q = self.query;
        let mut keys = Vec::new();
        let mut groups = Vec::new();
        for d in dates {
            let Some(date_groups) = state.dates.get(d) else { continue };
            let mut sorted: Vec<_> = date_groups.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (key, group) in sorted {
                keys.push(key.as_ref());
                groups.push(group);
            }
        }
        let parser = self.groups.parser();
        let mut columns = self.groups.convert_rows(keys.iter().map(|k| parser.parse(k))).map_err(engine)?;
        for (i, (a, converter)) in q.aggregates.iter().zip(&self.extremes).enumerate() {
            let field = a.function.field();
            let mut values = Vec::with_capacity(groups.len());
            for g in &groups {
                let mut acc = a.function.create_accumulator().map_err(engine)?;
                let states = state_arrays(a, converter.as_ref(), &g.running[i])?;
                acc.merge_batch(&states).map_err(engine)?;
                values.push(acc.evaluate().map_err(engine)?);
            }
            columns.push(if values.is_empty() {
                arrow::array::new_empty_array(field.data_type())
            } else {
                ScalarValue::iter_to_array(values).map_err(engine)?
            });
        }
        let fields: Vec<_> = q
            .output
            .fields()
            .iter()
            .zip(&columns)
            .enumerate()
            .map(|(i, (f, c))| arrow::datatypes::Field::new(format!("c{i}"), c.data_type().clone(), f.is_nullable()))
            .collect();
        RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
            .stage(Stage::Store, "the live KPIs' figures")
    }

    /// The dates of `state` with an extreme left unknown by a retraction.
    pub fn unknown_dates(state: &QueryState) -> BTreeSet<i32> {
        state
            .dates
            .iter()
            .filter(|(_, groups)| {
                groups.values().any(|g| g.running.iter().any(|r| matches!(r, Running::Extreme { unknown: true, .. })))
            })
            .map(|(d, _)| *d)
            .collect()
    }
}

impl QueryState {
    /// Takes in a change given as two states, each folded from rows with sign 1: the
    /// rows it `added` and those it `retracted`. The retracted rows are among those this
    /// state holds. So a DynamoDB shard's stored state takes a batch's change, and the
    /// shards of a date add up (with nothing retracted).
    pub(crate) fn absorb(&mut self, added: &QueryState, retracted: &QueryState, kinds: &[Kind]) {
        let dates: BTreeSet<i32> = added.dates.keys().chain(retracted.dates.keys()).copied().collect();
        for d in dates {
            let groups = self.dates.entry(d).or_default();
            let empty = DateGroups::default();
            let (a, r) = (added.dates.get(&d).unwrap_or(&empty), retracted.dates.get(&d).unwrap_or(&empty));
            for (key, change, sign) in r.iter().map(|(k, g)| (k, g, -1)).chain(a.iter().map(|(k, g)| (k, g, 1))) {
                let group = groups
                    .entry(key.clone())
                    .or_insert_with(|| Group { rows: 0, running: kinds.iter().map(|&k| empty_running(k)).collect() });
                group.rows += sign * change.rows;
                for ((stored, change), &kind) in group.running.iter_mut().zip(&change.running).zip(kinds) {
                    absorb(stored, change, sign, kind == Kind::Max);
                }
            }
            groups.retain(|_, g| g.rows != 0);
            if groups.is_empty() {
                self.dates.remove(&d);
            }
        }
    }
}

/// Adds (`sign` 1) or retracts (-1) the values `change` holds to or from `stored`.
fn absorb(stored: &mut Running, change: &Running, sign: i64, max: bool) {
    match (stored, change) {
        (Running::Count(n), Running::Count(c)) => *n += sign * c,
        (Running::Sum { n, sum }, Running::Sum { n: cn, sum: csum }) => {
            *n += sign * cn;
            *sum = if sign > 0 { sum.wrapping_add(*csum) } else { sum.wrapping_sub(*csum) };
        }
        (
            Running::Extreme { n, value, ties, unknown },
            Running::Extreme { n: cn, value: cv, ties: ct, unknown: c_unknown },
        ) => {
            if *cn == 0 {
                return;
            }
            *n += sign * cn;
            let before = |a: &[u8], b: &[u8]| if max { a > b } else { a < b };
            match (sign > 0, cv.as_deref()) {
                (_, None) => *unknown = true,
                // Retracting: the retracted values' extreme `r` is at or past the stored one.
                (false, Some(r)) => {
                    if !*unknown {
                        match value.as_deref() {
                            Some(m) if r == m => {
                                *ties -= ct;
                                if *ties <= 0 {
                                    *unknown = true;
                                }
                            }
                            Some(m) if before(r, m) => *unknown = true,
                            Some(_) => {}
                            None => *unknown = true,
                        }
                    }
                }
                // Adding values whose extreme is `a` (or, unknown, lies past `a`).
                (true, Some(a)) => match value.as_deref() {
                    None => {
                        *value = Some(a.into());
                        *ties = *ct;
                        *unknown = *c_unknown;
                    }
                    // Every stored value lies past the bound m: added values at or before
                    // it hold the extreme (if they are unknown too, the nearer bound
                    // bounds both).
                    Some(m) if *unknown => {
                        if !before(m, a) {
                            *value = Some(a.into());
                            *ties = *ct;
                            *unknown = *c_unknown;
                        }
                    }
                    Some(m) => {
                        if *c_unknown {
                            // The added values lie past a: m stays the extreme if at or
                            // before a; otherwise nothing is known but the bound a.
                            if before(a, m) {
                                *value = Some(a.into());
                                *ties = 0;
                                *unknown = true;
                            }
                        } else if before(a, m) {
                            *value = Some(a.into());
                            *ties = *ct;
                        } else if a == m {
                            *ties += ct;
                        }
                    }
                },
            }
            if *n <= 0 {
                *value = None;
                *ties = 0;
                *unknown = *n < 0;
            }
        }
        _ => unreachable!("the running values of one aggregate match"),
    }
}

/// A running value with nothing folded in.
fn empty_running(kind: Kind) -> Running {
    match kind {
        Kind::Count => Running::Count(0),
        Kind::Sum | Kind::Avg => Running::Sum { n: 0, sum: i256::ZERO },
        Kind::Min | Kind::Max => Running::Extreme { n: 0, value: None, ties: 0, unknown: false },
    }
}

/// Adds row `row` of `input` to `running`.
fn apply(running: &mut Running, input: &Input, row: usize, max: bool) {
    match (running, input) {
        (Running::Count(n), Input::Count(values)) => {
            if values.is_valid(row) {
                *n += 1;
            }
        }
        (Running::Sum { n, sum }, Input::Sum(values)) => {
            if values.is_valid(row) {
                *n += 1;
                *sum = sum.wrapping_add(values.as_primitive::<Decimal256Type>().value(row));
            }
        }
        (Running::Extreme { n, value, ties, .. }, Input::Extreme(rows, values)) => {
            if !values.is_valid(row) {
                return;
            }
            let v = rows.row(row);
            let v = v.as_ref();
            *n += 1;
            match value.as_deref() {
                Some(m) if v == m => *ties += 1,
                Some(m) if (max && v < m) || (!max && v > m) => {}
                _ => {
                    *value = Some(v.into());
                    *ties = 1;
                }
            }
        }
        _ => unreachable!("an aggregate's running value matches its input"),
    }
}

/// The state arrays DataFusion's accumulator of `a` merges, from one group's running
/// value: COUNT's count; SUM's sum; AVG's count and sum; MIN's and MAX's value.
fn state_arrays(
    a: &super::plan::Aggregate,
    converter: Option<&RowConverter>,
    running: &Running,
) -> Result<Vec<ArrayRef>> {
    let fields = a.function.state_fields().map_err(engine)?;
    let typed = |array: ArrayRef, i: usize| -> Result<ArrayRef> {
        let ty = fields.get(i).map(|f| f.data_type().clone()).ok_or_else(|| Error::store("an aggregate's state"))?;
        cast(&array, &ty).stage(Stage::Store, "the live KPIs' state")
    };
    let sum_array = |n: i64, sum: i256| -> Result<ArrayRef> {
        let scale = scale_of(&a.arg_type);
        let array = arrow::array::Decimal256Array::from(vec![(n > 0).then_some(sum)])
            .with_precision_and_scale(76, scale)
            .stage(Stage::Store, "the live KPIs' sums")?;
        Ok(Arc::new(array))
    };
    Ok(match (a.kind, running) {
        (Kind::Count, Running::Count(n)) => vec![typed(Arc::new(arrow::array::Int64Array::from(vec![*n])), 0)?],
        (Kind::Sum, Running::Sum { n, sum }) => vec![typed(sum_array(*n, *sum)?, 0)?],
        (Kind::Avg, Running::Sum { n, sum }) => {
            if fields.len() != 2 {
                return Err(Error::store(format!("AVG's state has {} fields, not a count and a sum", fields.len())));
            }
            let count = u64::try_from(*n).unwrap_or(0);
            vec![typed(Arc::new(UInt64Array::from(vec![count])), 0)?, typed(sum_array(*n, *sum)?, 1)?]
        }
        (Kind::Min | Kind::Max, Running::Extreme { value, unknown, .. }) => {
            if *unknown {
                return Err(Error::store("an extreme is unknown; its date must be recomputed first"));
            }
            let converter = converter.expect("an extreme has a converter");
            let array = match value {
                Some(v) => {
                    let parser = converter.parser();
                    converter.convert_rows([parser.parse(v)]).map_err(engine)?.remove(0)
                }
                None => new_null_array(&a.arg_type, 1),
            };
            vec![typed(array, 0)?]
        }
        _ => return Err(Error::store("an aggregate's running value does not match its function")),
    })
}

/// Encodes one date's groups: a layout byte (1), the number of groups, then per group
/// (in key order) its key, its row count and each running value, a tag and its fields
/// (integers as zigzag varints, a sum as 32 little-endian bytes, an extreme's row as a
/// length and its bytes).
pub(crate) fn encode(groups: &DateGroups) -> Vec<u8> {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    fn int(out: &mut Vec<u8>, v: i64) {
        put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
    }
    let mut sorted: Vec<_> = groups.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    out.push(1);
    put_varint(&mut out, sorted.len() as u64);
    for (key, g) in sorted {
        bytes(&mut out, key);
        int(&mut out, g.rows);
        put_varint(&mut out, g.running.len() as u64);
        for r in &g.running {
            match r {
                Running::Count(n) => {
                    out.push(0);
                    int(&mut out, *n);
                }
                Running::Sum { n, sum } => {
                    out.push(1);
                    int(&mut out, *n);
                    out.extend_from_slice(&sum.to_le_bytes());
                }
                Running::Extreme { n, value, ties, unknown } => {
                    out.push(2 + u8::from(*unknown));
                    int(&mut out, *n);
                    int(&mut out, *ties);
                    match value {
                        Some(v) => {
                            out.push(1);
                            bytes(&mut out, v);
                        }
                        None => out.push(0),
                    }
                }
            }
        }
    }
    out
}

/// Decodes [`encode`]'s bytes; `None` when they are not its.
pub(crate) fn decode(mut rest: &[u8]) -> Option<DateGroups> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (b, after) = rest.split_at_checked(n)?;
        *rest = after;
        Some(b)
    }
    fn int(rest: &mut &[u8]) -> Option<i64> {
        let v = take_varint(rest)?;
        Some((v >> 1) as i64 ^ -((v & 1) as i64))
    }
    fn bytes<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
        let n = usize::try_from(take_varint(rest)?).ok()?;
        take(rest, n)
    }
    if take(&mut rest, 1)? != [1] {
        return None;
    }
    let count = take_varint(&mut rest)?;
    let mut groups = HashMap::new();
    for _ in 0..count {
        let key: Box<[u8]> = bytes(&mut rest)?.into();
        let rows = int(&mut rest)?;
        let len = take_varint(&mut rest)?;
        let mut running = Vec::new();
        for _ in 0..len {
            let tag = take(&mut rest, 1)?[0];
            running.push(match tag {
                0 => Running::Count(int(&mut rest)?),
                1 => {
                    let n = int(&mut rest)?;
                    let sum = i256::from_le_bytes(take(&mut rest, 32)?.try_into().ok()?);
                    Running::Sum { n, sum }
                }
                2 | 3 => {
                    let n = int(&mut rest)?;
                    let ties = int(&mut rest)?;
                    let value = match take(&mut rest, 1)?[0] {
                        0 => None,
                        1 => Some(bytes(&mut rest)?.into()),
                        _ => return None,
                    };
                    Running::Extreme { n, value, ties, unknown: tag == 3 }
                }
                _ => return None,
            });
        }
        groups.insert(key, Group { rows, running });
    }
    rest.is_empty().then_some(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reads_back_as_written() {
        let mut groups = DateGroups::new();
        groups.insert(
            b"k1".as_slice().into(),
            Group {
                rows: 3,
                running: vec![
                    Running::Count(2),
                    Running::Sum { n: 2, sum: i256::from_i128(-1234567890123456789012345678) },
                    Running::Extreme { n: 2, value: Some(b"\x01\x02".as_slice().into()), ties: 1, unknown: false },
                    Running::Extreme { n: 1, value: None, ties: 0, unknown: true },
                ],
            },
        );
        groups.insert(b"".as_slice().into(), Group { rows: 1, running: vec![Running::Count(-1)] });
        let bytes = encode(&groups);
        assert_eq!(decode(&bytes), Some(groups));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(&[2]), None);
    }

    /// The change a list of values makes, folded as a batch is: count, extreme, ties.
    fn change(values: &[u8], max: bool) -> Running {
        let best = if max { values.iter().max() } else { values.iter().min() };
        Running::Extreme {
            n: values.len() as i64,
            value: best.map(|b| vec![*b].into()),
            ties: best.map_or(0, |b| values.iter().filter(|v| *v == b).count() as i64),
            unknown: false,
        }
    }

    proptest::proptest! {
        /// Batches of adds and retractions over shards, each taken in by its shard's
        /// stored value, then the shards added up: a known extreme is the true one
        /// with its true ties; an unknown one is a bound no value passes.
        #[test]
        fn shards_and_batches_never_give_a_wrong_extreme(
            ops in proptest::collection::vec((0usize..3, 0u8..6, proptest::bool::ANY, 1usize..4), 1..60),
            max in proptest::bool::ANY,
        ) {
            let mut truth: Vec<Vec<u8>> = vec![Vec::new(); 3];
            let mut stored: Vec<Running> = (0..3).map(|_| empty_running(Kind::Min)).collect();
            let (mut added, mut retracted): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (vec![Vec::new(); 3], vec![Vec::new(); 3]);
            for (i, (shard, v, add, batch_end)) in ops.iter().enumerate() {
                if *add {
                    added[*shard].push(*v);
                    truth[*shard].push(*v);
                } else if let Some(at) = truth[*shard].iter().position(|x| x == v) {
                    // Only what the shard holds is retracted (and not what this batch added).
                    if retracted[*shard].iter().filter(|x| *x == v).count() < truth[*shard].iter().filter(|x| *x == v).count()
                        && !added[*shard].contains(v)
                    {
                        truth[*shard].remove(at);
                        retracted[*shard].push(*v);
                    }
                }
                if i % batch_end == 0 || i + 1 == ops.len() {
                    for s in 0..3 {
                        absorb(&mut stored[s], &change(&retracted[s], max), -1, max);
                        absorb(&mut stored[s], &change(&added[s], max), 1, max);
                        added[s].clear();
                        retracted[s].clear();
                    }
                    let mut total = empty_running(Kind::Min);
                    for s in &stored {
                        absorb(&mut total, s, 1, max);
                    }
                    let all: Vec<u8> = truth.concat();
                    let Running::Extreme { n, value, ties, unknown } = total else { unreachable!() };
                    proptest::prop_assert_eq!(n, all.len() as i64);
                    let best = if max { all.iter().max() } else { all.iter().min() };
                    match (unknown, value.as_deref(), best) {
                        (false, v, b) => {
                            proptest::prop_assert_eq!(v, b.map(std::slice::from_ref));
                            let count = b.map_or(0, |b| all.iter().filter(|x| *x == b).count() as i64);
                            proptest::prop_assert_eq!(ties, count);
                        }
                        (true, Some(bound), Some(b)) => {
                            let past = if max { *b <= bound[0] } else { *b >= bound[0] };
                            proptest::prop_assert!(past, "bound {bound:?}, extreme {b}");
                        }
                        (true, _, _) => {}
                    }
                }
            }
        }
    }

    /// An extreme after adding (1) or retracting (-1) each value in turn, one at a time.
    fn extreme(values: &[(i64, u8)], max: bool) -> Running {
        let mut running = empty_running(if max { Kind::Max } else { Kind::Min });
        for &(sign, v) in values {
            absorb(&mut running, &change(&[v], max), sign, max);
        }
        running
    }

    fn value_of(running: &Running) -> (Option<u8>, i64, bool) {
        let Running::Extreme { value, ties, unknown, .. } = running else { panic!("not an extreme") };
        (value.as_ref().map(|v| v[0]), *ties, *unknown)
    }

    #[test]
    fn an_extreme_counts_its_ties_and_becomes_unknown_when_the_last_goes() {
        assert_eq!(value_of(&extreme(&[(1, 5), (1, 3), (1, 3), (1, 9)], false)), (Some(3), 2, false));
        assert_eq!(value_of(&extreme(&[(1, 5), (1, 3), (1, 3), (-1, 3)], false)), (Some(3), 1, false));
        // The last 3 goes: 5 is the minimum, but only the table knows it.
        assert_eq!(value_of(&extreme(&[(1, 5), (1, 3), (-1, 3)], false)), (Some(3), 0, true));
        // A value at or below the bound is the minimum again; one above is not known to be.
        assert_eq!(value_of(&extreme(&[(1, 5), (1, 3), (-1, 3), (1, 2)], false)), (Some(2), 1, false));
        assert_eq!(value_of(&extreme(&[(1, 5), (1, 3), (-1, 3), (1, 4)], false)), (Some(3), 0, true));
        // Retracting what is not the extreme changes nothing; retracting every value empties it.
        assert_eq!(value_of(&extreme(&[(1, 5), (1, 3), (-1, 5)], false)), (Some(3), 1, false));
        assert_eq!(value_of(&extreme(&[(1, 5), (-1, 5)], true)), (None, 0, false));
        assert_eq!(value_of(&extreme(&[(1, 5), (1, 9), (-1, 9)], true)), (Some(9), 0, true));
        assert_eq!(value_of(&extreme(&[(1, 5), (1, 9), (-1, 5)], true)), (Some(9), 1, false));
    }
}
