"""Evaluation noise beside seed noise: how much a metric moves when the SAME checkpoint is evaluated again
under the same protocol with other sampling seeds (`fid.eval_seed<S>`, logged by the trainer when
`eval.noise_seeds` > 0), against how much it moves between training seeds.

    rows = noise_rows(view)          # one NoiseRow per configuration with re-samplings
    table = noise_table(view, rows, protocol_text)
    clause = noise_clause(rows, "k=3")  # 'evaluation noise SD 0.02 (4 re-samplings of each of 3 checkpoints; seed SD 0.05)'

Evaluation SD: per checkpoint, the sample std (ddof 1) of its values (the evaluation itself and each
re-sampling); pooled over the configuration's checkpoints as the root mean square (each has as many
values). A difference between rows that is not well above the evaluation SD could come from resampling
alone, whatever the training seeds say.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.aggregate import View
from analysis.collect import base_metric, metric_name
from analysis.stats import summarize
from analysis.tables import Cell, Table, row_label


@dataclass(frozen=True)
class NoiseRow:
    config: str
    step: int
    checkpoints: int  # seeds whose final checkpoint was re-sampled
    samples: int  # values per checkpoint (the evaluation and its re-samplings)
    eval_sd: float  # pooled within-checkpoint std
    seed_sd: float  # std of the metric over the configuration's seeds at that step (NaN with one seed)
    values: dict[int, list[float]]  # seed -> that checkpoint's values

    @property
    def ratio(self) -> float:
        return self.seed_sd / self.eval_sd if self.eval_sd > 0 and not math.isnan(self.seed_sd) else math.nan


def noise_rows(view: View) -> list[NoiseRow]:
    """One row per configuration whose final checkpoint was evaluated more than once under this protocol."""
    out = []
    for c in view.configs:
        step = view.final_step(c)
        per_seed = {seed: vals for seed, vals in view.noise(c, step).items() if len(vals) > 1}
        if not per_seed:
            continue
        variances = [float(np.var(v, ddof=1)) for v in per_seed.values()]
        seed_sd = summarize(view.values(c, step)).std
        out.append(NoiseRow(c, step, len(per_seed), max(len(v) for v in per_seed.values()),
                            math.sqrt(sum(variances) / len(variances)), seed_sd, per_seed))
    return out


def pooled(rows: list[NoiseRow]) -> float:
    """The evaluation SD over every checkpoint of the protocol (root mean square of the rows', by checkpoint)."""
    total = sum(r.eval_sd ** 2 * r.checkpoints for r in rows)
    count = sum(r.checkpoints for r in rows)
    return math.sqrt(total / count) if count else math.nan


def noise_clause(rows: list[NoiseRow], config: str) -> str:
    """'evaluation noise SD 0.020 (...; seed SD 0.050)' for the summary's verdict line, '' without re-samplings."""
    row = next((r for r in rows if r.config == config), None)
    if row is None:
        return ""
    seed = "" if math.isnan(row.seed_sd) else f"; seed SD {row.seed_sd:.3f}"
    return (f"evaluation noise SD {row.eval_sd:.3f} ({row.samples} evaluations of each of {row.checkpoints} final "
            f"checkpoint{'s' if row.checkpoints != 1 else ''}{seed})")


def noise_table(view: View, rows: list[NoiseRow], protocol_text: str) -> Table:
    name = metric_name(view.metric)
    cells = [[Cell(row_label(view, r.config)), Cell(r.step, fmt="{:,d}"), Cell(r.checkpoints, fmt="{:d}"),
              Cell(r.samples, fmt="{:d}"), Cell(r.eval_sd, fmt="{:.3f}"), Cell(r.seed_sd, fmt="{:.3f}"),
              Cell(r.ratio, fmt="{:.1f}x")] for r in rows]
    cells.append([Cell("all configurations (pooled)"), Cell(None), Cell(sum(r.checkpoints for r in rows), fmt="{:d}"),
                  Cell(None), Cell(pooled(rows), fmt="{:.3f}"), Cell(None), Cell(None)])
    return Table(f"{base_metric(view.metric)}_evaluation_noise", f"Evaluation noise vs seed noise ({name})",
                 ["configuration", "step", "checkpoints", "evaluations each", f"evaluation SD of {name}",
                  f"seed SD of {name}", "seed SD / evaluation SD"], cells,
                 f"Evaluation noise: each final checkpoint evaluated again under the same protocol with other sampling "
                 f"seeds; its SD is the sample std over one checkpoint's evaluations, pooled (root mean square) over "
                 f"the checkpoints. Seed SD: the std of the {name} over training seeds at that step, each evaluated "
                 f"once with the protocol's sampling seed. A difference between rows much smaller than the "
                 f"evaluation SD could come from resampling alone. Protocol: {protocol_text}.")
