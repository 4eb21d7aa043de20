//! Consumer checkpoints of a Kinesis stream, in a DynamoDB table (default
//! `tripflow_checkpoints`): one item per consumer name and shard.
//!
//! A checkpoint moves only forward: the write is conditional on the stored sequence
//! number being smaller. Kinesis sequence numbers are decimal strings of up to 128
//! digits, so the condition compares a zero-padded copy (`seq_order`), whose text order
//! is number order; `seq` keeps the number as Kinesis wrote it. A shard read to its end
//! stores [`Checkpoint::SHARD_END`] in both, which sorts after every padded number.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::{Checkpoint, CheckpointStore, SequenceNumber, ShardId};
use crate::backend::aws::{Aws, describe};
use crate::{Error, Result};

/// Default name of the checkpoint table.
pub const DEFAULT_TABLE: &str = "tripflow_checkpoints";

/// Width of the zero-padded sequence number the condition compares.
const ORDER_WIDTH: usize = 128;

/// Checkpoints in a DynamoDB table keyed by `consumer` (hash) and `shard` (range).
pub struct DynamoCheckpoints {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// What `to` is stored as: the text kept in `seq`, and the text the condition compares.
fn stored(to: &Checkpoint) -> Result<(String, String)> {
    match to {
        Checkpoint::At(seq) => Ok((seq.0.trim_start_matches('0').to_owned(), order_key(seq)?)),
        Checkpoint::ShardEnd => Ok((Checkpoint::SHARD_END.to_owned(), Checkpoint::SHARD_END.to_owned())),
    }
}

fn order_key(seq: &SequenceNumber) -> Result<String> {
    let digits = seq.0.trim_start_matches('0');
    if !seq.0.bytes().all(|b| b.is_ascii_digit()) || digits.len() > ORDER_WIDTH {
        return Err(Error::stream(format!("{seq:?} is not a Kinesis sequence number")));
    }
    Ok(format!("{digits:0>ORDER_WIDTH$}"))
}

impl DynamoCheckpoints {
    /// The table `table`, reached with `aws`'s configuration.
    pub fn new(aws: &Aws, table: &str) -> Self {
        DynamoCheckpoints { client: aws.dynamodb(), table: table.to_owned() }
    }

    /// Creates the table unless it exists. Returns whether it was created.
    ///
    /// # Errors
    /// When DynamoDB refuses.
    pub async fn create_if_missing(aws: &Aws, table: &str) -> Result<bool> {
        crate::backend::aws::create_key_table(aws, table, "consumer", Some("shard")).await
    }

    fn key(consumer: &str, shard: &ShardId) -> [(String, AttributeValue); 2] {
        [
            ("consumer".to_owned(), AttributeValue::S(consumer.to_owned())),
            ("shard".to_owned(), AttributeValue::S(shard.clone())),
        ]
    }

    fn missing_table(&self) -> Error {
        Error::config(format!(
            "DynamoDB table {} (checkpoints) does not exist; create it with 'tripflow setup --stream kinesis://…' \
             (or choose another with --checkpoint-table)",
            self.table
        ))
    }
}

#[async_trait]
impl CheckpointStore for DynamoCheckpoints {
    async fn get(&self, consumer: &str, shard: &ShardId) -> Result<Option<Checkpoint>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(consumer, shard).into_iter().collect()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                if e.code() == Some("ResourceNotFoundException") {
                    self.missing_table()
                } else {
                    Error::stream(format!("reading the checkpoint of {consumer} in {shard}: {}", describe(&e)))
                }
            })?;
        Ok(out.item().and_then(|i| i.get("seq")).and_then(|v| v.as_s().ok()).map(|s| Checkpoint::from_stored(s)))
    }

    async fn set(&self, consumer: &str, shard: &ShardId, to: &Checkpoint) -> Result<()> {
        let (seq, order) = stored(to)?;
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(consumer, shard).into_iter().collect()))
            .update_expression("SET seq = :seq, seq_order = :order, updated_at = :now")
            .condition_expression("attribute_not_exists(seq_order) OR seq_order < :order")
            .expression_attribute_values(":seq", AttributeValue::S(seq))
            .expression_attribute_values(":order", AttributeValue::S(order))
            .expression_attribute_values(":now", AttributeValue::S(chrono::Utc::now().to_rfc3339()))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            // Already at or past `seq`: a checkpoint never moves back.
            Err(e) if matches!(e.as_service_error(), Some(UpdateItemError::ConditionalCheckFailedException(_))) => {
                Ok(())
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => Err(self.missing_table()),
            Err(e) => Err(Error::stream(format!("writing the checkpoint of {consumer} in {shard}: {}", describe(&e)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_sort_as_numbers() {
        let k = |s: &str| order_key(&SequenceNumber(s.into())).unwrap();
        assert!(k("9") < k("10"));
        assert!(
            k("49590338271490256608559692538361571095921575989136588802")
                > k("4959033827149025660855969253836157109592157598913658880")
        );
        assert_eq!(k("0007"), k("7"));
        assert!(order_key(&SequenceNumber("12a".into())).is_err());
        let end = stored(&Checkpoint::ShardEnd).unwrap().1;
        assert!(end > k(&"9".repeat(ORDER_WIDTH)), "the end of a shard is past every sequence number");
    }
}
