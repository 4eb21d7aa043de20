//! `tripflow setup`: what the URLs name, created when missing.

use crate::Result;
use crate::backend::location::ObjectPlace;
use crate::cli::settings::Setup;
use crate::config::{AwsEnv, DeadLetterUrl, StoreUrl, StreamUrl};

/// `tripflow setup`.
pub(in crate::cli) async fn setup(s: &Setup, aws: &AwsEnv) -> Result<()> {
    let a = &s.args;
    let said = |created: bool| if created { "created" } else { "exists " };
    match &s.stream {
        StreamUrl::Embedded(home) => {
            let s = home.stream(a.shards)?;
            println!("ready    embedded stream {} ({} shards)", s.path().display(), s.shard_count());
        }
        StreamUrl::Kinesis(name) => {
            let aws = aws.get().await?;
            let shards = a.shards.unwrap_or(crate::stream::embedded::DEFAULT_SHARDS);
            let created = crate::stream::kinesis::KinesisStream::new(aws, name).create_if_missing(shards).await?;
            println!(
                "{}  Kinesis stream {name}{}",
                said(created),
                if created { format!(" ({shards} shards)") } else { String::new() }
            );
            let table = &a.stream.checkpoint_table;
            let created = crate::stream::checkpoints_dynamodb::DynamoCheckpoints::create_if_missing(aws, table).await?;
            println!("{}  DynamoDB table {table} (checkpoints)", said(created));
        }
    }
    match &s.store {
        StoreUrl::Embedded(home) => {
            home.store()?;
            println!("ready    embedded trip table {}", home.store_path().display());
        }
        StoreUrl::DynamoDb(table) => {
            let store =
                crate::store::dynamodb::DynamoStore::new(aws.get().await?, table).with_date_shards(a.date_index_shards);
            let created = store.create_if_missing().await?;
            println!("{}  DynamoDB table {table} with index {}", said(created), store.date_index().await?.name());
        }
    }
    let dead_letter = match &s.dead_letter {
        DeadLetterUrl::Object(place) => Some(place),
        DeadLetterUrl::Embedded(_) => None,
    };
    for place in [s.out.as_ref(), dead_letter].into_iter().flatten() {
        if let ObjectPlace::S3 { bucket, .. } = place {
            let created = aws.get().await?.create_bucket_if_missing(bucket).await?;
            println!("{}  S3 bucket {bucket}", said(created));
        }
    }
    Ok(())
}
