"""The `fcdm-ablate` command line: a thin layer over functions a notebook can call.

Heavy libraries (torch, mlflow, optuna) and the packages that load them are imported inside the commands
(each such block says `# lazy: keeps --help fast`), so `--help` answers at once. Every error a user can
cause is a fcdm.errors.UserError: `_Commands` prints it as one line `error: <message>` and exits 2.
Every message and warning goes through fcdm.util.redact first: a URI's password is never printed.
"""
from contextlib import suppress
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from fcdm.errors import DataError, UserError
from fcdm.launchers import LAUNCHER_NAMES, launcher_options
from fcdm.spec.search import PRUNERS, SAMPLERS
from fcdm.store.layout import short_name
from fcdm.util.redact import redact
from fcdm.util.signals import restore_interrupt


def _fail(message: str, code: int = 2) -> None:
    """One clear message on stderr and a non-zero exit, no traceback."""
    typer.echo(f"error: {redact(message)}", err=True)
    raise typer.Exit(code)


class _Commands(TyperGroup):
    """The command group: a UserError from any command is one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            _fail(str(e))


# Help text is rich markup: a literal `[` is written `\\[` (tests/test_cli.py checks every bracket survives).
app = typer.Typer(help="Controlled ablations of fully convolutional diffusion models (FCDM) against DiT.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=_Commands)


# Typer takes choices as an Enum; the names are defined once, by the launcher registry and the search language.
TableFormat = Enum("TableFormat", {n: n for n in ("table", "csv", "json")}, type=str)
LauncherName = Enum("LauncherName", {n: n for n in LAUNCHER_NAMES}, type=str)
SweepSampler = Enum("SweepSampler", {n: n for n in SAMPLERS}, type=str)
SweepPruner = Enum("SweepPruner", {n: n for n in PRUNERS}, type=str)


@app.command()
def models(fmt: Annotated[TableFormat, typer.Option("--format", help="Output format.")] = TableFormat.table):
    """List every FCDM and DiT preset with parameters and GFLOPs at 256 and 512 px."""
    from fcdm.models import table as model_table  # lazy: keeps --help fast

    rows = model_table.preset_rows()
    if fmt is TableFormat.csv:
        typer.echo(model_table.to_csv(rows), nl=False)
    elif fmt is TableFormat.json:
        typer.echo(model_table.to_json(rows))
    else:
        from rich.console import Console  # lazy: only for the terminal table
        from rich.table import Table

        table = Table(title="Presets (GFLOPs: forward, batch 1, multiply-add = 1 FLOP, as in DiT)")
        for col in ("name", "family", "params (M)", "GFLOPs @256", "GFLOPs @512", "x DiT-XL/2"):
            table.add_column(col, justify="left" if col in ("name", "family") else "right")
        for r in rows:
            table.add_row(r["name"], r["family"], f"{r['params'] / 1e6:.2f}", f"{r['gflops_256']:.2f}",
                          f"{r['gflops_512']:.2f}", f"{r['ratio_to_dit_xl2']:.3f}")
        Console().print(table)


StoreOption = Annotated[Path | None, typer.Option("--store", help="Store directory (default: $FCDM_STORE or ./runs).")]
TrackingOption = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow server instead of the store's "
                                                     "SQLite file (default: $MLFLOW_TRACKING_URI).")]
RunArgument = Annotated[str, typer.Argument(help="MLflow run id or run name.")]
StepOption = Annotated[int | None, typer.Option(help="Checkpoint step (default: newest).")]
SpecArgument = Annotated[Path, typer.Argument(help="Ablation spec, e.g. ablations/kernel_size.yaml.")]
ProfileOption = Annotated[str | None, typer.Option(help="Spec profile (default: the spec's default_profile, else smoke).")]


@app.command()
def train(config: Annotated[Path, typer.Argument(help="YAML run config, e.g. ablations/configs/smoke.yaml.")],
          set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set train.lr=2e-4.")] = None,
          store: StoreOption = None, tracking_uri: TrackingOption = None,
          progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True):
    """Train one run configuration; rerunning it resumes (or skips a finished run)."""
    from fcdm.config import load_config  # lazy: keeps --help fast
    from fcdm.train import TrainingDiverged, TrainingInterrupted
    from fcdm.train import train as run_training

    try:
        cfg = load_config(config, set_ or [])
        result = run_training(cfg, store=store, tracking_uri=tracking_uri, progress=progress)
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
        typer.echo(f"{cfg.name}: {result.status} at step {result.step}, loss {result.final_loss:.4f}, "
                   f"run '{short_name(cfg.name, cfg.seed)}' ({result.run_id})")


@app.command()
def sample(run: RunArgument,
           num: Annotated[int, typer.Option("--num", min=1, help="Number of samples.")] = 100,
           out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("samples"),
           step: StepOption = None,
           seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
           store: StoreOption = None, tracking_uri: TrackingOption = None):
    """Draw class-conditional samples (classes evenly spread) from a run's EMA weights.

    Writes OUT/samples.npz (arr_0: uint8 N x H x W x C, labels: the classes) and OUT/grid.png.
    """
    from fcdm.evaluation.sampling import write_samples  # lazy: keeps --help fast
    from fcdm.evaluation.trained import open_run

    trained = open_run(run, store, tracking_uri, step)
    path = write_samples(trained, num, out, seed=seed)
    typer.echo(f"wrote {num} samples of run {trained.run_id} (step {trained.step}) to {path}")


@app.command()
def evaluate(run: RunArgument, step: StepOption = None,
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
    from fcdm.evaluation.evaluate import evaluate_run  # lazy: keeps --help fast

    values, run_id = evaluate_run(run, store, tracking_uri, step, export_npz, num_samples=num_samples, seed=seed,
                                  cfg_scale=cfg_scale, sampler=sampler, sampling_steps=sampling_steps,
                                  guided_channels=guided_channels, fid_weights=str(fid_weights) if fid_weights else None)
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
    from fcdm.data import prepare_latents as _prepare  # lazy: keeps --help fast

    path = _prepare(image_dir, out, vae, resolution=resolution, batch_size=batch_size, device=device, flip=flip)
    typer.echo(f"wrote latents to {path}")


@app.command()
def plan(spec: SpecArgument, profile: ProfileOption = None,
         measure: Annotated[bool, typer.Option("--measure", help="Time a few training steps of each distinct "
                                               "architecture here and estimate wall time per job and in total.")] = False,
         fmt: Annotated[TableFormat, typer.Option("--format", help="Output format.")] = TableFormat.table,
         set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key in every job: --set data.path=DIR.")] = None,
         store: StoreOption = None):
    """Show a spec's jobs, their GFLOPs, training compute and status, without running or writing anything."""
    from fcdm.spec import expand, load_spec, resolve_profile  # lazy: keeps --help fast

    parsed = load_spec(spec)
    chosen = resolve_profile(parsed, profile)
    job_list = expand(parsed, chosen, set_ or [])
    from fcdm.runner import plan as planning  # lazy: torch, for the FLOPs count, only once the spec is valid

    rows = planning.plan_rows(job_list, store)
    typer.echo(planning.profile_line(parsed, chosen, asked=bool(profile)), err=fmt is not TableFormat.table)
    if measure:
        planning.add_estimates(rows, job_list)
    if fmt is TableFormat.csv:
        typer.echo(planning.to_csv(rows), nl=False)
    elif fmt is TableFormat.json:
        typer.echo(planning.to_json(rows, {"spec": parsed.name, "profile": chosen}))
    else:
        planning.print_table(rows, parsed.name, chosen)


def _launcher(parsed, launcher: LauncherName | None, pairs: list[str] | None, num_processes: int | None,
              config_file: Path | None = None) -> tuple[str, dict]:
    """The launcher a command uses and its options: --launcher, else the spec's launcher.name, else local;
    options from the spec's launcher section, then --launcher-opt pairs, then --num-processes / config file."""
    defaults = parsed.launcher or {}  # the spec's launcher section: name, jobs, accelerate, slurm
    kind = launcher.value if launcher else defaults.get("name", "local")
    return kind, launcher_options(kind, defaults, pairs or [], num_processes=num_processes,
                                  config_file=str(config_file) if config_file else None)


@app.command()
def run(spec: SpecArgument, profile: ProfileOption = None,
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
        progress: Annotated[bool, typer.Option(help="Show the live progress view.")] = True,
        claims: Annotated[str | None, typer.Option(help="Keep job claims in PostgreSQL (postgresql://user@host/db; "
                                                   "password in ~/.pgpass, PGPASSWORD or FCDM_CLAIMS) instead of "
                                                   "files under <store>/claims: many machines.")] = None):
    """Run every job of an ablation spec: skip finished, resume partial, share the work with other runners."""
    from fcdm.runner import run_jobs  # lazy: keeps --help fast
    from fcdm.spec import expand, load_spec, resolve_profile

    if claims:
        from fcdm.store.claims import use_claims  # lazy: keeps --help fast

        use_claims(claims)
    parsed = load_spec(spec)
    chosen = resolve_profile(parsed, profile)
    try:
        job_list = expand(parsed, chosen, set_ or [])
        kind, options = _launcher(parsed, launcher, launcher_opt, num_processes, accelerate_config)
        summary = run_jobs(job_list, store, tracking_uri, parallel=jobs or (parsed.launcher or {}).get("jobs"),
                           launcher=kind, launcher_options=options, force=force, fail_fast=fail_fast,
                           progress=progress, wait_elsewhere=wait)
    except DataError as e:  # the paper profile's latents are not on this machine (or not where data.path says)
        _fail(f"{spec}: profile {chosen}: data.path: {e}; or pass the prepared data's folder with --set data.path=DIR")
    typer.echo(summary.render())
    if summary.interrupted or not summary.ok:  # 130: interrupted (rerun to resume); 1: a job failed
        raise typer.Exit(130 if summary.interrupted else 1)


@app.command()
def ui(port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 5000,
       spec: Annotated[str | None, typer.Option(help="Open this spec's experiment (a name or a spec file).")] = None,
       store: StoreOption = None,
       optuna_: Annotated[bool, typer.Option("--optuna", help="Open optuna-dashboard on the sweep studies instead "
                                             "(pip install 'fcdm-ablate\\[dashboard]').")] = False,
       storage: Annotated[str | None, typer.Option(help="With --optuna: the study storage (default: the store's "
                                                   "optuna.db).")] = None):
    """Start the MLflow UI on the store (127.0.0.1) and print the URL of each spec's training-runs table."""
    restore_interrupt()  # Ctrl-C stops it even when started with SIGINT ignored (a background shell)
    if optuna_:
        from fcdm.sweep import open_dashboard  # lazy: keeps --help fast

        with suppress(KeyboardInterrupt):
            open_dashboard(storage, port, store, log=typer.echo)
        return
    from fcdm.spec import load_spec  # lazy: keeps --help fast
    from fcdm.store.ui import start_ui

    name = load_spec(spec).name if spec and spec.endswith((".yaml", ".yml")) else spec
    with start_ui(store, port, name) as server, suppress(KeyboardInterrupt):
        typer.echo(server.banner(name))
        server.proc.wait()


@app.command()
def sweep(spec: Annotated[Path, typer.Argument(help="Spec with a `search` section.")] = Path("ablations/sweep.yaml"),
          optuna_: Annotated[bool, typer.Option("--optuna", help="Search with Optuna (the engine; required).")] = False,
          profile: ProfileOption = None,
          trials: Annotated[int | None, typer.Option(min=1, help="The study's TOTAL trials, finished + pruned + running "
                                                     "(default: search.trials, else 20); rerun with more to add trials.")] = None,
          timeout: Annotated[float | None, typer.Option(min=0, help="Start no new trial after this many seconds.")] = None,
          storage: Annotated[str | None, typer.Option(help="Optuna storage: sqlite:///FILE, postgresql://user@host/db "
                                                      "(pip install 'fcdm-ablate\\[postgres]'), journal:PATH (default: "
                                                      "sqlite:///<store>/optuna.db).")] = None,
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
        _fail(f"choose a search engine: --optuna (the only one so far: Optuna samplers {'|'.join(SAMPLERS)}, "
              f"pruners {'|'.join(p for p in PRUNERS if p != 'always')}), e.g. fcdm-ablate sweep --optuna --trials 20")
    from fcdm.spec import load_spec  # lazy: keeps --help fast
    from fcdm.sweep import format_summary, run_sweep

    parsed = load_spec(spec)
    kind, options = _launcher(parsed, launcher, launcher_opt, num_processes)
    summary = run_sweep(parsed, profile=profile, trials=trials, timeout=timeout, storage=storage,
                        study_name=study, workers=workers, sampler=sampler.value if sampler else None,
                        pruner=pruner.value if pruner else None, launcher=kind, launcher_options=options,
                        store=store, tracking_uri=tracking_uri, heartbeat=heartbeat, sets=set_ or [],
                        log=lambda m: typer.echo(redact(m)))
    typer.echo(format_summary(summary))
    if summary.interrupted or not summary.best:  # 130: interrupted (rerun to resume); 1: no trial completed
        raise typer.Exit(130 if summary.interrupted else 1)


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
    from rich.console import Console  # lazy: keeps --help fast

    from analysis.render import rich_line, to_rich  # lazy: keeps --help fast (pandas, matplotlib)
    from analysis.specs import report_many

    console = Console()

    def show(rep) -> None:  # the main table (its first 50 rows), the first 20 comparisons, where the files went
        if rep.main is not None:
            console.print(to_rich(rep.main, max_rows=50))
        for line in rep.summary[:20]:
            console.print("- " + rich_line(line))
        if len(rep.summary) > 20:
            console.print(f"- ... {len(rep.summary) - 20} more comparisons in {rep.out / 'report.md'}", markup=False)
        counts = ", ".join(f"{v} {'not run' if k == 'MISSING' else k.lower()}" for k, v in sorted(rep.counts.items()))
        console.print(f"{rep.spec} ({rep.profile}): {counts}; wrote {len(rep.files)} files to {rep.out}"
                      + (f"; logged to MLflow run {rep.run_id}" if rep.run_id else ""), markup=False)

    # A UserError (nothing to report, or the only report failed) is `error: ...` and exit 2, as in every command.
    failed = report_many(specs, profile, store, tracking_uri, out, formats, metric=metric, step=step,
                         overrides=tuple(set_ or ()), log=log, on_report=show,
                         on_warning=lambda w: typer.echo(f"warning: {redact(w)}", err=True),
                         on_error=lambda e: typer.echo(f"error: {redact(e)}", err=True))
    if failed:
        raise typer.Exit(1)


@app.command("serve-trainers", hidden=True)
def serve_trainers():
    """The runner's fork server (fcdm.util.forkserver): imports a trainer's libraries once, then forks a
    `train` per job on request. Started by `run` on machines without GPUs; not for direct use."""
    import os

    # Preloaded once for every trainer this process forks: what a trainer imports before its first step
    # (the optimiser pulls in torch._dynamo) and MLflow's SQL store; once the first trainers are forked,
    # the metrics an evaluation needs (torch-fidelity), for the later ones.
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import torch._dynamo  # noqa: F401

    import fcdm.train  # noqa: F401
    from fcdm.util.forkserver import FD_ENV, serve

    def later() -> None:
        import fcdm.metrics  # noqa: F401  (heavy: torch-fidelity)

    serve(int(os.environ.pop(FD_ENV)), _forked_train, idle=later)


def _forked_train(argv: list[str]) -> int:
    """In a child of the fork server: its share of threads (the environment is read only at torch's
    start), then the command as `fcdm-ablate ARGV` would run it; its exit code."""
    import os

    import torch  # preloaded by the server

    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    app(args=argv, prog_name="fcdm-ablate")
    return 0


def main() -> None:
    app()


if __name__ == "__main__":
    main()
