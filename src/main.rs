//! The `tripflow` binary: parse the command line, set up logging, run the library,
//! and turn an error into one line and a non-zero exit.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tripflow::cli::{Cli, execute};

fn main() -> ExitCode {
    tripflow::observe::memory::map_large_blocks();
    let cli = Cli::parse();
    // The AWS config loader warns about every place it looked for a region; a missing
    // region gets tripflow's own one-line error instead.
    let default_level = match cli.verbose {
        0 => "warn,aws_config=error",
        1 => "warn,aws_config=error,tripflow=info",
        _ => "info,tripflow=debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour only on a terminal (and not under NO_COLOR): a log in a file or a pipe is
    // plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(e.exit_code())
        }
    }
}
