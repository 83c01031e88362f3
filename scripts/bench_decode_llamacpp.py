#!/usr/bin/env python3
"""llama.cpp's side of scripts/bench-decode.sh: greedy decoding of the same prompt token ids
through llama-cpp-python, one request at a time (llama.cpp's single-stream case).

Input: a GGUF and a JSON list of prompts as token ids (written by our decode_bench example with
--ids-out, so both tools start from identical tokens). Each prompt is evaluated from an empty
context and decoded greedily until an end token or --max-new-tokens, as our rollouts are.
Prints one JSON object per line, the same fields as decode_bench:
{"mode": "llama.cpp", "batch": 1, "tokens", "seconds", "tokens_per_s"} and, with --ids-out,
writes the generated ids (to compare the greedy answers with ours).
"""
import argparse
import json
import time

import llama_cpp
import llama_cpp.llama
from llama_cpp import Llama


def without_extra_buffers():
    """llama.cpp's extra CPU buffer types (AMX tiles, weight repacking) crash batched prompt
    evaluation on the development VM's Sapphire Rapids CPU (segfault in llama_decode,
    llama-cpp-python 0.3.36); llama-cli's --no-repack is the same switch. Our decoder uses
    neither AMX nor repacked Q4_1, so the comparison stays like for like."""
    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama.llama_cpp.llama_model_default_params = params


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True, help="JSON list of token-id lists")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ids-out")
    args = ap.parse_args()

    without_extra_buffers()
    prompts = json.load(open(args.prompts))
    ctx = max(len(p) for p in prompts) + args.max_new_tokens + 8
    llm = Llama(model_path=args.model, n_ctx=ctx, n_threads=args.threads, n_threads_batch=args.threads,
                n_batch=512, logits_all=False, verbose=False)
    eos = {llm.token_eos()}
    # SmolLM2's chat end token is <|im_end|>; stop on it as our tokenizer's eos list does.
    for name in (b"<|im_end|>", b"<|endoftext|>"):
        ids = llm.tokenize(name, add_bos=False, special=True)
        if len(ids) == 1:
            eos.add(ids[0])
    total_tokens, total_secs, outputs = 0, 0.0, []
    for p in prompts:
        llm.reset()
        start = time.perf_counter()
        out = []
        for tok in llm.generate(p, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
            out.append(tok)
            if tok in eos or len(out) >= args.max_new_tokens:
                break
        total_secs += time.perf_counter() - start
        total_tokens += len(out)
        outputs.append(out)
    print(json.dumps({"mode": "llama.cpp", "batch": 1, "tokens": total_tokens, "seconds": total_secs,
                      "tokens_per_s": total_tokens / total_secs}), flush=True)
    if args.ids_out:
        json.dump(outputs, open(args.ids_out, "w"))


if __name__ == "__main__":
    main()
