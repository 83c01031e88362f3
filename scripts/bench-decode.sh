#!/usr/bin/env bash
# Side by side: our decoder against llama.cpp on the same GGUF, the same prompts (as token ids)
# and the same token budget, in one run, interleaved.
#
#   scripts/bench-decode.sh [--runs N] [--max-new-tokens N] [--prompts N] [--model GGUF]
#                           [--modes "dequantize q8_0"] [--venv DIR] [--work DIR]
#
# Prompts: the first --prompts (8) test-split tasks of dist/sigma.wasm (`sigmaforge tasks`),
# rendered with the model's chat template. Each is decoded greedily until an end token or
# --max-new-tokens (128), as rollouts are. Measured, --runs (3) times each, alternating:
#   ours at B=1 (one prompt at a time) and at B=8 (all prompts in one batch), for each
#   model.base_quant in --modes: dequantize (f32) and q8_0 (what auto makes of a quantised
#   GGUF); add keep for the file's own Q4_1 blocks (slow on CPU: candle has no SIMD Q4_1 kernel);
#   llama.cpp (llama-cpp-python 0.3.36, 2 threads, one request at a time: its single stream).
# Prints a Markdown table of medians (tokens/s, end to end: prefill included) with the ratios
# the issue sets targets for, and how many greedy answers equal llama.cpp's.
# llama-cpp-python is installed from PyPI into --venv (once; it builds llama.cpp from source,
# ~10 min on 2 cores). Needs dist/ (scripts/build.sh), the corpora and the default model (the
# README's first command fetches it; or `--model PATH`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
runs=3
max_new=128
n_prompts=8
model="${HOME}/.cache/sigmaforge/models/SmolLM2-135M-Instruct.Q4_1.gguf"
venv="${SIGMAFORGE_LLAMACPP_VENV:-/var/tmp/sf-llamacpp-venv}"
work=/var/tmp/sigmaforge-bench-decode
modes="dequantize q8_0"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --max-new-tokens) max_new="$2"; shift 2 ;;
    --prompts) n_prompts="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --modes) modes="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -x dist/sigmaforge ]] || { echo "dist/sigmaforge is missing: run scripts/build.sh first" >&2; exit 2; }
[[ -f $model ]] || { echo "model $model is missing: run the README's first command (it fetches the default model) or pass --model" >&2; exit 2; }
mkdir -p "$work"

if ! "$venv/bin/python" -c "import llama_cpp" 2> /dev/null; then
  echo "== installing llama-cpp-python 0.3.36 into $venv (builds llama.cpp, ~10 min)"
  python3 -m venv "$venv"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$venv/bin/pip" install --quiet "llama-cpp-python==0.3.36"
fi
echo "== building the decode bench"
cargo build --quiet --release -p sigmaforge-model --example decode_bench
target_dir="${CARGO_TARGET_DIR:-$root/target}"
bench="$target_dir/release/examples/decode_bench"

dist/sigmaforge tasks --plugins dist/sigma.wasm --split test --json > "$work/all-tasks.jsonl" 2> /dev/null
head -n "$n_prompts" "$work/all-tasks.jsonl" > "$work/tasks.jsonl"
: > "$work/results.jsonl"
for run in $(seq 1 "$runs"); do
  echo "== run $run of $runs"
  for quant in $modes; do
    "$bench" --model "$model" --tasks "$work/tasks.jsonl" --prompts "$n_prompts" --max-new-tokens "$max_new" \
      --base-quant "$quant" --ids-out "$work/prompt-ids.json" --answers-out "$work/answers-$quant.json" \
      2>> "$work/stderr" | tee -a "$work/results.jsonl"
  done
  "$venv/bin/python" scripts/bench_decode_llamacpp.py --model "$model" --prompts "$work/prompt-ids.json" \
    --max-new-tokens "$max_new" --threads "$(nproc)" --ids-out "$work/answers-llamacpp.json" | tee -a "$work/results.jsonl"
done

python3 - "$work" "$n_prompts" "$modes" << 'EOF'
import json, statistics, sys
work, n, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
rows = [json.loads(l) for l in open(f"{work}/results.jsonl")]
def med(mode, batch, quant=None):
    v = [r["tokens_per_s"] for r in rows if r["mode"] == mode and r["batch"] == batch and r.get("base_quant") == quant]
    return statistics.median(v) if v else float("nan")
llama = med("llama.cpp", 1)
ref = json.load(open(f"{work}/answers-llamacpp.json"))
print(f"\n| decoder | B | tokens/s (median of {len([r for r in rows if r['mode'] == 'llama.cpp'])}) | × llama.cpp single stream | greedy answers equal to llama.cpp's |")
print("|---|---|---|---|---|")
print(f"| llama.cpp (Q4_1) | 1 | {llama:.1f} | 1.00 | — |")
for quant in modes:
    ans = json.load(open(f"{work}/answers-{quant}.json"))
    same = sum(a == b for a, b in zip(ans, ref))
    for b in (1, n):
        t = med("ours", b, quant)
        print(f"| ours, base_quant {quant} | {b} | {t:.1f} | {t / llama:.2f} | {same if b == 1 else '—'} of {len(ref)} |")
print(f"\ntargets: B=1 >= 0.8x llama.cpp; B={n} aggregate >= 2x llama.cpp")
EOF
