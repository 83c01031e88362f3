"""PyTorch + transformers half of scripts/gpu-check.sh: the same GRPO step and decoding as
host/trainer/benches/gpu_throughput.rs, for a Qwen3-0.6B-shaped model with random weights in
bf16 on the same GPU. Prints human lines and JSON lines (starting with '{').

No weights are downloaded: the config is written out here (Qwen/Qwen3-0.6B's shape)."""

import json
import statistics
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

B, PROMPT, COMPLETION = 8, 128, 384
DECODE_PROMPT, DECODE_NEW = 32, 128
WARMUP, RUNS = 2, 5


def main() -> None:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    cfg = Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
        rope_theta=1_000_000.0, max_position_embeddings=40960, tie_word_embeddings=True,
        eos_token_id=151645,
    )
    model = Qwen3ForCausalLM(cfg).to(device=dev, dtype=torch.bfloat16)
    model.config._attn_implementation = "sdpa"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"qwen3-0.6b shape: {n_params} parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)

    def grpo_step() -> None:
        width = PROMPT + COMPLETION - 1
        ids = torch.randint(4, cfg.vocab_size, (B, width), device=dev)
        targets = torch.randint(4, cfg.vocab_size, (B, COMPLETION), device=dev)
        adv = torch.randn(B, device=dev)
        model.train()
        out = model.model(input_ids=ids)
        h = out.last_hidden_state[:, PROMPT - 1 : PROMPT - 1 + COMPLETION]
        logits = model.lm_head(h).float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - logp.detach())
        a = adv.unsqueeze(1)
        loss = -torch.minimum(ratio * a, torch.clamp(ratio, 0.8, 1.28) * a).sum() / (B * COMPLETION)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    times = []
    for i in range(WARMUP + RUNS):
        t = time.perf_counter()
        grpo_step()
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    tokens = B * (PROMPT + COMPLETION)
    print(f"GRPO step (full FT, bf16, B={B}, {PROMPT}+{COMPLETION} tokens): {step:.3f} s, {tokens / step:.0f} tokens/s")
    print(json.dumps({"impl": "pytorch", "what": "grpo_step", "seconds": step, "tokens_per_s": tokens / step}))
    del opt
    torch.cuda.empty_cache()

    model.eval()
    prompts = torch.randint(4, cfg.vocab_size, (B, DECODE_PROMPT), device=dev)
    mask = torch.ones_like(prompts)
    times = []
    generated = 0
    with torch.no_grad():
        for i in range(WARMUP + RUNS):
            t = time.perf_counter()
            out = model.generate(
                input_ids=prompts, attention_mask=mask, do_sample=False, max_new_tokens=DECODE_NEW,
                min_new_tokens=DECODE_NEW, use_cache=True, pad_token_id=0,
            )
            torch.cuda.synchronize()
            if i >= WARMUP:
                times.append(time.perf_counter() - t)
                generated = (out.shape[1] - DECODE_PROMPT) * B
    decode = statistics.median(times)
    print(f"decoding (bf16, B={B}, prompt {DECODE_PROMPT}, {DECODE_NEW} new, greedy): {decode:.3f} s, {generated} tokens, {generated / decode:.0f} tokens/s")
    print(json.dumps({"impl": "pytorch", "what": "decode", "seconds": decode, "tokens_per_s": generated / decode}))


if __name__ == "__main__":
    main()
