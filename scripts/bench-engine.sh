#!/usr/bin/env bash
# Side by side: `sigmaforge hunt` against rsigma (timescale/rsigma, the fastest Rust Sigma engine
# we know of) on the same rules and the same 25,062 events, in one run, interleaved.
#
#   scripts/bench-engine.sh [--runs N] [--rsigma-root DIR] [--work DIR]
#
# Installs rsigma 0.23.0 from crates.io into --rsigma-root (once; ~10 min on 2 cores), flattens
# the EVTX corpus once to NDJSON with the engine's own reader (rsigma reads one EVTX file per
# run, so it is given the flat events; ours reads the EVTX files themselves, and is also timed
# on its corpus cache), then times, N times each, alternating the two tools:
#   (a) all SigmaHQ Windows rules (rules/, rules-threat-hunting/, rules-emerging-threats/):
#       CPU seconds (user + sys), wall, peak RSS, events/s;
#   (b) one rule (whoami from a high-privilege process): wall and peak RSS.
# Prints a Markdown table of medians with our/rsigma ratios, then our per-phase wall and CPU
# (`hunt --timings`). Needs dist/ (scripts/build.sh) and
# the corpora (README, "Data").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
runs=5
rsigma_root=/var/tmp/rsigma/root
work=/var/tmp/sigmaforge-bench-engine
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --rsigma-root) rsigma_root="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
ours=dist/sigmaforge
[[ -x $ours ]] || { echo "dist/sigmaforge is missing: run scripts/build.sh first" >&2; exit 2; }
data="$($ours data where)"
rules_dirs=("$data/sigma/rules" "$data/sigma/rules-threat-hunting" "$data/sigma/rules-emerging-threats")
one_rule="$data/sigma/rules/windows/process_creation/proc_creation_win_whoami_execution_from_high_priv_process.yml"
mkdir -p "$work"

rsigma="$rsigma_root/bin/rsigma"
if [[ ! -x $rsigma ]]; then
  echo "== installing rsigma 0.23.0 into $rsigma_root"
  cargo install rsigma --version 0.23.0 --locked --no-default-features --features evtx --root "$rsigma_root"
fi

events="$work/events.ndjson"
if [[ ! -s $events ]]; then
  echo "== flattening $data/evtx to $events"
  cargo run --quiet --release -p sigma-engine --example flatten_events -- "$data/evtx" > "$events"
fi
# rsigma takes one rules directory: all three SigmaHQ folders, linked under one.
all_rules="$work/rules"
rm -rf "$all_rules" && mkdir -p "$all_rules"
for d in "${rules_dirs[@]}"; do ln -s "$d" "$all_rules/$(basename "$d")"; done
cache="$work/corpus.sfc"
$ours hunt --json --rules "$one_rule" --events "$data/evtx" --cache "$cache" > /dev/null 2>&1

# time_run LABEL CMD...: appends "label cpu_s wall_s rss_kb" to $work/times.
time_run() {
  local label=$1; shift
  /usr/bin/time -f "$label %U %S %e %M" -o "$work/one" "$@" > /dev/null 2> "$work/stderr" || { cat "$work/stderr" >&2; exit 1; }
  awk '{ printf "%s %.3f %.3f %d\n", $1, $2 + $3, $4, $5 }' "$work/one" >> "$work/times"
}
: > "$work/times"
n_events=$(wc -l < "$events")
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$runs"); do
  time_run ours-all-evtx $ours hunt --json --rules "${rules_dirs[@]}" --events "$data/evtx"
  time_run rsigma-all $rsigma engine eval -r "$all_rules" -e "@$events"
  time_run ours-all-cache $ours hunt --json --rules "${rules_dirs[@]}" --events "$data/evtx" --cache "$cache"
  time_run ours-one-evtx $ours hunt --json --rules "$one_rule" --events "$data/evtx"
  time_run rsigma-one $rsigma engine eval -r "$one_rule" -e "@$events"
  time_run ours-one-cache $ours hunt --json --rules "$one_rule" --events "$data/evtx" --cache "$cache"
done

python3 - "$work/times" "$n_events" "$runs" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
n, runs = int(sys.argv[2]), sys.argv[3]
med = {}
for label in dict.fromkeys(r[0] for r in rows):
    rs = [r for r in rows if r[0] == label]
    med[label] = tuple(statistics.median(float(r[k]) for r in rs) for k in (1, 2, 3))
print(f"medians of {runs} interleaved runs; {n:,} events")
print()
print("| run | CPU s | wall s | peak RSS MiB | events/s (wall) |")
print("|---|---|---|---|---|")
for label, (cpu, wall, rss) in med.items():
    print(f"| {label} | {cpu:.2f} | {wall:.2f} | {rss/1024:.0f} | {n/wall:,.0f} |")
print()
for ours in ("ours-all-evtx", "ours-all-cache"):
    print(f"{ours} / rsigma-all: CPU {med[ours][0]/med['rsigma-all'][0]:.2f}x, wall {med[ours][1]/med['rsigma-all'][1]:.2f}x")
for ours in ("ours-one-evtx", "ours-one-cache"):
    print(f"{ours} / rsigma-one: wall {med[ours][1]/med['rsigma-one'][1]:.2f}x, RSS {med[ours][2]/med['rsigma-one'][2]:.2f}x")
EOF
echo
echo "Where our time goes (one more run of each, \`hunt --timings\`):"
for label in all-evtx all-cache; do
  extra=(); [[ $label == all-cache ]] && extra=(--cache "$cache")
  echo "ours-$label:"
  $ours hunt --json --timings --rules "${rules_dirs[@]}" --events "$data/evtx" "${extra[@]}" 2>&1 > /dev/null | sed -n '/^timings/,$p' | tail -n +2
done
echo
echo "Command: scripts/bench-engine.sh --runs $runs"
echo "Revision: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
echo "Machine: $(nproc) cores, $(uname -m), $(date -u '+%Y-%m-%d %H:%M UTC'); load average before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
