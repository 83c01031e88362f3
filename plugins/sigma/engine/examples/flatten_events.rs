//! Writes every event under a path as one flat JSON object per line (NDJSON): the field names
//! and values the engine itself matches on (System fields such as `Channel` and `EventID`, then
//! the event data), a list where a field repeats. Engines that read flat JSON events (rsigma)
//! can then run over exactly the events `sigmaforge hunt` reads; `scripts/bench-engine.sh` uses
//! it.
//!
//!   cargo run --release -p sigma-engine --example flatten_events -- <events dir or file> > events.ndjson

use std::io::{BufWriter, Write};

use serde_json::{Map, Value};
use sigma_engine::corpus::{Corpus, collect_event_files, load_event_file};
use sigma_engine::event::ValueKind;

fn main() -> std::io::Result<()> {
    let Some(root) = std::env::args_os().nth(1) else {
        eprintln!("usage: flatten_events <events dir or file>");
        std::process::exit(2);
    };
    let mut builder = Corpus::builder();
    for source in collect_event_files(std::path::Path::new(&root))? {
        builder.add(load_event_file(&source));
    }
    let (corpus, _) = builder.finish();
    let mut out = BufWriter::new(std::io::stdout().lock());
    for event in corpus.events() {
        let mut object = Map::new();
        for (key, value) in event.fields() {
            let name = corpus.table().name(*key).to_string();
            // Numbers stay numbers (EventID 1, not "1"), as an EVTX-to-JSON export writes them.
            let number = (value.kind() == ValueKind::Number).then(|| value.text().parse::<i64>().ok()).flatten();
            let text = number.map_or_else(|| Value::String(value.text().to_string()), Value::from);
            match object.get_mut(&name) {
                Some(Value::Array(list)) => list.push(text),
                Some(first) => *first = Value::Array(vec![first.take(), text]),
                None => {
                    object.insert(name, text);
                }
            }
        }
        serde_json::to_writer(&mut out, &Value::Object(object))?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
