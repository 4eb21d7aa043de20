//! Each command's flags, parsed and checked once into the settings its work takes: the
//! constructors here (`TryFrom` the command's clap args) are the checks made before any
//! work starts, so a bad URL, date, position or cron expression is reported up front,
//! and no command parses a flag again.

use crate::backend::location::{Location, ObjectPlace};
use crate::cli::args::{
    Command, FieldsArgs, GenArgs, IngestArgs, KpiArgs, ProduceArgs, RedriveArgs, ReportArgs, RunArgs, ScheduleArgs,
    SetupArgs, SqlArgs, parse_position,
};
use crate::config::{self, DeadLetterUrl, Home, StoreUrl, StreamUrl};
use crate::kpi::DateSelection;
use crate::kpi::schedule::Schedule;
use crate::stream::StartPosition;
use crate::{Error, Result};

/// A command with its checked settings.
#[derive(Debug)]
pub enum Settings {
    /// `tripflow run`.
    Run(Run),
    /// `tripflow produce`.
    Produce(Produce),
    /// `tripflow ingest`.
    Ingest(Ingest),
    /// `tripflow kpi`.
    Kpi(Kpi),
    /// `tripflow schedule`.
    Schedule(Scheduled),
    /// `tripflow setup`.
    Setup(Setup),
    /// `tripflow sql`.
    Sql(Sql),
    /// `tripflow report`.
    Report(Report),
    /// `tripflow redrive`.
    Redrive(Redrive),
    /// `tripflow gen` (its flags are checked by clap alone).
    Gen(GenArgs),
    /// `tripflow fields`.
    Fields(Fields),
}

/// `tripflow fields`.
#[derive(Debug)]
pub struct Fields {
    /// The flags.
    pub args: FieldsArgs,
    /// `--store`.
    pub store: StoreUrl,
}

impl TryFrom<FieldsArgs> for Fields {
    type Error = Error;

    fn try_from(args: FieldsArgs) -> Result<Self> {
        let home = Home::new(&args.home.home)?;
        Ok(Fields { store: args.store.url(&home)?, args })
    }
}

impl TryFrom<Command> for Settings {
    type Error = Error;

    fn try_from(command: Command) -> Result<Self> {
        Ok(match command {
            Command::Run(a) => Settings::Run(a.try_into()?),
            Command::Produce(a) => Settings::Produce(a.try_into()?),
            Command::Ingest(a) => Settings::Ingest(a.try_into()?),
            Command::Kpi(a) => Settings::Kpi(a.try_into()?),
            Command::Schedule(a) => Settings::Schedule(a.try_into()?),
            Command::Setup(a) => Settings::Setup(a.try_into()?),
            Command::Sql(a) => Settings::Sql(a.try_into()?),
            Command::Report(a) => Settings::Report(a.try_into()?),
            Command::Redrive(a) => Settings::Redrive(a.try_into()?),
            Command::Gen(a) => Settings::Gen(a),
            Command::Fields(a) => Settings::Fields(a.try_into()?),
        })
    }
}

/// `--out`, parsed.
fn out(text: &str) -> Result<ObjectPlace> {
    Location::parse_as("--out", Some(text))
}

/// `tripflow run`: its flags, and the backends and output they name.
#[derive(Debug)]
pub struct Run {
    /// The flags.
    pub args: RunArgs,
    /// `--stream`.
    pub stream: StreamUrl,
    /// `--store`.
    pub store: StoreUrl,
    /// `--dead-letter`.
    pub dead_letter: DeadLetterUrl,
    /// `--out`.
    pub out: ObjectPlace,
}

impl TryFrom<RunArgs> for Run {
    type Error = Error;

    fn try_from(args: RunArgs) -> Result<Self> {
        let home = Home::new(&args.home.home)?;
        Ok(Run {
            stream: args.stream.url(&home)?,
            store: args.store.url(&home)?,
            dead_letter: args.dead_letter.url(&home)?,
            out: out(&args.kpi.out)?,
            args,
        })
    }
}

/// `tripflow produce`.
#[derive(Debug)]
pub struct Produce {
    /// The flags.
    pub args: ProduceArgs,
    /// `--stream`.
    pub stream: StreamUrl,
}

impl TryFrom<ProduceArgs> for Produce {
    type Error = Error;

    fn try_from(args: ProduceArgs) -> Result<Self> {
        let home = Home::new(&args.home.home)?;
        Ok(Produce { stream: args.stream.url(&home)?, args })
    }
}

/// `tripflow ingest`.
#[derive(Debug)]
pub struct Ingest {
    /// The flags.
    pub args: IngestArgs,
    /// `--stream`.
    pub stream: StreamUrl,
    /// `--store`.
    pub store: StoreUrl,
    /// `--dead-letter`.
    pub dead_letter: DeadLetterUrl,
    /// `--initial-position`.
    pub initial_position: StartPosition,
    /// `--live-kpis`, with its settings.
    pub live: Option<Live>,
}

/// `--live-kpis`'s settings.
#[derive(Debug)]
pub struct Live {
    /// `--out`.
    pub out: ObjectPlace,
    /// `--live-every`.
    pub every: std::time::Duration,
    /// `--live-recompute-every`.
    pub recompute_every: std::time::Duration,
}

/// A duration flag's value (`5s`, `1m`, `15min`).
fn duration(flag: &str, text: &str) -> Result<std::time::Duration> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        Error::config(format!(
            "{flag} {text:?} is not a duration ({e}); give a number and a unit, such as 5s, 1m or 15m"
        ))
    })
}

impl TryFrom<IngestArgs> for Ingest {
    type Error = Error;

    fn try_from(args: IngestArgs) -> Result<Self> {
        let home = Home::new(&args.home.home)?;
        let l = &args.live;
        let every = duration("--live-every", &l.live_every)?;
        let recompute_every = duration("--live-recompute-every", &l.live_recompute_every)?;
        let live = if l.live_kpis { Some(Live { out: out(&l.out)?, every, recompute_every }) } else { None };
        Ok(Ingest {
            stream: args.stream.url(&home)?,
            store: args.store.url(&home)?,
            dead_letter: args.dead_letter.url(&home)?,
            initial_position: parse_position(&args.initial_position)?,
            live,
            args,
        })
    }
}

/// `tripflow kpi`.
#[derive(Debug)]
pub struct Kpi {
    /// The flags.
    pub args: KpiArgs,
    /// `--store`.
    pub store: StoreUrl,
    /// `--out`.
    pub out: ObjectPlace,
    /// The dates the date flags select, as of today (UTC).
    pub dates: DateSelection,
}

impl TryFrom<KpiArgs> for Kpi {
    type Error = Error;

    fn try_from(args: KpiArgs) -> Result<Self> {
        let home = Home::new(&args.home.home)?;
        Ok(Kpi {
            store: args.store.url(&home)?,
            out: out(&args.kpi.out)?,
            dates: config::date_selection(&args.date_flags(), chrono::Utc::now().date_naive())?,
            args,
        })
    }
}

/// `tripflow schedule`.
#[derive(Debug)]
pub struct Scheduled {
    /// The flags.
    pub args: ScheduleArgs,
    /// `--store`.
    pub store: StoreUrl,
    /// `--out`.
    pub out: ObjectPlace,
    /// `--cron`.
    pub schedule: Schedule,
}

impl TryFrom<ScheduleArgs> for Scheduled {
    type Error = Error;

    fn try_from(args: ScheduleArgs) -> Result<Self> {
        let home = Home::new(&args.home.home)?;
        // The earliest run's lookback must be representable too.
        config::lookback_dates(args.window.lookback, chrono::Utc::now().date_naive())?;
        Ok(Scheduled {
            store: args.store.url(&home)?,
            out: out(&args.kpi.out)?,
            schedule: Schedule::parse(&args.cron)?,
            args,
        })
    }
}

/// `tripflow setup`.
#[derive(Debug)]
pub struct Setup {
    /// The flags.
    pub args: SetupArgs,
    /// `--stream`.
    pub stream: StreamUrl,
    /// `--store`.
    pub store: StoreUrl,
    /// `--dead-letter`.
    pub dead_letter: DeadLetterUrl,
    /// `--out`, when given.
    pub out: Option<ObjectPlace>,
}

impl TryFrom<SetupArgs> for Setup {
    type Error = Error;

    fn try_from(args: SetupArgs) -> Result<Self> {
        let home = Home::new(&args.home.home)?;
        let given = args.out.as_deref().filter(|o| !o.trim().is_empty());
        Ok(Setup {
            stream: args.stream.url(&home)?,
            store: args.store.url(&home)?,
            dead_letter: args.dead_letter.url(&home)?,
            out: given.map(out).transpose()?,
            args,
        })
    }
}

/// `tripflow sql`.
#[derive(Debug)]
pub struct Sql {
    /// The flags.
    pub args: SqlArgs,
    /// `--snapshots`.
    pub snapshots: ObjectPlace,
}

impl TryFrom<SqlArgs> for Sql {
    type Error = Error;

    fn try_from(args: SqlArgs) -> Result<Self> {
        Ok(Sql { snapshots: Location::parse_as("--snapshots", Some(&args.snapshots))?, args })
    }
}

/// `tripflow report`.
#[derive(Debug)]
pub struct Report {
    /// The flags.
    pub args: ReportArgs,
    /// `--out`.
    pub out: ObjectPlace,
}

impl TryFrom<ReportArgs> for Report {
    type Error = Error;

    fn try_from(args: ReportArgs) -> Result<Self> {
        Ok(Report { out: out(&args.out)?, args })
    }
}

/// `tripflow redrive`.
#[derive(Debug)]
pub struct Redrive {
    /// The flags.
    pub args: RedriveArgs,
    /// `--stream`.
    pub stream: StreamUrl,
    /// `--dead-letter`.
    pub dead_letter: DeadLetterUrl,
    /// `--since`.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// `--failures`.
    pub failures: Option<crate::ingest::failures::FailureQueue>,
}

impl TryFrom<RedriveArgs> for Redrive {
    type Error = Error;

    fn try_from(args: RedriveArgs) -> Result<Self> {
        let home = Home::new(&args.home.home)?;
        let since = args
            .since
            .as_deref()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t.trim()).map(|t| t.to_utc()).map_err(|e| {
                    Error::config_because(
                        format!("--since {t:?}"),
                        e,
                        "give an RFC 3339 time like 2024-05-25T00:00:00Z",
                    )
                })
            })
            .transpose()?;
        Ok(Redrive {
            stream: args.stream.url(&home)?,
            dead_letter: args.dead_letter.url(&home)?,
            since,
            failures: args.failures.as_deref().map(crate::ingest::failures::FailureQueue::parse).transpose()?,
            args,
        })
    }
}
