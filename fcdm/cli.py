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
    from fcdm.models import table as model_table

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
    from fcdm.store.checkpoints import CheckpointError
    from fcdm.config import ConfigError, load_config
    from fcdm.data import DataError
    from fcdm.metrics import MetricsError
    from fcdm.train import TrainingDiverged, TrainingInterrupted, train as run_training

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
        from fcdm.store.layout import run_name

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
    from fcdm.store.checkpoints import CheckpointError
    from fcdm.config import ConfigError
    from fcdm.evaluation.trained import open_run
    from fcdm.evaluation.sampling import write_samples
    from fcdm.store.tracking import RunNotFoundError

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
    from fcdm.store.checkpoints import CheckpointError
    from fcdm.config import ConfigError
    from fcdm.data import DataError
    from fcdm.evaluation.evaluate import evaluate_run
    from fcdm.metrics import MetricsError
    from fcdm.store.tracking import RunNotFoundError

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
    from fcdm.data import DataError, prepare_latents as _prepare

    try:
        path = _prepare(image_dir, out, vae, resolution=resolution, batch_size=batch_size, device=device, flip=flip)
    except DataError as e:
        _fail(str(e))
    typer.echo(f"wrote latents to {path}")


@app.command()
def plan(spec: Annotated[Path, typer.Argument(help="Ablation spec, e.g. ablations/kernel_size.yaml.")],
         profile: Annotated[str | None, typer.Option(help="Spec profile (default: the spec's default_profile, else smoke).")] = None,
         measure: Annotated[bool, typer.Option("--measure", help="Time a few training steps of each distinct "
                                               "architecture here and estimate wall time per job and in total.")] = False,
         fmt: Annotated[TableFormat, typer.Option("--format", help="Output format.")] = TableFormat.table,
         set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key in every job: --set data.path=DIR.")] = None,
         store: StoreOption = None):
    """Show a spec's jobs, their GFLOPs, training compute and status, without running or writing anything."""
    from fcdm.spec import SpecError, expand, load_spec, resolve_profile

    try:
        parsed = load_spec(spec)
        chosen = resolve_profile(parsed, profile)
        job_list = expand(parsed, chosen, set_ or [])
        from fcdm.runner import plan as planning

        rows = planning.plan_rows(job_list, store)
    except SpecError as e:
        _fail(str(e))
    how = "as asked" if profile else ("the spec's default_profile" if parsed.default_profile else "the default")
    others = [p for p in parsed.profiles if p != chosen]
    typer.echo(f"{parsed.name}: profile '{chosen}' ({how}" + (f"; others: {', '.join(others)})" if others else ")"),
               err=fmt is not TableFormat.table)
    if measure:
        for row, seconds in zip(rows, planning.measure_steps(job_list)):
            row["est_seconds"] = None if seconds is None else seconds * row["steps"]
    meta = {"spec": parsed.name, "profile": chosen}
    if fmt is TableFormat.csv:
        typer.echo(planning.to_csv(rows), nl=False)
    elif fmt is TableFormat.json:
        typer.echo(planning.to_json(rows, meta))
    else:
        from rich.console import Console

        title = f"{parsed.name} ({chosen}): GFLOPs per forward (batch 1); training compute = GFLOPs x 3 x batch x steps"
        Console(width=max(Console().width, 140)).print(planning.table(rows, title))
        if any(r["hash"] is None for r in rows):
            typer.echo(f"'{planning.NO_DATA}': the hash covers the latent data's fingerprint; set --set data.path=... "
                       "to a prepared dataset to see hashes and status")


class LauncherName(str, Enum):
    local = "local"
    accelerate = "accelerate"
    slurm = "slurm"


@app.command()
def run(spec: Annotated[Path, typer.Argument(help="Ablation spec, e.g. ablations/kernel_size.yaml.")],
        profile: Annotated[str | None, typer.Option(help="Spec profile (default: the spec's default_profile, else smoke).")] = None,
        jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="Jobs at once, each with its share of CPU "
                                                 "threads or its own GPU(s) (default: one per GPU; CPU only: one per core).")] = None,
        launcher: Annotated[LauncherName | None, typer.Option(help="local (default): a process per job; accelerate: "
                                                              "`accelerate launch` per job; slurm: a Slurm job per job "
                                                              "(submitit). Default: the spec's launcher.name.")] = None,
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
    from fcdm.config import ConfigError
    from fcdm.launchers import LauncherError, launcher_options
    from fcdm.runner import run_jobs
    from fcdm.spec import SpecError, expand, load_spec

    try:
        parsed = load_spec(spec)
        job_list = expand(parsed, profile, set_ or [])
        defaults = parsed.launcher or {}  # the spec's launcher section: name, jobs, accelerate, slurm
        kind = launcher.value if launcher else defaults.get("name", "local")
        options = launcher_options(kind, defaults, launcher_opt or [], num_processes=num_processes,
                                   config_file=str(accelerate_config) if accelerate_config else None)
        summary = run_jobs(job_list, store, tracking_uri, parallel=jobs or defaults.get("jobs"), launcher=kind,
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
       store: StoreOption = None,
       optuna_: Annotated[bool, typer.Option("--optuna", help="Open optuna-dashboard on the sweep studies instead "
                                             "(pip install 'fcdm-ablate[dashboard]').")] = False,
       storage: Annotated[str | None, typer.Option(help="With --optuna: the study storage (default: the store's "
                                                   "optuna.db).")] = None):
    """Start the MLflow UI on the store (127.0.0.1) and print the URL of each spec's training-runs table."""
    if optuna_:
        from fcdm.sweep import SweepError, open_dashboard

        try:
            open_dashboard(storage, port, store, log=typer.echo)
        except SweepError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            pass
        return
    from fcdm.store.ui import UIError, start_ui

    name = spec
    if spec and spec.endswith((".yaml", ".yml")):
        from fcdm.spec import SpecError, load_spec

        try:
            name = load_spec(spec).name
        except SpecError as e:
            _fail(str(e))
    try:
        server = start_ui(store, port, name)
    except UIError as e:
        _fail(str(e))
    with server:
        shown = {name: server.experiments[name]} if name else server.experiments
        typer.echo(f"MLflow UI on {server.url} (store {server.store}; log {server.log}); Ctrl-C stops it")
        for exp, exp_id in shown.items():
            typer.echo(f"  {exp}: {server.experiment_url(exp_id)}")
        typer.echo("  (a run shared by several specs lives in the experiment that trained it first; to list every run "
                   "of a spec, select all experiments and search tags.`fcdm.specs` LIKE '%,<spec>,%')")
        try:
            server.proc.wait()
        except KeyboardInterrupt:
            pass


class SweepSampler(str, Enum):
    tpe = "tpe"
    random = "random"
    grid = "grid"
    nsga2 = "nsga2"
    cmaes = "cmaes"


class SweepPruner(str, Enum):
    median = "median"
    hyperband = "hyperband"
    none = "none"
    always = "always"


@app.command()
def sweep(spec: Annotated[Path, typer.Argument(help="Spec with a `search` section.")] = Path("ablations/sweep.yaml"),
          optuna_: Annotated[bool, typer.Option("--optuna", help="Search with Optuna (the engine; required).")] = False,
          profile: Annotated[str | None, typer.Option(help="Spec profile (default: the spec's default_profile, else smoke).")] = None,
          trials: Annotated[int | None, typer.Option(min=1, help="The study's TOTAL trials, finished + pruned + running "
                                                     "(default: search.trials, else 20); rerun with more to add trials.")] = None,
          timeout: Annotated[float | None, typer.Option(min=0, help="Start no new trial after this many seconds.")] = None,
          storage: Annotated[str | None, typer.Option(help="Optuna storage: sqlite:///FILE, postgresql://user@host/db, "
                                                      "journal:PATH (default: sqlite:///<store>/optuna.db).")] = None,
          study: Annotated[str | None, typer.Option(help="Study name (default: <spec name>-<profile>).")] = None,
          workers: Annotated[int, typer.Option(min=1, help="Trials trained at once on this machine; the same command "
                                               "on other machines with the same --storage joins the study.")] = 1,
          sampler: Annotated[SweepSampler | None, typer.Option(help="Default: search.sampler, else tpe (nsga2 for "
                                                               "several objectives).")] = None,
          pruner: Annotated[SweepPruner | None, typer.Option(help="Default: search.pruner, else median. 'always' is a "
                                                             "test setting: every trial after trial 0 is pruned at its "
                                                             "first evaluation.")] = None,
          launcher: Annotated[LauncherName | None, typer.Option(help="How each trial's job trains: local, accelerate, "
                                                                "slurm (default: the spec's launcher.name, else local).")] = None,
          launcher_opt: Annotated[list[str] | None, typer.Option("--launcher-opt", help="A launcher option key=value, "
                                                                 "as for `run`.")] = None,
          num_processes: Annotated[int | None, typer.Option("--num-processes", min=1, help="accelerate: processes per trial.")] = None,
          heartbeat: Annotated[int, typer.Option(min=1, help="Seconds between trial heartbeats (SQLite/PostgreSQL); a "
                                                 "trial silent for twice as long is failed and retried.")] = 60,
          set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key in every trial: "
                                                         "--set data.path=LATENTS.")] = None,
          store: StoreOption = None, tracking_uri: TrackingOption = None):
    """Search a spec's design space with Optuna: each trial trains as a job (pruned, deduplicated, resumable)."""
    if not optuna_:
        _fail("choose a search engine: --optuna (the only one so far: Optuna samplers tpe|random|grid|nsga2|cmaes, "
              "pruners median|hyperband|none), e.g. fcdm-ablate sweep --optuna --trials 20")
    from fcdm.config import ConfigError
    from fcdm.launchers import LauncherError, launcher_options
    from fcdm.spec import SpecError, load_spec
    from fcdm.sweep import SweepError, format_summary, run_sweep

    try:
        parsed = load_spec(spec)
        defaults = parsed.launcher or {}
        kind = launcher.value if launcher else defaults.get("name", "local")
        options = launcher_options(kind, defaults, launcher_opt or [], num_processes=num_processes)
        summary = run_sweep(parsed, profile=profile, trials=trials, timeout=timeout, storage=storage,
                            study_name=study, workers=workers, sampler=sampler.value if sampler else None,
                            pruner=pruner.value if pruner else None, launcher=kind, launcher_options=options,
                            store=store, tracking_uri=tracking_uri, heartbeat=heartbeat, sets=set_ or [],
                            log=typer.echo)
    except (SpecError, SweepError, ConfigError, LauncherError) as e:
        _fail(str(e))
    typer.echo(format_summary(summary))
    if summary.interrupted:
        raise typer.Exit(130)
    if not summary.best:
        raise typer.Exit(1)


@app.command()
def report(specs: Annotated[list[Path] | None, typer.Argument(help="Spec files (default: every spec that has runs in the store).")] = None,
           profile: Annotated[str | None, typer.Option(help="Spec profile (default: the spec's default_profile; with no "
                                                       "SPEC, every profile that has runs).")] = None,
           out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: <store>/reports/<spec>-<profile>/; "
                                                    "with several reports, one sub-folder each).")] = None,
           step: Annotated[int | None, typer.Option(min=1, help="Evaluation step of the GFLOPs and ablation tables "
                                                    "(default: each configuration's final evaluation).")] = None,
           metric: Annotated[str, typer.Option(help="Metric key: fid, is, kid, precision, recall, class_consistency, "
                                               "or a suffixed one (fid/ddpm-250-cfg1.5-n50000-fp32-seed0).")] = "fid",
           formats: Annotated[str, typer.Option("--format", help="Comma-separated table formats: md, tex, csv, html "
                                                "(report.md is always written; html adds report.html).")] = "md,tex,csv,html",
           set_: Annotated[list[str] | None, typer.Option("--set", help="The --set overrides the spec was run with.")] = None,
           log: Annotated[bool, typer.Option("--log/--no-log", help="Log the report as artifacts of a report run in the "
                                             "spec's MLflow experiment.")] = True,
           store: StoreOption = None, tracking_uri: TrackingOption = None):
    """Tables, figures, report.md and report.html of a spec's runs, with seed statistics."""
    import re

    from rich.console import Console
    from rich.markup import escape

    from analysis.aggregate import ReportError
    from analysis.render import to_rich
    from analysis.report import FORMATS
    from analysis.specs import LogError, report_spec, specs_in_store
    from analysis.store import StoreError
    from fcdm.config import ConfigError
    from fcdm.spec import SpecError
    from fcdm.store.layout import resolve_store, resolve_tracking_uri

    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        _fail(f"--format {formats!r}: {bad[0] if bad else 'empty'} is not a report format; allowed values (comma-"
              f"separated): {', '.join(FORMATS)}")
    for path in specs or []:
        if not path.is_file():
            _fail(f"{path}: no such spec file; pass the path of a spec such as ablations/kernel_size.yaml")
    console = Console()
    store_dir = resolve_store(store)
    if specs:
        targets = [(p, profile) for p in specs]
    else:
        try:
            targets, warnings = specs_in_store(resolve_tracking_uri(store_dir, tracking_uri))
        except StoreError as e:
            _fail(str(e))
        for w in warnings:
            typer.echo(f"warning: {w}", err=True)
        targets = [(p, prof) for p, prof in targets if profile is None or (prof or profile) == profile]
        if not targets:
            _fail(f"no runs in {resolve_tracking_uri(store_dir, tracking_uri)} are tagged with a spec"
                  + (f" and profile {profile!r}" if profile else "") + "; run one first (fcdm-ablate run "
                  "ablations/kernel_size.yaml) or pass SPEC")
    failed = 0
    for path, prof in targets:
        dest = out if out is None or len(targets) == 1 else out / f"{path.stem}-{prof or 'default'}"
        try:
            rep = report_spec(path, prof, store_dir, tracking_uri, dest, metric=metric, step=step, formats=chosen,
                              overrides=tuple(set_ or ()), log=log)
        except (SpecError, ConfigError, ReportError, StoreError) as e:
            if len(targets) == 1:
                _fail(str(e))
            typer.echo(f"error: {e}", err=True)
            failed += 1
            continue
        except LogError as e:  # the files are there; only MLflow did not take them
            typer.echo(f"error: {e}", err=True)
            failed += 1
            continue
        if rep.main is not None:
            console.print(to_rich(rep.main))
        for line in rep.summary[:20]:  # **bold** of the Markdown summary as terminal bold
            console.print("- " + re.sub(r"\*\*(.+?)\*\*", r"[bold]\1[/bold]", escape(line)))
        if len(rep.summary) > 20:
            console.print(f"- ... {len(rep.summary) - 20} more comparisons in {rep.out / 'report.md'}", markup=False)
        counts = ", ".join(f"{v} {'not run' if k == 'MISSING' else k.lower()}" for k, v in sorted(rep.counts.items()))
        console.print(f"{rep.spec} ({rep.profile}): {counts}; wrote {len(rep.files)} files to {rep.out}"
                      + (f"; logged to MLflow run {rep.run_id}" if rep.run_id else ""), markup=False)
    if failed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
