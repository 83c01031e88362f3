#!/usr/bin/env python3
"""Checks that peft loads SigmaForge's PEFT LoRA exports and computes our logits with them.

For each parity fixture (host/model/tests/fixtures/parity/<arch>, see make-parity-fixtures.py)
the ignored test `export_adapters_for_the_peft_check` (host/model/tests/parity.rs) loads the
model with LoRA on every linear module the architecture has (GPT-OSS: q/k/v/o), sets the
adapters to non-zero values, exports them with sigmaforge_model::export::peft_adapter and saves
its logits. This script applies each adapter with peft's PeftModel.from_pretrained to the
transformers model of the same checkpoint and compares (max |d logit| <= 1e-4).

    /var/tmp/sf-torch-venv/bin/python scripts/check-peft-export.py
Checked with torch 2.15.0, transformers 5.25.0, peft 0.21.2.
"""

import os
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Mxfp4Config

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "host", "model", "tests", "fixtures", "parity")


def main():
    out = tempfile.mkdtemp(prefix="sf-peft-check-")
    env = dict(os.environ, SIGMAFORGE_PEFT_CHECK=out)
    subprocess.run(["cargo", "test", "-p", "sigmaforge-model", "--test", "parity", "--", "--ignored",
                    "export_adapters_for_the_peft_check"], cwd=ROOT, env=env, check=True)
    worst = 0.0
    for arch in ["qwen3", "llama", "gpt_oss"]:
        base_dir = os.path.join(FIXTURES, arch)
        extra = {"quantization_config": Mxfp4Config(dequantize=True)} if arch == "gpt_oss" else {}
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager", **extra)
        model = PeftModel.from_pretrained(base, os.path.join(out, arch)).eval()
        ref = load_file(os.path.join(base_dir, "reference.safetensors"))
        mask = ref["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ref["input_ids"], attention_mask=mask, position_ids=pos).logits.float()
        ours = load_file(os.path.join(out, arch, "ours.safetensors"))["logits"]
        d = ((logits - ours).abs() * mask[..., None]).max().item()
        changed = ((logits - ref["logits"]).abs() * mask[..., None]).max().item()
        print(f"{arch}: peft with our adapter vs our logits: max |d logit| {d:.2e} (the adapter moves logits by {changed:.3f})")
        worst = max(worst, d)
    if worst > 1e-4:
        sys.exit("peft computes different logits with our adapter")


if __name__ == "__main__":
    main()
