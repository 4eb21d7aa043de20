//! `tripflow schedule`: run the KPI job at cron times, in UTC, like the original Glue
//! trigger (`59 23 * * *`).
//!
//! Runs are sequential, so two never overlap; a run that outlasts the next fire time
//! makes the schedule skip to the following one. A failed run is logged and the
//! schedule goes on. A stop request (SIGINT/SIGTERM) lets a run in progress finish, then
//! returns. Time comes from a [`Clock`], so tests drive the schedule without sleeping.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use croner::Cron;
use tracing::{error, info};

use crate::{Error, Result};

/// The original pipeline's schedule: every day at 23:59 UTC.
pub const DEFAULT_CRON: &str = "59 23 * * *";

/// Where the scheduler gets the time.
#[async_trait]
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
    /// Returns at `at`, or earlier once `stop` is set.
    async fn sleep_until(&self, at: DateTime<Utc>, stop: &AtomicBool);
}

/// The real clock.
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, at: DateTime<Utc>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let Ok(left) = (at - Utc::now()).to_std() else { return };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        }
    }
}

/// A parsed cron expression (five fields: minute hour day-of-month month day-of-week).
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
}

impl Schedule {
    /// Parses `expr`.
    ///
    /// # Errors
    /// When it is not a cron expression.
    pub fn parse(expr: &str) -> Result<Self> {
        Cron::from_str(expr).map(|cron| Schedule { cron }).map_err(|e| {
            Error::config_because(format!("--cron {expr:?} is not a cron expression"), e, "write e.g. \"59 23 * * *\"")
        })
    }

    /// The first fire time strictly after `t`.
    ///
    /// # Errors
    /// When the expression never fires again.
    pub fn next_after(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t, false)
            .map_err(|e| Error::config_because(format!("the schedule has no next time after {t}"), e, ""))
    }
}

/// Runs `job` at each fire time until `stop` is set. Returns the number of runs.
///
/// # Errors
/// Only when the schedule has no next fire time; a failed run is logged, not returned.
pub async fn run<F, Fut>(schedule: &Schedule, clock: &dyn Clock, stop: &AtomicBool, mut job: F) -> Result<u64>
where
    F: FnMut(DateTime<Utc>) -> Fut,
    Fut: Future<Output = Result<String>>,
{
    let mut runs = 0;
    while !stop.load(Ordering::Relaxed) {
        let at = schedule.next_after(clock.now())?;
        info!(%at, "Next scheduled run.");
        clock.sleep_until(at, stop).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match job(at).await {
            Ok(summary) => info!(%at, %summary, "Scheduled run succeeded."),
            Err(e) => error!(%at, error = %e, "Scheduled run failed; the schedule goes on."),
        }
        runs += 1;
    }
    info!(runs, "Schedule stopped.");
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use chrono::TimeZone;

    use super::*;

    /// A clock that jumps to the time asked for.
    struct FakeClock(Mutex<DateTime<Utc>>);

    #[async_trait]
    impl Clock for FakeClock {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().unwrap()
        }
        async fn sleep_until(&self, at: DateTime<Utc>, _stop: &AtomicBool) {
            let mut now = self.0.lock().unwrap();
            *now = (*now).max(at);
        }
    }

    fn at(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, d, h, m, 0).unwrap()
    }

    #[tokio::test]
    async fn runs_at_2359_across_day_boundaries_and_survives_a_failed_run() {
        let clock = FakeClock(Mutex::new(at(25, 23, 58)));
        let stop = AtomicBool::new(false);
        let mut fired = Vec::new();
        let schedule = Schedule::parse(DEFAULT_CRON).unwrap();
        let runs = run(&schedule, &clock, &stop, |t| {
            fired.push(t);
            if fired.len() == 3 {
                stop.store(true, Ordering::Relaxed);
            }
            let fail = fired.len() == 1;
            async move { if fail { Err(Error::output("disk full")) } else { Ok("ok".into()) } }
        })
        .await
        .unwrap();
        assert_eq!(runs, 3, "the failed first run did not stop the schedule");
        assert_eq!(fired, [at(25, 23, 59), at(26, 23, 59), at(27, 23, 59)]);
    }

    #[tokio::test]
    async fn a_stop_during_a_run_lets_it_finish_then_returns() {
        let clock = FakeClock(Mutex::new(at(25, 12, 0)));
        let stop = AtomicBool::new(false);
        let finished = AtomicBool::new(false);
        let schedule = Schedule::parse("*/5 * * * *").unwrap();
        let runs = run(&schedule, &clock, &stop, |_| async {
            stop.store(true, Ordering::Relaxed); // SIGTERM arrives mid-run
            tokio::task::yield_now().await;
            finished.store(true, Ordering::Relaxed);
            Ok(String::new())
        })
        .await
        .unwrap();
        assert_eq!(runs, 1);
        assert!(finished.load(Ordering::Relaxed));
        assert_eq!(clock.now(), at(25, 12, 5));
    }

    #[test]
    fn bad_expressions_say_how_to_write_one() {
        let err = Schedule::parse("every night").unwrap_err().to_string();
        assert!(err.contains("59 23 * * *"), "{err}");
    }
}
