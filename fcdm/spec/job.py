"""A job: one run configuration of an ablation spec, at one seed, as the runner, `plan`, `sweep` and
`report` see it. A job's identity is its run's: (configuration hash, seed), never its name, so a
configuration shared by two specs is one run, trained once, and listed by both.

The tags `expand` puts in a job's config (log.tags), which its MLflow run carries: the spec, profile,
variant and job that made it, the axis values that picked it, and the GFLOPs target it was matched to."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from fcdm.config.schema import RunConfig
from fcdm.store.layout import run_key, short_name

TAG_SPEC, TAG_PROFILE, TAG_VARIANT, TAG_JOB = "fcdm.spec", "fcdm.profile", "fcdm.variant", "fcdm.job"
TAG_AXES, TAG_FLOPS_TARGET = "fcdm.axes", "fcdm.flops_target"


@dataclass(frozen=True)
class Job:
    spec: str  # the spec's name
    name: str  # "<spec>/<axis=value,...>" (variant first when the spec has variants)
    config: RunConfig  # fully resolved and validated; config.seed is the job's seed
    variant: str | None = None
    axes: dict[str, Any] = field(default_factory=dict)  # dotted key -> value that picked this job
    profile: str | None = None

    @property
    def seed(self) -> int:
        return self.config.seed

    @cached_property
    def hash(self) -> str:
        """The configuration hash, computed once per job (reports look every job up many times)."""
        return self.config.hash

    @property
    def label(self) -> str:
        """'kernel_size=3 s0': the name without the spec, and the seed (the live view, the summary, MLflow)."""
        return short_name(self.name, self.seed)

    @property
    def key(self) -> str:
        """'<hash>-s<seed>': the run's identity, and its folder name in the store."""
        return run_key(self.config)
