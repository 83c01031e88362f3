//! Load time and query latency of the search tool, natively.
//! Run: `cargo bench -p search-plugin --bench search` (data from `sigmaforge_data::for_tests()`).
//! Load = read every JSONL file + parse + build the index (what `init` does in the plugin);
//! query = `SearchTool::invoke` end to end (argument parsing, ranking, snippets, result JSON).

use std::time::{Duration, Instant};

use search_plugin::{SearchConfig, SearchTool};

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

/// CPU time this thread has run, from /proc/thread-self/schedstat (Linux; None elsewhere). The
/// development VM's 2 cores are shared with other jobs, so wall time alone overstates cost.
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(stat.split_whitespace().next()?.parse().ok()?))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let dir = sigmaforge_data::for_tests().join("knowledge");
    let config = SearchConfig { corpus_dir: dir.clone(), ..SearchConfig::default() };

    let mut reads = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        std::hint::black_box(search_plugin::load_dir(&dir).expect("corpus loads"));
        reads.push(t.elapsed());
    }
    reads.sort();
    println!("read + parse JSONL only: median {:.1} ms", percentile(&reads, 0.5).as_secs_f64() * 1e3);

    let mut loads = Vec::new();
    let mut cpu = Vec::new();
    let mut tool = None;
    for _ in 0..7 {
        let c = thread_cpu_time();
        let t = Instant::now();
        let (loaded, _) = SearchTool::load(config.clone()).expect("corpus loads");
        loads.push(t.elapsed());
        if let (Some(before), Some(after)) = (c, thread_cpu_time()) {
            cpu.push(after - before);
        }
        tool = Some(loaded);
    }
    cpu.sort();
    let tool = tool.unwrap();
    loads.sort();
    println!(
        "load {} docs, {} terms from {}: wall median {:.1} ms, min {:.1} ms; CPU median {} (7 runs)",
        tool.index().len(),
        tool.index().vocabulary_len(),
        dir.display(),
        percentile(&loads, 0.5).as_secs_f64() * 1e3,
        loads[0].as_secs_f64() * 1e3,
        if cpu.is_empty() { "n/a".to_owned() } else { format!("{:.1} ms", percentile(&cpu, 0.5).as_secs_f64() * 1e3) }
    );

    let calls: Vec<String> = QUERIES.iter().map(|q| serde_json::json!({ "query": q }).to_string()).collect();
    for call in &calls {
        tool.invoke(call).expect("query runs"); // warm-up
    }
    let mut all = Vec::new();
    let cpu_before = thread_cpu_time();
    for (q, call) in QUERIES.iter().zip(&calls) {
        let mut times = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let out = tool.invoke(call).unwrap();
            times.push(t.elapsed());
            std::hint::black_box(out);
        }
        times.sort();
        println!("query {q:?} (k=5): median {:.3} ms", percentile(&times, 0.5).as_secs_f64() * 1e3);
        all.extend(times);
    }
    let cpu_per_query = match (cpu_before, thread_cpu_time()) {
        (Some(before), Some(after)) => format!("{:.3} ms", (after - before).as_secs_f64() * 1e3 / all.len() as f64),
        _ => "n/a".to_owned(),
    };
    all.sort();
    println!(
        "all {} queries: wall median {:.3} ms, p95 {:.3} ms, max {:.3} ms; mean CPU per query {cpu_per_query}",
        all.len(),
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.95).as_secs_f64() * 1e3,
        all.last().unwrap().as_secs_f64() * 1e3
    );
}
