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
    /// Validate Sigma rule files (errors and style warnings, with file:line:column).
    Check(commands::check::Args),
    /// Find or fetch the public corpora (EVTX samples, SigmaHQ rules, ...).
    Data(commands::data::Args),
    /// Run Sigma rules over Windows event logs (EVTX, JSON) and list the matches.
    Hunt(commands::hunt::Args),
    /// Inspect a plugin component: world, WIT version, tasks, reward components or tool.
    Plugin(commands::plugin::Args),
    /// List the tasks of a task plugin.
    Tasks(commands::tasks::Args),
    /// Score completions with a task plugin (one, or a JSON Lines batch).
    Score(commands::score::Args),
    /// Call a tool plugin by hand.
    Tool(commands::tool::Args),
    /// Serve rewards over HTTP for other trainers (TRL, verl, OpenRLHF).
    Serve(commands::serve::Args),
    /// Train a model with GRPO on a task plugin's tasks and rewards (after an SFT warm start
    /// when the config has an `sft:` section).
    Run(commands::run::Args),
    /// Supervised fine-tuning on a task plugin's reference answers (the warm start before GRPO).
    Sft(commands::sft::Args),
    /// Evaluate a model (OpenAI-compatible server or local) on a task plugin's tasks.
    Eval(Box<commands::eval::Args>),
    /// Combine eval reports into one Markdown table (models as rows).
    EvalCompare(commands::eval::CompareArgs),
    /// Inspect a model (architecture, parameters, dtypes, chat template, special tokens) or
    /// measure a text's perplexity under it (llama.cpp's scheme).
    Model(commands::model::Args),
}

/// mimalloc, tuned by `tune_for_tensors` below (why: `sigmaforge_model::process`).
#[global_allocator]
static ALLOCATOR: sigmaforge_model::process::Allocator = sigmaforge_model::process::Allocator;

fn main() -> ExitCode {
    // Before any tensor work or thread: freed tensor buffers stay in the process for reuse, and
    // denormal floats flush to zero (threads inherit it).
    sigmaforge_model::process::tune_for_tensors();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => commands::check::run(args),
        Command::Data(args) => commands::data::run(args),
        Command::Hunt(args) => commands::hunt::run(args),
        Command::Plugin(args) => commands::plugin::run(args),
        Command::Tasks(args) => commands::tasks::run(args),
        Command::Score(args) => commands::score::run(args),
        Command::Tool(args) => commands::tool::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Sft(args) => commands::sft::run(args),
        Command::Eval(args) => commands::eval::run(*args),
        Command::EvalCompare(args) => commands::eval::run_compare(args),
        Command::Model(args) => commands::model::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
