"""What changes on a GPU worker, checked on CPU: where batches live, and MFU arithmetic.

The meta device stands in for a GPU: tensors there have a device but no
host data, so any host-only operation on them (.numpy(), .tolist(),
.item()) raises, as it would on a CUDA tensor.
"""

from __future__ import annotations

import pytest
import torch

from smolray.recipe import load_recipe

from conftest import ROOT

META = torch.device("meta")


# By hand, 6N + 12 L H Dh T at T = 2048 (N from docs/smollm2.md):
#   135M: 6 x 134,515,008 + 12 x 30 x 9 x 64 x 2048 = 807,090,048 + 424,673,280
#   360M: 6 x 361,821,120 + 12 x 32 x 15 x 64 x 2048 = 2,170,926,720 + 754,974,720
#   1.7B: 6 x 1,711,376,384 + 12 x 24 x 32 x 64 x 2048 = 10,268,258,304 + 1,207,959,552
@pytest.mark.parametrize("name,flops", [("smollm2-135m", 1_231_763_328), ("smollm2-360m", 2_925_901_440),
                                        ("smollm2-1.7b", 11_476_217_856)])
def test_flops_per_token_of_the_presets(name, flops):
    from smolray.train.flops import flops_per_token

    assert flops_per_token(load_recipe(ROOT / "recipes" / f"{name}.yaml").model, 2048) == flops


def test_mfu_only_against_a_known_peak():
    from smolray.train.flops import peak_tflops, utilization

    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989 and peak_tflops("NVIDIA H200") == 989
    assert peak_tflops("NVIDIA H100 PCIe") == 756 and peak_tflops("NVIDIA H100 NVL") == 835
    assert peak_tflops("NVIDIA GH200 480GB") == 989 and peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert peak_tflops("cpu") is None and peak_tflops("Tesla T4") is None
    # 135M at 2048: 1.2318 GFLOP/token; 361,300 tokens/s on an H100 is 45% of its peak.
    got = utilization(361_300, 1_231_763_328, 989.0)
    assert got["tflops_per_gpu"] == pytest.approx(445.04, abs=0.01) and got["mfu"] == pytest.approx(0.45, abs=1e-3)
    assert utilization(1000, 1_231_763_328, None) == {"tflops_per_gpu": pytest.approx(1.2318, abs=1e-4)}


def test_batches_stay_on_the_host_and_only_model_inputs_move(make_recipe):
    """On a GPU worker Ray's default batch device ("auto") is the GPU; the loop asks for the host."""
    from smolray.data.plan import build_plan
    from smolray.data.stream import rank_slice
    from smolray.train.loop import (MODEL_INPUTS, _log_samples, _open, _Window, host_counts, micro_step,
                                    to_device)

    recipe = make_recipe("data.reset_position_ids=true")
    plan = build_plan(recipe)
    batch = next(_open(plan, rank_slice(plan, 0, 2, 0, 2), recipe, META))
    assert {v.device.type for v in batch.values()} == {"cpu"}, {k: v.device for k, v in batch.items()}
    inputs = to_device(batch, META)
    assert set(inputs) == set(MODEL_INPUTS) and {v.device for v in inputs.values()} == {META}
    with pytest.raises(Exception):
        inputs["input_ids"].numpy()  # what a host-only op on a device tensor does
    # Everything the loop does per micro batch besides the model runs on host columns only.
    assert host_counts(batch, len(plan.names)).sum() == len(batch["input_ids"])

    class Log(list):
        write = list.append

    log = Log()
    _log_samples(log, 0, batch, plan.names)
    assert len(log) == len(batch["input_ids"])
    # The loop's micro step on the meta device: a host read of the loss would raise.
    engine = _MetaEngine(recipe.model.vocab_size)
    window = _Window(META)
    micro_step(engine, batch, META, window, boundary=True)
    assert window.micro == 1 and window.loss.device == META
    assert engine.calls == ["boundary=True", "backward", "step"]
    # Positions and the packed documents' lengths (computed on the host) reached the model.
    assert set(engine.seen) == {"input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                                "max_length_q", "max_length_k"}


class _MetaEngine(torch.nn.Module):
    """What micro_step needs of a DeepSpeed engine, on the meta device."""

    def __init__(self, vocab: int):
        super().__init__()
        with META:
            self.emb = torch.nn.Embedding(vocab, 8)
            self.head = torch.nn.Linear(8, vocab)
        self.calls, self.seen = [], []

    def forward(self, input_ids, use_cache, position_ids=None, **docs):
        from types import SimpleNamespace

        assert input_ids.device == META and not use_cache
        assert all(v.device == META for v in docs.values() if torch.is_tensor(v))
        self.seen = ["input_ids"] + (["position_ids"] if position_ids is not None else []) + sorted(docs)
        return SimpleNamespace(logits=self.head(self.emb(input_ids)))

    def set_gradient_accumulation_boundary(self, value):
        self.calls.append(f"boundary={value}")

    def backward(self, loss):
        assert loss.device == META
        self.calls.append("backward")

    def step(self):
        self.calls.append("step")


def test_post_training_objectives_never_read_a_device_tensor_on_the_host():
    """SFT and DPO micro steps on the meta device: any .item() in smolray's code would raise.

    The model is a stand-in (an embedding that returns logits); that the real
    model's packed forward reads nothing on the host is test_attention's
    test_packed_forward_reads_nothing_on_the_host.
    """
    from types import SimpleNamespace

    from smolray.posttrain.objective import dpo_step, sft_loss

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 64)

        def forward(self, input_ids, position_ids, use_cache, cu_seq_lens_q, **docs):
            assert cu_seq_lens_q.device == META  # described on the host, then moved
            return SimpleNamespace(logits=self.emb(input_ids))

    with META:
        model = Model()
    ids = torch.randint(0, 64, (2, 16))
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt is not trained
    pos = torch.arange(16).repeat(2, 1)
    loss, stats = sft_loss(model, {"input_ids": ids, "labels": labels, "position_ids": pos}, META)
    assert loss.device == META and stats["nll"].device == META
    assert stats["trained"] == 2 * 12 and stats["tokens"] == 32  # counted from the host batch
    pair = {f"{side}_{k}": v for side in ("chosen", "rejected")
            for k, v in (("input_ids", ids), ("labels", labels), ("position_ids", pos))}
    pair.update(ref_chosen=torch.zeros(2), ref_rejected=torch.zeros(2))
    loss, stats = dpo_step(model, pair, META, beta=0.5)
    on_device = {k for k, v in stats.items() if torch.is_tensor(v) and v.device == META}
    assert on_device == {"loss", "reward_chosen", "reward_rejected", "correct", "logp_chosen", "logp_rejected"}
    assert (stats["pairs"], stats["tokens"]) == (2, 64)
