//! The `sigmaforge` command line. Each subcommand lives in its own module under `commands/`,
//! with its clap arguments and its `run` function; this file only dispatches.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sigmaforge", version, about = "Reinforcement fine-tuning of small language models on verifiable tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find or fetch the public corpora (EVTX samples, SigmaHQ rules, ...).
    Data(commands::data::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(args) => commands::data::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
