//! Checkpoint → resume continues a run exactly, in-process and after the process was killed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::Device;
use common::*;
use sigmaforge_trainer::checkpoint;

#[test]
fn resume_from_a_checkpoint_gives_the_same_weights_as_an_uninterrupted_run() {
    for overrides in ["", "finetune: lora\nlora: { rank: 4, alpha: 8, target_modules: [q_proj, v_proj, down_proj] }\ngrpo: { beta: 0.1 }"] {
        let cfg = tiny_config(overrides);
        let straight_dir = temp_run_dir("straight");
        let mut straight = tiny_trainer(&cfg, &straight_dir);
        let summary = straight.run(false, None).unwrap();
        assert!(summary.finished && summary.steps == 6);

        let split_dir = temp_run_dir("split");
        let mut first = tiny_trainer(&cfg, &split_dir);
        assert!(!first.run(false, Some(3)).unwrap().finished);
        drop(first);
        let mut second = tiny_trainer(&cfg, &split_dir);
        second.restore(&checkpoint::load(&split_dir, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(second.step(), 3);
        second.run(false, None).unwrap();

        let (a, b) = (weights(&straight), weights(&second));
        assert_eq!(a.len(), b.len());
        for ((name, wa), (_, wb)) in a.iter().zip(&b) {
            let max = wa.iter().zip(wb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(max <= 1e-6, "{overrides:?}: {name} differs by {max} after resume");
        }
        // The weights moved at all (a resume test on a model that does not train proves nothing).
        let init = weights(&tiny_trainer(&cfg, &temp_run_dir("init")));
        assert!(a.iter().zip(&init).any(|((_, x), (_, y))| x != y));
        // Metrics of the resumed run are one record per step, like the straight run's.
        let m = sigmaforge_trainer::metrics::read_all(&split_dir).unwrap();
        assert_eq!(m.iter().map(|m| m.step).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
        for d in [straight_dir, split_dir] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}

const CHILD_ENV: &str = "SIGMAFORGE_TEST_KILLED_RUN_DIR";

fn long_config() -> sigmaforge_trainer::config::RunConfig {
    tiny_config("training: { steps: 400, passes_per_batch: 1 }\ncheckpoint: { every: 4, keep: 2 }\ngrpo: { beta: 0.0 }")
}

/// Not a test by itself: the body of the child process that `a_killed_run_resumes_...` spawns
/// (and kills). Ignored so that a plain `cargo test` does not run a 400-step training.
#[test]
#[ignore = "child process of a_killed_run_resumes_from_its_last_checkpoint_and_finishes"]
fn killed_run_child() {
    let dir = std::env::var(CHILD_ENV).expect("spawned by the parent test with the run directory");
    let mut t = tiny_trainer(&long_config(), std::path::Path::new(&dir));
    t.run(false, None).unwrap();
}

#[test]
fn a_killed_run_resumes_from_its_last_checkpoint_and_finishes() {
    let dir = temp_run_dir("killed");
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["killed_run_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &dir)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoint::list(&dir).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the child wrote no checkpoint within 2 minutes");
        assert!(child.try_wait().unwrap().is_none(), "the child exited before its first checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Kill it after it logged rollouts of a step its newest checkpoint does not hold: the resumed
    // run re-runs that step, and its logs must not hold the step twice.
    let rollouts = dir.join("rollouts.jsonl");
    let newest_logged_step = || -> u64 {
        std::fs::read_to_string(&rollouts)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["step"].as_u64())
            .max()
            .unwrap_or(0)
    };
    while newest_logged_step() <= checkpoint::list(&dir).unwrap().last().map_or(0, |(s, _)| *s) {
        assert!(Instant::now() < deadline, "the child logged no step past its checkpoint within 2 minutes");
        assert!(child.try_wait().unwrap().is_none(), "the child exited early");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child finished before it could be killed; make the run longer");

    let ckpt = checkpoint::load(&dir, &Device::Cpu).unwrap();
    let killed_at = ckpt.state.step;
    assert!(killed_at > 0 && killed_at < 400, "{killed_at}");
    let mut resumed = tiny_trainer(&long_config(), &dir);
    resumed.restore(&ckpt).unwrap();
    let summary = resumed.run(false, None).unwrap();
    assert!(summary.finished);
    assert_eq!(resumed.step(), 400);
    let steps: Vec<u64> = sigmaforge_trainer::metrics::read_all(&dir).unwrap().iter().map(|m| m.step).collect();
    assert_eq!(steps, (1..=400).collect::<Vec<_>>(), "every step logged once, none lost or doubled");
    let mut per_step = std::collections::BTreeMap::<u64, usize>::new();
    for line in std::fs::read_to_string(&rollouts).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("rollouts.jsonl holds a broken line ({e}): {line}"));
        *per_step.entry(v["step"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(per_step.keys().copied().collect::<Vec<_>>(), (1..=400).collect::<Vec<_>>());
    let per = per_step[&1];
    let doubled: Vec<_> = per_step.iter().filter(|(_, n)| **n != per).collect();
    assert!(doubled.is_empty(), "rollouts.jsonl holds re-run steps twice (step: lines, expected {per}): {doubled:?}");

    // And it ends where an uninterrupted run ends.
    let straight_dir = temp_run_dir("killed-straight");
    let mut straight = tiny_trainer(&long_config(), &straight_dir);
    straight.run(false, None).unwrap();
    for ((name, a), (_, b)) in weights(&straight).iter().zip(&weights(&resumed)) {
        let max = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(max <= 1e-6, "{name} differs by {max}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&straight_dir).unwrap();
}
