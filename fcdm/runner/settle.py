"""What the runner records after a trainer ended without ending its run: the MLflow run and progress.json
must say how it ended even when the trainer could not (SIGKILL, out of memory, a crash in its own error
path, an exit without a final status).

    end_open_run(store, client, job, code, reason, run_id)   # KILLED / FAILED, tag fcdm.failure = reason
    discard_checkpoints(store, job)                          # --force: the checkpoints go, the lock stays

Both act only while holding the run's trainer lock (fcdm.store.lock), so they never touch a run that
another trainer (this runner's retry, another runner's) has meanwhile taken up.
"""
from __future__ import annotations

import shutil
import signal

from fcdm.errors import CheckpointError
from fcdm.spec.job import Job
from fcdm.store.layout import checkpoint_dir
from fcdm.store.lock import LOCK_FILE, LOCK_LOG, TrainerLock, TrainerLockHeld, describe
from fcdm.store.progress import progress_or_empty, write_progress

TAG_FAILURE = "fcdm.failure"
SETTLE_WAIT_S = 3.0  # a killed trainer's children (data loader workers) may hold the lock a moment longer


def ended_status(code: int) -> str:
    """The MLflow status of a run whose trainer exited with `code` without ending it: KILLED when a signal
    ended it (negative code, or 128 + SIGINT/SIGTERM: resumable from its checkpoint), else FAILED."""
    return "KILLED" if code < 0 or code in (128 + signal.SIGINT, 128 + signal.SIGTERM) else "FAILED"


def end_open_run(store, client, job: Job, code: int, reason: str, run_id: str | None) -> str | None:
    """Mark the job's run KILLED or FAILED (with the tag fcdm.failure = `reason`) if it is still RUNNING,
    and progress.json 'killed' / 'failed' if it still says 'running'; the status set, else None. Does
    nothing when another process holds the run's trainer lock."""
    ckpt = checkpoint_dir(store, job.config)
    lock = TrainerLock(ckpt, role="runner")
    try:
        lock.acquire(wait_s=SETTLE_WAIT_S, poll_s=0.2, say=lambda line: None)
    except TrainerLockHeld:
        return None
    try:
        status = ended_status(code)
        progress = progress_or_empty(ckpt)
        run_id = run_id or progress.get("run_id")
        ended = None
        if progress.get("status") == "running":
            write_progress(ckpt, status=status.lower(), reason=reason)
            ended = status
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, TAG_FAILURE, reason)
            client.set_terminated(run_id, status=status)
            ended = status
        return ended
    finally:
        lock.release()


def discard_checkpoints(store, job: Job) -> None:
    """--force: delete the job's checkpoints and progress.json, holding its trainer lock (the lock file and
    lock.log stay: deleting a lock file someone holds would let a second trainer take a new one).
    CheckpointError when another trainer still trains the run."""
    ckpt = checkpoint_dir(store, job.config)
    if not ckpt.is_dir():
        return
    lock = TrainerLock(ckpt, role="runner")
    try:
        lock.acquire(wait_s=SETTLE_WAIT_S, poll_s=0.2, say=lambda line: None)
    except TrainerLockHeld as held:
        raise CheckpointError(f"{ckpt}: --force cannot delete the checkpoints of {job.name}: its trainer still "
                              f"runs ({describe(held.holder)}); rerun once it ended") from None
    try:
        for path in ckpt.iterdir():
            if path.name not in (LOCK_FILE, LOCK_LOG):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    finally:
        lock.release()
