"""The preset table behind `fcdm-ablate models`: params and GFLOPs of every FCDM and DiT preset."""
import csv
import io
import json

from fcdm.models import family_of, list_models
from fcdm.models.flops import config_gflops, preset_gflops

COLUMNS = ["name", "family", "params", "gflops_256", "gflops_512"]
REFERENCE = "DiT-XL/2"


def preset_rows() -> list[dict]:
    """One dict per preset with COLUMNS keys plus `ratio_to_dit_xl2` (GFLOPs at 256 over DiT-XL/2's)."""
    rows = []
    for name in list_models():
        params, g256 = config_gflops(name, (4, 32, 32))
        rows.append(dict(name=name, family=family_of(name), params=params,
                         gflops_256=round(g256, 2), gflops_512=round(preset_gflops(name, 512), 2)))
    ref = next(r for r in rows if r["name"] == REFERENCE)["gflops_256"]
    for r in rows:
        r["ratio_to_dit_xl2"] = round(r["gflops_256"] / ref, 3)
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)
