//! `tripflow setup`: what the URLs name, created when missing.

use crate::Result;
use crate::backend::location::{Kind, Location};
use crate::cli::args::SetupArgs;
use crate::config::{AwsEnv, Home, StoreUrl, StreamUrl};

pub(in crate::cli) async fn setup(a: &SetupArgs, aws: &AwsEnv) -> Result<()> {
    let said = |created: bool| if created { "created" } else { "exists " };
    match StreamUrl::parse(a.stream.stream.as_deref())? {
        StreamUrl::Embedded => {
            let s = Home::new(&a.home.home)?.stream(a.shards)?;
            println!("ready    embedded stream {} ({} shards)", s.path().display(), s.shard_count());
        }
        StreamUrl::Kinesis(name) => {
            let aws = aws.get().await?;
            let shards = a.shards.unwrap_or(crate::stream::embedded::DEFAULT_SHARDS);
            let created = crate::stream::kinesis::KinesisStream::new(aws, &name).create_if_missing(shards).await?;
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
    match StoreUrl::parse(a.store.store.as_deref())? {
        StoreUrl::Embedded => {
            let home = Home::new(&a.home.home)?;
            home.store()?;
            println!("ready    embedded trip table {}", home.store_path().display());
        }
        StoreUrl::DynamoDb(table) => {
            let store = crate::store::dynamodb::DynamoStore::new(aws.get().await?, &table)
                .with_date_shards(a.date_index_shards);
            let created = store.create_if_missing().await?;
            println!("{}  DynamoDB table {table} with index {}", said(created), store.date_index().await?.name());
        }
    }
    for (flag, url) in [("--out", &a.out), ("--dead-letter", &a.dead_letter.dead_letter)] {
        if let Location::S3 { bucket, .. } =
            Location::parse(flag, url.as_deref(), &[Kind::Embedded, Kind::Local, Kind::S3])?
        {
            let created = aws.get().await?.create_bucket_if_missing(&bucket).await?;
            println!("{}  S3 bucket {bucket}", said(created));
        }
    }
    Ok(())
}
