#!/usr/bin/env bash
# Measures what training buys on the held-out test split: greedy eval of (a) the base model,
# (b) after the SFT warm start, (c) after SFT + GRPO, with the same tasks, tokens and seed.
#
#   scripts/measure-stages.sh [--limit N] [--config configs/smollm2-cpu.yaml] [--out DIR]
#                             [--sft-steps N] [--grpo-steps N] [--max-tokens N]
#
# Runs `sigmaforge run` once (its SFT stage, then GRPO, in DIR/run; the SFT stage's model is
# exported from its final checkpoint by `sigmaforge sft --resume`), evaluates the three models
# with `sigmaforge eval --split test --temperature 0`, and writes DIR/stages.md (the table, with
# a 95 % bootstrap interval of the mean reward over tasks) and DIR/stages.png (reward and
# components by stage). Needs dist/ (scripts/build.sh) and the corpora (see README, "Data").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
limit=100
config=configs/smollm2-cpu.yaml
out="runs/stages-$(date -u +%Y%m%d-%H%M%S)"
sft_steps=""
grpo_steps=""
max_tokens=256
while [[ $# -gt 0 ]]; do
  case "$1" in
    --limit) limit="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --sft-steps) sft_steps="$2"; shift 2 ;;
    --grpo-steps) grpo_steps="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=dist/sigmaforge
[[ -x $bin && -f dist/sigma.wasm ]] || { echo "dist/ is missing: run scripts/build.sh first" >&2; exit 2; }
mkdir -p "$out"

# A copy of the config with the requested stage lengths.
cfg="$out/config.yaml"
cp "$config" "$cfg"
if [[ -n $sft_steps ]]; then
  python3 - "$cfg" "$sft_steps" <<'EOF'
import re, sys
p, n = sys.argv[1], sys.argv[2]
s = open(p).read()
s = re.sub(r"(\nsft:\n(?:  .*\n)*?  steps: )\d+", r"\g<1>" + n, s, count=1)
open(p, "w").write(s)
EOF
fi
steps_flag=()
[[ -n $grpo_steps ]] && steps_flag=(--steps "$grpo_steps")

eval_stage() { # label policy
  local label=$1 policy=$2
  if [[ -f $out/eval-$label/report.json ]]; then echo "== eval $label: done earlier"; return; fi
  echo "== eval $label ($policy): $limit test tasks, greedy, $max_tokens tokens"
  /usr/bin/time -v "$bin" eval --plugins dist/sigma.wasm --policy "$policy" --split test --limit "$limit" \
    --temperature 0 --max-tokens "$max_tokens" --label "$label" --quiet --out "$out/eval-$label" 2> "$out/eval-$label.log" \
    || { tail -20 "$out/eval-$label.log" >&2; exit 1; }
}

start=$(date +%s)
eval_stage base local:default

echo "== training: sft then grpo ($cfg) in $out/run"
if [[ -d $out/run/checkpoints || -d $out/run/sft/checkpoints ]]; then resume=(--resume "$out/run"); else resume=(--config "$cfg" --out "$out/run"); fi
/usr/bin/time -v "$bin" run --plugins dist/sigma.wasm "${resume[@]}" "${steps_flag[@]}" 2> "$out/run.log" \
  || { tail -30 "$out/run.log" >&2; exit 1; }
# The SFT stage's model: its final checkpoint, exported (sft --resume of a finished run exports).
"$bin" sft --plugins dist/sigma.wasm --resume "$out/run/sft" 2> "$out/sft-export.log" || { tail -20 "$out/sft-export.log" >&2; exit 1; }

eval_stage sft "local:$out/run/sft/export/merged"
eval_stage sft+grpo "local:$out/run/export/merged"

"$bin" eval-compare "$out/eval-base" "$out/eval-sft" "$out/eval-sft+grpo" --out "$out/stages.md" --plot "$out/stages.png"
{
  echo
  echo "Command: scripts/measure-stages.sh --limit $limit --config $config ${sft_steps:+--sft-steps $sft_steps} ${grpo_steps:+--grpo-steps $grpo_steps} --max-tokens $max_tokens"
  echo "Machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d); wall time $(( $(date +%s) - start )) s"
  grep -h "Maximum resident set size" "$out"/run.log | sed 's/^\s*/training peak RSS (kB): /'
} >> "$out/stages.md"
echo "table: $out/stages.md, plot: $out/stages.png"
