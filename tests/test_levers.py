"""The engine's speed and memory levers: each changes how, not what, the model trains."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError
from transformers import LlamaConfig, LlamaForCausalLM

from smolray.recipe import OptimConfig
from smolray.recipe.schema import EngineConfig
from smolray.train.engine import build_optimizer, describe, ds_config, prepare_model

from conftest import ROOT


def _model(layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2)
    m = LlamaForCausalLM(cfg)
    m.config._attn_implementation = "sdpa"
    return m


def _train(**kw) -> EngineConfig:
    return EngineConfig(global_batch_size=2, micro_batch_size=2, **kw)


def _loss_and_grads(model) -> tuple[float, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 512, (2, 16), generator=g)
    pos = torch.arange(16).repeat(2, 1)
    pos[1, 8:] = torch.arange(8)  # two packed documents
    loss = model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def _same(plain, other):
    (la, ga), (lb, gb) = _loss_and_grads(plain), _loss_and_grads(other)
    assert lb == pytest.approx(la, rel=1e-6)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * float(a.abs().max()))


def _saved_for_backward(model) -> int:
    """Tensors a forward keeps for its backward."""
    saved = []
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model(input_ids=ids, labels=ids, use_cache=False)
    return len(saved)


def test_activation_checkpointing_keeps_fewer_activations_and_gives_the_same_gradients():
    plain, ckpt = _model(), _model()
    assert prepare_model(ckpt, _train(activation_checkpointing=True)) == [
        "activation checkpointing per decoder layer"]
    # Only each layer's input is kept; the rest is recomputed in the backward.
    assert _saved_for_backward(ckpt) < _saved_for_backward(plain) / 3
    _same(plain, ckpt)


def test_compiled_layers_give_the_same_loss_gradients_and_parameter_names():
    plain, compiled = _model(1), _model(1)
    assert prepare_model(compiled, _train(compile=True)) == ["torch.compile per decoder layer"]
    assert compiled.model.layers[0]._compiled_call_impl is not None
    assert compiled.state_dict().keys() == plain.state_dict().keys()  # checkpoints unchanged
    _same(plain, compiled)


def test_fused_adamw_takes_the_same_steps():
    a, b = _model(1), _model(1)
    opt = OptimConfig(lr=1e-2, weight_decay=0.1)
    oa, ob = build_optimizer(a, opt, _train(fused_adamw="off")), build_optimizer(b, opt, _train(fused_adamw="on"))
    assert ob.defaults["fused"] and not oa.defaults["fused"]
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            _loss_and_grads(m)
            o.step()
            o.zero_grad()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)


def test_auto_levers_on_cpu_and_their_log_line():
    t = _train(precision="fp32")
    assert ds_config(t, OptimConfig(lr=1e-3), 1).get("data_types") is None
    assert describe(t, []) == "engine: ZeRO-2, fp32, AdamW"
    bf = _train(precision="bf16")  # ZeRO-2 sums bf16 gradients in fp32 unless told otherwise
    assert ds_config(bf, OptimConfig(lr=1e-3), 1)["data_types"] == {"grad_accum_dtype": "fp32"}
    assert describe(bf, []) == "engine: ZeRO-2, bf16 (gradients summed in fp32), AdamW"


def test_levers_that_cannot_work_together_name_the_fields():
    with pytest.raises(ValidationError, match=r"train.compile=true with train.zero_stage=3"):
        _train(compile=True, zero_stage=3)
    with pytest.raises(ValidationError, match=r"train.grad_accum_dtype=fp32 with precision bf16 needs zero_stage >= 1"):
        _train(grad_accum_dtype="fp32", zero_stage=0, precision="bf16")


# One DeepSpeed process (world size 1): 32 micro batches of bf16 gradients,
# summed by ZeRO-2 in fp32 or in bf16, against the fp32 model's exact sum.
ACCUM = """
import copy, os, sys, torch
import torch.distributed as dist
os.environ.update(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
from deepspeed.utils import safe_get_full_grad
from smolray.recipe import OptimConfig
from smolray.recipe.schema import EngineConfig
from smolray.train.engine import build_engine
from smolray.train.schedule import WSD
sys.path.insert(0, "tests")
from test_levers import _model
A = 32
data = [torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(A)]
ref = _model()
exact = [torch.zeros_like(p, dtype=torch.float64) for p in ref.parameters()]
for x in data:
    (ref(input_ids=x, labels=x).loss / A).backward()
    for e, p in zip(exact, ref.parameters()):
        e += p.grad.double()
        p.grad = None
for accum in ("fp32", "bf16"):
    train = EngineConfig(global_batch_size=A, micro_batch_size=1, precision="bf16", grad_accum_dtype=accum)
    eng = build_engine(_model(), OptimConfig(lr=1e-3), train, WSD(peak=1e-3, total=1, warmup=0, decay=0), 1)
    for i, x in enumerate(data):
        eng.set_gradient_accumulation_boundary(i == A - 1)
        eng.backward(eng(input_ids=x, labels=x).loss)
    err = sum(((safe_get_full_grad(p).double() - e) ** 2).sum() for p, e in zip(eng.module.parameters(), exact))
    print("error", accum, float((err / sum((e ** 2).sum() for e in exact)) ** 0.5))
"""


def test_bf16_gradients_summed_in_fp32_stay_closer_to_the_fp32_gradient():
    from smolray.cluster import _free_port

    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    out = subprocess.run([sys.executable, "-c", ACCUM, str(_free_port())], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    err = {line.split()[1]: float(line.split()[2]) for line in out.stdout.splitlines() if line.startswith("error")}
    assert "engine: ZeRO-2, bf16 (gradients summed in fp32), AdamW" in out.stdout
    # bf16 arithmetic in each micro batch costs ~0.6% either way; summing in
    # bf16 adds its own rounding on top, growing with the accumulation count.
    assert err["fp32"] < 0.01 and err["fp32"] < 0.8 * err["bf16"], err
