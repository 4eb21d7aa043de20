//! `tripflow kpi`, `tripflow schedule` and `tripflow report`: the KPI job on demand, on a
//! cron, and its report again.

use crate::Result;
use crate::cli::args::{print_kpis, stop_on_signal, tuning};
use crate::cli::bars::Watch;
use crate::cli::settings::{Kpi, Report, Scheduled};
use crate::config::{self, AwsEnv};
use crate::kpi::{self, Formats};

/// `tripflow kpi`.
pub(in crate::cli) async fn kpi(s: &Kpi, aws: &AwsEnv, watch: &Watch) -> Result<()> {
    let a = &s.args;
    let queries = kpi::queries::load_or_builtin(a.kpi.queries.as_deref())?;
    if a.explain_live {
        let fields = config::read_fields(a.declared.fields.as_deref(), aws).await?;
        let store = config::open_store(&s.store, aws, &tuning(None, Some(&a.store))).await?;
        let columns = kpi::table_columns(store.as_ref(), &fields).await?;
        let live = crate::kpi::live::LiveKpis::compile(&queries, &fields, columns).await?;
        for (q, keeping) in live.explain() {
            println!("{}: {keeping}", q.stem);
        }
        return Ok(());
    }
    let out = config::open_output(&s.out, aws).await?;
    let store = config::open_store(&s.store, aws, &tuning(None, Some(&a.store))).await?;
    let formats = Formats { parquet: a.kpi.parquet };
    let fields = config::read_fields(a.declared.fields.as_deref(), aws).await?;
    let report =
        kpi::run(store.as_ref(), &queries, &fields, &s.dates, &out, formats, watch.progress().as_ref()).await?;
    watch.done();
    print_kpis(&report, &out)
}

/// `tripflow schedule`: the KPI job at every cron time until a signal.
pub(in crate::cli) async fn schedule(s: &Scheduled, aws: &AwsEnv) -> Result<()> {
    let a = &s.args;
    let out = config::open_output(&s.out, aws).await?;
    let t = tuning(None, Some(&a.store));
    // Planned now, so a broken query fails at start, not at 23:59.
    let fields = config::read_fields(a.declared.fields.as_deref(), aws).await?;
    let columns = kpi::table_columns(config::open_store(&s.store, aws, &t).await?.as_ref(), &fields).await?;
    kpi::check(&kpi::queries::load_or_builtin(a.kpi.queries.as_deref())?, columns).await?;
    let stop = stop_on_signal();
    let formats = Formats { parquet: a.kpi.parquet };
    let (out, queries, lookback, store_url, t) = (&out, a.kpi.queries.as_deref(), a.window.lookback, &s.store, &t);
    let fields = &fields;
    crate::kpi::schedule::run(&s.schedule, &crate::kpi::schedule::SystemClock, &stop, |at| async move {
        // Queries are read at each run, so an edited file takes effect at the next one.
        let queries = kpi::queries::load_or_builtin(queries)?;
        let flags = config::DateFlags { lookback, ..Default::default() };
        let dates = config::date_selection(&flags, at.date_naive())?;
        let store = config::open_store(store_url, aws, t).await?;
        let quiet = crate::observe::progress::Quiet;
        let report = kpi::run(store.as_ref(), &queries, fields, &dates, out, formats, &quiet).await?;
        Ok(format!("{} files for {} dates", report.files.len(), report.dates.len()))
    })
    .await?;
    Ok(())
}

/// `tripflow report`: the report again, from the KPI files alone.
pub(in crate::cli) async fn rebuild_report(s: &Report, aws: &AwsEnv) -> Result<()> {
    let written = crate::kpi::report::write(&config::open_output(&s.out, aws).await?).await?;
    for (file, why) in &written.skipped {
        eprintln!("warning: skipped {file}: {why}");
    }
    println!("report over {} date(s): {}", written.dates, written.path);
    Ok(())
}
