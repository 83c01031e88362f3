#!/usr/bin/env bash
# GPU check (issue 7): builds SigmaForge with CUDA, runs the GPU equivalence tests, and
# benchmarks a GRPO step and decoding for a Qwen3-0.6B-shaped model (random weights, bf16)
# against PyTorch + transformers on the same card, printing the ratio. Under 10 minutes on an
# H100 once the Rust dependencies are compiled.
#
#   scripts/gpu-check.sh [OUT_DIR]        # default OUT_DIR: gpu-check-results/
#
# Needs: an NVIDIA GPU + driver, nvcc (CUDA >= 11.8), cargo, python3 with torch and
# transformers. Results: OUT_DIR/{nvidia-smi.txt,tests.log,sigmaforge.txt,pytorch.txt,ratio.md};
# copy the card and figures into BENCHMARKS.md ("GPU check").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-$root/gpu-check-results}"
mkdir -p "$out"

command -v nvidia-smi >/dev/null || { echo "gpu-check: nvidia-smi not found: this machine has no NVIDIA driver" >&2; exit 2; }
command -v nvcc >/dev/null || { echo "gpu-check: nvcc not found (scripts/install-cuda-toolkit.sh installs it on Debian)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$out/nvidia-smi.txt"
# candle compiles its kernels for this compute capability (e.g. 90 for H100/H200).
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '.')}"

echo "== build (cuda, compute capability $CUDA_COMPUTE_CAP)"
cargo build --release -p sigmaforge --features cuda

echo "== GPU equivalence and training tests"
cargo test --release -p sigmaforge-trainer --features cuda --test cuda 2>&1 | tee "$out/tests.log"

echo "== benchmark: SigmaForge (candle, CUDA)"
cargo bench -p sigmaforge-trainer --features cuda --bench gpu_throughput 2>&1 | tee "$out/sigmaforge.txt"

echo "== benchmark: PyTorch + transformers"
PYTHONUNBUFFERED=1 python3 scripts/gpu-check/torch_bench.py 2>&1 | tee "$out/pytorch.txt"

echo "== ratio (SigmaForge / PyTorch, tokens per second)"
python3 scripts/gpu-check/compare.py "$out/sigmaforge.txt" "$out/pytorch.txt" | tee "$out/ratio.md"
