//! A task plugin that misbehaves on request. The completion text picks the behaviour, so one
//! batch can mix hostile and ordinary completions:
//!
//! | completion            | what the plugin does                                             |
//! |-----------------------|------------------------------------------------------------------|
//! | `loop`                | spins forever                                                    |
//! | `alloc:<MiB>`         | allocates and touches that many MiB (infallible `Vec`)           |
//! | `read:<path>`         | reads a file; its first line goes into the detail                |
//! | `connect:<ip:port>`   | opens a TCP connection                                           |
//! | `panic`               | panics                                                           |
//! | `nan` / `big` / `count` / `weight` | returns NaN / 1.5 / one component too few / an infinite weight |
//! | `env`                 | reports whether any environment variable is visible              |
//! | `echo:<x>`            | ordinary score: value 1 and detail `<x>`                         |
//! | anything else         | ordinary score: value = length of the text mod 10 / 10           |
//!
//! Its `init` fails when the config key `fail-init` is set, to test load errors. Listing the
//! split `slow` takes 800 ms (forever with the config key `list-forever`).

wit_bindgen::generate!({ path: "../../../wit", world: "task-plugin" });

use exports::sigmaforge::plugin::plugin::Guest as Plugin;
use exports::sigmaforge::plugin::reward::Guest as Reward;
use exports::sigmaforge::plugin::tasks::Guest as Tasks;
use sigmaforge::plugin::host::{Level, config, log};
use sigmaforge::plugin::types::{ComponentScore, PluginInfo, Task, TaskRef};

struct Hostile;

fn component(name: &str, value: f64, weight: f64, detail: String) -> ComponentScore {
    ComponentScore { name: name.to_string(), value, weight, detail }
}

impl Plugin for Hostile {
    fn info() -> PluginInfo {
        PluginInfo { name: "hostile".into(), version: "0.1.0".into(), description: "misbehaves on request".into() }
    }

    fn init() -> Result<(), String> {
        if let Some(reason) = config("fail-init") {
            return Err(format!("refusing to start: {reason}"));
        }
        log(Level::Info, "hostile plugin ready");
        Ok(())
    }
}

impl Tasks for Hostile {
    fn splits() -> Vec<String> {
        vec!["train".into(), "slow".into()]
    }

    fn list_tasks(split: String) -> Result<Vec<Task>, String> {
        // "slow": setup work longer than a score call may take (the host allows it the init
        // limit); with the config key `list-forever` it never returns (the host must stop it).
        if split == "slow" {
            let forever = config("list-forever").is_some();
            let start = std::time::Instant::now();
            let mut spin = 0u64;
            while forever || start.elapsed() < std::time::Duration::from_millis(800) {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
            return Ok(vec![Task { id: "t1".into(), split, prompt: vec![], metadata: "{}".into() }]);
        }
        if split != "train" {
            return Err(format!("no split {split}"));
        }
        Ok(vec![Task { id: "t1".into(), split, prompt: vec![], metadata: "{}".into() }])
    }
}

impl Reward for Hostile {
    fn components() -> Vec<(String, f64)> {
        vec![("ok".into(), 1.0), ("aux".into(), 0.5)]
    }

    fn score(task: TaskRef, completion: String) -> Result<Vec<ComponentScore>, String> {
        if let TaskRef::Id(id) = &task
            && id != "t1"
        {
            return Err(format!("unknown task {id}"));
        }
        let ok = |value: f64, detail: String| Ok(vec![component("ok", value, 1.0, detail), component("aux", 0.0, 0.5, String::new())]);
        let c = completion.as_str();
        if c == "loop" {
            let mut x: u64 = 1;
            loop {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                std::hint::black_box(x);
            }
        } else if let Some(mib) = c.strip_prefix("alloc:") {
            // In 16 MiB chunks: wasm32 can't express one 4 GiB Vec, but it can try to grow
            // its memory to 4 GiB piece by piece.
            let mib: usize = mib.parse().map_err(|_| "bad size".to_string())?;
            let mut chunks = Vec::new();
            for _ in 0..mib.div_ceil(16) {
                let mut c = vec![0u8; 16 << 20];
                c[8 << 20] = 1;
                chunks.push(std::hint::black_box(c));
            }
            return ok(1.0, format!("allocated {} MiB", chunks.len() * 16));
        } else if let Some(path) = c.strip_prefix("read:") {
            return match std::fs::read_to_string(path) {
                Ok(text) => ok(1.0, format!("READ OK: {}", text.lines().next().unwrap_or(""))),
                Err(e) => Err(format!("read {path}: {e}")),
            };
        } else if let Some(addr) = c.strip_prefix("connect:") {
            return match std::net::TcpStream::connect(addr) {
                Ok(_) => ok(1.0, format!("CONNECTED to {addr}")),
                Err(e) => Err(format!("connect {addr}: {e}")),
            };
        } else if c == "panic" {
            panic!("hostile plugin panics on purpose");
        } else if c == "nan" {
            return ok(f64::NAN, String::new());
        } else if c == "big" {
            return ok(1.5, String::new());
        } else if c == "count" {
            return Ok(vec![component("ok", 1.0, 1.0, String::new())]);
        } else if c == "weight" {
            return Ok(vec![component("ok", 1.0, f64::INFINITY, String::new()), component("aux", 0.0, 0.5, String::new())]);
        } else if c == "env" {
            let n = std::env::vars().count();
            return ok(1.0, format!("{n} environment variables"));
        } else if let Some(x) = c.strip_prefix("echo:") {
            return ok(1.0, x.to_string());
        }
        ok((c.len() % 10) as f64 / 10.0, format!("length {}", c.len()))
    }
}

export!(Hostile);
