"""Reads the JSON lines of both benchmarks (files given as arguments) and prints the ratio
SigmaForge / PyTorch of tokens per second for each measurement (> 1 means SigmaForge is faster)."""

import json
import sys

rows: dict[tuple[str, str], float] = {}
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                rows[(r["impl"], r["what"])] = r["tokens_per_s"]

print("| measurement | sigmaforge tok/s | pytorch tok/s | ratio |")
print("|---|---:|---:|---:|")
for what in ("grpo_step", "decode"):
    ours, theirs = rows.get(("sigmaforge", what)), rows.get(("pytorch", what))
    ratio = f"{ours / theirs:.2f}x" if ours and theirs else "n/a"
    fmt = lambda v: f"{v:,.0f}" if v else "missing"
    print(f"| {what} | {fmt(ours)} | {fmt(theirs)} | {ratio} |")
