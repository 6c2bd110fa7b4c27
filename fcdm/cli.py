"""The `fcdm-ablate` command line: a thin layer over functions a notebook can call.

Heavy libraries (torch, mlflow) are imported inside the commands so `--help` answers at once.
"""
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Controlled ablations of fully convolutional diffusion models (FCDM) against DiT.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """Controlled ablations of fully convolutional diffusion models (FCDM) against DiT."""


class TableFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def models(fmt: Annotated[TableFormat, typer.Option("--format", help="Output format.")] = TableFormat.table):
    """List every FCDM and DiT preset with parameters and GFLOPs at 256 and 512 px."""
    from . import model_table

    rows = model_table.preset_rows()
    if fmt is TableFormat.csv:
        typer.echo(model_table.to_csv(rows), nl=False)
    elif fmt is TableFormat.json:
        typer.echo(model_table.to_json(rows))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Presets (GFLOPs: forward, batch 1, multiply-add = 1 FLOP, as in DiT)")
        for col in ("name", "family", "params (M)", "GFLOPs @256", "GFLOPs @512", "x DiT-XL/2"):
            table.add_column(col, justify="left" if col in ("name", "family") else "right")
        for r in rows:
            table.add_row(r["name"], r["family"], f"{r['params'] / 1e6:.2f}", f"{r['gflops_256']:.2f}",
                          f"{r['gflops_512']:.2f}", f"{r['ratio_to_dit_xl2']:.3f}")
        Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
