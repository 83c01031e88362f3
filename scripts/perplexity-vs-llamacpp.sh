#!/usr/bin/env bash
# Compares `sigmaforge model perplexity` with llama.cpp (through llama-cpp-python) on one GGUF
# model and one text: both tokenize the text with the model's own vocabulary rule for BOS, cut it
# into non-overlapping chunks of CTX tokens (the first token of a chunk replaced by BOS when the
# vocabulary adds one), evaluate each chunk alone and score its second half (the scheme of
# llama.cpp's llama-perplexity), then print tokens, mean NLL (nats/token) and perplexity of each,
# and the difference. Fails (exit 1) when |Δ mean NLL| > MAX_DELTA.
#
#   scripts/perplexity-vs-llamacpp.sh [model.gguf] [text file]
#
# Defaults: the default model (~/.cache/sigmaforge/models/SmolLM2-135M-Instruct.Q4_1.gguf), the
# SigmaHQ README from the shared data (../shared/data/sigma/SIGMAHQ-README.md), CTX=512,
# MAX_DELTA=0.02. The binary is $SIGMAFORGE_BIN or dist/sigmaforge (scripts/build.sh). The
# llama.cpp side runs in the venv $SIGMAFORGE_LLAMACPP_VENV (default /var/tmp/sf-llamacpp-venv),
# created with llama-cpp-python==0.3.36 when missing (a C++ build: several minutes).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:-${SIGMAFORGE_MODELS:-$HOME/.cache/sigmaforge/models}/SmolLM2-135M-Instruct.Q4_1.gguf}"
data="${SIGMAFORGE_DATA:-$root/../shared/data}"
text="${2:-$data/sigma/SIGMAHQ-README.md}"
ctx="${CTX:-512}"
max_delta="${MAX_DELTA:-0.02}"
bin="${SIGMAFORGE_BIN:-$root/dist/sigmaforge}"
venv="${SIGMAFORGE_LLAMACPP_VENV:-/var/tmp/sf-llamacpp-venv}"

[[ -f "$model" ]] || { echo "error: model $model not found (run sigmaforge run once, or pass a .gguf)" >&2; exit 2; }
[[ -f "$text" ]] || { echo "error: text file $text not found" >&2; exit 2; }
[[ -x "$bin" ]] || { echo "error: $bin is not built (scripts/build.sh, or set SIGMAFORGE_BIN)" >&2; exit 2; }

if ! "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "== creating $venv with llama-cpp-python==0.3.36 (builds llama.cpp from source)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "llama-cpp-python==0.3.36"
fi

ours="$(mktemp)"
trap 'rm -f "$ours"' EXIT
echo "== sigmaforge model perplexity --ctx $ctx" >&2
"$bin" model perplexity --model "$model" --file "$text" --ctx "$ctx" --json >"$ours"

echo "== llama.cpp $("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)') (llama-cpp-python)" >&2
"$venv/bin/python" - "$model" "$text" "$ctx" "$ours" "$max_delta" <<'PY'
import json, math, sys
import numpy as np
import llama_cpp.llama_cpp as lc
from llama_cpp import Llama

# No extra buffer types (weight repacking, AMX): on Sapphire Rapids hosts the AMX matmul of
# llama.cpp b0.3.36 segfaults (ggml_backend_amx_mul_mat); the plain CPU path is the one every
# other x86 machine runs. Llama() takes no option for it, so the defaults are patched.
_default_params = lc.llama_model_default_params
def _params_without_extra_buffers():
    p = _default_params()
    p.use_extra_bufts = False
    return p
lc.llama_model_default_params = _params_without_extra_buffers

model, text_path, ctx, ours_path, max_delta = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
llm = Llama(model_path=model, n_ctx=ctx, n_batch=ctx, logits_all=True, n_threads=2, verbose=False)
text = open(text_path, encoding="utf-8").read()
# add_bos=True asks for the vocabulary's own rule (tokenizer.ggml.add_bos_token), as llama-perplexity does.
tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
add_bos = llm._model.add_bos_token()
bos = llm.token_bos()
chunks = len(tokens) // ctx
first = ctx // 2
total, scored = 0.0, 0
for c in range(chunks):
    window = list(tokens[c * ctx:(c + 1) * ctx])
    if add_bos:
        window[0] = bos
    llm.reset()
    llm.eval(window)
    logits = np.asarray(llm.scores[:ctx], dtype=np.float64)
    for j in range(first, ctx - 1):
        row = logits[j]
        m = row.max()
        lse = m + math.log(np.exp(row - m).sum())
        total += lse - row[window[j + 1]]
        scored += 1
ref = total / scored
ours = json.load(open(ours_path))
delta = ours["mean_nll"] - ref
print(f"text:        {text_path}")
print(f"model:       {model} (ctx {ctx}, {chunks} chunks, {scored} scored tokens, BOS {'yes' if add_bos else 'no'})")
print(f"tokens:      sigmaforge {ours['tokens']}  llama.cpp {len(tokens)}")
print(f"mean NLL:    sigmaforge {ours['mean_nll']:.4f}  llama.cpp {ref:.4f}  delta {delta:+.4f} nats/token")
print(f"perplexity:  sigmaforge {ours['perplexity']:.4f}  llama.cpp {math.exp(ref):.4f}")
if ours["tokens"] != len(tokens):
    print("error: the tokenizations differ, so the NLLs are not of the same tokens", file=sys.stderr)
    sys.exit(1)
if abs(delta) > max_delta:
    print(f"error: |delta| {abs(delta):.4f} > {max_delta}", file=sys.stderr)
    sys.exit(1)
print(f"ok: |delta| <= {max_delta}")
PY
