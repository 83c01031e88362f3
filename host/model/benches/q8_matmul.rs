//! The quantised base's matmul kernels side by side (BENCHMARKS.md, "Decoding against
//! llama.cpp"). Run: `cargo bench -p sigmaforge-model --bench q8_matmul`
//!
//! For each linear shape of SmolLM2-135M (and its tied vocabulary head) and 1, 8 and 256 input
//! rows (one decoding row, a B=8 decoding step, a prefill): microseconds per call and effective
//! GFLOP/s of (a) `QuantMatmul` — our AVX-512 VNNI kernel where the CPU has it, (b) candle's own
//! Q8_0 kernel on the same weight (`QMatMul`), (c) the f32 GEMM on the dequantised weight.
//! A plain timing harness (medians), like the project's other benches.

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use sigmaforge_model::model::QuantMatmul;
use sigmaforge_model::rng::SamplerRng;

fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut rng = SamplerRng::new(seed);
    let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32 * 0.5).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

/// Median time of `f`, repeated for about `budget` (at least 5 times).
fn time(budget: Duration, mut f: impl FnMut()) -> Duration {
    f(); // warm: packing, caches
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5 || start.elapsed() < budget {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let budget = Duration::from_millis(300);
    println!(
        "threads: {}; VNNI kernel: {}",
        candle_core::utils::get_num_threads(),
        if std::arch::is_x86_feature_detected!("avx512vnni") { "yes" } else { "no (QuantMatmul uses candle's kernels)" }
    );
    println!("| weight [out, in] | rows | QuantMatmul µs (GFLOP/s) | candle Q8_0 µs (GFLOP/s) | f32 GEMM µs (GFLOP/s) |");
    println!("|---|---|---|---|---|");
    let shapes = [("q_proj/o_proj", 576, 576), ("k_proj/v_proj", 192, 576), ("gate/up", 1536, 576), ("down", 576, 1536), ("tied head", 49152, 576)];
    for (name, n, k) in shapes {
        let w = QTensor::quantize(&random(n, k, 1), GgmlDType::Q8_0).unwrap();
        let dense = w.dequantize(&Device::Cpu).unwrap();
        let dense_t = dense.t().unwrap();
        let ours = QuantMatmul::new(QTensor::quantize(&random(n, k, 1), GgmlDType::Q8_0).unwrap()).unwrap();
        let candle = QMatMul::from_qtensor(w).unwrap();
        for m in [1usize, 8, 256] {
            if name == "tied head" && m == 256 {
                continue; // a prefill projects only its last position
            }
            let x = random(m, k, 2);
            let flops = 2.0 * (m * n * k) as f64;
            let cell = |d: Duration| format!("{:.0} ({:.0})", d.as_secs_f64() * 1e6, flops / d.as_secs_f64() / 1e9);
            let a = time(budget, || drop(ours.forward(&x).unwrap()));
            let b = time(budget, || drop(candle.forward(&x).unwrap()));
            let c = time(budget, || drop(x.matmul(&dense_t).unwrap()));
            println!("| {name} [{n}, {k}] | {m} | {} | {} | {} |", cell(a), cell(b), cell(c));
        }
    }
}
