//! `tripflow produce`: CSV (or NDJSON) onto the stream.

use crate::Result;
use crate::cli::args::tuning;
use crate::cli::bars::Watch;
use crate::cli::settings::Produce;
use crate::config::{self, AwsEnv};
use crate::produce::{self, ProduceReport};

/// `tripflow produce`.
pub(in crate::cli) async fn produce(s: &Produce, aws: &AwsEnv, watch: &Watch) -> Result<()> {
    let a = &s.args;
    let inputs = match &a.ndjson {
        Some(path) => Err(config::input_file(path, "--ndjson")?),
        None => Ok((config::input_file(&a.input.start, "--start")?, config::input_file(&a.input.end, "--end")?)),
    };
    let opened = config::open_stream(&s.stream, a.input.shards, aws, &tuning(Some(&a.stream), None)).await?;
    let progress = watch.progress();
    let report = match inputs {
        Err(ndjson) => produce::produce_ndjson(opened.stream.as_ref(), &ndjson, progress.as_ref()).await?,
        Ok((start, end)) => produce::produce_csv(opened.stream.as_ref(), &start, &end, progress.as_ref()).await?,
    };
    watch.done();
    print_not_sent(&report);
    println!("sent {} records; {} not sent", report.sent, report.not_sent.len());
    Ok(())
}

fn print_not_sent(report: &ProduceReport) {
    for line in &report.not_sent {
        eprintln!("warning: {line}");
    }
}
