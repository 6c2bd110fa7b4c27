"""Sample quality of a denoiser: draw samples (`sampling`), under a recorded protocol (`protocol`), measure
and log them during training or afterwards (`evaluate`), from a run opened again (`trained`).

    from fcdm.evaluation import evaluate_run
    values, run_id = evaluate_run("smoke-3d8b3abe-s0", num_samples=1000)
"""
from fcdm.evaluation.evaluate import evaluate_run
from fcdm.evaluation.protocol import TAG_PROTOCOL, Protocol
from fcdm.evaluation.trained import TrainedRun, open_run

__all__ = ["Protocol", "TAG_PROTOCOL", "TrainedRun", "evaluate_run", "open_run"]
