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


def test_bucket_runs_keep_local_logs_in_a_folder_only_this_user_can_enter(tmp_path, monkeypatch):
    import tempfile

    from smolray.train.trainer import private_temp_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = tmp_path / f"smolray-{os.getuid()}"
    mine.mkdir(mode=0o755)  # left open by an older version
    assert private_temp_dir() == str(mine) and mine.stat().st_mode & 0o777 == 0o700
    # Someone else got there first with a symlink to a folder of theirs.
    mine.rmdir()
    (tmp_path / "theirs").mkdir()
    mine.symlink_to(tmp_path / "theirs")
    with pytest.raises(PermissionError, match="is not a folder of this user"):
        private_temp_dir()
    mine.unlink()
    if os.getuid() == 0:  # another owner can be simulated only as root
        mine.mkdir(mode=0o700)
        os.chown(mine, 65534, 65534)
        with pytest.raises(PermissionError, match="another owner"):
            private_temp_dir()
