"""The trainer's bookkeeping on resume (used by fcdm.train.trainer): the run's identity check, and its
evaluation ledger (which evaluations are due, which are logged, and which checkpoints must be kept until
they are)."""
from __future__ import annotations

from pathlib import Path

from fcdm.config.identity import identity_differences
from fcdm.config.schema import RunConfig
from fcdm.errors import CheckpointError
from fcdm.store.checkpoints import list_checkpoints
from fcdm.store.progress import read_progress, write_progress


def check_identity(state: dict, identity: dict, cfg: RunConfig, path: Path) -> None:
    """Stop when a checkpoint was trained on another configuration or other data than `cfg` says."""
    stored = state.get("identity")
    if stored is None:
        raise CheckpointError(f"{path}: checkpoint records no run identity (written by an older fcdm-ablate, "
                              f"before schema {identity['schema']}); resuming could mix two runs: delete "
                              f"{path.parent} to train {cfg.name} from scratch")
    diffs = identity_differences(stored, identity)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise CheckpointError(f"{path}: checkpoint was trained with a different configuration or data than "
                              f"{cfg.name} (hash {cfg.hash}) describes ({shown}); training on would mix two runs: "
                              f"restore the original data/config, or delete {path.parent} to train from scratch")


class EvalLedger:
    """Which evaluation steps are due and which are logged, kept in every checkpoint and in progress.json.

    An evaluation runs after the checkpoint of its step, so a kill during it leaves that checkpoint
    without it: a rerun finds it pending and performs it first. The checkpoints of evaluation steps are
    never pruned, so a later request for another evaluation (another spec's protocol) is met from them.
    `done` joins the checkpoint's record with the sidecar's (written once the metrics are logged, possibly
    after the newest checkpoint). Both records are per evaluation request (`RunConfig.eval_key`): what was
    measured under one protocol never counts for another; progress.json keeps every request's record
    under `evaluations` ({key: {"steps", "noise", "protocol", "lost"}}; lost: steps whose checkpoint was gone
when the request came), `evals_done` / `noise_done` the current one's.
    """

    def __init__(self, cfg: RunConfig, ckpt_dir: Path, state: dict | None):
        self.cfg, self.ckpt_dir, self.key = cfg, ckpt_dir, cfg.eval_key
        self.due = cfg.eval_steps() if cfg.eval.metrics else []
        start = int(state["step"]) if state else 0
        # A checkpoint written before per-request records (no eval_key) counts for the request it resumes under.
        done = set(state.get("evals_done", ())) if state and state.get("eval_key", self.key) == self.key else set()
        try:
            side = read_progress(ckpt_dir)
        except CheckpointError:
            side = None
        ours = bool(side) and side.get("config_hash") == cfg.hash and side.get("seed") == cfg.seed
        self.records: dict = dict(side.get("evaluations") or {}) if ours else {}
        # A sidecar written before per-request records: its evaluations count for the current request.
        record = self.records.get(self.key, {}) if ours and "evaluations" in side else \
            {"steps": side.get("evals_done", ()), "noise": side.get("noise_done", ())} if ours else {}
        done |= set(record.get("steps", ()))
        self.done = {s for s in done if s <= start}  # later ones belong to deleted checkpoints: redo them
        self.protocol: str | None = record.get("protocol")  # the digest, once the trainer has resolved it
        have = {s for s, _ in list_checkpoints(ckpt_dir)}
        lost = [s for s in self.pending(start) if s not in have]
        if lost:  # e.g. eval.at or eval.metrics changed after those checkpoints were pruned
            print(f"warning: evaluation at step(s) {lost} of {cfg.name} cannot run: no checkpoint is left at that "
                  f"step; measure a later one with `fcdm-ablate evaluate RUN --step N`")
            self.due = [s for s in self.due if s not in lost]
        self.lost = sorted(set(lost) | set(record.get("lost", ())))  # recorded: the job settles without them
        # Evaluation noise: the final evaluation's checkpoint re-sampled with sampling seeds seed+1..seed+K,
        # logged once the final evaluation is (only the sidecar records them: they run after its checkpoint).
        self.final = max(self.due) if self.due else None
        self.noise_seeds = cfg.noise_seeds() if self.final is not None else []
        self.resampled = set(record.get("noise", ())) & set(self.noise_seeds) if self.final in self.done else set()

    def pending(self, upto: int) -> list[int]:
        return [s for s in self.due if s <= upto and s not in self.done]

    def resamplings_pending(self, upto: int) -> list[int]:
        """The sampling seeds of the final checkpoint's re-samplings still to log, once its evaluation is."""
        if self.final is None or self.final > upto or self.final not in self.done:
            return []
        return [s for s in self.noise_seeds if s not in self.resampled]

    def protected(self) -> set[int]:
        """Checkpoints never pruned: every evaluation step's (another protocol may ask for it later)."""
        return set(self.due)

    def write(self, **fields) -> None:
        self.records[self.key] = {"steps": sorted(self.done), "noise": sorted(self.resampled),
                                  "protocol": self.protocol, "lost": self.lost}
        write_progress(self.ckpt_dir, config_hash=self.cfg.hash, seed=self.cfg.seed, steps=self.cfg.train.steps,
                       evals_due=self.due, evals_done=sorted(self.done), noise_done=sorted(self.resampled),
                       eval_key=self.key, evaluations=self.records, **fields)
