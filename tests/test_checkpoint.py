"""Checkpoints: atomic writes, pruning, newest-first discovery, a clear error for a damaged file."""
import pytest
import torch

from fcdm.checkpoint import CheckpointError, list_checkpoints, load_latest, save_checkpoint


def test_save_prunes_to_the_newest_and_load_latest_finds_it(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint({"step": step, "model": {"w": torch.full((2,), float(step))}}, tmp_path, step, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 30]
    state = load_latest(tmp_path)
    assert state["step"] == 30 and torch.equal(state["model"]["w"], torch.full((2,), 30.0))
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_crash_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint({"step": 1, "model": {}}, tmp_path, 1)

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint({"step": 2, "model": {}}, tmp_path, 2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1] and not list(tmp_path.glob(".*.tmp"))


def test_corrupt_checkpoint_names_the_file_and_the_fix(tmp_path):
    save_checkpoint({"step": 1, "model": {}}, tmp_path, 1)
    bad = tmp_path / "step_00000002.pt"
    bad.write_bytes(b"\x80\x02 this is not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        load_latest(tmp_path)
    assert str(bad) in str(err.value) and "delete this file" in str(err.value)


def test_no_directory_means_no_checkpoint(tmp_path):
    assert load_latest(tmp_path / "missing") is None
