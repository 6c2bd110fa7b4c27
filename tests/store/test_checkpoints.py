"""Checkpoints: atomic writes, pruning, newest-first discovery, a clear error for a damaged file."""
import pytest
import torch

from fcdm.store.checkpoints import CheckpointError, list_checkpoints, load_latest, save_checkpoint


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


def test_a_zero_byte_checkpoint_is_one_line_naming_the_file_and_the_fix(tmp_path):
    """Issue 16 item 10: torch's EOFError for an empty file has no message (it was an IndexError)."""
    save_checkpoint({"step": 1, "model": {}}, tmp_path, 1)
    (tmp_path / "step_00000002.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        load_latest(tmp_path)
    assert str(e.value) == (f"{tmp_path / 'step_00000002.pt'}: checkpoint is empty (0 bytes; a full disk or a copy "
                            "cut short); delete this file to resume from the previous checkpoint (or delete its "
                            "folder to train from scratch)")


def test_no_directory_means_no_checkpoint(tmp_path):
    assert load_latest(tmp_path / "missing") is None


def test_protected_steps_survive_pruning(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint({"step": step, "model": {}}, tmp_path, step, keep=1, protect={20})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 40]


def test_progress_sidecar_is_merged_atomically_and_read_back(tmp_path):
    from fcdm.store.progress import read_progress, write_progress

    assert read_progress(tmp_path / "none") is None
    write_progress(tmp_path, config_hash="abc", seed=0, step=10, steps=30, evals_due=[30], evals_done=[],
                   status="running", run_id="r1", reason=None)
    write_progress(tmp_path, step=20)
    p = read_progress(tmp_path)
    assert (p["step"], p["status"], p["run_id"], p["evals_due"]) == (20, "running", "r1", [30])
    assert isinstance(p["updated"], float) and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="progress status 'done'"):
        write_progress(tmp_path, status="done")


def test_a_damaged_sidecar_names_the_file_and_is_rewritten_whole(tmp_path):
    from fcdm.store.progress import read_progress, write_progress

    (tmp_path / "progress.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"progress.json is not readable JSON .*delete it"):
        read_progress(tmp_path)
    write_progress(tmp_path, status="running", step=1)
    assert read_progress(tmp_path)["step"] == 1


def test_reading_progress_imports_no_torch(tmp_path):
    import subprocess
    import sys

    from fcdm.store.progress import write_progress

    write_progress(tmp_path, status="finished", step=5)
    code = ("import sys; from fcdm.store.progress import read_progress; "
            f"p = read_progress({str(tmp_path)!r}); assert 'torch' not in sys.modules, 'torch imported'; "
            "print(p['status'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "finished", out.stderr
