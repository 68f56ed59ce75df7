"""The frozen reference's log-probabilities, computed once as a Ray Data pass.

DPO needs log pi_ref(reply | prompt) for every pair. Computing it up front
and storing it beside the prepared rows (reference.arrow) means training
workers hold one model instead of two (ZeRO shards the policy; a frozen
reference would sit whole in every worker) and run one forward per pair per
epoch instead of two. The reference never changes, so the numbers are the
same as computing them on the fly.

The same pass scores a finished policy, for the reward accuracy in the
job's summary.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import torch

from smolray.posttrain.objective import REFERENCE, Rows, response_logps


def load_causal_lm(model_dir: str, packed: bool = True):
    """A Llama folder in fp32 (the same on every worker); `packed`: with packed-conversation attention."""
    from transformers import AutoConfig, LlamaForCausalLM

    from smolray.model.attention import use_varlen

    cfg = AutoConfig.from_pretrained(model_dir)
    if cfg.model_type != "llama":
        raise ValueError(f"init={model_dir}: a {cfg.model_type!r} model; smolray post-trains "
                         "Llama-architecture checkpoints (model_type 'llama')")
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    if packed:  # every post-training row is packed conversations and padding
        use_varlen(model)
    return model


class _Scorer:
    def __init__(self, model_dir: str, data_dir: str):
        self.model = load_causal_lm(model_dir).eval()
        self.rows = Rows(data_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = batch["id"]
        with torch.no_grad():
            c, r = response_logps(self.model, self.rows.take(idx), "cpu")
        return {"id": idx, "chosen": c.double().numpy(), "rejected": r.double().numpy()}


def score_pairs(model_dir: str, data_dir: str, actors: int = 1,
                batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Summed reply log-probabilities of every pair under the model at model_dir."""
    import ray

    n = len(Rows(data_dir))
    ds = ray.data.range(n).map_batches(
        _Scorer, fn_constructor_kwargs={"model_dir": model_dir, "data_dir": data_dir},
        batch_size=batch_size, batch_format="numpy", concurrency=actors, num_cpus=1)
    chosen, rejected = np.empty(n), np.empty(n)
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        chosen[b["id"]], rejected[b["id"]] = b["chosen"], b["rejected"]
    return chosen, rejected


def write_reference(data_dir: str, chosen: np.ndarray, rejected: np.ndarray) -> None:
    path = os.path.join(data_dir, REFERENCE)
    table = pa.table({"ref_chosen": chosen, "ref_rejected": rejected})
    with pa.ipc.new_file(path + ".tmp", table.schema) as w:
        w.write_table(table)
    os.replace(path + ".tmp", path)
