//! `tripflow sql`: ad-hoc SQL over the KPI outputs and snapshots.

use crate::Result;
use crate::backend::location::{Location, ObjectPlace};
use crate::cli::args::SqlArgs;
use crate::config::AwsEnv;

/// `tripflow sql`: one query, or the prompt.
pub(in crate::cli) async fn sql(a: &SqlArgs, aws: &AwsEnv) -> Result<()> {
    let query = a.query()?;
    let place: ObjectPlace = Location::parse_as("--snapshots", Some(&a.snapshots))?;
    let aws = if matches!(place, ObjectPlace::S3 { .. }) { Some(aws.get().await?) } else { None };
    let session = crate::kpi::sql::SqlSession::open(&a.snapshots, aws).await?;
    match query {
        Some(q) => print!("{}", crate::kpi::sql::render(&session.query(&q).await?, a.format)?),
        None => crate::kpi::sql::repl(&session, a.format).await?,
    }
    Ok(())
}
