//! `tripflow kpi`, `tripflow schedule` and `tripflow report`: the KPI job on demand, on a
//! cron, and its report again.

use crate::Result;
use crate::cli::args::{KpiArgs, ReportArgs, ScheduleArgs, print_kpis, stop_on_signal, tuning};
use crate::cli::bars::Watch;
use crate::config::{self, AwsEnv, Home, StoreUrl};
use crate::kpi::{self, Formats};

/// `tripflow kpi`.
pub(in crate::cli) async fn kpi(a: &KpiArgs, aws: &AwsEnv, watch: &Watch) -> Result<()> {
    let home = Home::new(&a.home.home)?;
    let dates = config::date_selection(&a.date_flags(), chrono::Utc::now().date_naive())?;
    let queries = kpi::queries::load_or_builtin(a.kpi.queries.as_deref())?;
    let out = config::open_output(&a.kpi.out, aws).await?;
    let store_url = StoreUrl::parse(a.store.store.as_deref())?;
    let store = config::open_store(&store_url, Some(&home), aws, &tuning(None, Some(&a.store))).await?;
    let formats = Formats { parquet: a.kpi.parquet };
    let report = kpi::run(store.as_ref(), &queries, &dates, &out, formats, watch.progress().as_ref()).await?;
    watch.done();
    print_kpis(&report, &out)
}

/// `tripflow schedule`: the KPI job at every cron time until a signal.
pub(in crate::cli) async fn schedule(a: &ScheduleArgs, aws: &AwsEnv) -> Result<()> {
    let schedule = crate::kpi::schedule::Schedule::parse(&a.cron)?;
    let home = Home::new(&a.home.home)?;
    let out = config::open_output(&a.kpi.out, aws).await?;
    let store_url = StoreUrl::parse(a.store.store.as_deref())?;
    let t = tuning(None, Some(&a.store));
    // Planned now, so a broken query fails at start, not at 23:59.
    kpi::check(&kpi::queries::load_or_builtin(a.kpi.queries.as_deref())?).await?;
    let stop = stop_on_signal();
    let formats = Formats { parquet: a.kpi.parquet };
    let (home, out, queries, lookback, store_url, t) =
        (&home, &out, a.kpi.queries.as_deref(), a.window.lookback, &store_url, &t);
    crate::kpi::schedule::run(&schedule, &crate::kpi::schedule::SystemClock, &stop, |at| async move {
        // Queries are read at each run, so an edited file takes effect at the next one.
        let queries = kpi::queries::load_or_builtin(queries)?;
        let flags = config::DateFlags { lookback, ..Default::default() };
        let dates = config::date_selection(&flags, at.date_naive())?;
        let store = config::open_store(store_url, Some(home), aws, t).await?;
        let report = kpi::run(store.as_ref(), &queries, &dates, out, formats, &crate::observe::progress::Quiet).await?;
        Ok(format!("{} files for {} dates", report.files.len(), report.dates.len()))
    })
    .await?;
    Ok(())
}

/// `tripflow report`: the report again, from the KPI files alone.
pub(in crate::cli) async fn rebuild_report(a: &ReportArgs, aws: &AwsEnv) -> Result<()> {
    let written = crate::kpi::report::write(&config::open_output(&a.out, aws).await?).await?;
    for (file, why) in &written.skipped {
        eprintln!("warning: skipped {file}: {why}");
    }
    println!("report over {} date(s): {}", written.dates, written.path);
    Ok(())
}
