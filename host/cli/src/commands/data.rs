//! `sigmaforge data where|fetch`: locate the corpora, or fetch the pinned upstream copies.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Print the data directory SigmaForge would use ($SIGMAFORGE_DATA, then ../shared/data).
    Where,
    /// Fetch the pinned upstream EVTX samples and SigmaHQ rules with git (needs internet).
    Fetch {
        /// Directory to fill (it is laid out like ../shared/data).
        #[arg(long)]
        into: PathBuf,
    },
}

pub fn run(args: Args) -> Result<ExitCode> {
    match args.action {
        Action::Where => {
            println!("{}", sigmaforge_data::resolve(None)?.display());
        }
        Action::Fetch { into } => {
            sigmaforge_data::fetch(&into, |line| eprintln!("{line}"))?;
            eprintln!("set {}={} to use it", sigmaforge_data::DATA_ENV, into.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
