//! The DynamoDB trip table: `dynamodb://<table>`.
//!
//! Each trip of a batch is one conditional UpdateItem, sent with bounded concurrency.
//! The condition is DESIGN §3's: a group is written only when it is absent or older.
//! The same write also sets `trip_completed`, `trip_date` and `last_updated`, which
//! depend on the other group; the write states what it assumes of that group in its
//! condition (absent for a lone start, present and not newer for a lone end: the order
//! in which trips happen). When the assumption is wrong, or a group is stale, the
//! condition fails and `ReturnValuesOnConditionCheckFailure=ALL_OLD` returns the stored
//! item, which tells a stale event from a wrong assumption without an extra read; the
//! write is then sent again with what is now known. So a trip costs one write when its
//! events share a batch, and at most two when they arrive in order in separate batches.
//!
//! Throttling, 5xx responses and dropped connections are retried by the SDK with
//! backoff and jitter. The export scans the table in parallel segments, or queries the
//! sparse index `trip_date-index` when only some dates are wanted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use tracing::debug;

use super::{
    CompactString, EXPORT_BATCH_ROWS, EndGroup, ExportBuilder, MergeOutcome, Projection as Columns, StartGroup,
    TripItem, TripStore, TripUpdate, is_newer,
};
use crate::aws::{Aws, describe};
use crate::error::{Context, Stage};
use crate::event::{END_FIELDS, FieldSpec, FieldType, START_FIELDS, TRIP_SCHEMA};
use crate::{Error, Result};

/// The sparse index on `trip_date` (only completed-or-ended trips carry the attribute).
pub const DATE_INDEX: &str = "trip_date-index";
/// Default number of UpdateItem calls in flight.
pub const DEFAULT_WRITE_CONCURRENCY: usize = 16;
/// Default number of parallel Scan segments of an export.
pub const DEFAULT_SCAN_SEGMENTS: u32 = 4;
/// Conditional writes of one trip before a merge gives up (each retry follows a
/// concurrent change of the same item).
const MAX_CONDITION_RETRIES: u32 = 8;

/// The DynamoDB trip table.
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    write_concurrency: usize,
    scan_segments: u32,
    writes: Arc<AtomicU64>,
}

/// What a write assumes of the group it does not write.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Other {
    /// The group is not stored.
    Absent,
    /// The group is stored with a version not newer than the written one.
    NotNewer,
    /// The group is stored with exactly this version.
    Is(CompactString),
}

/// One conditional write: which groups it writes, and its assumption about the other.
#[derive(Debug, Clone)]
struct Plan {
    start: bool,
    end: bool,
    other: Other,
}

impl Plan {
    /// The first try: the common case, in which trips start before they end.
    fn first(u: &TripUpdate) -> Plan {
        match (&u.start, &u.end) {
            (Some(_), None) => Plan { start: true, end: false, other: Other::Absent },
            (None, Some(_)) => Plan { start: false, end: true, other: Other::NotNewer },
            _ => Plan { start: true, end: true, other: Other::Absent },
        }
    }

    /// The next try after the condition failed against the `stored` versions; `None`
    /// when nothing of the update is newer than what is stored.
    fn after_failure(u: &TripUpdate, stored: &StoredVersions) -> Option<Plan> {
        let start = is_newer(u.start.as_ref().map(|s| s.pickup_datetime.as_str()), stored.pickup.as_deref());
        let end = is_newer(u.end.as_ref().map(|e| e.dropoff_datetime.as_str()), stored.dropoff.as_deref());
        let other_stored = if start { &stored.dropoff } else { &stored.pickup };
        let other = other_stored.clone().map_or(Other::Absent, Other::Is);
        (start || end).then_some(Plan { start, end, other })
    }
}

/// The versions of a stored item, from a failed condition's ALL_OLD.
#[derive(Debug, Default)]
struct StoredVersions {
    pickup: Option<CompactString>,
    dropoff: Option<CompactString>,
}

fn is_number(spec: &FieldSpec) -> bool {
    matches!(spec.ty, FieldType::Integer | FieldType::Decimal)
}

/// The UpdateItem expression of a plan.
struct Expression {
    update: String,
    condition: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

fn expression(u: &TripUpdate, plan: &Plan) -> Expression {
    let mut set = Vec::new();
    let mut remove = Vec::new();
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let mut put = |spec: &FieldSpec, value: Option<CompactString>, set: &mut Vec<String>, remove: &mut Vec<String>| {
        names.insert(format!("#{}", spec.name), spec.name.to_owned());
        match value {
            Some(v) => {
                set.push(format!("#{0} = :{0}", spec.name));
                let v = if is_number(spec) { AttributeValue::N(v.into()) } else { AttributeValue::S(v.into()) };
                values.insert(format!(":{}", spec.name), v);
            }
            None => remove.push(format!("#{}", spec.name)),
        }
    };
    let start = u.start.as_ref().filter(|_| plan.start);
    let end = u.end.as_ref().filter(|_| plan.end);
    if let Some(s) = start {
        for (spec, v) in START_FIELDS.iter().zip(s.values()) {
            put(spec, v, &mut set, &mut remove);
        }
    }
    if let Some(e) = end {
        for (spec, v) in END_FIELDS.iter().zip(e.values()) {
            put(spec, v, &mut set, &mut remove);
        }
    }

    // The groups' versions, and the condition on each.
    let p = start.map(|s| s.pickup_datetime.clone());
    let d = end.map(|e| e.dropoff_datetime.clone());
    let newer = |field: &str| format!("(attribute_not_exists(#{field}) OR #{field} < :{field})");
    let mut condition = Vec::new();
    if p.is_some() {
        condition.push(newer("pickup_datetime"));
    }
    if d.is_some() {
        condition.push(newer("dropoff_datetime"));
    }
    let (completed, last_updated) = match (&p, &d) {
        (Some(p), Some(d)) => (true, p.max(d).clone()),
        (Some(mine), None) | (None, Some(mine)) => {
            let (other_field, my_field) = if p.is_some() {
                ("dropoff_datetime", "pickup_datetime")
            } else {
                ("pickup_datetime", "dropoff_datetime")
            };
            names.insert(format!("#{other_field}"), other_field.to_owned());
            match &plan.other {
                Other::Absent => {
                    condition.push(format!("attribute_not_exists(#{other_field})"));
                    (false, mine.clone())
                }
                Other::NotNewer => {
                    condition.push(format!("#{other_field} <= :{my_field}"));
                    (true, mine.clone())
                }
                Other::Is(v) => {
                    condition.push(format!("#{other_field} = :stored_{other_field}"));
                    values.insert(format!(":stored_{other_field}"), AttributeValue::S(v.to_string()));
                    (true, mine.max(v).clone())
                }
            }
        }
        (None, None) => unreachable!("a plan writes at least one group"),
    };
    if let Some(d) = &d {
        set.push("#trip_date = :trip_date".into());
        names.insert("#trip_date".into(), "trip_date".into());
        values.insert(":trip_date".into(), AttributeValue::S(d[..10].to_owned()));
    }
    set.push("#trip_completed = :trip_completed".into());
    set.push("#last_updated = :last_updated".into());
    names.insert("#trip_completed".into(), "trip_completed".into());
    names.insert("#last_updated".into(), "last_updated".into());
    values.insert(":trip_completed".into(), AttributeValue::Bool(completed));
    values.insert(":last_updated".into(), AttributeValue::S(last_updated.into()));

    let mut update = format!("SET {}", set.join(", "));
    if !remove.is_empty() {
        update.push_str(&format!(" REMOVE {}", remove.join(", ")));
    }
    Expression { update, condition: condition.join(" AND "), names, values }
}

fn text(item: &HashMap<String, AttributeValue>, name: &str) -> Option<CompactString> {
    match item.get(name)? {
        AttributeValue::S(s) | AttributeValue::N(s) => Some(s.into()),
        _ => None,
    }
}

fn stored_versions(item: Option<&HashMap<String, AttributeValue>>) -> StoredVersions {
    item.map(|i| StoredVersions { pickup: text(i, "pickup_datetime"), dropoff: text(i, "dropoff_datetime") })
        .unwrap_or_default()
}

/// A stored item as a [`TripItem`].
fn trip_item(item: &HashMap<String, AttributeValue>) -> Result<TripItem> {
    let trip_id = text(item, "trip_id").ok_or_else(|| Error::store("an item has no trip_id"))?;
    let int = |name: &str| -> Result<i64> {
        text(item, name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::store(format!("trip {trip_id}: {name} is missing or not an integer")))
    };
    let start = match text(item, "pickup_datetime") {
        None => None,
        Some(pickup_datetime) => Some(StartGroup {
            pickup_location_id: int("pickup_location_id")?,
            dropoff_location_id: int("dropoff_location_id")?,
            vendor_id: int("vendor_id")?,
            pickup_datetime,
            estimated_dropoff_datetime: text(item, "estimated_dropoff_datetime"),
            estimated_fare_amount: text(item, "estimated_fare_amount"),
        }),
    };
    let end = match text(item, "dropoff_datetime") {
        None => None,
        Some(dropoff_datetime) => Some(EndGroup {
            dropoff_datetime,
            rate_code: text(item, "rate_code"),
            passenger_count: text(item, "passenger_count"),
            trip_distance: text(item, "trip_distance"),
            fare_amount: text(item, "fare_amount")
                .ok_or_else(|| Error::store(format!("trip {trip_id}: fare_amount is missing")))?,
            tip_amount: text(item, "tip_amount"),
            payment_type: text(item, "payment_type"),
            trip_type: text(item, "trip_type"),
        }),
    };
    Ok(TripItem { trip_id, start, end })
}

/// Rows sorted by `trip_id`.
fn sorted(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let all = concat_batches(&TRIP_SCHEMA, batches).stage(Stage::Store, "export")?;
    let order = sort_to_indices(all.column(0), None, None).stage(Stage::Store, "export")?;
    take_record_batch(&all, &order).stage(Stage::Store, "export")
}

/// Cuts rows into batches of [`EXPORT_BATCH_ROWS`], the shape the embedded store
/// exports, so both backends give the same files.
fn chunked(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    let all = concat_batches(&TRIP_SCHEMA, batches).stage(Stage::Store, "export")?;
    if all.num_rows() == 0 {
        return Ok(vec![all]);
    }
    Ok((0..all.num_rows())
        .step_by(EXPORT_BATCH_ROWS)
        .map(|at| all.slice(at, EXPORT_BATCH_ROWS.min(all.num_rows() - at)))
        .collect())
}

fn not_found(table: &str) -> Error {
    Error::Config(format!(
        "DynamoDB table {table} does not exist; create it with 'tripflow setup --store dynamodb://{table}'"
    ))
}

impl DynamoStore {
    /// The table `table`, reached with `aws`'s configuration.
    pub fn new(aws: &Aws, table: &str) -> Self {
        DynamoStore {
            client: aws.dynamodb(),
            table: table.to_owned(),
            write_concurrency: DEFAULT_WRITE_CONCURRENCY,
            scan_segments: DEFAULT_SCAN_SEGMENTS,
            writes: Arc::default(),
        }
    }

    /// Sets how many writes are in flight at once.
    pub fn with_write_concurrency(mut self, n: usize) -> Self {
        self.write_concurrency = n.max(1);
        self
    }

    /// Sets the number of parallel Scan segments of an export.
    pub fn with_scan_segments(mut self, n: u32) -> Self {
        self.scan_segments = n.max(1);
        self
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table (key `trip_id`, on-demand) with its sparse index on
    /// `trip_date` unless they exist, and waits until both are active. Returns whether
    /// anything was created.
    ///
    /// # Errors
    /// When DynamoDB refuses, or the table does not become active within two minutes.
    pub async fn create_if_missing(&self) -> Result<bool> {
        let attr = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build()
        };
        let key = |name: &str, ty: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(ty).build();
        let build = |e: aws_smithy_types::error::operation::BuildError| Error::store(e.to_string());
        let index_keys =
            vec![key("trip_date", KeyType::Hash).map_err(build)?, key("trip_id", KeyType::Range).map_err(build)?];
        let projection = Projection::builder().projection_type(ProjectionType::All).build();
        let created_table = match self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("trip_id").map_err(build)?)
            .attribute_definitions(attr("trip_date").map_err(build)?)
            .key_schema(key("trip_id", KeyType::Hash).map_err(build)?)
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(DATE_INDEX)
                    .set_key_schema(Some(index_keys.clone()))
                    .projection(projection.clone())
                    .build()
                    .map_err(build)?,
            )
            .send()
            .await
        {
            Ok(_) => true,
            Err(e) if e.code() == Some("ResourceInUseException") => false,
            Err(e) => {
                return Err(Error::store(format!("cannot create DynamoDB table {}: {}", self.table, describe(&e))));
            }
        };
        if wait_until(&self.client, &self.table, &Statuses::table_active, TABLE_WAIT).await?.index.is_some() {
            wait_until(&self.client, &self.table, &Statuses::index_active, INDEX_WAIT).await?;
            return Ok(created_table);
        }
        // A table made before the index existed: add it.
        self.client
            .update_table()
            .table_name(&self.table)
            .attribute_definitions(attr("trip_date").map_err(build)?)
            .attribute_definitions(attr("trip_id").map_err(build)?)
            .global_secondary_index_updates(
                GlobalSecondaryIndexUpdate::builder()
                    .create(
                        CreateGlobalSecondaryIndexAction::builder()
                            .index_name(DATE_INDEX)
                            .set_key_schema(Some(index_keys))
                            .projection(projection)
                            .build()
                            .map_err(build)?,
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::store(format!("cannot add {DATE_INDEX} to {}: {}", self.table, describe(&e))))?;
        wait_until(&self.client, &self.table, &Statuses::index_active, INDEX_WAIT).await?;
        Ok(true)
    }

    /// Checks that the table exists with its date index, with a message saying how to
    /// create them if not.
    ///
    /// # Errors
    /// When they do not exist or cannot be described.
    pub async fn check_exists(&self) -> Result<()> {
        match statuses(&self.client, &self.table).await?.index {
            Some(_) => Ok(()),
            None => Err(Error::Config(format!(
                "DynamoDB table {} has no index {DATE_INDEX}; add it with 'tripflow setup --store dynamodb://{}'",
                self.table, self.table
            ))),
        }
    }

    async fn merge_one(&self, u: &TripUpdate) -> Result<MergeOutcome> {
        let mut plan = Plan::first(u);
        for _ in 0..MAX_CONDITION_RETRIES {
            let e = expression(u, &plan);
            self.writes.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("trip_id", AttributeValue::S(u.trip_id.to_string()))
                .update_expression(e.update)
                .condition_expression(e.condition)
                .set_expression_attribute_names(Some(e.names))
                .set_expression_attribute_values(Some(e.values))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            match sent {
                Ok(_) => return Ok(MergeOutcome { start_applied: plan.start, end_applied: plan.end }),
                Err(err) => match err.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                        let stored = stored_versions(failed.item());
                        match Plan::after_failure(u, &stored) {
                            None => return Ok(MergeOutcome::default()),
                            Some(next) => {
                                debug!(trip_id = %u.trip_id, ?stored, ?next, "Condition failed; writing again with the stored versions.");
                                plan = next;
                            }
                        }
                    }
                    _ if err.code() == Some("ResourceNotFoundException") => return Err(not_found(&self.table)),
                    _ => {
                        return Err(Error::store(format!(
                            "UpdateItem of trip {} in {}: {}",
                            u.trip_id,
                            self.table,
                            describe(&err)
                        )));
                    }
                },
            }
        }
        Err(Error::store(format!(
            "trip {} in {} changed under {MAX_CONDITION_RETRIES} writes in a row; is another writer replaying the same events?",
            u.trip_id, self.table
        )))
    }

    /// Every item of one Scan segment, into Arrow batches.
    async fn scan_segment(&self, segment: u32) -> Result<Vec<RecordBatch>> {
        let mut builder = ExportBuilder::new(Columns::all());
        let mut batches = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .segment(segment as i32)
            .total_segments(self.scan_segments as i32)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::store(format!("Scan of {}: {}", self.table, describe(&e))))?;
            page.items().iter().try_for_each(|item| builder.push_item_into(&trip_item(item)?, &mut batches))?;
        }
        if !builder.is_empty() {
            batches.push(builder.finish()?);
        }
        Ok(batches)
    }

    /// The items of one `trip_date`, from the sparse index.
    async fn query_date(&self, date: NaiveDate) -> Result<Vec<RecordBatch>> {
        let mut builder = ExportBuilder::new(Columns::all());
        let mut batches = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(DATE_INDEX)
            .key_condition_expression("#d = :d")
            .expression_attribute_names("#d", "trip_date")
            .expression_attribute_values(":d", AttributeValue::S(date.format("%Y-%m-%d").to_string()))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| Error::store(format!("Query of {} on {DATE_INDEX}: {}", self.table, describe(&e))))?;
            page.items().iter().try_for_each(|item| builder.push_item_into(&trip_item(item)?, &mut batches))?;
        }
        if !builder.is_empty() {
            batches.push(builder.finish()?);
        }
        Ok(batches)
    }
}

/// What DescribeTable says of a table and of its date index (`None`: no such index).
struct Statuses {
    table: Option<TableStatus>,
    index: Option<IndexStatus>,
}

impl Statuses {
    fn table_active(&self) -> bool {
        self.table == Some(TableStatus::Active)
    }

    fn index_active(&self) -> bool {
        self.index == Some(IndexStatus::Active)
    }
}

async fn statuses(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<Statuses> {
    let out = client.describe_table().table_name(table).send().await.map_err(|e| {
        if e.code() == Some("ResourceNotFoundException") {
            not_found(table)
        } else {
            Error::store(format!("cannot describe DynamoDB table {table}: {}", describe(&e)))
        }
    })?;
    let t = out.table();
    Ok(Statuses {
        table: t.and_then(|t| t.table_status()).cloned(),
        index: t
            .and_then(|t| t.global_secondary_indexes().iter().find(|i| i.index_name() == Some(DATE_INDEX)))
            .map(|i| i.index_status().cloned().unwrap_or(IndexStatus::Active)),
    })
}

/// Waits for a new table two minutes, for a new index ten (an index on a big table takes
/// long to build).
const TABLE_WAIT: Duration = Duration::from_secs(120);
const INDEX_WAIT: Duration = Duration::from_secs(600);

/// Polls the table until `ready`, for up to `limit`. Returns the statuses that were ready.
async fn wait_until(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    ready: &dyn Fn(&Statuses) -> bool,
    limit: Duration,
) -> Result<Statuses> {
    let began = Instant::now();
    loop {
        let now = statuses(client, table).await?;
        if ready(&now) {
            return Ok(now);
        }
        if began.elapsed() > limit {
            return Err(Error::store(format!(
                "DynamoDB table {table} (or its index {DATE_INDEX}) is not active after {} s",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Creates a DynamoDB table keyed by `hash` (and `range`), on demand, unless it exists;
/// waits until it is active. Returns whether it was created.
///
/// # Errors
/// When DynamoDB refuses.
pub async fn create_key_table(aws: &Aws, table: &str, hash: &str, range: Option<&str>) -> Result<bool> {
    let client = aws.dynamodb();
    let build = |e: aws_smithy_types::error::operation::BuildError| Error::store(e.to_string());
    let mut req = client.create_table().table_name(table).billing_mode(BillingMode::PayPerRequest);
    for (name, ty) in std::iter::once((hash, KeyType::Hash)).chain(range.map(|r| (r, KeyType::Range))) {
        req = req
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build)?,
            )
            .key_schema(KeySchemaElement::builder().attribute_name(name).key_type(ty).build().map_err(build)?);
    }
    let created = match req.send().await {
        Ok(_) => true,
        Err(e) if e.code() == Some("ResourceInUseException") => false,
        Err(e) => return Err(Error::store(format!("cannot create DynamoDB table {table}: {}", describe(&e)))),
    };
    wait_until(&client, table, &Statuses::table_active, TABLE_WAIT).await?;
    Ok(created)
}

#[async_trait]
impl TripStore for DynamoStore {
    async fn merge(&self, updates: Vec<TripUpdate>) -> Result<Vec<MergeOutcome>> {
        // Indices, not references, keep the futures free of higher-ranked lifetimes.
        futures::stream::iter(0..updates.len())
            .map(|i| self.merge_one(&updates[i]))
            .buffered(self.write_concurrency)
            .try_collect()
            .await
    }

    async fn get(&self, trip_id: &str) -> Result<Option<TripItem>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("trip_id", AttributeValue::S(trip_id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                if e.code() == Some("ResourceNotFoundException") {
                    not_found(&self.table)
                } else {
                    Error::store(format!("GetItem {trip_id} from {}: {}", self.table, describe(&e)))
                }
            })?;
        out.item().map(trip_item).transpose()
    }

    async fn export(&self, dates: Option<Vec<NaiveDate>>, columns: &Columns) -> Result<Vec<RecordBatch>> {
        // Rows in the embedded store's order: by trip_id, or by date and then trip_id.
        let rows = match dates {
            None => {
                let segments: Vec<Vec<RecordBatch>> = futures::stream::iter(0..self.scan_segments)
                    .map(|s| self.scan_segment(s))
                    .buffer_unordered(self.scan_segments as usize)
                    .try_collect()
                    .await?;
                vec![sorted(&segments.concat())?]
            }
            Some(mut dates) => {
                dates.sort();
                dates.dedup();
                let per_date: Vec<Vec<RecordBatch>> = futures::stream::iter(dates)
                    .map(|d| self.query_date(d))
                    .buffered(self.scan_segments as usize)
                    .try_collect()
                    .await?;
                per_date.iter().map(|b| sorted(b)).collect::<Result<_>>()?
            }
        };
        // Whole items come back either way; the kept columns are cut out at the end.
        let out = chunked(&rows)?
            .iter()
            .map(|b| b.project(columns.columns()))
            .collect::<Result<Vec<_>, _>>()
            .stage(Stage::Store, "export")?;
        debug!(rows = out.iter().map(RecordBatch::num_rows).sum::<usize>(), "Exported the table.");
        Ok(out)
    }

    fn write_requests(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(p: &str) -> StartGroup {
        StartGroup {
            pickup_location_id: 1,
            dropoff_location_id: 2,
            vendor_id: 1,
            pickup_datetime: p.into(),
            estimated_dropoff_datetime: None,
            estimated_fare_amount: Some("12.5".into()),
        }
    }

    fn end(d: &str) -> EndGroup {
        EndGroup {
            dropoff_datetime: d.into(),
            rate_code: None,
            passenger_count: None,
            trip_distance: None,
            fare_amount: "10".into(),
            tip_amount: None,
            payment_type: None,
            trip_type: None,
        }
    }

    #[test]
    fn a_lone_start_assumes_no_end_and_a_lone_end_assumes_an_earlier_start() {
        let u = TripUpdate { trip_id: "t".into(), start: Some(start("2024-05-25 10:00:00")), end: None };
        let e = expression(&u, &Plan::first(&u));
        assert!(e.condition.contains("attribute_not_exists(#dropoff_datetime)"), "{}", e.condition);
        assert_eq!(e.values[":trip_completed"], AttributeValue::Bool(false));
        assert!(e.update.contains("REMOVE #estimated_dropoff_datetime"), "{}", e.update);

        let u = TripUpdate { trip_id: "t".into(), start: None, end: Some(end("2024-05-25 11:00:00")) };
        let e = expression(&u, &Plan::first(&u));
        assert!(e.condition.contains("#pickup_datetime <= :dropoff_datetime"), "{}", e.condition);
        assert_eq!(e.values[":trip_date"], AttributeValue::S("2024-05-25".into()));
        assert_eq!(e.values[":trip_completed"], AttributeValue::Bool(true));
        // Every name and value placeholder is used: DynamoDB refuses unused ones.
        for name in e.names.keys() {
            assert!(e.update.contains(name.as_str()) || e.condition.contains(name.as_str()), "{name} unused");
        }
        for value in e.values.keys() {
            assert!(e.update.contains(value.as_str()) || e.condition.contains(value.as_str()), "{value} unused");
        }
    }

    #[test]
    fn a_failed_condition_tells_stale_from_a_wrong_assumption() {
        let u = TripUpdate { trip_id: "t".into(), start: None, end: Some(end("2024-05-25 11:00:00")) };
        let stored = StoredVersions { pickup: None, dropoff: Some("2024-05-25 11:00:00".into()) };
        assert!(Plan::after_failure(&u, &stored).is_none(), "an equal version is a duplicate");

        let stored = StoredVersions { pickup: None, dropoff: None };
        let next = Plan::after_failure(&u, &stored).unwrap();
        assert_eq!(next.other, Other::Absent, "the end came first");
        let e = expression(&u, &next);
        assert_eq!(e.values[":trip_completed"], AttributeValue::Bool(false));

        let stored = StoredVersions { pickup: Some("2024-05-25 12:00:00".into()), dropoff: None };
        let next = Plan::after_failure(&u, &stored).unwrap();
        let e = expression(&u, &next);
        assert_eq!(e.values[":last_updated"], AttributeValue::S("2024-05-25 12:00:00".into()), "the newer version");

        let both = TripUpdate { start: Some(start("2024-05-25 10:00:00")), ..u };
        let stored = StoredVersions { pickup: Some("2024-05-25 10:00:00".into()), dropoff: None };
        let next = Plan::after_failure(&both, &stored).unwrap();
        assert!(!next.start && next.end, "only the newer group is written again");
        assert_eq!(next.other, Other::Is("2024-05-25 10:00:00".into()));
    }
}
