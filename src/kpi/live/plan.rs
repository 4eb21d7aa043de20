//! Which KPI queries are maintained live, read from their DataFusion logical plans.
//!
//! A query is maintained from the rows a merge changes when its analysed plan is, read
//! from the top (docs/design.md §7):
//! - one or more Sort and Projection nodes, at least one Sort, with no LIMIT;
//! - an Aggregate grouped by the column `trip_date` and any further expressions of the
//!   row, computing `count`, `sum`, `min`, `max` and `avg` (no DISTINCT, FILTER or
//!   ORDER BY inside them), `sum` and `avg` over integers or decimals;
//! - an optional Filter;
//! - the scan of `trips` (under an alias or not);
//!
//! with nothing volatile (`random()`, `now()`) and no subquery anywhere. Any other query
//! is recomputed for its changed dates ([`Keeping::Recomputed`] says why).

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::DFSchemaRef;
use datafusion::common::tree_node::TreeNode;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};

use crate::kpi::engine::query_error;
use crate::kpi::queries::KpiQuery;
use crate::{Error, Result};

/// How a query's live figures are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keeping {
    /// From each merge's rows, before and after.
    Maintained,
    /// By running the query again over its changed dates, at `--live-recompute-every`.
    Recomputed {
        /// What in its plan keeps it from being maintained.
        why: String,
    },
}

impl std::fmt::Display for Keeping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keeping::Maintained => f.write_str("maintained from each merge's rows, before and after"),
            Keeping::Recomputed { why } => write!(f, "recomputed for its changed dates: {why}"),
        }
    }
}

/// An aggregate function a maintained query may compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// One aggregate of a maintained query.
#[derive(Debug)]
pub(crate) struct Aggregate {
    pub kind: Kind,
    /// Its argument, over the rows.
    pub arg: Arc<dyn PhysicalExpr>,
    /// The argument's type.
    pub arg_type: DataType,
    /// DataFusion's own aggregate, whose accumulator turns the kept values into the
    /// result, so a live figure is computed as the batch computes it.
    pub function: Arc<AggregateFunctionExpr>,
}

/// A maintained query, compiled against the rows the live fold sees.
#[derive(Debug)]
pub(crate) struct Maintained {
    /// The analysed plan.
    pub plan: LogicalPlan,
    /// The WHERE clause.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// The grouping expressions, `trip_date` at [`Maintained::date`].
    pub groups: Vec<Arc<dyn PhysicalExpr>>,
    pub group_types: Vec<DataType>,
    pub date: usize,
    pub aggregates: Vec<Aggregate>,
    /// The Aggregate node's output schema, which the live figures take the place of.
    pub output: DFSchemaRef,
    /// Names the plan and the state's layout: a stored state made for another one is
    /// rebuilt from the table.
    pub fingerprint: String,
}

impl Maintained {
    /// The kind of each aggregate, in order.
    pub fn kinds(&self) -> Vec<Kind> {
        self.aggregates.iter().map(|a| a.kind).collect()
    }
}

/// The pieces of a plan of the maintained shape.
struct Shape<'a> {
    aggregate: &'a datafusion::logical_expr::Aggregate,
    filter: Option<&'a Expr>,
}

/// Why `expr` cannot be maintained, if it cannot.
fn expression_problem(expr: &Expr) -> Option<String> {
    if expr.is_volatile() {
        return Some(format!("{expr} is volatile"));
    }
    let mut problem = None;
    let _ = expr.apply(|e| {
        if matches!(
            e,
            Expr::ScalarSubquery(_)
                | Expr::InSubquery(_)
                | Expr::Exists(_)
                | Expr::OuterReferenceColumn(..)
                | Expr::Placeholder(_)
                | Expr::WindowFunction(_)
                | Expr::GroupingSet(_)
        ) {
            problem = Some(format!("{e} is a subquery, window, grouping set or placeholder"));
            return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    problem
}

/// The maintained shape of `plan`, or why it is not of it.
fn shape(plan: &LogicalPlan) -> std::result::Result<Shape<'_>, String> {
    let mut node = plan;
    let mut sorted = false;
    loop {
        for e in node.expressions() {
            if let Some(p) = expression_problem(&e) {
                return Err(p);
            }
        }
        match node {
            LogicalPlan::Sort(s) => {
                if s.fetch.is_some() {
                    return Err("it has a LIMIT, which the batch applies over every date at once".into());
                }
                sorted = true;
                node = &s.input;
            }
            LogicalPlan::Projection(p) => node = &p.input,
            LogicalPlan::Aggregate(_) => break,
            LogicalPlan::Limit(_) => {
                return Err("it has a LIMIT, which the batch applies over every date at once".into());
            }
            other => {
                return Err(format!(
                    "above its GROUP BY it has a {} node; only ORDER BY and a SELECT list may be there",
                    other.display()
                ));
            }
        }
    }
    if !sorted {
        return Err("it has no ORDER BY, so the order of its rows is not defined".into());
    }
    let LogicalPlan::Aggregate(aggregate) = node else { unreachable!("the loop stops at an Aggregate") };
    let mut below = aggregate.input.as_ref();
    let mut filter = None;
    if let LogicalPlan::Filter(f) = below {
        if let Some(p) = expression_problem(&f.predicate) {
            return Err(p);
        }
        filter = Some(&f.predicate);
        below = &f.input;
    }
    if let LogicalPlan::SubqueryAlias(a) = below {
        below = &a.input;
    }
    match below {
        LogicalPlan::TableScan(scan) if scan.table_name.table() == "trips" && scan.fetch.is_none() => {}
        other => return Err(format!("its GROUP BY reads {}, not the rows of trips", other.display())),
    }
    for g in &aggregate.group_expr {
        if let Some(p) = expression_problem(g) {
            return Err(p);
        }
    }
    if !aggregate.group_expr.iter().any(is_trip_date) {
        return Err("it is not grouped by trip_date".into());
    }
    Ok(Shape { aggregate, filter })
}

fn is_trip_date(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == "trip_date")
}

/// An aggregate expression's function, or why it cannot be maintained.
fn kind_of(
    f: &datafusion::logical_expr::expr::AggregateFunction,
    input: &DFSchemaRef,
) -> std::result::Result<Kind, String> {
    let name = f.func.name();
    let p = &f.params;
    let kind = match name {
        "count" => Kind::Count,
        "sum" => Kind::Sum,
        "avg" => Kind::Avg,
        "min" => Kind::Min,
        "max" => Kind::Max,
        other => return Err(format!("it computes {other}; count, sum, min, max and avg are maintained")),
    };
    if p.distinct || p.filter.is_some() || !p.order_by.is_empty() || p.null_treatment.is_some() {
        return Err(format!("its {name} has DISTINCT, FILTER, ORDER BY or a null treatment"));
    }
    let [arg] = p.args.as_slice() else { return Err(format!("its {name} takes {} arguments", p.args.len())) };
    if let Some(problem) = expression_problem(arg) {
        return Err(problem);
    }
    if matches!(kind, Kind::Sum | Kind::Avg) {
        let ty = arg.to_field(input).map(|(_, f)| f.data_type().clone()).map_err(|e| e.to_string())?;
        if !exact_sum(&ty) {
            return Err(format!(
                "its {name} adds {ty} values, whose sum depends on the order they are added in; cast them to a \
                 DECIMAL to have it maintained"
            ));
        }
    }
    Ok(kind)
}

/// True for the types whose sums the live state keeps exactly: integers and decimals.
pub(crate) fn exact_sum(ty: &DataType) -> bool {
    ty.is_integer() || matches!(ty, DataType::Decimal128(..) | DataType::Decimal256(..))
}

/// The physical form of `expr` over `schema`, simplified first as the optimiser would
/// (`coalesce` has no physical form of its own: it becomes a CASE).
fn physical(
    state: &SessionState,
    expr: &Expr,
    schema: &DFSchemaRef,
) -> datafusion::error::Result<Arc<dyn PhysicalExpr>> {
    use datafusion::logical_expr::simplify::SimplifyContext;
    use datafusion::optimizer::simplify_expressions::ExprSimplifier;
    let context = SimplifyContext::builder()
        .with_schema(schema.clone())
        .with_config_options(state.config_options().clone())
        .build();
    let simplified = ExprSimplifier::new(context).simplify(expr.clone())?;
    state.create_physical_expr(simplified, schema)
}

/// Classifies the analysed `plan` of `query`, compiling it when it is maintained.
pub(crate) fn compile(state: &SessionState, query: &KpiQuery, plan: LogicalPlan) -> Result<Option<Maintained>> {
    let shape = match shape(&plan) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let failed = |e: datafusion::error::DataFusionError| query_error(query, e);
    let aggregate = shape.aggregate;
    let input = aggregate.input.schema().clone();
    let physical_input: Arc<Schema> = Arc::new(input.as_arrow().clone());
    let filter = shape.filter.map(|f| physical(state, f, &input)).transpose().map_err(failed)?;
    let mut groups = Vec::new();
    let mut group_types = Vec::new();
    for g in &aggregate.group_expr {
        let e = physical(state, g, &input).map_err(failed)?;
        group_types.push(e.data_type(&physical_input).map_err(failed)?);
        groups.push(e);
    }
    let date = aggregate.group_expr.iter().position(is_trip_date).expect("shape checked");
    let mut aggregates = Vec::new();
    for (i, a) in aggregate.aggr_expr.iter().enumerate() {
        let inner = match a {
            Expr::Alias(alias) => alias.expr.as_ref(),
            e => e,
        };
        let Expr::AggregateFunction(f) = inner else { return Ok(None) };
        let Ok(kind) = kind_of(f, &input) else { return Ok(None) };
        let arg = physical(state, &f.params.args[0], &input).map_err(failed)?;
        let arg_type = arg.data_type(&physical_input).map_err(failed)?;
        let function = AggregateExprBuilder::new(f.func.clone(), vec![arg.clone()])
            .schema(physical_input.clone())
            .alias(format!("live_{i}"))
            .build()
            .map_err(failed)?;
        aggregates.push(Aggregate { kind, arg, arg_type, function: Arc::new(function) });
    }
    let fingerprint = fingerprint(&plan);
    Ok(Some(Maintained {
        output: aggregate.schema.clone(),
        plan,
        filter,
        groups,
        group_types,
        date,
        aggregates,
        fingerprint,
    }))
}

/// Why `plan` is not maintained, if it is not (for [`Keeping`]).
pub(crate) fn reason(plan: &LogicalPlan) -> Option<String> {
    let shape = match shape(plan) {
        Ok(s) => s,
        Err(why) => return Some(why),
    };
    let input = shape.aggregate.input.schema();
    for a in &shape.aggregate.aggr_expr {
        let inner = match a {
            Expr::Alias(alias) => alias.expr.as_ref(),
            e => e,
        };
        match inner {
            Expr::AggregateFunction(f) => {
                if let Err(why) = kind_of(f, input) {
                    return Some(why);
                }
            }
            other => return Some(format!("{other} is not an aggregate function")),
        }
    }
    None
}

/// The state layout's version, part of every fingerprint.
const LAYOUT: &str = "tripflow live state 1";

/// A hex digest of the plan (with its schemas) and the state layout.
fn fingerprint(plan: &LogicalPlan) -> String {
    use md5::{Digest, Md5};
    let text = format!("{LAYOUT}\n{}", plan.display_indent_schema());
    Md5::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A query the live KPIs cannot compile says so with its file.
pub(crate) fn not_maintained(query: &KpiQuery, why: &str) -> Error {
    Error::Query { file: query.path.display().to_string(), message: why.to_owned(), source: None }
}
