import torch

from smolray.model import build_model, count_parameters, set_rope_theta
from smolray.recipe import load_recipe

from conftest import ROOT, TINY


def test_parameter_count_matches_the_built_model():
    """ModelConfig.num_parameters (arithmetic, what --dry-run prints) against the real module."""
    m = load_recipe(TINY).model
    built = sum(p.numel() for p in build_model(m, seed=0).parameters())
    assert m.num_parameters == built == count_parameters(m)
    untied = m.model_copy(update={"tie_embeddings": False})
    assert untied.num_parameters == count_parameters(untied) == built + m.vocab_size * m.hidden_size
    for name in ("smollm2-135m", "smollm2-360m", "smollm2-1.7b"):  # built on the meta device
        preset = load_recipe(ROOT / "recipes" / f"{name}.yaml").model
        assert preset.num_parameters == count_parameters(preset), name


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
