"""Reports of ablations: what the runs recorded in MLflow -> tidy frame -> seed statistics -> tables,
figures, report.md / report.html, beside the published numbers (`reference/published.csv`).

    from analysis.specs import report_spec
    rep = report_spec("ablations/kernel_size.yaml", "smoke")        # what `fcdm-ablate report` runs
    from analysis.collect import collect_spec
    frame = collect_spec("ablations/kernel_size.yaml", "smoke", "sqlite:///runs/mlflow.db")  # the data

Modules: store (bulk MLflow reads), collect (jobs -> frame), aggregate (one metric under one protocol,
baselines and the spec's pairs), stats (t-intervals, Welch, Holm, ratios, steps-to-match), comparison (each
row against its baseline: tests, steps / compute / time to match, verdict lines), noise (evaluation noise
beside seed noise), tables, render (md/tex/csv/html/rich), figures, comparison_figures (pairs, evaluation
noise, heatmap), published, report (writing a report), html, specs (what `fcdm-ablate report` does: spec
discovery, report_spec, report_many), mlflow_log (logging a report to its MLflow run, from a helper process).
Stores of known values for tests and bench/report.py are tests/synthetic.py. Nothing here trains or
imports the trainer (pyproject.toml's import contracts check it).
"""
