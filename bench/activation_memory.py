"""Activation memory of the presets: the bytes a forward keeps for its backward.

    python bench/activation_memory.py [--preset 135m 360m 1.7b] [--tokens 256]

Runs each preset's decoder once in bf16 on the CPU and adds up the tensors
autograd saves (weights excluded, each tensor once). The attention matrix
of SDPA's math path is left out: the flash kernels GPUs run keep none. The
figure per token per layer is what the recipes' micro batch sizes for 80 GB
GPUs are computed from (see the comments in recipes/smollm2-*.yaml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform" / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def saved_bytes_per_token_per_layer(name: str, tokens: int) -> float:
    import torch
    from transformers import LlamaForCausalLM

    from gpu_mfu import load_preset
    from smolray.model.llama import hf_config

    spec, _ = load_preset(name)
    model = LlamaForCausalLM(hf_config(spec)).to(torch.bfloat16)
    model.config._attn_implementation = "sdpa"
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        square = t.dim() >= 2 and t.shape[-1] == t.shape[-2] == tokens
        if ptr not in weights and not square:
            seen[(ptr, t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    ids = torch.randint(0, spec.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(input_ids=ids, use_cache=False)
    return sum(seen.values()) / tokens / spec.num_layers, spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", nargs="+", default=["135m", "360m", "1.7b"])
    ap.add_argument("--tokens", type=int, default=256, help="sequence length of the measuring forward")
    ap.add_argument("--seq-len", type=int, default=2048, help="sequence length to report per sequence")
    args = ap.parse_args()
    print(f"| preset | KB per token per layer | GB per {args.seq_len}-token sequence |")
    print("|---|---:|---:|")
    for name in args.preset:
        per, spec = saved_bytes_per_token_per_layer(name, args.tokens)
        print(f"| {name} | {per / 1e3:.1f} | {per * spec.num_layers * args.seq_len / 1e9:.2f} |")


if __name__ == "__main__":
    main()
