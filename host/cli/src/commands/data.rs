//! `sigmaforge data where|fetch|cache`: locate the corpora, fetch the pinned upstream copies, or
//! prepare the caches the sigma plugin loads at start-up.

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
    /// Parse the EVTX corpus once and write what the sigma plugin loads at start-up:
    /// <data>/cache/corpus.sfc (the parsed events) and <data>/cache/sigma-test-rules.txt
    /// (the derived test split).
    Cache {
        /// Data directory (default: $SIGMAFORGE_DATA, then ../shared/data).
        #[arg(long)]
        data: Option<PathBuf>,
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
        Action::Cache { data } => write_caches(&sigmaforge_data::resolve(data.as_deref())?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The sigma plugin's caches, with its default configuration (the paths it looks at).
fn write_caches(data: &std::path::Path) -> Result<()> {
    let config = sigma_task::TaskConfig::default();
    let started = std::time::Instant::now();
    let (path, events) = sigma_task::corpus_cache::write(data, &config)?;
    eprintln!("wrote {} ({events} events) in {:.1} s", path.display(), started.elapsed().as_secs_f64());
    let started = std::time::Instant::now();
    let task = sigma_task::SigmaTask::load(data, config, &|_, _| {}).map_err(anyhow::Error::msg)?;
    let (path, rules) = task.write_derived_test_split().map_err(anyhow::Error::msg)?;
    eprintln!("wrote {} ({rules} test rules) in {:.1} s", path.display(), started.elapsed().as_secs_f64());
    Ok(())
}
