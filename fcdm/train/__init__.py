"""Training one run configuration: the loop (`loop`) over the run's phases (`trainer`), its evaluations
(`evaluations`), what it carries from step to step and how it is made reproducible (`state`: data order,
EMA, RNG states), its bookkeeping on resume (`ledger`: identity check, evaluations due and logged) and its
terminal progress bar (`display`).

    from fcdm.train import train
    result = train(load_config("ablations/configs/smoke.yaml"), store="runs")
"""
from fcdm.train.loop import TrainingDiverged, TrainingInterrupted, TrainResult, train

__all__ = ["TrainResult", "TrainingDiverged", "TrainingInterrupted", "train"]
