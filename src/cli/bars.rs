//! Progress bars for the commands (`indicatif`), drawn only where someone watches.
//!
//! [`Bars`] is the command line's [`Progress`]: one line for produce (events put of the
//! total), one for ingest (records read, the rate, how far behind the stream it is) and
//! one for the KPI job (trips exported, then each query). They are cleared when the
//! work ends, so what the command prints afterwards is the same as without them.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{HumanCount, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::ingest::IngestCounts;
use crate::observe::progress::{Progress, Quiet};

/// Whether to draw: on a terminal, for both stdout and stderr (so a piped or redirected
/// run gets none), unless `--quiet` or `-v` (the logs are the progress then).
pub fn wanted(quiet: bool, verbose: u8) -> bool {
    !quiet && verbose == 0 && std::io::stderr().is_terminal() && std::io::stdout().is_terminal()
}

/// The bars of one command.
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
    /// When the command started: rates are taken from here.
    began: Instant,
    produce: OnceLock<ProgressBar>,
    ingest: OnceLock<ProgressBar>,
    kpi: OnceLock<ProgressBar>,
}

impl Bars {
    /// Bars on stderr.
    pub fn stderr() -> Bars {
        Bars::to(ProgressDrawTarget::stderr_with_hz(8))
    }

    /// Bars drawn on `target` (hidden, in tests).
    pub fn to(target: ProgressDrawTarget) -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(target),
            began: Instant::now(),
            produce: OnceLock::new(),
            ingest: OnceLock::new(),
            kpi: OnceLock::new(),
        }
    }

    fn spinner(&self, template: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    fn produce_bar(&self) -> &ProgressBar {
        self.produce.get_or_init(|| {
            let bar = self.multi.add(ProgressBar::new(0));
            let style =
                ProgressStyle::with_template("produce {wide_bar} {human_pos}/{human_len} events ({msg}, {eta} left)")
                    .expect("a valid template");
            bar.set_style(style);
            bar
        })
    }

    /// Clears every bar, before the command prints its results.
    pub fn finish(&self) {
        for bar in [self.produce.get(), self.ingest.get(), self.kpi.get()].into_iter().flatten() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

/// The progress a command reports to: [`Bars`] where [`wanted`], else nothing.
#[derive(Debug, Clone)]
pub struct Watch(Option<Arc<Bars>>);

impl Watch {
    /// Bars on stderr when `on`.
    pub fn new(on: bool) -> Watch {
        Watch(on.then(|| Arc::new(Bars::stderr())))
    }

    /// What the library is told.
    pub fn progress(&self) -> Arc<dyn Progress> {
        match &self.0 {
            Some(bars) => bars.clone(),
            None => Arc::new(Quiet),
        }
    }

    /// Clears the bars, before the results are printed.
    pub fn done(&self) {
        if let Some(bars) = &self.0 {
            bars.finish();
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Bars {
    /// `n` over the time since the command started.
    fn per_second(&self, n: u64) -> u64 {
        let secs = self.began.elapsed().as_secs_f64();
        if secs > 0.0 { (n as f64 / secs) as u64 } else { 0 }
    }
}

/// "1.2 s behind", "caught up" or nothing, from `MillisBehindLatest`.
fn behind(millis: Option<u64>, to_go: Option<u64>) -> String {
    let mut parts = Vec::new();
    if let Some(n) = to_go.filter(|&n| n > 0) {
        parts.push(format!("{} to read", HumanCount(n)));
    }
    match millis {
        Some(0) if parts.is_empty() => parts.push("caught up".to_owned()),
        Some(0) | None => {}
        Some(ms) => parts.push(format!("{:.1} s behind", ms as f64 / 1000.0)),
    }
    parts.join(", ")
}

impl Progress for Bars {
    fn produce_total(&self, events: u64) {
        self.produce_bar().set_length(events);
    }

    fn produced(&self, put: u64) {
        let bar = self.produce_bar();
        bar.set_message(format!("{}/s", HumanCount(self.per_second(put))));
        bar.set_position(put);
    }

    fn ingested(&self, totals: &IngestCounts, millis_behind: Option<u64>) {
        let bar = self.ingest.get_or_init(|| self.spinner("{spinner} ingest {msg}"));
        // Beside a producer in this process, what it has put and ingest has not read.
        let to_go = self.produce.get().map(|p| p.position().saturating_sub(totals.read));
        let mut msg = format!(
            "{} read: {} applied, {} duplicate or stale, {} dead-lettered; {}/s",
            HumanCount(totals.read),
            HumanCount(totals.applied),
            HumanCount(totals.duplicate_or_stale),
            HumanCount(totals.dead_lettered),
            HumanCount(self.per_second(totals.read)),
        );
        let behind = behind(millis_behind, to_go);
        if !behind.is_empty() {
            msg.push_str("; ");
            msg.push_str(&behind);
        }
        bar.set_message(msg);
    }

    fn exported(&self, rows: u64) {
        let bar = self.kpi.get_or_init(|| self.spinner("{spinner} kpi {msg}"));
        bar.set_message(format!("exported {} trips", HumanCount(rows)));
    }

    fn query(&self, stem: &str, index: usize, of: usize) {
        let bar = self.kpi.get_or_init(|| self.spinner("{spinner} kpi {msg}"));
        bar.set_message(format!("query {}/{of}: {stem}", index + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_reads_as_words() {
        assert_eq!(behind(Some(0), None), "caught up");
        assert_eq!(behind(Some(1500), None), "1.5 s behind");
        assert_eq!(behind(None, Some(12_000)), "12,000 to read");
        assert_eq!(behind(Some(0), Some(3)), "3 to read");
        assert_eq!(behind(None, None), "");
    }

    #[test]
    fn hidden_bars_follow_the_work() {
        let bars = Bars::to(ProgressDrawTarget::hidden());
        bars.produce_total(10);
        bars.produced(4);
        let counts = IngestCounts { read: 3, applied: 3, ..Default::default() };
        bars.ingested(&counts, Some(0));
        assert_eq!(bars.produce.get().unwrap().position(), 4);
        let msg = bars.ingest.get().unwrap().message();
        assert!(msg.starts_with("3 read: 3 applied, 0 duplicate or stale, 0 dead-lettered;"), "{msg}");
        assert!(msg.ends_with("; 1 to read"), "{msg}");
        bars.query("daily_kpis", 0, 3);
        assert_eq!(bars.kpi.get().unwrap().message(), "query 1/3: daily_kpis");
    }
}
