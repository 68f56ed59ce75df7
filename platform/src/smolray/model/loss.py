"""Next-token cross-entropy without holding the [tokens, vocab] logits.

At SmolLM2's 49,152-token vocabulary the logits of one 16 x 2048 micro batch
are 3.2 GB in bf16; the plain loss adds a float32 copy (6.4 GB) and saves its
log-softmax for the backward (6.4 GB more). A linear cross-entropy computes the
loss from the final hidden states in chunks of tokens, so only one chunk's
logits exist at a time.

The loss is computed by the model's output layer itself (`LossHead`, which
returns per-token losses in place of logits while targets are set), for two
reasons: the engine's forward output is then the loss, which is where
DeepSpeed hooks its backward bookkeeping; and under ZeRO-3 the head's
partitioned weight is gathered for the head's own forward and backward, as
for any layer, so the lean loss works at every ZeRO stage.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# "plain" is the reference: full logits, then cross-entropy in float32.
IMPLS = ("chunked", "liger", "plain")
IGNORE = -100
DESCRIPTIONS = {
    "chunked": "chunked linear cross-entropy (torch.nn.functional.linear_cross_entropy)",
    "liger": "Liger's fused linear cross-entropy kernel",
    "plain": "full logits, then cross-entropy (no memory-lean loss available)",
}


def has_torch_chunked() -> bool:
    return hasattr(F, "linear_cross_entropy") and hasattr(nn, "LinearCrossEntropyOptions")


def _has_liger() -> bool:
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except ImportError:
        return False
    return True


def choose(setting: str, device) -> str:
    """The loss implementation for a `train.lm_loss` setting on this device."""
    cuda = getattr(device, "type", str(device)) == "cuda"
    if setting == "auto":
        if has_torch_chunked():
            return "chunked"
        return "liger" if cuda and _has_liger() else "plain"
    if setting == "chunked" and not has_torch_chunked():
        raise ValueError(f"train.lm_loss=chunked: torch {torch.__version__} has no "
                         "F.linear_cross_entropy; use lm_loss=auto or upgrade torch")
    if setting == "liger" and not (cuda and _has_liger()):
        raise ValueError("train.lm_loss=liger needs the liger-kernel package and a CUDA device; "
                         "use lm_loss=auto")
    return setting


def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, impl: str,
              reduction: str = "none") -> torch.Tensor:
    """Cross-entropy of each next token from hidden states [B, L, H]: [B, L] (0 where ignored) or a sum."""
    h, t = hidden.flatten(0, 1), targets.flatten()
    if impl == "chunked":
        out = F.linear_cross_entropy(h, weight, t, ignore_index=IGNORE, reduction=reduction,
                                     options=nn.LinearCrossEntropyOptions())
    elif impl == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        if reduction != "sum":  # its backward takes a scalar loss only
            return token_nll(hidden, weight, targets, "chunked" if has_torch_chunked() else "plain",
                             reduction)
        out = liger_fused_linear_cross_entropy(h, weight, t, ignore_index=IGNORE, reduction="sum")
    else:
        out = F.cross_entropy(F.linear(h, weight).float(), t, ignore_index=IGNORE, reduction=reduction)
    out = out.float()
    return out.view(targets.shape) if reduction == "none" else out


class LossHead(nn.Linear):
    """An output layer that returns per-token losses instead of logits while `targets` is set."""

    impl = "plain"
    targets: torch.Tensor | None = None
    reduction = "none"

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.targets is None:  # generation, evaluation: ordinary logits
            return super().forward(hidden)
        return token_nll(hidden, self.weight, self.targets, self.impl, self.reduction)


def use_loss_head(model: nn.Module, impl: str) -> str:
    """Give a Llama model a LossHead (in place); returns the implementation it ends up with.

    Only where the model's forward passes the head's output through untouched
    (Llama's does); others keep their head and the plain loss. The new head
    shares the old one's Parameter, so tied embeddings stay tied and the
    state-dict names are unchanged.
    """
    from transformers import LlamaForCausalLM

    head = model.get_output_embeddings()
    if type(model) is not LlamaForCausalLM or type(head) is not nn.Linear or head.bias is not None:
        return "plain"
    new = LossHead(head.in_features, head.out_features, bias=False, device="meta")
    new.weight = head.weight
    new.impl = impl
    model.set_output_embeddings(new)
    return impl


@contextmanager
def _targets(head: LossHead, targets: torch.Tensor, reduction: str):
    head.targets, head.reduction = targets, reduction
    try:
        yield
    finally:
        head.targets = None


def lm_loss(model, input_ids: torch.Tensor, targets: torch.Tensor, position_ids=None,
            reduction: str = "none", **model_kwargs) -> torch.Tensor:
    """Next-token losses of a forward through `model` (a DeepSpeed engine or the bare module).

    targets[b, i] is the token that should follow position i (IGNORE: not
    trained). Returns [B, L] float32 losses, or their sum. model_kwargs go to
    the model's forward (the packed documents, smolray.model.attention).
    """
    kw = {"position_ids": position_ids, **model_kwargs} if position_ids is not None else model_kwargs
    # No KV cache: with one, transformers ignores the position restarts
    # (reset_position_ids, packed conversations) that keep documents apart.
    module = getattr(model, "module", model)
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    if isinstance(head, LossHead):
        with _targets(head, targets, reduction):
            return model(input_ids=input_ids, use_cache=False, **kw).logits
    logits = model(input_ids=input_ids, use_cache=False, **kw).logits
    out = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                          reduction=reduction)
    return out.view(targets.shape) if reduction == "none" else out
