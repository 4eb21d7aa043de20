//! `tripflow sql`: ad-hoc SQL over the KPI outputs and snapshots.

use crate::Result;
use crate::backend::location::ObjectPlace;
use crate::cli::settings::Sql;
use crate::config::AwsEnv;

/// `tripflow sql`: one query, or the prompt.
pub(in crate::cli) async fn sql(s: &Sql, aws: &AwsEnv) -> Result<()> {
    let a = &s.args;
    let aws_env = aws;
    let query = a.query()?;
    let aws = if matches!(s.snapshots, ObjectPlace::S3 { .. }) { Some(aws.get().await?) } else { None };
    let fields = crate::config::read_fields(a.declared.fields.as_deref(), aws_env).await?;
    let session = crate::kpi::sql::SqlSession::open_at(&s.snapshots, aws, &fields).await?;
    match query {
        Some(q) => print!("{}", crate::kpi::sql::render(&session.query(&q).await?, a.format)?),
        None => crate::kpi::sql::repl(&session, a.format).await?,
    }
    Ok(())
}
