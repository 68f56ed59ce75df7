"""Model FLOPs per token and model FLOPs utilization (MFU).

FLOPs per trained token = 6 N + 12 L H Dh T: 6 N for the forward and
backward matmuls of the N parameters (tied embeddings counted once), plus
attention's score and value matmuls, which grow with the sequence length T
(L layers, H heads of Dh dimensions). This is the convention of PaLM's
appendix and torchtitan, so MFU figures compare across projects. It counts
no recomputation: with activation checkpointing the hardware does more work
than MFU credits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the recipe (pydantic) is not needed to build or time a model
    from smolray.recipe import ModelConfig


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data
# sheets, matched in order against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    (("H200",), 989.0),  # also GH200
    (("B200",), 2250.0),
    (("A100",), 312.0),
    (("L40S",), 362.0),
]

# What the recipes are built for on H100-class GPUs (docs/benchmarks.md).
TARGET_MFU = 0.45


def flops_per_token(model: ModelConfig, seq_len: int) -> int:
    return 6 * model.num_parameters + 12 * model.num_layers * model.num_heads * model.head_dim * seq_len


def peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak, or None for a CPU or a GPU not in the table."""
    for words, peak in PEAK_BF16_TFLOPS:
        if all(w in device_name for w in words):
            return peak
    return None


def device_name(device) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return "cpu"


def utilization(tokens_per_s_per_device: float, flops: int, peak: float | None) -> dict[str, float]:
    """tflops_per_gpu always; mfu only against a known peak."""
    achieved = tokens_per_s_per_device * flops / 1e12
    out = {"tflops_per_gpu": achieved}
    if peak:
        out["mfu"] = achieved / peak
    return out
