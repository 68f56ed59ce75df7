"""A checkpoint is trusted only when every rank's shard is in it."""

import os

import pytest

from smolray.train.checkpoint import CheckpointError, TrainerState, mark_rank_done, verify


def state(world: int) -> TrainerState:
    return TrainerState(step=8, sequences=128, world_size=world, source_names=["a", "b"],
                        source_tokens=[1024, 1024], source_sequences=[4, 4], source_epochs=[0.1, 0.2],
                        source_shares=[0.5, 0.5], recipe_name="t",
                        stage_fingerprints=["main:sha256:x"])


def test_complete_checkpoint_verifies(tmp_path):
    os.makedirs(tmp_path / "ds")
    state(2).save(str(tmp_path))
    for r in (0, 1):
        mark_rank_done(str(tmp_path), r)
    assert verify(str(tmp_path)).step == 8


def test_missing_rank_is_refused(tmp_path):
    os.makedirs(tmp_path / "ds")
    state(2).save(str(tmp_path))
    mark_rank_done(str(tmp_path), 0)
    with pytest.raises(CheckpointError, match=r"ranks \[1\] are missing"):
        verify(str(tmp_path))


def test_missing_state_is_refused(tmp_path):
    mark_rank_done(str(tmp_path), 0)
    with pytest.raises(CheckpointError, match="not a complete smolray checkpoint"):
        verify(str(tmp_path))
