//! `tripflow ingest`: the stream into the trip table, once or following.

use crate::Result;
use crate::cli::args::{ingest_options, print_counts, stop_on_signal, tuning};
use crate::cli::bars::Watch;
use crate::cli::settings::Ingest as Settings;
use crate::config::{self, AwsEnv};
use crate::ingest::{FieldRules, Ingest, IngestCounts};
use crate::pipeline;

/// `tripflow ingest`.
pub(in crate::cli) async fn ingest(s: &Settings, aws: &AwsEnv, watch: &Watch) -> Result<()> {
    let a = &s.args;
    let t = tuning(Some(&a.stream), Some(&a.store));
    let opened = config::open_stream(&s.stream, None, aws, &t).await?;
    let store = config::open_store(&s.store, aws, &t).await?;
    let (dead_letters, dead_letter_file) = config::open_dead_letters(&s.dead_letter, aws).await?;
    let mut opts = ingest_options(&a.batch);
    opts.follow = a.follow;
    let declared = config::read_fields(a.declared.fields.as_deref(), aws).await?;
    opts.fields = FieldRules { declared, unknown: a.dead_letter.unknown_fields };
    opts.consumer = a.consumer.clone();
    opts.initial_position = s.initial_position.clone();
    opts.stop = stop_on_signal();
    opts.progress = watch.progress();
    if let Some(live) = &s.live {
        let queries = crate::kpi::queries::load_or_builtin(a.live.queries.as_deref())?;
        let columns = crate::kpi::table_columns(store.as_ref(), &opts.fields.declared).await?;
        let kpis = crate::kpi::live::LiveKpis::compile(&queries, &opts.fields.declared, columns).await?;
        opts.live = Some(crate::ingest::LiveOptions {
            kpis: std::sync::Arc::new(kpis),
            out: config::open_output(&live.out, aws).await?,
            every: live.every,
            recompute_every: live.recompute_every,
        });
    }
    if let Some(addr) = a.metrics_addr {
        crate::observe::telemetry::serve(addr)?;
        opts.count_records_behind = true;
    }
    let began = std::time::Instant::now();
    let counts = Ingest {
        source: opened.stream.as_ref(),
        checkpoints: opened.checkpoints.as_ref(),
        store: store.as_ref(),
        dead_letters: dead_letters.as_ref(),
    }
    .run(&opts)
    .await?;
    watch.done();
    print_counts(&counts, &dead_letter_file);
    if let Some(live) = &opts.live {
        println!(
            "live KPIs: {}/kpi_output/live/date=YYYY-MM-DD/kpi.json, each with the stream position it is exact as of",
            live.out.display().trim_end_matches('/')
        );
    }
    if let Some(path) = &a.batch.report {
        #[derive(serde::Serialize)]
        struct Report {
            #[serde(flatten)]
            counts: IngestCounts,
            elapsed_s: f64,
        }
        pipeline::write_report(path, &Report { counts, elapsed_s: began.elapsed().as_secs_f64() })?;
    }
    Ok(())
}
