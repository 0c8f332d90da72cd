//! The `rf-tap` binary.
mod capture;
mod cli;
mod mirror;
mod output;
mod pipeline;
mod privs;
mod replay;
mod report;
mod shadow;
mod sink;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

/// mimalloc: the extract and live-archive workers allocate exchanges that the writer thread
/// frees, which glibc's arenas handle badly (a third of the CPU went to malloc and free).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let matches = cli::Cli::command().get_matches();
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    output::set_mode(cli.file_mode);
    let result = match cli.command {
        cli::Command::Attach(args) => cli::attach::run(args),
        cli::Command::Extract(args) => cli::extract::run(args),
        cli::Command::Requests(args) => cli::requests::run(args),
        cli::Command::Replay(args) => cli::replay::run(*args, cli::replay::matches_of(&matches)),
        cli::Command::Session(args) => cli::session::run(args),
        cli::Command::Mirror(args) => cli::mirror::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rf-tap: {e:#}");
            ExitCode::FAILURE
        }
    }
}
