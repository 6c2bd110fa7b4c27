"""A job: one run configuration of an ablation spec, at one seed, as the runner, `plan`, `sweep` and
`report` see it. A job's identity is its run's: (configuration hash, seed), never its name, so a
configuration shared by two specs is one run, trained once, and listed by both.

The tags `expand` puts in a job's config (log.tags), which its MLflow run carries: the spec, profile,
variant and job that made it, the axis values that picked it, the GFLOPs (or parameter) target it was
matched to, the row it is compared with (fcdm.spec.pairs), and its configuration key (the hash without the
data's fingerprint)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from fcdm.config.schema import RunConfig
from fcdm.store.layout import short_name

TAG_SPEC, TAG_PROFILE, TAG_VARIANT, TAG_JOB = "fcdm.spec", "fcdm.profile", "fcdm.variant", "fcdm.job"
TAG_AXES, TAG_FLOPS_TARGET, TAG_PARAMS_TARGET = "fcdm.axes", "fcdm.flops_target", "fcdm.params_target"
TARGET_TAGS = {"flops": TAG_FLOPS_TARGET, "params": TAG_PARAMS_TARGET}  # what a matched job was solved to
TAG_SOLVED = "fcdm.solved"  # the matched arguments' values: 'hidden_size=32,mlp_ratio=3.3749'
# The configuration's key without its data (RunConfig.config_key): how a report finds the run where the data's
# fingerprint, and so the hash, cannot be computed (runs trained elsewhere).
TAG_CONFIG_KEY = "fcdm.config_key"
# The job's place in the comparison (fcdm.spec.pairs): its role, the job name of its baseline, what they match on.
TAG_ROLE, TAG_BASELINE, TAG_MATCHED_ON = "fcdm.role", "fcdm.baseline", "fcdm.matched_on"


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
        """'<hash>-s<seed>': the run's identity, and its folder name in the store (run_key of its config)."""
        return f"{self.hash}-s{self.seed}"
