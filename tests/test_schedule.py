import pytest

from smolray.train.schedule import WSD


def test_wsd_values():
    s = WSD(peak=1.0, total=100, warmup=10, decay=20, min_ratio=0.1)
    assert s(0) == pytest.approx(0.1)  # first step already moves
    assert s(9) == pytest.approx(1.0)  # end of warmup reaches the peak
    assert all(s(i) == 1.0 for i in range(10, 80))  # stable
    assert s(80) == pytest.approx(1.0 - 0.9 / 20)  # decay starts on step total - decay
    assert s(89) == pytest.approx(1.0 - 0.9 * 10 / 20)
    assert s(99) == pytest.approx(0.1)  # ends at min_lr on the last step
    assert [s(i) for i in range(80, 100)] == sorted([s(i) for i in range(80, 100)], reverse=True)


def test_wsd_without_warmup_or_decay():
    s = WSD(peak=3e-3, total=5, warmup=0, decay=0)
    assert [s(i) for i in range(5)] == [3e-3] * 5


def test_wsd_matches_recipe(tmp_path):
    from pathlib import Path

    from smolray.recipe import load_recipe
    from smolray.train.schedule import from_recipe

    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml")
    s = from_recipe(r)
    assert (s.total, s.warmup, s.decay) == (300, 20, 60)
    assert s(299) == 0.0 and s(150) == r.optim.lr
