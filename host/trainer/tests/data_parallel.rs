//! Data-parallel training: ranks agree on every update, the summed gradient is the
//! single-process gradient, rank 0 alone writes the run's files, a resumed job continues each
//! rank's stream, and a rank that dies stops the others with a message naming it.
//!
//! The multi-process tests re-execute this test binary as child processes (the ignored test
//! `dp_rank_child`), one per rank, with the launcher's variables (RANK, WORLD_SIZE,
//! MASTER_ADDR, MASTER_PORT) set, as torchrun would; the ranks talk over loopback TCP.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use common::*;
use sigmaforge_distributed::{Backend, LaunchEnv, init};
use sigmaforge_trainer::checkpoint;
use sigmaforge_trainer::config::RunConfig;
use sigmaforge_trainer::metrics;
use sigmaforge_trainer::parallel::DataParallel;
use sigmaforge_trainer::train::{Sample, Trainer};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn trainer_on(cfg: &RunConfig, run_dir: &Path, dp: DataParallel) -> Trainer {
    let mc = sigmaforge_model::model::ModelConfig::tiny_qwen3();
    let model = sigmaforge_model::model::CausalLm::random(&mc, cfg.lora(), 11, candle_core::DType::F32, &Device::Cpu).unwrap();
    let tok = sigmaforge_model::testing::tiny_tokenizer(mc.vocab_size).unwrap();
    let env = std::sync::Arc::new(TargetWords { max_new_tokens: cfg.generation.max_new_tokens });
    Trainer::data_parallel(cfg.clone(), model, tok, env, run_dir, dp).unwrap()
}

/// Two groups of four completions with very different lengths, so that a per-rank loss
/// normaliser would weigh them differently from the single-process one.
fn samples() -> Vec<Sample> {
    let lens = [[1usize, 2, 1, 2], [6, 5, 6, 4]];
    let mut out = Vec::new();
    for (gi, group) in lens.iter().enumerate() {
        for (i, &len) in group.iter().enumerate() {
            let completion: Vec<u32> = (0..len).map(|j| 4 + ((gi * 13 + i * 7 + j * 5) % 60) as u32).collect();
            out.push(Sample {
                prompt: vec![2, 20 + gi as u32, 40 + i as u32, 2],
                sample_logp: vec![-2.0; len],
                // Some inserted (tool-result) tokens, which the loss and its normaliser skip.
                policy_mask: (0..len).map(|j| j % 5 != 3).collect(),
                completion,
                advantage: [0.9, -0.4, 0.3, -0.8][i] * if gi == 0 { 1.0 } else { -0.7 },
            });
        }
    }
    out
}

fn flat(grads: &[(String, Option<candle_core::Tensor>)]) -> Vec<f32> {
    grads
        .iter()
        .flat_map(|(n, g)| g.as_ref().unwrap_or_else(|| panic!("{n} has no gradient")).flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The gradient each of two TCP-connected ranks ends with, rank r holding samples `split[r]`.
fn two_rank_gradients(cfg: &RunConfig, dir: &Path, split: [std::ops::Range<usize>; 2]) -> Vec<Vec<f32>> {
    // Each rank connects over TCP as it would in a real job.
    let master = format!("127.0.0.1:{}", free_port());
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let (cfg, dir, master, range) = (cfg.clone(), dir.to_path_buf(), master.clone(), split[rank].clone());
            std::thread::spawn(move || {
                let env = LaunchEnv { rank, world_size: 2, local_rank: rank, master };
                let dp = DataParallel::new(init(&env, Backend::Tcp, false).unwrap());
                let mut t = trainer_on(&cfg, &dir, dp);
                let mine: Vec<Sample> = samples().into_iter().skip(range.start).take(range.len()).collect();
                flat(&t.policy_gradient(&mine).unwrap())
            })
        })
        .collect();
    ranks.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn the_gradient_summed_over_two_ranks_is_the_single_process_gradient() {
    let cases = [
        ("token", "grpo: { loss_aggregation: token }"),
        ("sequence", "grpo: { loss_aggregation: sequence }"),
        ("constant", "grpo: { loss_aggregation: constant }"),
        (
            "lora",
            "finetune: lora\nlora: { rank: 4, alpha: 8, target_modules: [q_proj, v_proj, down_proj] }\ngrpo: { beta: 0.1, loss_aggregation: token }",
        ),
    ];
    for (aggregation, overrides) in cases {
        let cfg = tiny_config(overrides);
        let dir = temp_run_dir(&format!("grad-{aggregation}"));
        let all = samples();
        let whole = flat(&trainer_on(&cfg, &dir, DataParallel::single()).policy_gradient(&all).unwrap());

        // Each rank holds one group.
        let per_rank = two_rank_gradients(&cfg, &dir, [0..4, 4..8]);
        assert_eq!(per_rank[0], per_rank[1], "{aggregation}: ranks must hold bit-identical gradients");
        let scale = whole.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(scale > 1e-3, "{aggregation}: the gradient is ~0, the test would prove nothing");
        let err = max_diff(&per_rank[0], &whole);
        assert!(err <= 1e-6 * scale.max(1.0), "{aggregation}: all-reduced gradient differs from the single-process one by {err} (scale {scale})");

        // The same halves with per-rank normalisers (each rank normalising only its own samples)
        // would give a different gradient: this is what the global normaliser fixes.
        {
            let mut naive = vec![0f32; whole.len()];
            for half in [&all[..4], &all[4..]] {
                let half: Vec<Sample> = half
                    .iter()
                    .map(|s| Sample {
                        prompt: s.prompt.clone(),
                        completion: s.completion.clone(),
                        sample_logp: s.sample_logp.clone(),
                        policy_mask: s.policy_mask.clone(),
                        advantage: s.advantage,
                    })
                    .collect();
                let g = flat(&trainer_on(&cfg, &dir, DataParallel::single()).policy_gradient(&half).unwrap());
                naive.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
            assert!(max_diff(&naive, &whole) > 1e-3 * scale, "{aggregation}: local normalisers should not match");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn zero2_gradients_equal_the_single_process_gradient() {
    let zero2 = "shard_optimizer_state: true, shard_gradients: true";
    let cases = [
        ("one segment", format!("training: {{ {zero2} }}")),
        ("layer segments", format!("training: {{ {zero2}, memory: {{ activation_checkpointing: true, logits_chunk: 2 }} }}")),
        (
            "lora",
            format!(
                "training: {{ {zero2}, memory: {{ activation_checkpointing: true, logits_chunk: 0 }} }}\nfinetune: lora\nlora: {{ rank: 4, alpha: 8, target_modules: [q_proj, v_proj, down_proj] }}"
            ),
        ),
    ];
    for (name, overrides) in cases {
        let cfg = tiny_config(&overrides);
        let dir = temp_run_dir(&format!("grad-zero2-{}", name.replace(' ', "-")));
        // Uneven shares: 1 sample (one micro-batch of 3) against 7 (three), and an empty rank.
        for (split, samples_used) in [([0..1, 1..8], 0..8), ([0..0, 4..8], 4..8)] {
            let used: Vec<Sample> = samples().into_iter().skip(samples_used.start).take(samples_used.len()).collect();
            let whole = flat(&trainer_on(&cfg, &dir, DataParallel::single()).policy_gradient(&used).unwrap());
            let per_rank = two_rank_gradients(&cfg, &dir, split.clone());
            assert_eq!(per_rank[0], per_rank[1], "{name} {split:?}: ranks must hold bit-identical gradients");
            let scale = whole.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(scale > 1e-3, "{name}: the gradient is ~0, the test would prove nothing");
            let err = max_diff(&per_rank[0], &whole);
            assert!(err <= 1e-6 * scale.max(1.0), "{name} {split:?}: ZeRO-2 gradient differs from the single-process one by {err} (scale {scale})");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_rank_without_samples_still_gets_the_others_gradient() {
    // E.g. every group of rank 0 had equal rewards and was dropped.
    let cfg = tiny_config("grpo: { loss_aggregation: token, drop_zero_variance_groups: true }");
    let dir = temp_run_dir("grad-empty-rank");
    let only_second: Vec<Sample> = samples().into_iter().skip(4).collect();
    let whole = flat(&trainer_on(&cfg, &dir, DataParallel::single()).policy_gradient(&only_second).unwrap());
    let per_rank = two_rank_gradients(&cfg, &dir, [0..0, 4..8]);
    assert_eq!(per_rank[0], per_rank[1]);
    let scale = whole.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(max_diff(&per_rank[0], &whole) <= 1e-6 * scale.max(1.0));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- multi-process ----

const CHILD: &str = "SIGMAFORGE_TEST_DP_CHILD";

/// Config of the multi-process runs: 4 steps, checkpoints every 2, no exports. `sharding`:
/// "" replicated, "zero1" optimizer state sharded, "zero2" gradients too, with activation
/// checkpointing and chunked logits (so gradients are reduced layer by layer).
fn dp_config(prompts: usize, sharding: &str) -> RunConfig {
    let extra = match sharding {
        "" => "",
        "zero1" => ", shard_optimizer_state: true",
        "zero2" => ", shard_optimizer_state: true, shard_gradients: true, memory: { activation_checkpointing: true, logits_chunk: 2 }",
        other => panic!("unknown sharding {other:?}"),
    };
    tiny_config(&format!("training: {{ steps: 4, prompts_per_step: {prompts}, passes_per_batch: 2{extra} }}\ncheckpoint: {{ every: 2, keep: 0 }}"))
}

/// Not a test by itself: the body of one rank, spawned by the tests below. Reads the launcher's
/// variables like `sigmaforge run`, trains, and writes its final weights next to its run dir.
#[test]
#[ignore = "child process of the data-parallel tests"]
fn dp_rank_child() {
    let spec = std::env::var(CHILD).expect("spawned by a data-parallel test");
    let [run_dir, prompts, stop_after, resume, exit_after, sharding]: [&str; 6] = spec.split('|').collect::<Vec<_>>().try_into().unwrap();
    let launch = LaunchEnv::from_env().unwrap();
    let dp = DataParallel::new(init(&launch, Backend::Auto, false).unwrap());
    let run_dir = PathBuf::from(run_dir);
    let mut t = trainer_on(&dp_config(prompts.parse().unwrap(), sharding), &run_dir, dp);
    if !resume.is_empty() {
        t.restore(&checkpoint::load(Path::new(resume), &Device::Cpu).unwrap()).unwrap();
    }
    let stop = stop_after.parse::<u64>().ok();
    let summary = t.run(false, stop.or(exit_after.parse().ok())).unwrap();
    if !exit_after.is_empty() {
        eprintln!("rank {} exits on purpose after step {}", launch.rank, summary.steps);
        std::process::exit(3);
    }
    let bytes: Vec<u8> = weights(&t).iter().flat_map(|(_, w)| w.iter().flat_map(|x| x.to_le_bytes())).collect();
    std::fs::write(run_dir.join(format!("weights-{}.bin", launch.rank)), bytes).unwrap();
    let moments: usize = t.optimizer().state().0.values().map(|m| m.elem_count()).sum();
    std::fs::write(run_dir.join(format!("moments-{}.txt", launch.rank)), moments.to_string()).unwrap();
}

/// How many optimizer-moment values rank `rank` held at the end.
fn rank_moments(dir: &Path, rank: usize) -> usize {
    std::fs::read_to_string(dir.join(format!("moments-{rank}.txt"))).unwrap().parse().unwrap()
}

struct Job {
    children: Vec<Child>,
    dirs: Vec<PathBuf>,
}

/// Starts `world` ranks; rank r runs in `<base>-rank-r` (separate directories, so that what each
/// rank wrote can be told apart). `exit_after`: (rank, steps) to kill one rank early.
fn launch(base: &str, world: usize, prompts: usize, stop_after: Option<u64>, resume: Option<&Path>, exit_after: Option<(usize, u64)>) -> Job {
    launch_with(base, world, prompts, stop_after, resume, exit_after, "")
}

fn launch_with(
    base: &str,
    world: usize,
    prompts: usize,
    stop_after: Option<u64>,
    resume: Option<&Path>,
    exit_after: Option<(usize, u64)>,
    sharding: &str,
) -> Job {
    let port = free_port();
    let mut children = Vec::new();
    let mut dirs = Vec::new();
    for rank in 0..world {
        let dir = PathBuf::from(format!("{base}-rank-{rank}"));
        std::fs::create_dir_all(&dir).unwrap();
        let exit = exit_after.filter(|(r, _)| *r == rank).map(|(_, s)| s.to_string()).unwrap_or_default();
        let spec = format!(
            "{}|{prompts}|{}|{}|{exit}|{sharding}",
            dir.display(),
            stop_after.map(|s| s.to_string()).unwrap_or_default(),
            resume.map(|p| p.display().to_string()).unwrap_or_default(),
        );
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["dp_rank_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD, spec)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            // Two cores for all ranks: one compute thread each.
            .env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push(child);
        dirs.push(dir);
    }
    Job { children, dirs }
}

/// Waits for every rank (at most `limit`), returning (success, stderr) by rank.
fn wait(job: &mut Job, limit: Duration) -> Vec<(bool, String)> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    for (rank, child) in job.children.iter_mut().enumerate() {
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                for c in job.children.iter_mut() {
                    let _ = c.kill();
                }
                panic!("rank {rank} did not finish within {limit:?}: a hang");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        out.push((status.success(), err));
    }
    out
}

/// Waits for every rank of `job` and fails the test, with the rank's log, unless all succeeded.
fn ok(job: &mut Job, what: &str) {
    for (rank, (ok, err)) in wait(job, Duration::from_secs(180)).into_iter().enumerate() {
        assert!(ok, "{what}: rank {rank} failed:\n{err}");
    }
}

fn rank_weights(dir: &Path, rank: usize) -> Vec<u8> {
    std::fs::read(dir.join(format!("weights-{rank}.bin"))).unwrap_or_else(|e| panic!("rank {rank} wrote no weights: {e}"))
}

/// (step, reward) of every rollout a rank logged.
fn logged_rewards(dir: &Path, rank: usize) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(dir.join(format!("rollouts-rank-{rank}.jsonl"))).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["reward"].as_f64().unwrap())
        })
        .collect()
}

fn check_job(job: &Job, world: usize, prompts: usize, base_name: &str) {
    let g = 4; // tiny_config's rollouts_per_prompt
    // Every rank ends with bit-identical weights, and they moved.
    let w0 = rank_weights(&job.dirs[0], 0);
    for r in 1..world {
        assert!(rank_weights(&job.dirs[r], r) == w0, "{base_name}: rank {r}'s weights differ from rank 0's");
    }
    // Rank 0 alone wrote metrics and checkpoints; every rank logged its own rollouts.
    let m = metrics::read_all(&job.dirs[0]).unwrap();
    assert_eq!(m.iter().map(|m| m.step).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(checkpoint::list(&job.dirs[0]).unwrap().iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2, 4]);
    for r in 1..world {
        assert!(!job.dirs[r].join(metrics::METRICS_FILE).exists(), "rank {r} wrote metrics");
        assert!(checkpoint::list(&job.dirs[r]).unwrap().is_empty(), "rank {r} wrote checkpoints");
        assert!(!job.dirs[r].join(metrics::PLOT_FILE).exists(), "rank {r} drew the plot");
    }
    // The metrics are global: all B×G rollouts, and the mean reward over every rank's rollouts.
    let mut rewards = Vec::new();
    for r in 0..world {
        let mine = logged_rewards(&job.dirs[r], r);
        let share = sigmaforge_distributed::shard(prompts, r, world).len();
        assert_eq!(mine.len(), 4 * share * g, "{base_name}: rank {r} logged {} rollouts over 4 steps", mine.len());
        rewards.extend(mine);
    }
    for rec in &m {
        assert_eq!(rec.rollouts, prompts * g, "step {}: metrics count {} rollouts", rec.step, rec.rollouts);
        assert_eq!(rec.groups, prompts);
        let at: Vec<f64> = rewards.iter().filter(|(s, _)| *s == rec.step).map(|(_, r)| *r).collect();
        assert_eq!(at.len(), prompts * g);
        let mean = at.iter().sum::<f64>() / at.len() as f64;
        assert!((rec.reward.mean - mean).abs() < 1e-9, "step {}: metrics mean {} vs rollouts {mean}", rec.step, rec.reward.mean);
        assert!(rec.loss.is_finite() && rec.grad_norm.is_finite());
    }
    // The checkpoint holds every rank's RNG state.
    let ckpt = checkpoint::load(&job.dirs[0], &Device::Cpu).unwrap();
    assert_eq!(ckpt.state.rank_rngs.len(), world);
    assert!(ckpt.state.rank_rngs.windows(2).all(|w| w[0] != w[1]), "ranks must sample different streams");
}

fn cleanup(job: &Job) {
    for d in &job.dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn two_and_three_ranks_agree_and_a_resumed_job_continues_exactly() {
    let tmp = std::env::temp_dir().join(format!("sf-dp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let base = |name: &str| tmp.join(name).display().to_string();

    // Uninterrupted, 2 ranks × 1 prompt group each.
    let mut straight = launch(&base("straight"), 2, 2, None, None, None);
    // Same job, stopped after step 2 (its checkpoint) ...
    let mut first = launch(&base("split"), 2, 2, Some(2), None, None);
    for (rank, (ok, err)) in wait(&mut straight, Duration::from_secs(120)).into_iter().enumerate() {
        assert!(ok, "rank {rank} failed:\n{err}");
    }
    for (rank, (ok, err)) in wait(&mut first, Duration::from_secs(120)).into_iter().enumerate() {
        assert!(ok, "rank {rank} of the first half failed:\n{err}");
    }
    check_job(&straight, 2, 2, "2 ranks");
    assert!(metrics::read_all(&straight.dirs[0]).unwrap().iter().any(|m| m.reward.std > 0.0));

    // ... and resumed by both ranks from rank 0's checkpoint: same weights as the straight run.
    let ckpt = checkpoint::resolve(&first.dirs[0]).unwrap();
    assert!(ckpt.ends_with("step-000002"), "{}", ckpt.display());
    let mut second = launch(&base("split"), 2, 2, None, Some(&ckpt), None);
    for (rank, (ok, err)) in wait(&mut second, Duration::from_secs(120)).into_iter().enumerate() {
        assert!(ok, "rank {rank} of the resumed job failed:\n{err}");
    }
    assert!(rank_weights(&second.dirs[0], 0) == rank_weights(&straight.dirs[0], 0), "the resumed job ends with other weights");
    assert_eq!(metrics::read_all(&second.dirs[0]).unwrap().iter().map(|m| m.step).collect::<Vec<_>>(), vec![1, 2, 3, 4]);

    // Three ranks sharing 4 prompt groups unevenly (2 + 1 + 1).
    let mut three = launch(&base("three"), 3, 4, None, None, None);
    for (rank, (ok, err)) in wait(&mut three, Duration::from_secs(120)).into_iter().enumerate() {
        assert!(ok, "rank {rank} of 3 failed:\n{err}");
    }
    check_job(&three, 3, 4, "3 ranks");

    // A checkpoint of a 2-rank job cannot be resumed by a different number of ranks.
    let mut wrong = launch(&base("wrong"), 3, 4, None, Some(&ckpt), None);
    let results = wait(&mut wrong, Duration::from_secs(60));
    assert!(results.iter().all(|(ok, _)| !ok), "resuming with another world size must fail");
    assert!(results[0].1.contains("WORLD_SIZE=2"), "{}", results[0].1);

    for job in [&straight, &first, &three, &wrong] {
        cleanup(job);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_rank_that_dies_stops_the_others_with_its_number() {
    let tmp = std::env::temp_dir().join(format!("sf-dp-dies-{}", std::process::id()));
    let started = Instant::now();
    // Rank 1 leaves after step 1; rank 0 is in step 2's collectives by then.
    let mut job = launch(&tmp.join("dies").display().to_string(), 2, 2, None, None, Some((1, 1)));
    let results = wait(&mut job, Duration::from_secs(60));
    assert!(started.elapsed() < Duration::from_secs(60));
    let (ok0, err0) = &results[0];
    assert!(!ok0, "rank 0 must fail when rank 1 is gone");
    assert!(err0.contains("rank 1 closed the connection"), "rank 0's error should name rank 1:\n{err0}");
    assert!(err0.contains("rank 0 of 2"), "and say which rank reports it:\n{err0}");
    assert!(results[1].1.contains("exits on purpose"), "{}", results[1].1);
    cleanup(&job);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn sharded_optimizer_state_gives_the_same_weights_and_full_checkpoints() {
    let tmp = std::env::temp_dir().join(format!("sf-dp-zero1-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let base = |name: &str| tmp.join(name).display().to_string();
    let mut plain = launch(&base("plain"), 2, 2, None, None, None);
    let mut sharded = launch_with(&base("sharded"), 2, 2, None, None, None, "zero1");
    ok(&mut plain, "replicated");
    ok(&mut sharded, "sharded");
    check_job(&sharded, 2, 2, "sharded");
    // Replicated: each rank holds all moments (2 per trainable value); sharded: a share each,
    // together all of them.
    let all = rank_moments(&plain.dirs[0], 0);
    assert_eq!(rank_moments(&plain.dirs[1], 1), all);
    let (m0, m1) = (rank_moments(&sharded.dirs[0], 0), rank_moments(&sharded.dirs[1], 1));
    assert_eq!(m0 + m1, all, "the shards must cover every moment once");
    assert!(m0 < all * 2 / 3 && m1 < all * 2 / 3, "unbalanced shards: {m0} + {m1}");
    // Each owner takes exactly the step every rank takes without sharding: same bits.
    assert!(rank_weights(&sharded.dirs[0], 0) == rank_weights(&plain.dirs[0], 0), "ZeRO-1 changed the result");
    // The checkpoint holds every parameter's moments, gathered from both ranks, equal to the
    // replicated run's.
    let (a, b) = (checkpoint::load(&sharded.dirs[0], &Device::Cpu).unwrap(), checkpoint::load(&plain.dirs[0], &Device::Cpu).unwrap());
    assert_eq!(a.optimizer.len(), b.optimizer.len());
    for (k, t) in &b.optimizer {
        let got = a.optimizer.get(k).unwrap_or_else(|| panic!("sharded checkpoint lacks {k}"));
        assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{k}");
    }

    // Stopped after step 2 and resumed (each rank reloads its shard): same end.
    let mut first = launch_with(&base("split"), 2, 2, Some(2), None, None, "zero1");
    ok(&mut first, "sharded first half");
    let ckpt = checkpoint::resolve(&first.dirs[0]).unwrap();
    let mut second = launch_with(&base("split"), 2, 2, None, Some(&ckpt), None, "zero1");
    ok(&mut second, "sharded resumed");
    assert!(rank_weights(&second.dirs[0], 0) == rank_weights(&plain.dirs[0], 0), "the resumed sharded job ends elsewhere");
    assert!(rank_weights(&second.dirs[1], 1) == rank_weights(&plain.dirs[0], 0));
    for job in [&plain, &sharded, &first] {
        cleanup(job);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn sharded_gradients_train_like_the_replicated_job_and_resume_exactly() {
    let tmp = std::env::temp_dir().join(format!("sf-dp-zero2-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let base = |name: &str| tmp.join(name).display().to_string();
    // Three ranks with 2 + 1 + 1 prompt groups: 3, 2 and 2 micro-batches, so the shorter ranks
    // take part in the busiest one's layer-by-layer reductions with empty segments.
    let mut plain = launch(&base("plain"), 3, 4, None, None, None);
    let mut zero2 = launch_with(&base("zero2"), 3, 4, None, None, None, "zero2");
    ok(&mut plain, "replicated");
    ok(&mut zero2, "ZeRO-2");
    check_job(&zero2, 3, 4, "ZeRO-2");
    // Same training up to the order of floating-point sums (per segment, then over ranks).
    let as_f32 = |b: Vec<u8>| -> Vec<f32> { b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect() };
    let (a, b) = (as_f32(rank_weights(&zero2.dirs[0], 0)), as_f32(rank_weights(&plain.dirs[0], 0)));
    let start: Vec<f32> = {
        let dir = tmp.join("initial");
        let t = trainer_on(&dp_config(4, "zero2"), &dir, DataParallel::single());
        weights(&t).into_iter().flat_map(|(_, w)| w).collect()
    };
    let (err, moved) = (max_diff(&a, &b), max_diff(&b, &start));
    assert!(moved > 1e-2, "training moved the weights by only {moved}: the comparison would prove nothing");
    // Adam turns sum-order noise in near-zero gradient elements into visible steps, so the
    // bound is loose, but far below how far training moved the weights.
    assert!(err < 1e-3 && err < moved / 50.0, "ZeRO-2 weights differ from the replicated job's by {err} (training moved them by {moved})");
    // The checkpoint holds every parameter's moments, gathered on rank 0.
    let (za, pa) = (checkpoint::load(&zero2.dirs[0], &Device::Cpu).unwrap(), checkpoint::load(&plain.dirs[0], &Device::Cpu).unwrap());
    assert_eq!(za.optimizer.len(), pa.optimizer.len());

    // Stopped after step 2 and resumed: the same bits as the uninterrupted ZeRO-2 job.
    let mut first = launch_with(&base("split"), 3, 4, Some(2), None, None, "zero2");
    ok(&mut first, "ZeRO-2 first half");
    let ckpt = checkpoint::resolve(&first.dirs[0]).unwrap();
    let mut second = launch_with(&base("split"), 3, 4, None, Some(&ckpt), None, "zero2");
    ok(&mut second, "ZeRO-2 resumed");
    for r in 0..3 {
        assert!(rank_weights(&second.dirs[r], r) == rank_weights(&zero2.dirs[0], 0), "rank {r} of the resumed ZeRO-2 job ends elsewhere");
    }
    for job in [&plain, &zero2, &first] {
        cleanup(job);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
