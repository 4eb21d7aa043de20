//! The `tripflow` commands.
//!
//! Every flag has a `TRIPFLOW_*` environment equivalent, and every default works from
//! the repository root, so `tripflow run` with no flags runs the whole pipeline on the
//! embedded backends. The flags are in [`args`]; they become each command's checked
//! [`settings`] once, before any work; each command's work is in a file of its own
//! under `command/`; on a terminal, long commands draw progress bars ([`bars`]).

pub mod args;
pub mod bars;
mod command;
pub mod settings;

pub use self::args::*;
use self::bars::Watch;
use self::settings::Settings;
use crate::Result;
use crate::config::AwsEnv;

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command fails with; [`crate::Error::Config`] and [`crate::Error::Input`] mean the
/// command line or an input file is wrong (exit code 2 in the binary).
pub async fn execute(cli: Cli) -> Result<()> {
    let watch = Watch::new(bars::wanted(cli.quiet, cli.verbose));
    let settings = Settings::try_from(cli.command)?;
    let aws = AwsEnv::default();
    match settings {
        Settings::Setup(s) => command::setup::setup(&s, &aws).await,
        Settings::Run(s) => command::run::run(&s, &aws, &watch).await,
        Settings::Produce(s) => command::produce::produce(&s, &aws, &watch).await,
        Settings::Ingest(s) => command::ingest::ingest(&s, &aws, &watch).await,
        Settings::Kpi(s) => command::kpi::kpi(&s, &aws, &watch).await,
        Settings::Schedule(s) => command::kpi::schedule(&s, &aws).await,
        Settings::Sql(s) => command::sql::sql(&s, &aws).await,
        Settings::Gen(a) => command::generate::gen_data(&a),
        Settings::Report(s) => command::kpi::rebuild_report(&s, &aws).await,
        Settings::Redrive(s) => command::redrive::redrive(&s, &aws).await,
        Settings::Fields(s) => command::fields::fields(&s, &aws).await,
    }
}
