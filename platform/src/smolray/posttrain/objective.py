"""The post-training objectives and the rows they read.

Losses return sums, not means: the loop divides by a count taken over the
whole global batch (trained tokens for SFT, pairs for DPO), so the gradient
is the same whatever the worker count and micro batch size.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from smolray.model import attention
from smolray.model.loss import lm_loss
from smolray.posttrain.chat import IGNORE
from smolray.posttrain.prepare import EXAMPLES

REFERENCE = "reference.arrow"


class Rows:
    """Random access to a prepared dataset's rows (memory-mapped Arrow)."""

    def __init__(self, directory: str):
        self.table = pa.ipc.open_file(pa.memory_map(os.path.join(directory, EXAMPLES))).read_all()
        ref = os.path.join(directory, REFERENCE)
        self.ref = pa.ipc.open_file(pa.memory_map(ref)).read_all() if os.path.exists(ref) else None
        self.seq_len = self.table.schema.field(0).type.list_size

    def __len__(self) -> int:
        return self.table.num_rows

    def take(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        part = self.table.take(pa.array(idx, type=pa.int64()))
        out = {name: torch.from_numpy(col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
                                      .reshape(len(idx), -1).astype(np.int64))
               for name, col in zip(part.column_names, part.columns)}
        if self.ref is not None:
            ref = self.ref.take(pa.array(idx, type=pa.int64()))
            out.update({k: torch.from_numpy(ref.column(k).to_numpy().copy()) for k in ref.column_names})
        return out

    def trained_tokens(self, idx: np.ndarray, prefix: str = "") -> int:
        """Label positions that count in the loss (shifted: the first never does)."""
        col = self.table.column(prefix + "labels").take(pa.array(idx, type=pa.int64()))
        lab = col.combine_chunks().flatten().to_numpy().reshape(len(idx), -1)
        return int((lab[:, 1:] != IGNORE).sum())


def token_logps(model, ids: torch.Tensor, lab: torch.Tensor, pos: torch.Tensor, host_pos: torch.Tensor,
                device) -> torch.Tensor:
    """Log-probability of each labelled next token, 0 where not trained; [B, L-1].

    The packed conversations are described from the host copy of the
    positions and attend only within themselves (smolray.model.attention).
    """
    docs = attention.to_device(attention.packed_documents(host_pos), device)
    # Position i predicts token i + 1; the last position predicts nothing.
    tgt = F.pad(lab[:, 1:], (0, 1), value=IGNORE)
    return -lm_loss(model, ids, tgt, pos, **docs)[:, :-1]


# The stats the objectives return are device tensors (summed by the loop,
# read by the host only at log steps) or counts taken from the host batch:
# never a host sync per micro step.


def sft_loss(model, batch: dict, device) -> tuple[torch.Tensor, dict]:
    """Summed negative log-likelihood of the assistant tokens."""
    ids, lab, pos = (batch[k].to(device, non_blocking=True) for k in ("input_ids", "labels", "position_ids"))
    lp = token_logps(model, ids, lab, pos, batch["position_ids"], device)
    loss = -lp.sum()
    host = batch["labels"]
    return loss, {"nll": loss.detach(), "trained": int((host[:, 1:] != IGNORE).sum()),
                  "tokens": host.numel()}


def response_logps(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the chosen and rejected replies, in one forward."""
    host = {k: torch.cat([batch["chosen_" + k], batch["rejected_" + k]])
            for k in ("input_ids", "labels", "position_ids")}
    ids, lab, pos = (host[k].to(device, non_blocking=True) for k in ("input_ids", "labels", "position_ids"))
    lp = token_logps(model, ids, lab, pos, host["position_ids"], device).sum(-1)
    n = len(batch["chosen_input_ids"])
    return lp[:n], lp[n:]


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO loss (Rafailov et al. 2023) and the implicit rewards.

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), where pi and
    ref are the summed log-probabilities of a reply under the policy and the
    frozen reference.
    """
    r_c = beta * (chosen - ref_chosen)
    r_r = beta * (rejected - ref_rejected)
    return -F.logsigmoid(r_c - r_r), r_c.detach(), r_r.detach()


def dpo_step(model, batch: dict, device, beta: float) -> tuple[torch.Tensor, dict]:
    pc, pr = response_logps(model, batch, device)
    ref_c, ref_r = (batch[k].to(device, non_blocking=True) for k in ("ref_chosen", "ref_rejected"))
    losses, r_c, r_r = dpo_loss(pc, pr, ref_c, ref_r, beta)
    ids = batch["chosen_input_ids"]
    return losses.sum(), {"loss": losses.detach().sum(), "reward_chosen": r_c.sum(),
                          "reward_rejected": r_r.sum(), "correct": (r_c > r_r).sum(),
                          "logp_chosen": pc.detach().sum(), "logp_rejected": pr.detach().sum(),
                          "pairs": len(ids), "tokens": 2 * ids.numel()}
