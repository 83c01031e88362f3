#!/usr/bin/env bash
# GPU check: runs the GPU equivalence tests and benchmarks a GRPO step and decoding
# for a Qwen3-0.6B-shaped model (random weights, bf16) against PyTorch + transformers on the
# same card, printing the ratio. Under 10 minutes on an H100 once the programs are built.
#
#   scripts/gpu-check.sh [OUT_DIR]        # default OUT_DIR: gpu-check-results/
#
# Two ways to get the programs:
# - with cargo and nvcc (CUDA >= 11.8) on the GPU machine, it builds them (`--features cuda`);
# - without cargo (the project's lent H100/H200 machines), it runs the prebuilt ones in
#   gpu-bundle/, made beforehand on any Linux machine by `scripts/gpu-bundle.sh`, with the
#   CUDA 13 libraries of the machine's PyTorch.
# Both need an NVIDIA GPU + driver and python3 with torch and transformers. Results:
# OUT_DIR/{nvidia-smi.txt,tests.log,sigmaforge.txt,pytorch.txt,ratio.md}; copy the card and
# figures into BENCHMARKS.md ("GPU check").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-$root/gpu-check-results}"
mkdir -p "$out"

command -v nvidia-smi >/dev/null || { echo "gpu-check: nvidia-smi not found: this machine has no NVIDIA driver" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$out/nvidia-smi.txt"
cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '.')"

if command -v cargo >/dev/null; then
    command -v nvcc >/dev/null || { echo "gpu-check: nvcc not found (scripts/install-cuda-toolkit.sh installs it on Debian)" >&2; exit 2; }
    # candle compiles its kernels for this compute capability (e.g. 90 for H100/H200).
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$cap}"
    echo "== build (cuda, compute capability $CUDA_COMPUTE_CAP)"
    cargo build --release -p sigmaforge --features cuda
    run_tests() { cargo test --release -p sigmaforge-trainer --features cuda --test cuda; }
    run_bench() { cargo bench -p sigmaforge-trainer --features cuda --bench gpu_throughput; }
else
    bundle="$root/gpu-bundle"
    [ -f "$bundle/cuda-tests.xz" ] && [ -f "$bundle/gpu-throughput.xz" ] || {
        echo "gpu-check: no cargo here and no gpu-bundle/; run scripts/gpu-bundle.sh $cap on a build machine and bring gpu-bundle/ along" >&2
        exit 2
    }
    cat "$bundle/MANIFEST"
    # Unpacked with python3's lzma (xz itself may be missing there).
    bin="$out/bin"
    mkdir -p "$bin"
    for prog in cuda-tests gpu-throughput; do
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bundle/$prog.xz" "$bin/$prog"
        chmod +x "$bin/$prog"
    done
    grep -q "compute capability $cap\$" "$bundle/MANIFEST" || echo "gpu-check: warning: the bundle was built for another compute capability than this GPU's ($cap)" >&2
    # cuBLAS, cuRAND, NVRTC and NCCL for CUDA 13 from the wheels PyTorch installed.
    site="$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))')"
    libs="$(find "$site/nvidia" -maxdepth 3 -type d -name lib | tr '\n' ':')"
    # The driver's libcuda.so.1, where container images mount it when ldconfig does not know it.
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
        [ -d "$d" ] && libs="$libs$d:"
    done
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
    missing="$(ldd "$bin/cuda-tests" | grep 'not found' || true)"
    [ -z "$missing" ] || { echo "gpu-check: libraries not found for the bundle:" >&2; echo "$missing" >&2; exit 2; }
    run_tests() { "$bin/cuda-tests"; }
    run_bench() { "$bin/gpu-throughput" --bench; }
fi

echo "== GPU equivalence and training tests"
# A failing step does not stop the others (a GPU session is short); the exit status says it.
failed=()
run_tests 2>&1 | tee "$out/tests.log" || failed+=("the GPU tests ($out/tests.log)")

echo "== benchmark: SigmaForge (candle, CUDA)"
run_bench 2>&1 | tee "$out/sigmaforge.txt" || failed+=("the SigmaForge benchmark ($out/sigmaforge.txt)")

echo "== benchmark: PyTorch + transformers"
PYTHONUNBUFFERED=1 python3 scripts/gpu-check/torch_bench.py 2>&1 | tee "$out/pytorch.txt" || failed+=("the PyTorch benchmark ($out/pytorch.txt)")

if [ ${#failed[@]} -eq 0 ]; then
    echo "== ratio (SigmaForge / PyTorch, tokens per second)"
    python3 scripts/gpu-check/compare.py "$out/sigmaforge.txt" "$out/pytorch.txt" | tee "$out/ratio.md"
else
    printf 'gpu-check: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
