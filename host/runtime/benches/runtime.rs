//! Plugin-runtime benchmark: compile vs cached load, instance start (instantiate + init),
//! per-call overhead, and warm batch scoring.
//!
//! ```text
//! cargo bench -p sigmaforge-runtime --bench runtime -- --plugin <file.wasm> [--data <dir>]
//!     [--completion <text>] [--task <id>] [--batch <file.jsonl>] [--instances N] [--iters N]
//! ```
//! `--batch` lines are `{"task": id, "completion": text}` (as `sigmaforge score --batch`).
//! Without `--batch`, the warm batch is 64 copies of (`--task`, `--completion`).
//! Prints medians (and p90) over `--iters` rounds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sigmaforge_runtime::{LoadedPlugin, LogSink, PluginConfig, Runtime, RuntimeOptions, TaskPlugin, TaskRef};

struct Opts {
    plugin: PathBuf,
    data: Option<PathBuf>,
    task: Option<String>,
    completion: String,
    batch: Option<PathBuf>,
    instances: usize,
    iters: usize,
}

fn parse() -> Result<Opts> {
    let mut o = Opts { plugin: PathBuf::new(), data: None, task: None, completion: String::new(), batch: None, instances: 0, iters: 20 };
    let mut args = std::env::args().skip(1);
    let mut have_plugin = false;
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--plugin" => {
                o.plugin = val()?.into();
                have_plugin = true;
            }
            "--data" => o.data = Some(val()?.into()),
            "--task" => o.task = Some(val()?),
            "--completion" => o.completion = val()?,
            "--batch" => o.batch = Some(val()?.into()),
            "--instances" => o.instances = val()?.parse()?,
            "--iters" => o.iters = val()?.parse()?,
            _ => {} // cargo passes --bench
        }
    }
    if !have_plugin {
        bail!(
            "usage: cargo bench -p sigmaforge-runtime --bench runtime -- --plugin <file.wasm> [--data DIR] [--task ID] [--completion TEXT] [--batch FILE.jsonl] [--instances N] [--iters N]"
        );
    }
    Ok(o)
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let med = v[v.len() / 2];
    let p90 = v[(v.len() * 9 / 10).min(v.len() - 1)];
    format!("median {:>10.3?}  p90 {:>10.3?}  (n={})", med, p90, v.len())
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn load(rt: &Runtime, o: &Opts) -> Result<TaskPlugin> {
    let mut cfg = PluginConfig::from_path(&o.plugin);
    if let Some(d) = &o.data {
        cfg = cfg.with_data(d);
    }
    cfg.limits.instances = o.instances;
    match rt.load(&cfg)? {
        LoadedPlugin::Task(t) => Ok(t),
        LoadedPlugin::Tool(_) => bail!("{} is a tool plugin; this bench scores", o.plugin.display()),
    }
}

fn main() -> Result<()> {
    let o = parse()?;
    let cache = std::env::temp_dir().join(format!("sigmaforge-bench-cache-{}", std::process::id()));
    let opts = |cache_dir: Option<PathBuf>| RuntimeOptions { cache_dir, log: LogSink::discard(), max_instances: 256 };

    // 1. Cold load without a cache: compile + instantiate + init.
    let rt_nocache = Runtime::new(opts(None))?;
    let (_, compile) = time(|| load(&rt_nocache, &o));
    println!("load, no cache (compile + first instance + init): {compile:>10.3?}");
    drop(rt_nocache);

    // 2. Load with a warm .cwasm cache: new engine + deserialize + first instance + init.
    let rt = Runtime::new(opts(Some(cache.clone())))?;
    load(&rt, &o)?; // fills the cache
    let mut cached = Vec::new();
    for _ in 0..o.iters.min(10) {
        let (r, d) = time(|| Runtime::new(opts(Some(cache.clone()))).and_then(|rt| load(&rt, &o)));
        r?;
        cached.push(d);
    }
    println!("load, cached .cwasm (engine + deserialize + instance + init): {}", stats(cached));

    let plugin = load(&rt, &o)?;
    // 3. One more instance: Store + instantiate + init (what replacing a poisoned one costs).
    let mut starts = Vec::new();
    for _ in 0..o.iters {
        let (r, d) = time(|| plugin.bench_start_instance());
        r?;
        starts.push(d);
    }
    println!("instance start (Store + instantiate + init): {}", stats(starts));

    let task = match &o.task {
        Some(t) => TaskRef::Id(t.clone()),
        None => {
            let split = plugin.splits().first().context("plugin has no splits")?.clone();
            TaskRef::Id(plugin.list_tasks(&split)?.first().context("plugin lists no tasks")?.id.clone())
        }
    };

    // 4. Per-call: one `score` on a warm instance, single thread.
    let calls = 200;
    let mut per_call = Vec::new();
    plugin.score(&task, &o.completion);
    for _ in 0..o.iters {
        let (_, d) = time(|| {
            for _ in 0..calls {
                std::hint::black_box(plugin.score(&task, &o.completion));
            }
        });
        per_call.push(d / calls);
    }
    println!("score, one call on a warm instance (incl. guest work): {}", stats(per_call));

    // 5. Warm batch over the instance pool.
    let batch: Vec<(TaskRef, String)> = match &o.batch {
        Some(path) => std::fs::read_to_string(path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)?;
                let task = v["task"].as_str().context("batch lines need \"task\"")?;
                let completion = v["completion"].as_str().context("batch lines need \"completion\"")?;
                Ok((TaskRef::Id(task.to_string()), completion.to_string()))
            })
            .collect::<Result<_>>()?,
        None => (0..64).map(|_| (task.clone(), o.completion.clone())).collect(),
    };
    plugin.warm_up()?;
    plugin.score_batch(&batch);
    let mut batches = Vec::new();
    let mut errors = 0;
    for _ in 0..o.iters {
        let (r, d) = time(|| plugin.score_batch(&batch));
        errors += r.iter().filter(|s| s.error.is_some()).count();
        batches.push(d);
    }
    println!(
        "warm batch of {} on {} instances: {}  ({} scores with errors)",
        batch.len(),
        plugin.instances(),
        stats(batches),
        errors / o.iters.max(1)
    );
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}
