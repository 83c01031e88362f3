#!/usr/bin/env bash
# Builds the GPU check's programs on a machine *without* a GPU, for a GPU machine without a
# Rust toolchain (the project's lent H100/H200 machines have nvcc 13.0 and PyTorch cu130 but no
# cargo and no internet). `scripts/gpu-check.sh` runs the bundle there when it finds no cargo.
#
#   scripts/gpu-bundle.sh [COMPUTE_CAP]     # default 90 (H100/H200); writes gpu-bundle/
#
# CUDA comes from NVIDIA's PyPI wheels (nvcc, headers, cuBLAS, cuRAND, NVRTC, NCCL for CUDA
# 13.0), unpacked under $SIGMAFORGE_CUDA13 (default /var/tmp/sigmaforge-cuda13): the same
# libraries, by soname, that PyTorch cu130 installs on the GPU machine, where the programs find
# them through its python3. nvcc 13.0 and not newer: the driver there (580) must be able to load
# the PTX that candle's kernels are compiled to. libcuda.so itself (the driver) is needed at
# link time only: Debian's `libcuda1` or the CUDA toolkit's stub.
#
# Output (git-ignored): gpu-bundle/{cuda-tests.xz,gpu-throughput.xz,MANIFEST}; carry it to the
# GPU machine with the working tree (the device tool's `carry: ["gpu-bundle"]`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cap="${1:-90}"
cuda="${SIGMAFORGE_CUDA13:-/var/tmp/sigmaforge-cuda13}"
wheels=(
    "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88"
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-nvrtc==13.0.88"
    "nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.0.35" "nvidia-nccl-cu13==2.27.7"
)

if [ ! -x "$cuda/nvidia/cu13/bin/nvcc" ]; then
    echo "== fetching CUDA 13.0 from PyPI into $cuda"
    mkdir -p "$cuda/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$cuda/wheels" "${wheels[@]}"
    for w in "$cuda"/wheels/*.whl; do python3 -m zipfile -e "$w" "$cuda/"; done
    chmod +x "$cuda"/nvidia/cu13/bin/* "$cuda"/nvidia/cu13/nvvm/bin/*
fi
# The linker wants unversioned names; the wheels ship sonames only. The links go into the
# multiarch subfolder (link/x86_64-linux-gnu/) because gcc searches LIBRARY_PATH's multiarch
# folders before the system's, and the plain folders after: a system CUDA (Debian's 11.8
# libcudart.so, say) would otherwise win, and the kernels built by nvcc 13 would not link.
link="$cuda/link/$(gcc -print-multiarch)"
mkdir -p "$link"
for lib in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
    ln -sf "$cuda/nvidia/cu13/lib/lib$lib" "$link/lib${lib%%.so*}.so"
done
ln -sf "$cuda/nvidia/nccl/lib/libnccl.so.2" "$link/libnccl.so"
if ! ldconfig -p | grep -q 'libcuda.so ' && [ ! -e "$link/libcuda.so" ]; then
    echo "gpu-bundle: no libcuda.so to link against; install Debian's libcuda1 (non-free) or copy the CUDA toolkit's stubs/libcuda.so to $link/" >&2
    exit 2
fi

export PATH="$cuda/nvidia/cu13/bin:$PATH" CUDA_ROOT="$cuda/nvidia/cu13" CUDA_PATH="$cuda/nvidia/cu13"
export CUDA_COMPUTE_CAP="$cap" LIBRARY_PATH="$cuda/link${LIBRARY_PATH:+:$LIBRARY_PATH}"
# A target dir of its own (other CUDA version than a local toolkit build), and no
# `-C target-cpu=native` (.cargo/config.toml): the GPU machine's CPU is not this one.
export CARGO_TARGET_DIR="${SIGMAFORGE_BUNDLE_TARGET:-/var/tmp/sigmaforge-bundle-target}" RUSTFLAGS=""
nvcc --version | tail -n 1

echo "== building (compute capability $cap)"
tests=$(cargo test --release -p sigmaforge-trainer --features cuda --test cuda --no-run --message-format=json |
    python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="cuda"][-1])')
bench=$(cargo bench -p sigmaforge-trainer --features cuda --bench gpu_throughput --no-run --message-format=json |
    python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="gpu_throughput"][-1])')

out="$root/gpu-bundle"
rm -rf "$out" && mkdir -p "$out"
# Stripped and xz-compressed (the PTX and cubins in them shrink ~8x): ~14 MB together, well
# inside what travels to a lent GPU machine (64 MiB); gpu-check.sh unpacks them with python3.
for pair in "$tests:cuda-tests" "$bench:gpu-throughput"; do
    strip -o "$out/${pair#*:}" "${pair%%:*}"
    xz -9 -T0 "$out/${pair#*:}"
done
{
    echo "commit $(git rev-parse HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
    echo "built $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -m), $(nvcc --version | tail -n 1)"
    echo "compute capability $cap"
    echo "needs: libcuda.so.1 (driver >= 580), libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13"
} >"$out/MANIFEST"
ls -la "$out"
echo "gpu-bundle: ready; on the GPU machine: scripts/gpu-check.sh (it uses gpu-bundle/ when cargo is missing)"
