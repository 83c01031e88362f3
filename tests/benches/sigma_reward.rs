//! Benchmark of the Sigma reward (its latency targets), recorded in BENCHMARKS.md:
//!
//! 1. warm scoring of a 64-completion batch (8 prompts × 8 rollouts, mixed valid/invalid rules)
//!    through `sigma.wasm` in the plugin runtime (target ≤ 50 ms wall on 2 cores);
//! 2. the same batch natively through the `sigma-task` crate, 2 threads (target: wasm ≤ 1.5×);
//! 3. a cold `sigmaforge score` process: start-up, plugin load, corpus load (target ≤ 1 s).
//!
//! Run: `cargo bench -p sigmaforge-e2e --bench sigma_reward` (release profile; builds the
//! binary and the plugin first). Rounds of (1) and (2) are interleaved, because this VM's
//! timings drift by ±30 % between runs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sigma_task::fixtures::rollouts;
use sigma_task::{SigmaTask, TaskConfig, TaskRef};
use sigmaforge_runtime::{PluginConfig, Runtime, RuntimeOptions};

const PROMPTS: usize = 8;
const ROUNDS: usize = 15;

fn main() {
    let data = sigmaforge_data::for_tests();

    // Native task (same code the plugin runs).
    let t0 = Instant::now();
    let native = SigmaTask::load(&data, TaskConfig::default(), &|_, _| {}).expect("load sigma task natively");
    let native_init = t0.elapsed();
    let batch = build_batch(&native, &data);
    assert_eq!(batch.len(), PROMPTS * 8);

    // Wasm plugin through the runtime (compile cache warm after the first load).
    let wasm = sigmaforge_e2e::wasm_plugin("sigma-plugin");
    let rt = Runtime::new(RuntimeOptions::default()).expect("runtime");
    let mut cfg = PluginConfig::from_path(&wasm).with_data(data.clone());
    cfg.limits.instances = 2;
    let t0 = Instant::now();
    let plugin = match rt.load(&cfg).expect("load sigma.wasm") {
        sigmaforge_runtime::LoadedPlugin::Task(t) => t,
        _ => panic!("sigma.wasm is not a task plugin"),
    };
    let wasm_load = t0.elapsed();
    let wasm_batch: Vec<(sigmaforge_runtime::TaskRef, String)> =
        batch.iter().map(|(id, c)| (sigmaforge_runtime::TaskRef::Id(id.clone()), c.clone())).collect();

    // Both paths must agree before their speed is worth comparing.
    let native_scores = score_native(&native, &batch);
    let wasm_scores: Vec<f64> = plugin.score_batch(&wasm_batch).iter().map(|r| r.total).collect();
    assert_eq!(native_scores.len(), wasm_scores.len());
    for (i, (n, w)) in native_scores.iter().zip(&wasm_scores).enumerate() {
        assert!((n - w).abs() < 1e-12, "completion {i}: native {n} vs wasm {w}");
    }

    let mut native_times = Vec::new();
    let mut wasm_times = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        std::hint::black_box(score_native(&native, &batch));
        native_times.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(plugin.score_batch(&wasm_batch));
        wasm_times.push(t.elapsed());
    }
    let (nm, wm) = (median(&mut native_times), median(&mut wasm_times));

    let bin = sigmaforge_e2e::sigmaforge_bin();
    let completion = &batch[0].1;
    let mut cold = Vec::new();
    for _ in 0..5 {
        cold.push(cold_score(&bin, &wasm, &data, &batch[0].0, completion));
    }
    let cold_median = median(&mut cold);

    let valid = native_scores.iter().filter(|s| **s > 0.0).count();
    println!("sigma reward benchmark ({} events in the corpus)", native.corpus().len());
    println!(
        "  batch: {} completions ({PROMPTS} prompts x 8 rollouts), {valid} scored > 0, totals sum {:.3}",
        batch.len(),
        native_scores.iter().sum::<f64>()
    );
    println!("  native task init (corpus + train split): {:.0} ms", ms(native_init));
    println!("  wasm plugin load (compile cache, 2 instances, init): {:.0} ms", ms(wasm_load));
    println!(
        "  warm 64-batch, wasm plugin, 2 instances: median {:.1} ms (min {:.1}, max {:.1})",
        ms(wm),
        ms(wasm_times[0]),
        ms(*wasm_times.last().unwrap())
    );
    println!(
        "  warm 64-batch, native sigma-task, 2 threads: median {:.1} ms (min {:.1}, max {:.1})",
        ms(nm),
        ms(native_times[0]),
        ms(*native_times.last().unwrap())
    );
    println!("  wasm / native: {:.2}x", wm.as_secs_f64() / nm.as_secs_f64());
    println!("  cold `sigmaforge score` (process start to exit): median {:.0} ms of {} runs", ms(cold_median), cold.len());
}

/// 8 prompts spread over the train split × the 8 fixture rollouts of their reference rule.
/// Rules whose `logsource` + `detection` exceed 8 KB (about 2,000 tokens, more than a policy
/// generates per completion) are left out: the largest, a 290 KB list of driver hashes, takes
/// ~90 ms to compile on its own and would measure that one rule, not a training batch.
fn build_batch(task: &SigmaTask, data: &Path) -> Vec<(String, String)> {
    let refs = task.references("train").expect("train split");
    let rules_dir = data.join(&task.config().rules_dir);
    let usable: Vec<(&sigma_task::tasks::ReferenceRule, String)> = refs
        .iter()
        .map(|r| (r, std::fs::read_to_string(rules_dir.join(&r.path)).expect("read reference rule")))
        .filter(|(_, text)| sigma_task::fixtures::reference_answer(text).len() <= 8 * 1024)
        .collect();
    let step = usable.len() / PROMPTS;
    let mut batch = Vec::new();
    for (r, text) in usable.iter().step_by(step).take(PROMPTS) {
        for rollout in rollouts(text) {
            batch.push((format!("{}#0", r.key), rollout.completion));
        }
    }
    batch
}

/// The batch on 2 threads (the VM has 2 cores), halves in parallel.
fn score_native(task: &SigmaTask, batch: &[(String, String)]) -> Vec<f64> {
    let half = batch.len() / 2;
    let run = |part: &[(String, String)]| -> Vec<f64> {
        part.iter().map(|(id, c)| task.score(TaskRef::Id(id), c).expect("score").iter().map(|c| c.value * c.weight).sum()).collect()
    };
    std::thread::scope(|s| {
        let second = s.spawn(|| run(&batch[half..]));
        let mut first = run(&batch[..half]);
        first.extend(second.join().unwrap());
        first
    })
}

fn cold_score(bin: &Path, wasm: &Path, data: &Path, task: &str, completion: &str) -> Duration {
    let dir = std::env::temp_dir().join(format!("sf-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("completion.txt");
    std::fs::write(&file, completion).unwrap();
    let t = Instant::now();
    let status = Command::new(bin)
        .args(["score", "--plugins"])
        .arg(wasm)
        .arg("--data")
        .arg(data)
        .args(["--task", task, "--completion"])
        .arg(&file)
        .arg("--json")
        .stdout(Stdio::null())
        .status()
        .expect("run sigmaforge score");
    let elapsed = t.elapsed();
    assert!(status.success(), "cold sigmaforge score failed");
    elapsed
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
