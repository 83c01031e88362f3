#!/usr/bin/env python3
"""Makes the logits-parity fixtures under host/model/tests/fixtures/parity/<arch>/.

For each architecture SigmaForge loads (Qwen3, Llama, GPT-OSS) this builds a tiny random model
with the reference implementation (Hugging Face transformers), saves it as a normal Hugging Face
directory (config.json, model.safetensors, a word-level tokenizer.json) and writes
reference.safetensors: a fixed batch (an unpadded row and a left-padded row) and the logits
transformers computes for it in float32. host/model/tests/parity.rs loads each directory through
sigmaforge_model::load and compares (max |logit difference| <= 1e-4); it needs no Python.

GPT-OSS: 3 layers (sliding, full, sliding) with a window of 4 tokens (the test rows are longer),
4 experts with top-2 routing, non-zero attention sinks and biases, YaRN RoPE scaling, and a
SwiGLU limit small enough that the clamp is active. Its expert weights are stored MXFP4-packed
(`*_blocks` + `*_scales`, the layout of the published checkpoints), and the reference model runs
on what transformers' own dequantizer (integrations/mxfp4.py, convert_moe_packed_tensors) makes
of them; the checkpoint is also loaded back through from_pretrained(Mxfp4Config(dequantize=True))
and must give the same logits. reference.safetensors additionally holds an unpacking check:
packed blocks covering every byte value, scales over a wide exponent range, and transformers'
dequantization of them.

Each fixture also has adapter/: a LoRA adapter on the attention projections saved by peft itself,
and reference.safetensors the logits with it applied ("logits_with_adapter"), so that reading PEFT
adapters (the format SigmaForge also exports) is checked against peft.

Run once, commit the output; rerun only when the fixtures must change:
    python3 -m venv /var/tmp/sf-torch-venv
    /var/tmp/sf-torch-venv/bin/pip install torch==2.15.0 transformers==5.25.0 safetensors==0.8.0 peft==0.21.2
    /var/tmp/sf-torch-venv/bin/python scripts/make-parity-fixtures.py
Made with torch 2.15.0, transformers 5.25.0, safetensors 0.8.0, peft 0.21.2 (CPU, float32, eager
attention).
"""

import copy
import json
import math
import os
import shutil
import sys
import tempfile

import peft
import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Mxfp4Config,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.integrations.mxfp4 import FP4_VALUES, convert_moe_packed_tensors

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "host", "model", "tests", "fixtures", "parity")
VOCAB = 96
SEQ = 16
PAD = 5  # left padding of the second row


def tokenizer_json(vocab_size):
    """Word-level tokenizer: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, then w4 ... (the loader needs one)."""
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>"])}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    special = lambda i, c: {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": True}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [special(0, "<pad>"), special(1, "<eos>"), special(2, "<bos>")],
        "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def batch(gen):
    """Row 0: SEQ real tokens. Row 1: PAD pad tokens, then SEQ - PAD real ones."""
    ids = torch.randint(4, VOCAB, (2, SEQ), generator=gen)
    mask = torch.ones(2, SEQ, dtype=torch.int64)
    ids[1, :PAD] = 0
    mask[1, :PAD] = 0
    # Position ids count real tokens, as SigmaForge (and transformers' generate) do under left padding.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def randomize(model, gen):
    """O(1) activations and logits so that a 1e-4 tolerance means something (HF's init, std 0.02,
    makes nearly uniform logits). Norm weights 1 + N(0, 0.1^2), embeddings N(0, 1), matrices
    N(0, 1/fan_in), biases and sinks N(0, 0.3^2)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))  # [E, in, out]
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def logits_of(model, ids, mask, pos):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()


def write_dir(name, model, extra_reference, ids, mask, pos, state=None, config_patch=None):
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model.config.save_pretrained(out)
    if config_patch:
        path = os.path.join(out, "config.json")
        cfg = json.load(open(path))
        cfg.update(config_patch)
        json.dump(cfg, open(path, "w"), indent=2, sort_keys=True)
    if state is None:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    json.dump(tokenizer_json(model.config.vocab_size), open(os.path.join(out, "tokenizer.json"), "w"))
    logits = logits_of(model, ids, mask, pos)
    ref = {"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous()}
    ref.update(extra_reference)
    save_file(ref, os.path.join(out, "reference.safetensors"))
    print(f"{name}: logits {tuple(logits.shape)}, |logit| max {logits.abs().max():.3f}, files "
          f"{sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)) / 1024:.0f} KiB")
    return out, logits


def add_peft_adapter(out, model, ids, mask, pos, gen, target_parameters=None):
    """A PEFT LoRA adapter on the attention projections (and, for GPT-OSS, the experts' weights
    through target_parameters), B random so that it changes the model, saved by peft itself under
    out/adapter, and the logits of the model with it applied."""
    cfg = peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, bias="none",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], target_parameters=target_parameters)
    adapted = peft.get_peft_model(copy.deepcopy(model), cfg).eval()
    with torch.no_grad():
        for n, p in adapted.named_parameters():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    adapted.save_pretrained(os.path.join(out, "adapter"))
    os.remove(os.path.join(out, "adapter", "README.md"))  # peft's model-card template
    path = os.path.join(out, "reference.safetensors")
    ref = load_file(path)
    ref["logits_with_adapter"] = logits_of(adapted, ids, mask, pos).contiguous()
    save_file(ref, path)
    d = (ref["logits_with_adapter"] - ref["logits"]).abs().max().item()
    print(f"{os.path.basename(out)}: PEFT adapter changes the logits by up to {d:.3f}")


def qwen3(gen):
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
                      rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                      max_position_embeddings=128, tie_word_embeddings=False, eos_token_id=1,
                      attn_implementation="eager")
    model = Qwen3ForCausalLM(cfg).float().eval()
    randomize(model, gen)
    ids, mask, pos = batch(gen)
    out, _ = write_dir("qwen3", model, {}, ids, mask, pos)
    add_peft_adapter(out, model, ids, mask, pos, gen)


def llama(gen):
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=3, num_key_value_heads=1, head_dim=8, rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "default", "rope_theta": 100_000.0},
                      max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1,
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg).float().eval()
    randomize(model, gen)
    ids, mask, pos = batch(gen)
    out, _ = write_dir("llama", model, {}, ids, mask, pos)
    add_peft_adapter(out, model, ids, mask, pos, gen)


FP4_MAGNITUDES = torch.tensor([abs(v) for v in FP4_VALUES[:8]])


def quantize_mxfp4(w):
    """[..., rows, cols] float -> (blocks [..., rows, cols/32, 16] u8, scales [..., rows, cols/32] u8):
    per block of 32 a power-of-two scale (biased by 127) with the block's max |w| at most 6, values
    rounded to the nearest FP4 (E2M1) number; element 2j in the low nibble of byte j, 2j+1 in the high."""
    *prefix, rows, cols = w.shape
    g = w.reshape(*prefix, rows, cols // 32, 32)
    amax = g.abs().amax(-1).clamp(min=1e-30)
    exp = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    scaled = g / torch.exp2(exp)[..., None]
    code = (scaled.abs()[..., None] - FP4_MAGNITUDES).abs().argmin(-1)
    code = code + 8 * ((scaled < 0) & (code > 0)).long()
    code = code.to(torch.uint8)
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)
    return blocks.contiguous(), (exp + 127).to(torch.uint8).contiguous()


def gpt_oss(gen):
    layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    cfg = GptOssConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=32, num_hidden_layers=3, head_dim=16,
                       num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                       sliding_window=4, layer_types=layer_types, rms_norm_eps=1e-5,
                       rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                                        "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                        "original_max_position_embeddings": 64},
                       max_position_embeddings=2048, swiglu_limit=1.5, swiglu_alpha=1.702,
                       tie_word_embeddings=False, eos_token_id=1, pad_token_id=0, attention_bias=True,
                       attn_implementation="eager")
    model = GptOssForCausalLM(cfg).float().eval()
    randomize(model, gen)
    # Experts: quantize to MXFP4 (blocks/scales in the checkpoint's [E, out, ...] layout) and run the
    # reference on transformers' dequantization of exactly those bytes.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    dequantized = {}
    with torch.no_grad():
        for i in range(cfg.num_hidden_layers):
            for proj in ["gate_up_proj", "down_proj"]:
                key = f"model.layers.{i}.mlp.experts.{proj}"
                blocks, scales = quantize_mxfp4(state.pop(key).transpose(1, 2).contiguous())
                state[f"{key}_blocks"], state[f"{key}_scales"] = blocks, scales
                deq = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, in, out]
                model.get_parameter(key).copy_(deq)
                dequantized[key] = deq
    ids, mask, pos = batch(gen)

    # Routing must not hinge on float rounding: the k-th and (k+1)-th router logits of every token
    # differ by far more than the f32 error between implementations.
    margins = []
    def router_hook(m, inp, _out):
        logits = torch.nn.functional.linear(inp[0], m.weight, m.bias)
        top = logits.topk(cfg.num_experts_per_tok + 1, dim=-1).values
        margins.append((top[:, -2] - top[:, -1]).min().item())
    hooks = [layer.mlp.router.register_forward_hook(router_hook) for layer in model.model.layers]
    logits_of(model, ids, mask, pos)
    for hk in hooks:
        hk.remove()
    print(f"gpt_oss: smallest top-k routing margin {min(margins):.4f}")
    if min(margins) < 1e-3:
        sys.exit("routing margin too small: pick another seed")
    clamp_frac = clamp_fraction(model, ids, mask, pos)
    print(f"gpt_oss: fraction of gate/up values clamped by swiglu_limit: {clamp_frac:.3f}")
    if clamp_frac == 0.0:
        sys.exit("the SwiGLU clamp is never active: lower swiglu_limit")

    # An unpacking check over every byte value and a wide exponent range.
    check_blocks = torch.arange(256, dtype=torch.int64).reshape(2, 4, 2, 16).to(torch.uint8).contiguous()
    check_scales = torch.randint(127 - 20, 127 + 20, (2, 4, 2), generator=gen).to(torch.uint8).contiguous()
    check_deq = convert_moe_packed_tensors(check_blocks, check_scales, dtype=torch.float32).contiguous()
    extra = {
        "mxfp4_check.blocks": check_blocks,
        "mxfp4_check.scales": check_scales,
        "mxfp4_check.dequantized": check_deq,
        # transformers' dequantization of layer 0's experts, in its parameter layout [E, in, out].
        "mxfp4.layer0.gate_up_proj": dequantized["model.layers.0.mlp.experts.gate_up_proj"].contiguous(),
        "mxfp4.layer0.down_proj": dequantized["model.layers.0.mlp.experts.down_proj"].contiguous(),
    }
    quant = {"quant_method": "mxfp4",
             "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                        "lm_head"]}
    out, logits = write_dir("gpt_oss", model, extra, ids, mask, pos, state=state,
                            config_patch={"quantization_config": quant})
    # The packed checkpoint, loaded back by transformers itself, gives the same logits.
    reloaded = AutoModelForCausalLM.from_pretrained(out, quantization_config=Mxfp4Config(dequantize=True),
                                                    dtype=torch.float32, attn_implementation="eager").eval()
    diff = (logits_of(reloaded, ids, mask, pos) - logits).abs().max().item()
    print(f"gpt_oss: from_pretrained(MXFP4 checkpoint) vs in-memory reference: max |d logit| {diff:.2e}")
    if diff > 1e-6:
        sys.exit("transformers reads the MXFP4 checkpoint differently from the reference model")
    add_peft_adapter(out, model, ids, mask, pos, gen, target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])


def clamp_fraction(model, ids, mask, pos):
    seen = []
    def hook(m, args, kwargs, _out):
        hs, idx = args[0], args[1]
        for e in idx.unique().tolist():
            tok = (idx == e).any(-1).nonzero().squeeze(-1)
            gu = hs[tok] @ m.gate_up_proj[e] + m.gate_up_proj_bias[e]
            lim = m.limit
            seen.append(((gu[..., ::2] > lim) | (gu[..., 1::2].abs() > lim)).float().mean().item())
    hooks = [l.mlp.experts.register_forward_hook(hook, with_kwargs=True) for l in model.model.layers]
    logits_of(model, ids, mask, pos)
    for h in hooks:
        h.remove()
    return sum(seen) / max(len(seen), 1)


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, safetensors {safetensors.__version__}, "
          f"peft {peft.__version__}")
    torch.set_num_threads(1)  # deterministic reductions
    for name, make, seed in [("qwen3", qwen3, 1), ("llama", llama, 2), ("gpt_oss", gpt_oss, 3)]:
        torch.manual_seed(seed)  # peft initialises LoRA A from the global generator
        gen = torch.Generator().manual_seed(seed)
        make(gen)


if __name__ == "__main__":
    main()
