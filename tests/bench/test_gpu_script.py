"""bench/gpu.py --cpu --tiny: the prepared GPU run executes every section on the CPU, with tiny stand-in
models, before a GPU is ever used. Everything but its CUDA-only calls runs here (about 25 s on one core,
most of it the three CLI processes of the end-to-end section)."""
import json
import os
import subprocess
import sys

from helpers import ROOT

SECTIONS = {"preflight", "memory", "train", "inference", "sampler", "e2e", "train_compiled"}


def test_tiny_mode_runs_every_section(tmp_path, monkeypatch):
    out = tmp_path / "gpu.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu", "--tiny", "--out", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    measured = [x for x in lines if not x.get("done")]
    assert {x["section"] for x in measured} == SECTIONS
    assert {x["section"] for x in lines if x.get("done")} == SECTIONS
    assert [x for x in lines if "error" in x] == []
    # Skipped on the CPU only by design: channels_last for DiT, and torch.compile.
    assert all(x["section"] == "train_compiled" or x["variant"] == "channels_last" for x in lines if "skipped" in x)

    def rows(section, key):
        return [x for x in lines if x["section"] == section and key in x]

    assert len(rows("memory", "oom")) == 6 and not any(x["oom"] for x in rows("memory", "oom"))
    train = rows("train", "img_per_s")
    assert {(x["model"], x["variant"]) for x in train} == {
        (m, v) for m in ("FCDM-XL", "DiT-XL/2") for v in ("eager", "fused", "fused+cudnn.benchmark")
    } | {("FCDM-XL", "channels_last")}
    assert all(x["img_per_s"] > 0 and x["gmac_per_img"] > 0 for x in train)
    inference = rows("inference", "img_per_s")
    assert len(inference) == 6 and all(x["img_per_s"] > 0 for x in inference)
    assert rows("inference", "ratio")[0]["paper_ratio"] == 272.7 / 80.5
    sampler = rows("sampler", "s_per_img")
    assert len(sampler) == 2 and all(x["s_per_img"] > 0 and x["finite"] for x in sampler)

    e2e = {x["phase"]: x for x in rows("e2e", "phase")}
    assert e2e["sigterm"]["exit_code"] == 143 and e2e["sigterm"]["progress_status"] == "killed"
    resume = e2e["resume"]
    assert resume["exit_code"] == 0 and resume["status"] == "FINISHED" and resume["progress_status"] == "finished"
    assert 0 < resume["stopped_at_step"] < resume["final_step"] == resume["steps"]
    assert resume["steps_per_sec_before"] > 0 and resume["steps_per_sec_after"] > 0
    assert e2e["sample"]["exit_code"] == 0 and e2e["sample"]["samples_shape"][0] == 16

    # The Markdown tables: printed at the end of the run, and again from the file by --summarize.
    assert "| FCDM-XL | eager | 4 |" in proc.stdout and "FINISHED at step" in proc.stdout
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu

    assert gpu.tables(gpu.newest_run(out)) in proc.stdout
