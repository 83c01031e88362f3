//! Throughput of the CPU TCP all-reduce (BENCHMARKS.md, "Data parallel: TCP all-reduce").
//!
//! Plain timing harness (no criterion: one number per size is all we need): `world` ranks as
//! threads of this process on loopback, each summing a buffer of `n` f32 values; reports the
//! median time per all-reduce and the payload rate (n × 4 bytes / time).
//!
//! `cargo bench -p sigmaforge-distributed --bench tcp_all_reduce`

use std::net::TcpListener;
use std::time::{Duration, Instant};

use sigmaforge_distributed::{Collective, LaunchEnv, TcpCollective};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Median seconds per all-reduce of `n` floats over `world` ranks.
fn measure(world: usize, n: usize, reps: usize) -> f64 {
    let master = format!("127.0.0.1:{}", free_port());
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let env = LaunchEnv { rank, world_size: world, local_rank: rank, master: master.clone() };
            std::thread::spawn(move || {
                let mut c = TcpCollective::connect(&env, Duration::from_secs(30)).unwrap();
                let mut data = vec![rank as f32 + 0.5; n];
                c.all_reduce_sum(&mut data).unwrap(); // warm-up
                let mut times = Vec::with_capacity(reps);
                for _ in 0..reps {
                    c.barrier().unwrap();
                    let t = Instant::now();
                    c.all_reduce_sum(&mut data).unwrap();
                    times.push(t.elapsed().as_secs_f64());
                }
                times
            })
        })
        .collect();
    let mut all: Vec<Vec<f64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut times = all.swap_remove(0); // rank 0's view
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    println!("{:>5} {:>12} {:>12} {:>10}", "ranks", "floats", "ms/reduce", "MB/s");
    for world in [2, 3] {
        for n in [10_000usize, 1_000_000, 10_000_000] {
            let reps = if n >= 10_000_000 { 5 } else { 20 };
            let s = measure(world, n, reps);
            println!("{world:>5} {n:>12} {:>12.2} {:>10.0}", s * 1e3, n as f64 * 4.0 / s / 1e6);
        }
    }
}
