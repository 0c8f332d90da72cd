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
    let matches = match cli::Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
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
        cli::Command::Mock(args) => cli::mock::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rf-tap: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A mistake on the command line: one line naming it (clap's first line, with its tip when
/// it has one), and exit status 2. Help and version print as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    // Everything clap says before the usage block, on one line.
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let line = said.join(" ");
    let line = line
        .trim_start_matches("error: ")
        .replace(" tip: ", "; tip: ");
    eprintln!("rf-tap: {line} (see --help)");
    ExitCode::from(2)
}
