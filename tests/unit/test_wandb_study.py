"""A study on W&B: every run of a sweep, budget comparison or paper table in one group with the columns
its runs differ in; eval runs that overlay on W&B's charts (step metrics eval/loops and
eval/gflops_per_sample, reference rows as flat lines, grids stepped by L); the report built from them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wandb
from omegaconf import OmegaConf
from PIL import Image

from elt.core.flops import gflops_per_sample
from elt.evaluation.tables import log_to_loggers, wandb_keys
from elt.experiments.wandb_report import build_report, local_runs, report_spec, runs_table
from elt.jobs.train import resolved_config, train
from elt.runtime.checkpoint import load_run
from elt.runtime.config import instantiate_group
from elt.runtime.loggers import eval_logger_config
from support.config import child_env, compose_cfg

METRICS = ("fid_digits_cnn", "acc_digits_cnn")


def wandb_init(cfg) -> dict:
    """What WandbLogger would pass to wandb.init (nothing is started)."""
    (lg,) = instantiate_group(cfg.logger)
    return lg._wandb_init


def eval_init(train_cfg, tmp_path, *overrides) -> dict:
    stored = OmegaConf.create(resolved_config(train_cfg))  # what a checkpoint carries
    eval_cfg = compose_cfg("eval", ["ckpt_path=x.ckpt", "logger=wandb", *overrides], tmp_path / "eval")
    (lg,) = instantiate_group(eval_logger_config(eval_cfg, stored))
    return lg._wandb_init


def test_a_depth_sweep_is_one_group_whose_columns_and_names_say_what_differs(tmp_path):
    inits = {d: wandb_init(compose_cfg("train", ["experiment=digits_maskgit", f"depth={d}", "logger=wandb"], tmp_path))
             for d in ("8Nx1L", "4Nx2L", "2Nx4L", "1Nx8L")}
    assert {i["group"] for i in inits.values()} == {"digits_maskgit"}
    assert inits["8Nx1L"]["name"] == "digits_maskgit_elt_tiny_8Nx1L_seed0"  # ILSD is a no-op at Lmax = 1: no _ilsd
    assert inits["4Nx2L"]["name"] == "digits_maskgit_elt_tiny_4Nx2L_ilsd_seed0"
    cols = inits["8Nx1L"]["config"]
    assert {k: cols[k] for k in ("study", "N", "Lmax", "NxLmax", "depth", "ilsd", "seed")} == {
        "study": "digits_maskgit", "N": 8, "Lmax": 1, "NxLmax": "8Nx1L", "depth": 8, "ilsd": "off", "seed": 0}
    assert inits["8Nx1L"]["tags"][-2:] == ["ilsd_off", "seed0"] and inits["2Nx4L"]["config"]["ilsd"] == "on"

    vanilla = wandb_init(compose_cfg("train", ["experiment=digits_maskgit", "ilsd=off", "seed=2", "logger=wandb"], tmp_path))
    assert vanilla["group"] == "digits_maskgit" and vanilla["name"] == "digits_maskgit_elt_tiny_2Nx4L_vanilla_seed2"
    named = wandb_init(compose_cfg("train", ["experiment=digits_dit", "study=budgets", "logger=wandb"], tmp_path))
    assert named["group"] == "budgets"
    for row, study in [("imagenet_elt_L_8Nx3L", "paper_imagenet_maskgit"), ("imagenet_maskgit_B_12layers", "paper_imagenet_maskgit"),
                       ("imagenet_elt_dit_8Nx4L", "paper_imagenet_dit"), ("ucf101_elt_6Nx4L", "paper_ucf101")]:
        assert compose_cfg("train", [f"experiment=paper/{row}"]).study == study, row
    assert compose_cfg("train", ["experiment=mini/fashion_dit"]).study == "mini_paper"


def test_the_eval_run_joins_its_training_runs_study(tmp_path):
    train_cfg = compose_cfg("train", ["experiment=digits_maskgit", "depth=8Nx1L", "seed=3", "logger=wandb"], tmp_path / "train")
    e = eval_init(train_cfg, tmp_path)
    assert e["group"] == "digits_maskgit" and e["job_type"] == "eval"
    assert e["name"] == "digits_maskgit_elt_tiny_8Nx1L_eval_seed3"
    assert e["config"]["NxLmax"] == "8Nx1L" and e["config"]["seed"] == 3 and e["config"]["ilsd"] == "off"
    assert e["config"]["train"]["N"] == 8 and e["config"]["train"]["seed"] == 3
    assert eval_init(train_cfg, tmp_path, "study=rerun")["group"] == "rerun"
    old = resolved_config(train_cfg)
    del old["study"]  # a checkpoint written before runs named their study
    (lg,) = instantiate_group(eval_logger_config(compose_cfg("eval", ["ckpt_path=x", "logger=wandb"], tmp_path / "e"),
                                                 OmegaConf.create(old)))
    assert lg._wandb_init["group"] == "digits_maskgit_elt_tiny"


def rows_of(N: int, Lmax: int, shift: float = 0.0) -> list[dict]:
    """Eval rows as LoopSweep makes them: L = 1..Lmax+1, a schedule, the real and trivial reference rows."""
    base = dict(extrapolated=False, num_samples=20, wall_s_per_sample=0.01)
    rows = [{**base, "name": "model", "row": "model", "loops": L, "extrapolated": L > Lmax, "gflops_per_sample": 0.5 * N * L,
             "fid_digits_cnn": 40.0 - L + shift, "acc_digits_cnn": 0.8 + 0.01 * L} for L in range(1, Lmax + 2)]
    rows.append({**base, "name": "schedule linear:2-1", "row": "schedule", "loops": 1.5, "gflops_per_sample": 0.7,
                 "fid_digits_cnn": 50.0, "acc_digits_cnn": 0.5})
    for kind, fid, acc in (("real", 4.0, 0.98), ("trivial", 77.0, 0.7)):
        rows.append({**base, "name": kind, "row": kind, "loops": None, "gflops_per_sample": None,
                     "fid_digits_cnn": fid, "acc_digits_cnn": acc})
    return rows


def images(directory, Lmax: int) -> dict[int, object]:
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for L in range(1, Lmax + 2):
        Image.fromarray(np.full((8, 8, 3), 30 * L, np.uint8)).save(directory / f"L{L}.png")
        out[L] = directory / f"L{L}.png"
    return out


class FakeRun:
    """Stands in for a wandb Run: records define_metric, log (with its step) and summary updates."""

    def __init__(self):
        self.defined, self.logged, self.summary = {}, [], {}

    def define_metric(self, name, step_metric=None, **_):
        self.defined[name] = step_metric

    def log(self, payload, step=None):
        self.logged.append((step, payload))

    def finish(self):
        pass


class FakeWandbLogger:
    """Named WandbLogger so log_to_loggers takes its W&B path; hands out a FakeRun."""

    def __init__(self):
        self.experiment, self.hparams = FakeRun(), {}

    def log_hyperparams(self, hp):
        self.hparams.update(hp)

    def finalize(self, status):
        self.status = status


FakeWandbLogger.__name__ = "WandbLogger"


def test_eval_metrics_step_by_loops_and_gflops_with_flat_reference_lines(tmp_path):
    lg = FakeWandbLogger()
    hparams = {"N": 2, "Lmax": 4, "seed": 7, "ilsd": True, "params": 1234, "gflops_per_sample": 4.0}
    log_to_loggers([lg], rows_of(2, 4), {"hparams": hparams}, {}, images(tmp_path / "grids", 4))
    run = lg.experiment
    for kind in ("model", "real", "trivial"):
        for m in METRICS:
            by_loops, by_gflops = wandb_keys(m, kind)
            assert run.defined[by_loops] == "eval/loops" and run.defined[by_gflops] == "eval/gflops_per_sample"
    assert run.defined["eval/grid"] == "eval/loops"
    per_loop = [(step, p) for step, p in run.logged if "eval/loops" in p]
    assert [step for step, _ in per_loop] == [1, 2, 3, 4, 5]  # _step = L, one call per loop count, schedules apart
    for step, p in per_loop:
        assert p["eval/loops"] == step and p["eval/gflops_per_sample"] == 1.0 * step
        assert p["eval/fid_digits_cnn"] == p["eval/vs_gflops/fid_digits_cnn"] == 40.0 - step
        assert p["eval/real/fid_digits_cnn"] == p["eval/real/vs_gflops/fid_digits_cnn"] == 4.0  # flat lines
        assert p["eval/trivial/acc_digits_cnn"] == 0.7
        assert p["eval/grid"]._caption == f"L={step}"
    assert run.summary["eval/best/fid_digits_cnn"] == 35.0 and run.summary["eval/best/fid_digits_cnn/loops"] == 5
    assert run.summary["eval/best/acc_digits_cnn/gflops_per_sample"] == 5.0  # higher is better for accuracy
    # the run's own columns (training seed, ILSD on/off) are not overwritten: eval's settings sit under eval/
    assert lg.hparams["eval"]["seed"] == 7 and "seed" not in lg.hparams and lg.hparams["params"] == 1234


def local_run(name, job_type, N, Lmax, best=None, refs=("real", "trivial")) -> dict:
    """A run as read_run returns it (what a local .wandb file holds)."""
    history = [{"eval/loops": 1, **{wandb_keys(m, k)[0]: 1.0 for m in METRICS for k in ("model", *refs)}}] if best else []
    summary = {f"eval/best/{m}": best for m in METRICS} | {f"eval/best/{m}/loops": 2 for m in METRICS} if best else {}
    return {"name": name, "job_type": job_type, "project": "elt", "group": "budgets", "history": history, "summary": summary,
            "config": {"N": N, "Lmax": Lmax, "NxLmax": f"{N}Nx{Lmax}L", "depth": N * Lmax, "ilsd": "on", "seed": 0,
                       "params": 410_000, "gflops_per_sample": 0.9 * Lmax}, "step_metrics": {}}


def panels_of(spec: dict) -> list[dict]:
    return [p for b in spec["spec"]["blocks"] if b["type"] == "panel-grid"
            for p in b["metadata"]["panelBankSectionConfig"]["panels"]]


def runset_filters(spec: dict) -> list[list[tuple]]:
    return [[(f["key"]["name"], f["op"], f["value"]) for f in rs["filters"]["filters"]]
            for b in spec["spec"]["blocks"] if b["type"] == "panel-grid" for rs in b["metadata"]["runSets"]]


def test_report_spec_has_the_study_panels_queries_and_runs_table():
    runs = [local_run("a_eval", "eval", 2, 4, best=35.0), local_run("b_eval", "eval", 8, 1, best=39.0, refs=()),
            local_run("a", "train", 2, 4)]
    spec = report_spec(build_report("elt", "budgets", runs, entity="me"))
    assert spec["project"] == {"name": "elt", "entityName": "me"} and spec["displayName"].startswith("budgets")
    filters = runset_filters(spec)
    assert [("group", "=", "budgets"), ("jobType", "=", "eval")] in filters
    assert [("group", "=", "budgets"), ("jobType", "=", "train")] in filters
    lines = {p["config"]["xAxis"] for p in panels_of(spec) if p["viewType"] == "Run History Line Plot"}
    by_loops = [p["config"]["metrics"] for p in panels_of(spec) if p["config"].get("xAxis") == "eval/loops"]
    by_gflops = [p["config"]["metrics"] for p in panels_of(spec) if p["config"].get("xAxis") == "eval/gflops_per_sample"]
    assert lines == {"eval/loops", "eval/gflops_per_sample", "_step"}  # _step: the training runs' validation loss
    assert ["val/loss_Lmax"] in [p["config"]["metrics"] for p in panels_of(spec) if p["config"].get("xAxis") == "_step"]
    assert by_loops[0] == ["eval/fid_digits_cnn", "eval/real/fid_digits_cnn", "eval/trivial/fid_digits_cnn"]  # FD first
    assert by_gflops[1] == ["eval/vs_gflops/acc_digits_cnn", "eval/real/vs_gflops/acc_digits_cnn",
                            "eval/trivial/vs_gflops/acc_digits_cnn"]
    media = [p for p in panels_of(spec) if p["viewType"] == "Media Browser"]
    assert len(media) == 1 and media[0]["config"]["mediaKeys"] == ["eval/grid"]
    (table,) = [b["content"] for b in spec["spec"]["blocks"] if b["type"] == "markdown-block"]
    assert "| a_eval | 2Nx4L | on | 0 | 0.41 | 3.6 | 35 | 2 |" in table and "b_eval" in table and "| a |" not in table
    assert runs_table(runs, "fid_digits_cnn") == table


@pytest.mark.slow  # three offline W&B runs, about 10 s each on two busy cores
def test_report_built_offline_from_local_runs(tmp_path, monkeypatch):
    """Offline W&B runs made here (two evaluations of one study, one training run), read back from their
    .wandb files into the report; publishing without the network says so in one line."""
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for depth, shift in (("2Nx4L", 0.0), ("8Nx1L", 3.0)):
        train_cfg = compose_cfg("train", ["experiment=digits_maskgit", f"depth={depth}", "logger=wandb", "study=budgets"],
                                tmp_path / f"train_{depth}")
        if depth == "2Nx4L":
            (tl,) = instantiate_group(train_cfg.logger)
            tl.log_hyperparams({"params": 410_000, "gflops_per_sample": 3.6})
            tl.experiment.finish()
        stored = OmegaConf.create(resolved_config(train_cfg))
        (lg,) = instantiate_group(eval_logger_config(
            compose_cfg("eval", ["ckpt_path=x", "logger=wandb"], tmp_path / f"eval_{depth}"), stored))
        N, Lmax = int(depth[0]), int(depth[3])
        log_to_loggers([lg], rows_of(N, Lmax, shift), {"hparams": {"params": 10 * N, "gflops_per_sample": 1.0}}, {},
                       images(tmp_path / f"grids_{depth}", Lmax))
    wandb.teardown()  # as at a process's exit: finish() can return before W&B's service has written the file
    runs = local_runs([tmp_path], "elt", "budgets")
    assert sorted((r["job_type"], r["config"]["NxLmax"]) for r in runs) == [("eval", "2Nx4L"), ("eval", "8Nx1L"),
                                                                              ("train", "2Nx4L")]
    ev = next(r for r in runs if r["job_type"] == "eval" and r["config"]["NxLmax"] == "2Nx4L")
    assert ev["step_metrics"]["eval/vs_gflops/fid_digits_cnn"] == "eval/gflops_per_sample"
    assert [h["_step"] for h in ev["history"] if "eval/loops" in h] == [1, 2, 3, 4, 5]
    assert {h["eval/real/fid_digits_cnn"] for h in ev["history"] if "eval/loops" in h} == {4.0}
    assert ev["summary"]["eval/best/fid_digits_cnn/loops"] == 5

    cli = [sys.executable, "-m", "elt.experiments.report", "wandb", "--project", "elt", "--group", "budgets",
           "--runs", str(tmp_path), "--out", str(tmp_path / "reports")]
    r = subprocess.run([*cli, "--offline"], env=child_env() | env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    spec = json.loads((tmp_path / "reports" / "budgets.report.json").read_text())
    assert {p["config"].get("xAxis") for p in panels_of(spec)} >= {"eval/loops", "eval/gflops_per_sample"}
    table = next(b["content"] for b in spec["spec"]["blocks"] if b["type"] == "markdown-block")
    assert "2Nx4L" in table and "8Nx1L" in table
    r = subprocess.run(cli, env=child_env() | env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "needs the network" in r.stderr
    assert "budgets.report.json" in r.stderr


def test_a_training_run_logs_its_size_as_columns(train_cfg):
    """train() hands every logger the model's parameters and GFLOPs per sample at Lmax (W&B: config columns)."""
    cfg = train_cfg("N=2", "Lmax=2", "trainer.max_steps=1")
    out = train(cfg)
    hparams = OmegaConf.load(Path(cfg.paths.output_dir) / "csv" / "hparams.yaml")
    model, _ = load_run(out["ckpt_path"])
    assert hparams.params == out["num_params"] == sum(p.numel() for p in model.parameters())
    assert hparams.gflops_per_sample == pytest.approx(gflops_per_sample(model, 2, model.sampler_config()), rel=1e-5)
