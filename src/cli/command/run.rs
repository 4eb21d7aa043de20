//! `tripflow run`: produce beside ingest, then the KPI job.

use crate::Result;
use crate::cli::args::{ingest_options, print_counts, print_kpis, tuning};
use crate::cli::bars::Watch;
use crate::cli::settings::Run;
use crate::config::{self, AwsEnv};
use crate::ingest::{FieldRules, IngestOptions};
use crate::kpi::Formats;
use crate::pipeline::{self, RunSettings};

/// `tripflow run`.
pub(in crate::cli) async fn run(s: &Run, aws: &AwsEnv, watch: &Watch) -> Result<()> {
    let a = &s.args;
    let settings = RunSettings {
        start: config::input_file(&a.input.start, "--start")?,
        end: config::input_file(&a.input.end, "--end")?,
        stream: s.stream.clone(),
        store: s.store.clone(),
        dead_letter: s.dead_letter.clone(),
        tuning: tuning(Some(&a.stream), Some(&a.store)),
        shards: a.input.shards,
        out: config::open_output(&s.out, aws).await?,
        queries: a.kpi.queries.clone(),
        ingest: IngestOptions {
            progress: watch.progress(),
            fields: FieldRules {
                declared: config::read_fields(a.declared.fields.as_deref(), aws).await?,
                unknown: a.dead_letter.unknown_fields,
            },
            ..ingest_options(&a.batch)
        },
        formats: Formats { parquet: a.kpi.parquet },
    };
    let (report, kpi) = pipeline::run(&settings, aws).await?;
    watch.done();
    for line in &report.not_sent {
        eprintln!("warning: {line}");
    }
    print_kpis(&kpi, &settings.out)?;
    print_counts(&report.ingest, &report.dead_letter_file);
    let t = &report.stages;
    println!(
        "produce {:.2} s ({} events/s) beside ingest {:.2} s ({} events/s), then kpi {:.2} s ({} trips/s)",
        t.produce_s, t.produce_events_per_s, t.ingest_s, t.ingest_events_per_s, t.kpi_s, t.kpi_trips_per_s
    );
    if let Some(path) = &a.batch.report {
        pipeline::write_report(path, &report)?;
    }
    Ok(())
}
