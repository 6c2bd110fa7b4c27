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


def _fail(message: str, code: int = 2) -> None:
    """One clear message on stderr and a non-zero exit, no traceback."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


StoreOption = Annotated[Path | None, typer.Option("--store", help="Store directory (default: $FCDM_STORE or ./runs).")]
TrackingOption = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow server instead of the store's "
                                                     "SQLite file (default: $MLFLOW_TRACKING_URI).")]


@app.command()
def train(config: Annotated[Path, typer.Argument(help="YAML run config, e.g. ablations/configs/smoke.yaml.")],
          set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set train.lr=2e-4.")] = None,
          store: StoreOption = None, tracking_uri: TrackingOption = None,
          progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True):
    """Train one run configuration; rerunning it resumes (or skips a finished run)."""
    from .checkpoint import CheckpointError
    from .config import ConfigError, load_config
    from .data import DataError
    from .metrics import MetricsError
    from .train import TrainingDiverged, TrainingInterrupted, train as run_training

    try:
        cfg = load_config(config, set_ or [])
        result = run_training(cfg, store=store, tracking_uri=tracking_uri, progress=progress)
    except (ConfigError, CheckpointError, MetricsError) as e:
        _fail(str(e))
    except DataError as e:
        _fail(f"{config}: data: {e}")
    except TrainingDiverged as e:
        _fail(f"{config}: {e}", code=3)
    except TrainingInterrupted as e:
        _fail(str(e), code=128 + e.signum)
    if not result.main_process:
        return
    if result.status == "SKIPPED":
        typer.echo(f"{cfg.name}: already finished at step {result.step} ({result.checkpoint_dir})")
    else:
        from .tracking import run_name

        typer.echo(f"{cfg.name}: {result.status} at step {result.step}, loss {result.final_loss:.4f}, "
                   f"run {run_name(cfg)} ({result.run_id})")


@app.command()
def sample(run: Annotated[str, typer.Argument(help="MLflow run id or run name.")],
           num: Annotated[int, typer.Option("--num", min=1, help="Number of samples.")] = 100,
           out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("samples"),
           step: Annotated[int | None, typer.Option(help="Checkpoint step (default: newest).")] = None,
           seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
           store: StoreOption = None, tracking_uri: TrackingOption = None):
    """Draw class-conditional samples (classes evenly spread) from a run's EMA weights.

    Writes OUT/samples.npz (arr_0: uint8 N x H x W x C, labels: the classes) and OUT/grid.png.
    """
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .runs import open_run
    from .sampling import write_samples
    from .tracking import RunNotFoundError

    try:
        trained = open_run(run, store, tracking_uri, step)
        path = write_samples(trained, num, out, seed=seed)
    except (RunNotFoundError, CheckpointError, ConfigError) as e:
        _fail(str(e))
    typer.echo(f"wrote {num} samples of run {trained.run_id} (step {trained.step}) to {path}")


@app.command()
def evaluate(run: Annotated[str, typer.Argument(help="MLflow run id or run name.")],
             step: Annotated[int | None, typer.Option(help="Checkpoint step (default: newest).")] = None,
             num_samples: Annotated[int | None, typer.Option(min=1, help="Samples (default: the run's eval.num_samples).")] = None,
             cfg_scale: Annotated[float | None, typer.Option(min=1.0, help="Guidance scale.")] = None,
             sampler: Annotated[str | None, typer.Option(help="ddpm|ddim (ddpm runs), euler|euler-sde (flow runs).")] = None,
             sampling_steps: Annotated[int | None, typer.Option(min=1, help="Sampling steps.")] = None,
             guided_channels: Annotated[int | None, typer.Option(min=1, help="Guide only the first N channels.")] = None,
             seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
             fid_weights: Annotated[Path | None, typer.Option(help="Inception weights file (pt_inception-2015-12-05).")] = None,
             export_npz: Annotated[Path | None, typer.Option(help="Also write the samples as ADM's evaluator reads them.")] = None,
             store: StoreOption = None, tracking_uri: TrackingOption = None):
    """Measure FID, IS, KID and precision/recall of a run's checkpoint and log them into the same run."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .evaluate import evaluate_run
    from .metrics import MetricsError
    from .tracking import RunNotFoundError

    try:
        values, run_id = evaluate_run(run, store, tracking_uri, step, export_npz, num_samples=num_samples,
                                      cfg_scale=cfg_scale, sampler=sampler, sampling_steps=sampling_steps,
                                      guided_channels=guided_channels, seed=seed,
                                      fid_weights=str(fid_weights) if fid_weights else None)
    except (RunNotFoundError, CheckpointError, ConfigError, MetricsError, DataError) as e:
        _fail(str(e))
    for k, v in values.items():
        typer.echo(f"{k} = {v:.4f}")
    typer.echo(f"logged into run {run_id}" + (f"; samples written to {export_npz}" if export_npz else ""))


@app.command("prepare-latents")
def prepare_latents(image_dir: Annotated[Path, typer.Argument(help="Image folder with one sub-folder per class.")],
                    out: Annotated[Path, typer.Argument(help="Output directory (latent-array format).")],
                    vae: Annotated[str, typer.Option(help="AutoencoderKL folder, or a repo id in the local HF cache.")],
                    resolution: Annotated[int, typer.Option(help="Image size (ADM centre crop).")] = 256,
                    batch_size: Annotated[int, typer.Option(min=1)] = 32,
                    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
                    flip: Annotated[bool, typer.Option(help="Store horizontal flips as a second copy.")] = True):
    """Encode an image folder into SD-VAE latents (x 0.18215) for the paper profile."""
    from .data import DataError, prepare_latents as _prepare

    try:
        path = _prepare(image_dir, out, vae, resolution=resolution, batch_size=batch_size, device=device, flip=flip)
    except DataError as e:
        _fail(str(e))
    typer.echo(f"wrote latents to {path}")


class LauncherName(str, Enum):
    local = "local"
    accelerate = "accelerate"
    slurm = "slurm"


@app.command()
def run(spec: Annotated[Path, typer.Argument(help="Ablation spec, e.g. ablations/kernel_size.yaml.")],
        profile: Annotated[str | None, typer.Option(help="Spec profile (default: the spec's default_profile, else smoke).")] = None,
        jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="Jobs at once, each with its share of CPU "
                                                 "threads or its own GPU(s) (default: one per GPU; CPU only: one per core).")] = None,
        launcher: Annotated[LauncherName, typer.Option(help="local: a process per job; accelerate: `accelerate launch` "
                                                       "per job; slurm: a Slurm job per job (submitit).")] = LauncherName.local,
        force: Annotated[bool, typer.Option("--force", help="Retrain finished jobs (their old MLflow runs go to the trash).")] = False,
        fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop everything at the first failed job.")] = False,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key in every job: --set train.steps=50.")] = None,
        num_processes: Annotated[int | None, typer.Option("--num-processes", min=1, help="accelerate: processes per job.")] = None,
        accelerate_config: Annotated[Path | None, typer.Option(help="accelerate: config file (default: accelerate's own).")] = None,
        launcher_opt: Annotated[list[str] | None, typer.Option("--launcher-opt", help="A launcher option key=value: "
                                                               "partition=gpu, time=240, gpus_per_node=8 (slurm); "
                                                               "main_process_port=29600 (accelerate).")] = None,
        wait: Annotated[bool, typer.Option(help="Wait for jobs that other runners hold (taking over any whose runner dies).")] = True,
        store: StoreOption = None, tracking_uri: TrackingOption = None,
        progress: Annotated[bool, typer.Option(help="Show the live progress view.")] = True):
    """Run every job of an ablation spec: skip finished, resume partial, share the work with other runners."""
    from .config import ConfigError
    from .launchers import LauncherError, launcher_options
    from .runner import run_jobs
    from .spec import SpecError, expand, load_spec

    try:
        parsed = load_spec(spec)
        job_list = expand(parsed, profile, set_ or [])
        options = launcher_options(launcher.value, parsed.launcher, launcher_opt or [], num_processes=num_processes,
                                   config_file=str(accelerate_config) if accelerate_config else None)
        summary = run_jobs(job_list, store, tracking_uri, parallel=jobs, launcher=launcher.value,
                           launcher_options=options, force=force, fail_fast=fail_fast, progress=progress,
                           wait_elsewhere=wait)
    except (SpecError, ConfigError, LauncherError) as e:
        _fail(str(e))
    typer.echo(summary.render())
    if summary.interrupted:
        raise typer.Exit(130)
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def ui(port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 5000,
       spec: Annotated[str | None, typer.Option(help="Open this spec's experiment (a name or a spec file).")] = None,
       store: StoreOption = None):
    """Start the MLflow UI on the store (127.0.0.1) and print the URL of each spec's training-runs table."""
    # `--optuna` (optuna-dashboard on the sweep storage) joins here as a branch before the MLflow UI.
    from .ui import UIError, start_ui

    name = spec
    if spec and spec.endswith((".yaml", ".yml")):
        from .spec import SpecError, load_spec

        try:
            name = load_spec(spec).name
        except SpecError as e:
            _fail(str(e))
    try:
        server = start_ui(store, port)
    except UIError as e:
        _fail(str(e))
    with server:
        if name is not None and name not in server.experiments:
            _fail(f"--spec {spec}: the store {server.store} has no experiment {name!r}; run it with `fcdm-ablate run "
                  f"ablations/{name}.yaml`, or pick one of: {', '.join(server.experiments) or '(none)'}")
        shown = {name: server.experiments[name]} if name else server.experiments
        typer.echo(f"MLflow UI on {server.url} (store {server.store}; log {server.log}); Ctrl-C stops it")
        for exp, exp_id in shown.items():
            typer.echo(f"  {exp}: {server.experiment_url(exp_id)}")
        try:
            server.proc.wait()
        except KeyboardInterrupt:
            pass


def main() -> None:
    app()


if __name__ == "__main__":
    main()
