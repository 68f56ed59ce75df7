import torch

from smolray.model import build_model, count_parameters, set_rope_theta
from smolray.recipe import load_recipe

from conftest import TINY


def analytic(m) -> int:
    """Llama parameter count by hand: embeddings, attention, MLP, norms."""
    kv = m.num_kv_heads * m.head_dim
    layer = 2 * m.hidden_size * m.hidden_size + 2 * m.hidden_size * kv  # q, o, k, v
    layer += 3 * m.hidden_size * m.intermediate_size + 2 * m.hidden_size  # mlp, two norms
    head = 0 if m.tie_embeddings else m.vocab_size * m.hidden_size
    return m.vocab_size * m.hidden_size + m.num_layers * layer + m.hidden_size + head


def test_parameter_count_matches_the_built_model_and_the_formula():
    m = load_recipe(TINY).model
    built = sum(p.numel() for p in build_model(m, seed=0).parameters())
    assert count_parameters(m) == built == analytic(m)


def test_init_is_seeded_and_uses_init_std():
    m = load_recipe(TINY, ["model.init_std=0.05"]).model
    a, b = build_model(m, seed=3), build_model(m, seed=3)
    assert torch.equal(a.model.layers[0].mlp.up_proj.weight, b.model.layers[0].mlp.up_proj.weight)
    std = a.model.layers[0].mlp.up_proj.weight.std().item()
    assert abs(std - 0.05) < 0.005


def test_rope_theta_switch_recomputes_frequencies():
    m = load_recipe(TINY).model
    model = build_model(m, seed=0)
    set_rope_theta(model, 100000.0)
    expect = 1.0 / (100000.0 ** (torch.arange(0, m.head_dim, 2).float() / m.head_dim))
    assert torch.allclose(model.model.rotary_emb.inv_freq, expect)
    assert model.config.rope_parameters["rope_theta"] == 100000.0
