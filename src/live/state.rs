//! The live state of a maintained query: per date, per group, the row count and each
//! aggregate's running value, folded from rows as they were (retracted) and as they are
//! (added).
//!
//! - COUNT keeps its count; SUM and AVG keep the count of non-null values and their
//!   exact sum, as an integer at the argument's scale (256 bits): the same sum whatever
//!   the order the rows came in, so the same bytes as the batch's.
//! - MIN and MAX keep the extreme, as a row of `arrow-row` (whose bytes order as the
//!   values do), and how many rows hold it. Retracting the last of them leaves the
//!   extreme *unknown*, with the old one as a bound: a later value past the bound is the
//!   extreme again; otherwise the date is recomputed from the table before it is
//!   published ([`QueryState::unknown_dates`]). A change that retracts a day's only
//!   cheapest fare is rare, and this keeps the state a few bytes per group where
//!   ordered counts of every value would keep thousands (docs/performance.md#live-kpis).

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

    /// Folds `batch`'s rows into `state`, added (`sign` 1) or retracted (-1); adds to
    /// `touched` the dates whose groups it changed. `evaluated` holds what other
    /// queries evaluated over the same batch.
    pub fn fold(
        &self,
        state: &mut QueryState,
        batch: &RecordBatch,
        sign: i64,
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
                    running: q.aggregates.iter().map(|a| empty(a.kind)).collect(),
                }),
            };
            group.rows += sign;
            for ((running, input), a) in group.running.iter_mut().zip(&inputs).zip(&q.aggregates) {
                apply(running, input, row, sign, a.kind == Kind::Max);
            }
        }
        // Groups left without rows are gone, as in the batch.
        for date in touched.iter() {
            if let Some(groups) = state.dates.get_mut(date) {
                groups.retain(|_, g| g.rows != 0);
                if groups.is_empty() {
                    state.dates.remove(date);
                }
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

/// A running value with nothing folded in.
fn empty(kind: Kind) -> Running {
    match kind {
        Kind::Count => Running::Count(0),
        Kind::Sum | Kind::Avg => Running::Sum { n: 0, sum: i256::ZERO },
        Kind::Min | Kind::Max => Running::Extreme { n: 0, value: None, ties: 0, unknown: false },
    }
}

/// Folds row `row` of `input` into `running`.
fn apply(running: &mut Running, input: &Input, row: usize, sign: i64, max: bool) {
    match (running, input) {
        (Running::Count(n), Input::Count(values)) => {
            if values.is_valid(row) {
                *n += sign;
            }
        }
        (Running::Sum { n, sum }, Input::Sum(values)) => {
            if values.is_valid(row) {
                let v = values.as_primitive::<Decimal256Type>().value(row);
                *n += sign;
                *sum = if sign > 0 { sum.wrapping_add(v) } else { sum.wrapping_sub(v) };
            }
        }
        (Running::Extreme { n, value, ties, unknown }, Input::Extreme(rows, values)) => {
            if !values.is_valid(row) {
                return;
            }
            let v = rows.row(row);
            let v = v.as_ref();
            *n += sign;
            // `before(a, b)`: a is nearer the extreme than b.
            let before = |a: &[u8], b: &[u8]| if max { a > b } else { a < b };
            if *n <= 0 {
                // No value left (or, below zero, a fold out of step: recompute).
                *value = None;
                *ties = 0;
                *unknown = *n < 0;
                return;
            }
            match (sign > 0, value.as_deref()) {
                (true, None) => {
                    *value = Some(v.into());
                    *ties = 1;
                    *unknown = false;
                }
                (true, Some(m)) => {
                    if *unknown {
                        // Every value left lies past the bound m: one at or before it is
                        // the extreme again.
                        if !before(m, v) {
                            *value = Some(v.into());
                            *ties = 1;
                            *unknown = false;
                        }
                    } else if before(v, m) {
                        *value = Some(v.into());
                        *ties = 1;
                    } else if v == m {
                        *ties += 1;
                    }
                }
                (false, None) => *unknown = true,
                (false, Some(m)) => {
                    if *unknown {
                        return;
                    }
                    if v == m {
                        *ties -= 1;
                        if *ties == 0 {
                            *unknown = true;
                        }
                    } else if before(v, m) {
                        // Retracting a value past the extreme: the state is out of step.
                        *unknown = true;
                    }
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

/// Encodes one date's groups (the stored form: docs/architecture.md#live-state).
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

    fn extreme(values: &[(i64, u8)], max: bool) -> Running {
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let mut running = empty(if max { Kind::Max } else { Kind::Min });
        for &(sign, v) in values {
            let array: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![i64::from(v)]));
            let rows = converter.convert_columns(std::slice::from_ref(&array)).unwrap();
            apply(&mut running, &Input::Extreme(rows, array), 0, sign, max);
        }
        running
    }

    fn value_of(running: &Running) -> (Option<i64>, i64, bool) {
        let Running::Extreme { value, ties, unknown, .. } = running else { panic!("not an extreme") };
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let v = value.as_ref().map(|v| {
            let parser = converter.parser();
            let a = converter.convert_rows([parser.parse(v)]).unwrap().remove(0);
            a.as_primitive::<arrow::datatypes::Int64Type>().value(0)
        });
        (v, *ties, *unknown)
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
