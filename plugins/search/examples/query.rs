//! Query a corpus natively, without the wasm runtime (handy while building your own corpus):
//! `cargo run --release -p search-plugin --example query -- [--corpus DIR] [-k N] <query words>`
//! DIR defaults to the knowledge folder of the data directory ($SIGMAFORGE_DATA or ../shared/data).

use std::path::PathBuf;
use std::process::ExitCode;

use search_plugin::{SearchConfig, SearchTool};

fn main() -> ExitCode {
    let mut corpus: Option<PathBuf> = None;
    let mut k: Option<String> = None;
    let mut words = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--corpus" => corpus = args.next().map(PathBuf::from),
            "-k" => k = args.next(),
            _ => words.push(arg),
        }
    }
    let corpus = corpus.unwrap_or_else(|| sigmaforge_data::for_tests().join("knowledge"));
    let config = SearchConfig { corpus_dir: corpus, ..SearchConfig::default() };
    let (tool, warnings) = match SearchTool::load(config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &warnings {
        eprintln!("warning: skipped corpus line {w}");
    }
    let mut call = serde_json::json!({ "query": words.join(" ") });
    if let Some(k) = k {
        call["k"] = k.parse::<u64>().map_or(serde_json::Value::String(k), Into::into);
    }
    match tool.invoke(&call.to_string()) {
        Ok(out) => {
            let value: serde_json::Value = serde_json::from_str(&out).expect("the tool writes JSON");
            println!("{}", serde_json::to_string_pretty(&value).expect("JSON value prints"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
