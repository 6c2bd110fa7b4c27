"""Which row each row of a spec is compared with, and what the two are matched on: what `plan` shows and
the report tests.

    rows = pairs(spec.view("paper"), jobs)     # {job name: Pair}, one per row (seeds share their row's)
    rows["dit_comparison/FCDM-S"].baseline      # 'dit_comparison/DiT-S/2'
    rows["dit_comparison/FCDM-S"].matched_on    # 'size'

A row's baseline, first rule that applies:
1. a variant marked `reference: true` is a labelled reference row: shown, never compared;
2. a row the profile's `baseline:` selects, or that another variant names as its `baseline`, is a baseline;
3. the variant's own `baseline: <variant>` (that variant at the same grid point);
4. a row re-solved with `match_flops` / `match_params` whose target is a variant: that variant;
5. the profile's `baseline:` rows, the one that agrees with the row on the most axis values;
6. otherwise none (the row is listed, not compared).
What a pair is matched on: 'FLOPs' or 'parameters' when one of the two was re-solved to the other (or both
to the same target), 'size' when they are two published presets of one size (FCDM-S and DiT-S/2) with none
of their size arguments changed, else '' (not matched: only the ablated setting differs, or nothing was).

`expand` records each job's pair in its config's tags (TAG_ROLE, TAG_BASELINE, TAG_MATCHED_ON), so `plan`
shows it and every run carries it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from fcdm.spec.view import ProfileView, canonical_text

if TYPE_CHECKING:
    from fcdm.spec.job import Job

# The arguments that make a preset's size: a row that changes one of them is no longer "FCDM-S".
SIZE_ARGS = ("hidden_size", "depth", "num_heads", "mlp_ratio", "patch_size")


@dataclass(frozen=True)
class Pair:
    """One row's place in the comparison."""
    role: str  # 'compared', 'baseline', 'reference' or 'unpaired'
    baseline: str | None = None  # the job name of the row it is compared with (role 'compared')
    matched_on: str = ""  # 'FLOPs', 'parameters', 'size' or '' (not matched)
    rule: str = ""  # how the baseline was chosen, in words

    @property
    def compared(self) -> bool:
        return self.role == "compared"


def pairs(view: ProfileView, jobs: Sequence[Job]) -> dict[str, Pair]:
    """{job name: Pair} for every row of `jobs` (this profile's, from `expand`)."""
    rows = list({j.name: j for j in reversed(jobs)}.values())[::-1]  # one job per row (its first seed), in order
    named = {v.baseline for v in view.variants if v.baseline}
    chosen = [r for r in rows if view.is_baseline(r.variant, r.axes)]  # the spec's baseline rows, looked up once
    # Each row's axis values as canonical text, once: a 5,000-job spec compares every row with every baseline.
    texts = {r.name: {k: canonical_text(v) for k, v in r.axes.items()} for r in rows}
    out = {}
    for job in rows:
        variant = view.variant(job.variant) if job.variant else None
        if variant is not None and variant.reference:
            out[job.name] = Pair("reference", rule="a reference row (reference: true): shown, not compared")
        elif view.is_baseline(job.variant, job.axes) or job.variant in named:
            out[job.name] = Pair("baseline", rule="a baseline")
        else:
            base, rule = _baseline_of(view, job, rows, chosen, texts)
            out[job.name] = (Pair("compared", base.name, matched_on(view, job, base), rule) if base is not None
                             else Pair("unpaired", rule="no baseline: the spec names none for this row"))
    return out


def _baseline_of(view: ProfileView, job: Job, rows: list[Job], chosen: list[Job],
                 texts: dict[str, dict[str, str]]) -> tuple[Job | None, str]:
    variant = view.variant(job.variant) if job.variant else None
    if variant is not None and variant.baseline:
        return _at_point(variant.baseline, job, rows, texts), f"its variant's baseline: {variant.baseline}"
    match = view.matching(variant)
    if match is not None and isinstance(match.target, str) and view.variant(match.target) is not None:
        return _at_point(match.target, job, rows, texts), f"its {match.quantity} target: {match.target}"
    if view.baseline is not None:
        if chosen:
            return _closest(job, chosen, texts), "the spec's baseline"
    return None, ""


def _at_point(variant: str, job: Job, rows: list[Job], texts: dict[str, dict[str, str]]) -> Job | None:
    """The row of `variant` at `job`'s grid point (else the one that agrees with it on the most axes)."""
    return _closest(job, [r for r in rows if r.variant == variant], texts)


def _closest(job: Job, candidates: list[Job], texts: dict[str, dict[str, str]]) -> Job | None:
    """The candidate that agrees with `job` on the most axis values (`texts`: each row's, canonical); the
    first on a tie."""
    if not candidates:
        return None
    mine = texts[job.name]

    def agree(other: Job) -> int:
        theirs = texts[other.name]
        return sum(theirs[k] == t for k, t in mine.items() if k in theirs)

    return max(enumerate(candidates), key=lambda ic: (agree(ic[1]), -ic[0]))[1]


def matched_on(view: ProfileView, job: Job, base: Job) -> str:
    """'FLOPs', 'parameters', 'size' or '' for the pair (job, base)."""
    mine = view.matching(view.variant(job.variant) if job.variant else None)
    theirs = view.matching(view.variant(base.variant) if base.variant else None)
    if mine is not None and mine.target == base.variant:
        return mine.quantity
    if theirs is not None and theirs.target == job.variant:
        return theirs.quantity
    if mine is not None and theirs is not None and (mine.kind, mine.target) == (theirs.kind, theirs.target):
        return mine.quantity  # both re-solved to one target (e.g. every kernel size to the base's FLOPs)
    if job.config.model.name != base.config.model.name and size_of(job) is not None and size_of(job) == size_of(base):
        return "size"  # two presets of one size (FCDM-S and DiT-S/2); one preset twice is no match of anything
    return ""


def size_of(job: Job) -> str | None:
    """'S' for an unchanged FCDM-S or DiT-S/2 (any patch), None for a preset whose size arguments were changed."""
    model = job.config.model
    if any(k in model.args for k in SIZE_ARGS) or "-" not in model.name:
        return None
    return model.name.split("-", 1)[1].split("/", 1)[0]
