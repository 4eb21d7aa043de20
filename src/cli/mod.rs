//! The `tripflow` commands.
//!
//! Every flag has a `TRIPFLOW_*` environment equivalent, and every default works from
//! the repository root, so `tripflow run` with no flags runs the whole pipeline on the
//! embedded backends. The flags and the checks made before any work are in [`args`];
//! each command's work is in a file of its own under `command/`; on a terminal, long
//! commands draw progress bars ([`bars`]).

pub mod args;
pub mod bars;
mod command;

pub use self::args::*;
use self::bars::Watch;
use crate::Result;
use crate::config::AwsEnv;

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command fails with; [`Error::Config`] and [`Error::Input`] mean the
/// command line or an input file is wrong (exit code 2 in the binary).
pub async fn execute(cli: Cli) -> Result<()> {
    check_flags(&cli)?;
    let aws = AwsEnv::default();
    let watch = Watch::new(bars::wanted(cli.quiet, cli.verbose));
    match cli.command {
        Command::Setup(a) => command::setup::setup(&a, &aws).await,
        Command::Run(a) => command::run::run(&a, &aws, &watch).await,
        Command::Produce(a) => command::produce::produce(&a, &aws, &watch).await,
        Command::Ingest(a) => command::ingest::ingest(&a, &aws, &watch).await,
        Command::Kpi(a) => command::kpi::kpi(&a, &aws, &watch).await,
        Command::Schedule(a) => command::kpi::schedule(&a, &aws).await,
        Command::Sql(a) => command::sql::sql(&a, &aws).await,
        Command::Gen(a) => command::generate::gen_data(&a),
        Command::Report(a) => command::kpi::rebuild_report(&a, &aws).await,
    }
}
