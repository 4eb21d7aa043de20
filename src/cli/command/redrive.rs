//! `tripflow redrive`: dead letters back on the stream.

use crate::Result;
use crate::cli::args::tuning;
use crate::cli::settings::Redrive;
use crate::config::{self, AwsEnv};
use crate::ingest::failures;
use crate::ingest::redrive::{self, RedriveOptions};

/// `tripflow redrive`.
pub(in crate::cli) async fn redrive(s: &Redrive, aws: &AwsEnv) -> Result<()> {
    let a = &s.args;
    if let Some(queue) = &s.failures {
        let aws = aws.get().await?;
        let url = failures::queue_url(aws, queue).await?;
        let report = failures::redrive_failures(aws, &url, a.dry_run).await?;
        for range in &report.past_retention {
            eprintln!("warning: past retention, not redriven: {range}");
        }
        for why in &report.refused {
            eprintln!("warning: the stream refused a record, whose batch stays in the queue: {why}");
        }
        println!(
            "{} {} records of {} failed batches from {url}; {} ranges past retention; {} refused; {} messages not understood (left in the queue)",
            if a.dry_run { "would redrive" } else { "redrove" },
            report.redriven,
            report.messages,
            report.past_retention.len(),
            report.refused.len(),
            report.not_understood
        );
        return Ok(());
    }
    let opened = config::open_stream(&s.stream, None, aws, &tuning(Some(&a.stream), None)).await?;
    let (letters, name) = config::open_dead_letters(&s.dead_letter, aws).await?;
    let options = RedriveOptions { reason: a.reason.clone(), since: s.since, dry_run: a.dry_run };
    let report = redrive::redrive(letters.as_ref(), opened.stream.as_ref(), &options).await?;
    for why in &report.refused {
        eprintln!("warning: the stream refused a record: {why}");
    }
    let skipped: u64 = report.skipped.values().sum();
    let why: Vec<String> = report.skipped.iter().map(|(why, n)| format!("{n} {why}")).collect();
    println!(
        "{} {} of {} dead letters from {name}; skipped {skipped}{}; refused {}",
        if a.dry_run { "would redrive" } else { "redrove" },
        report.redriven,
        report.letters,
        if why.is_empty() { String::new() } else { format!(" ({})", why.join(", ")) },
        report.refused.len()
    );
    Ok(())
}
