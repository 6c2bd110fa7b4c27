"""The published FCDM and DiT numbers (`analysis/reference/published.csv`), as tables of their own.

Published rows are never mixed with measured ones: they are another table, labelled "published",
with the protocol they were measured under (ImageNet, FID-50K against ADM's reference batch).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from analysis.tables import Cell, Table

CSV = Path(__file__).with_name("reference") / "published.csv"
# Which published rows sit beside which spec (by the csv's `source` column): the table each spec
# reproduces. A spec may name its own with a `published:` list of sources.
SOURCES = {
    "kernel_size": ("FCDM Table 6 ablation",),
    "design": ("FCDM Table 6 ablation", "FCDM token-mixer ablation"),
    "conditioning": ("DiT conditioning ablation",),
    "dit_comparison": ("DiT Table 4", "FCDM XL comparison at 400K", "FCDM model table"),
    "flops_budget": ("DiT Table 4", "FCDM model table"),
}


@lru_cache(maxsize=1)
def load_published() -> pd.DataFrame:
    return pd.read_csv(CSV, dtype={"source": str, "note": str})


def published_rows(spec: str, sources: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The published rows for `spec` (by SOURCES, or `sources` when given); empty when none apply."""
    wanted = tuple(sources) if sources else SOURCES.get(spec, ())
    df = load_published()
    return df[df["source"].apply(lambda s: any(str(s).startswith(w) for w in wanted))].reset_index(drop=True)


def published_table(spec: str, comparable: bool, sources: tuple[str, ...] | None = None) -> Table | None:
    """The 'published' table for `spec`, or None. comparable: the measured runs use the papers' protocol
    (Inception features on ImageNet); otherwise the caption says the numbers cannot be compared."""
    rows = published_rows(spec, sources)
    if rows.empty:
        return None
    num = lambda v, fmt: Cell(None if pd.isna(v) else float(v), fmt=fmt)  # noqa: E731
    table_rows = [[Cell("published"), Cell(r.model), Cell(f"{int(r.resolution)}"),
                   Cell(None if pd.isna(r.train_steps) else f"{int(r.train_steps):,}"),
                   Cell(None if pd.isna(r.guidance) else (r.guidance if r.guidance == "none" else f"cfg {r.cfg_scale:g}")
                        if not pd.isna(r.cfg_scale) else r.guidance),
                   num(r.gflops_mac, "{:.3g}"), num(r.params_m, "{:.4g}"), num(r.fid, "{:.2f}"), num(r.is_, "{:.2f}"),
                   num(r.precision, "{:.2f}"), num(r.recall, "{:.2f}"), Cell(r.source)]
                  for r in rows.rename(columns={"is": "is_"}).itertuples()]
    caveat = ("" if comparable else " Not comparable with the measured tables above: those use this profile's own "
              "protocol (e.g. digits-FID on the bundled digits), these ImageNet FID-50K.")
    return Table("published", "Published reference numbers (not measured here)",
                 ["", "model", "resolution (px)", "train steps", "guidance", "GFLOPs", "params (M)", "FID", "IS",
                  "Precision", "Recall", "source"], table_rows,
                 "Published: as printed in the FCDM and DiT papers (ImageNet, FID-50K against ADM's reference "
                 f"batch, 250-step DDPM sampling), from analysis/reference/published.csv.{caveat}")
