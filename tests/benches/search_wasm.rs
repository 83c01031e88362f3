//! The search tool as the trainer runs it: the built `search_plugin.wasm` inside the SigmaForge
//! runtime (wasmtime, WASI p2, the data directory granted read-only at /data).
//! Run: `cargo bench -p sigmaforge-e2e --bench search_wasm`.
//!
//! Reports: plugin load (compile from the .cwasm cache + instantiate + `init`), the guest's own
//! `init` time from its log line, and `invoke` latency (host → guest → JSON back).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sigmaforge_runtime::{LoadedPlugin, LogSink, PluginConfig, Runtime, RuntimeOptions};

const QUERIES: &[&str] = &[
    "new process created command line 4688",
    "LSASS memory dump",
    "sysmon event 1 process creation",
    "registry run keys persistence T1547.001",
    "EventID 4688",
    "powershell script block logging 4104",
    "logon type 3 network",
    "field names process_creation windows",
    "scheduled task created",
    "mimikatz",
];

/// CPU time of the whole process (user + system) from /proc/self/stat, in 10 ms ticks (Linux;
/// None elsewhere). The development VM's 2 cores are shared, so wall time alone overstates cost.
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn cpu_since(before: Option<Duration>) -> String {
    match (before, process_cpu_time()) {
        (Some(b), Some(a)) => format!("{:.0} ms", ms(a - b)),
        _ => "n/a".to_owned(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let wasm = sigmaforge_e2e::wasm_plugin("search-plugin");
    let data = sigmaforge_data::for_tests();
    let cache = std::env::temp_dir().join(format!("sigmaforge-search-bench-{}", std::process::id()));
    let log_lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = {
        let lines = Arc::clone(&log_lines);
        LogSink::new(move |_plugin, _level, message| lines.lock().unwrap().push(message.to_owned()))
    };
    let rt = Runtime::new(RuntimeOptions { cache_dir: Some(cache.clone()), log: sink, ..RuntimeOptions::default() }).expect("runtime starts");
    let mut config = PluginConfig::from_path(&wasm).with_data(&data);
    config.limits.instances = 1;

    let t = Instant::now();
    drop(rt.load(&config).expect("search plugin loads"));
    println!("first load (compile + cache write + instantiate + init): {:.1} ms", ms(t.elapsed()));

    let mut loads = Vec::new();
    let mut plugin = None;
    let cpu = process_cpu_time();
    for _ in 0..5 {
        let t = Instant::now();
        let loaded = rt.load(&config).expect("search plugin loads");
        loads.push(t.elapsed());
        plugin = Some(loaded);
    }
    loads.sort();
    let guest_init: Vec<String> = log_lines.lock().unwrap().iter().filter(|l| l.starts_with("loaded ")).cloned().collect();
    println!(
        "cached load (instantiate + init): wall median {:.1} ms, min {:.1} ms; CPU for all 5 runs {}",
        ms(percentile(&loads, 0.5)),
        ms(loads[0]),
        cpu_since(cpu)
    );
    println!("guest init log: {}", guest_init.last().map_or("(none)", String::as_str));

    let Some(LoadedPlugin::Tool(tool)) = plugin else { panic!("search.wasm is not a tool plugin") };
    let calls: Vec<String> = QUERIES.iter().map(|q| serde_json::json!({ "query": q }).to_string()).collect();
    for call in &calls {
        tool.invoke(call).expect("query runs");
    }
    let mut all = Vec::new();
    let cpu = process_cpu_time();
    for (q, call) in QUERIES.iter().zip(&calls) {
        let mut times = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            let out = tool.invoke(call).expect("query runs");
            times.push(t.elapsed());
            std::hint::black_box(out);
        }
        times.sort();
        println!("invoke {q:?} (k=5): median {:.3} ms", ms(percentile(&times, 0.5)));
        all.extend(times);
    }
    let cpu = cpu_since(cpu);
    all.sort();
    println!(
        "all {} invokes: wall median {:.3} ms, p95 {:.3} ms, max {:.3} ms; CPU for all of them {cpu}",
        all.len(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.95)),
        ms(*all.last().unwrap())
    );
    let _ = std::fs::remove_dir_all(&cache);
}
