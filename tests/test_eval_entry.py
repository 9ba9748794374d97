"""The real evaluate() (and eval.py) on tiny checkpoints trained here by the real train()."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT, compose_cfg
from elt.cli import run_cli
from elt.evaluation import evaluate
from elt.models.maskgit import MaskGITELT
from elt.train import train
from helpers import TinyI3D


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory):
    """One judge and one set of reference statistics for the whole session (hermetic: not data/cache)."""
    return tmp_path_factory.mktemp("eval_cache")


@pytest.fixture
def tiny_ckpt(train_cfg):
    return train(train_cfg("N=1", "Lmax=2"))["ckpt_path"]


def eval_cfg(ckpt, out: Path, cache: Path, *overrides: str):
    base = [f"ckpt_path={ckpt}", f"paths.cache_dir={cache}", "eval.samples_per_class=3", "eval.batch_size=16",
            "eval.grid_per_class=2", "eval.is_splits=3", "eval.progress=false"]
    if not any(o.startswith("eval.sampler=") for o in overrides):
        base.append("eval.sampler={steps:2}")
    return compose_cfg("eval", base + list(overrides), out)


class CountSamples:
    """Wraps MaskGITELT.sample to record the loop counts sampled; optionally dies at one of them."""

    def __init__(self, monkeypatch, die_at: int | None = None):
        self.loops: list[int] = []
        original = MaskGITELT.sample

        def sample(model, labels, loops, *a, **k):
            if loops == die_at:
                raise KeyboardInterrupt("simulated interruption")
            self.loops.append(loops)
            return original(model, labels, loops, *a, **k)

        monkeypatch.setattr(MaskGITELT, "sample", sample)


def test_sweep_writes_everything_and_resumes_after_an_interruption(tiny_ckpt, eval_cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    cfg = eval_cfg(tiny_ckpt, out, eval_cache, "eval.extra_loops=1")  # Lmax=2: loops 1, 2 and 3 (extrapolated)
    with monkeypatch.context() as m:
        CountSamples(m, die_at=3)
        with pytest.raises(KeyboardInterrupt):
            evaluate(cfg)
    done = sorted(p.name for p in (out / "loops").glob("*.json"))
    assert done == ["L1.json", "L2.json", "ref_real.json", "ref_trivial.json"]

    with monkeypatch.context() as m:
        calls = CountSamples(m)
        result = evaluate(cfg)
        assert set(calls.loops) == {3}  # finished loop counts were not sampled again
    for name in ["results.csv", "results.json", "results.md", "quality_vs_loops.png", "quality_vs_gflops.png",
                 "grids/L1.png", "grids/L2.png", "grids/L3.png", "grids/real.png", "grids/trivial.png"]:
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "| model | 3 (>Lmax) |" in printed and "real (val split)" in printed and "trivial" in printed

    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert results["meta"]["extractors"]["digits_cnn"]["val_accuracy"] >= 0.97  # the judge, on all 300 held-out digits
    assert [r["row"] for r in rows] == ["real", "trivial", "model", "model", "model"]
    real, trivial, *model = rows
    assert [r["loops"] for r in model] == [1, 2, 3] and [r["extrapolated"] for r in model] == [False, False, True]
    assert real["num_samples"] == trivial["num_samples"] == model[0]["num_samples"] == 30  # comparable Fréchet bias
    assert not any(k in r for r in rows for k in ("fid", "is"))  # a stand-in judge never takes the standard names
    assert real["acc_digits_cnn"] >= 0.9
    assert real["fid_digits_cnn"] < trivial["fid_digits_cnn"]
    g = [r["gflops_per_sample"] for r in model]
    assert g[1] > g[0] and g[2] > g[1] and all(r["wall_s_per_sample"] > 0 for r in model)
    assert result["rows"] == rows

    # fixed seeds: a loop count recomputed from scratch reproduces its row exactly
    (out / "loops" / "L1.json").unlink()
    with monkeypatch.context() as m:
        calls = CountSamples(m)
        again = evaluate(cfg)["rows"]
        assert calls.loops and set(calls.loops) == {1}
    strip = lambda r: {k: v for k, v in r.items() if k != "wall_s_per_sample"}  # noqa: E731
    assert strip(again[2]) == strip(model[0])

    # changed settings never reuse stale rows
    with monkeypatch.context() as m:
        calls = CountSamples(m)
        evaluate(eval_cfg(tiny_ckpt, out, eval_cache, "eval.loops=[2]", "seed=1"))
        assert calls.loops and set(calls.loops) == {2}


def test_bad_input_is_one_line_and_keeps_earlier_results(tiny_ckpt, eval_cache, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("earlier results")
    for overrides, culprit in [
        (["eval.loops=[0]"], "eval.loops"),
        (["eval.sampler={stepz:3}"], "stepz"),
        (["eval.extractors=[clip]"], "eval.extractors"),
        (["eval.extractors=[inception]", f"eval.weights.inception={tmp_path}/missing.pth"], "missing.pth"),
    ]:
        with pytest.raises(SystemExit) as exc:
            run_cli(evaluate, eval_cfg(tiny_ckpt, out, eval_cache, *overrides))
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and culprit in err and len(err.splitlines()) == 1, err
    assert (out / "results.json").read_text() == "earlier results"


def test_eval_py_names_a_missing_checkpoint(tmp_path):
    missing = tmp_path / "nope" / "last.ckpt"
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt_path={missing}", f"hydra.run.dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "ELT_DEBUG": ""})
    assert proc.returncode == 2 and str(missing) in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")


def test_dit_checkpoint_with_precision_recall_and_wandb_offline(train_cfg, eval_cache, tmp_path, monkeypatch):
    """The other model family, logged to an offline W&B run: the table lands in the run's files."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    ckpt = train(train_cfg("model=dit_elt", "N=1", "Lmax=2", "trainer.max_steps=1"))["ckpt_path"]
    out = tmp_path / "eval"
    rows = evaluate(eval_cfg(ckpt, out, eval_cache, "logger=wandb", "eval.loops=[2]", "eval.reference_rows=false",
                             "eval.precision_recall=3"))["rows"]
    assert [r["loops"] for r in rows] == [2] and rows[0]["fid_digits_cnn"] > 0
    assert 0 <= rows[0]["precision_digits_cnn"] <= 1 and 0 <= rows[0]["recall_digits_cnn"] <= 1
    tables = list(out.glob("wandb/offline-run-*/files/media/table/eval/results_*.table.json"))
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    assert "fid_digits_cnn" in logged["columns"] and len(logged["data"]) == 1
    assert list(out.glob("wandb/offline-run-*/files/media/images/eval/figures/quality_vs_gflops*.png"))


def test_video_checkpoint_scored_by_its_3d_judge_and_by_i3d(train_cfg, eval_cache, tmp_path, monkeypatch):
    """MaskGIT-ELT on moving_digits through the real train() and evaluate(): FVD in the 3D judge's
    space at every loop count with animated grids; then the literature's network (a stand-in I3D),
    logged to an offline W&B run that plays the animated grid."""
    ckpt = train(train_cfg("data=moving_digits", "N=1", "Lmax=2", "trainer.max_steps=1"))["ckpt_path"]
    out = tmp_path / "eval"
    result = evaluate(eval_cfg(ckpt, out, eval_cache))
    rows = result["rows"]
    assert [(r["row"], r["loops"]) for r in rows] == [("real", None), ("trivial", None), ("model", 1), ("model", 2)]
    for r in rows:
        assert r["fvd_moving_digits_cnn"] > 0 and 0 <= r["acc_moving_digits_cnn"] <= 1 and r["is_moving_digits_cnn"] >= 1
        assert not {"fvd", "fid", "fid_moving_digits_cnn"} & set(r)
    assert rows[0]["fvd_moving_digits_cnn"] < rows[1]["fvd_moving_digits_cnn"]  # real videos beat independent pixels
    judge = json.loads((out / "results.json").read_text())["meta"]["extractors"]["moving_digits_cnn"]
    assert judge["val_accuracy"] >= 0.9 and judge["aux_target"] == "motion"
    assert "fvd_moving_digits_cnn" in result["table"] and "on 300 videos" in result["table"]
    for key in ("L1", "L2", "real", "trivial"):
        assert (out / "grids" / f"{key}.png").is_file(), key
        with Image.open(out / "grids" / f"{key}.gif") as gif:
            assert gif.n_frames == 4, key  # T frames, each a whole grid

    weights = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(weights))
    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "eval_i3d"
    rows = evaluate(eval_cfg(ckpt, out, eval_cache, "eval.extractors=[i3d]", f"eval.weights.i3d={weights}", "logger=wandb",
                             "eval.loops=[2]", "eval.reference_rows=false", "eval.reference_split=val"))["rows"]
    assert [r["loops"] for r in rows] == [2] and rows[0]["fvd"] > 0
    assert not any(k.endswith("_cnn") for k in rows[0])  # the literature's network: plain name, no judge
    assert list(out.glob("wandb/offline-run-*/files/media/videos/eval/videos/L2*.gif"))


def test_notebook_runs_top_to_bottom(tiny_ckpt, eval_cache, tmp_path):
    import nbformat  # a pinned dev dependency: a missing one must fail, not skip
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "anytime_inference.ipynb", as_version=4)
    env = {"ELT_CKPT": str(tiny_ckpt), "ELT_CACHE_DIR": str(eval_cache), "ELT_NB_OUTPUT": str(tmp_path / "nb"),
           "ELT_NB_SAMPLES_PER_CLASS": "3", "ELT_NB_SAMPLER_STEPS": "2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        # "python3" resolves to this interpreter (jupyter_client swaps in sys.executable): no kernelspec install
        NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) >= 2  # samples side by side + the curve


@pytest.mark.slow
def test_demo_checkpoint_is_usable_at_every_loop_count(tmp_path, eval_cache):
    """The issue's acceptance bar on the real demo recipe (~10 min): every L within 1.5x of the Lmax
    FID (digits judge), and the model at Lmax better than the trivial independent-pixel model."""
    cfg = compose_cfg("train", ["experiment=digits_maskgit", "trainer.enable_progress_bar=false"], tmp_path / "train")
    ckpt = train(cfg)["ckpt_path"]
    rows = evaluate(compose_cfg("eval", [f"ckpt_path={ckpt}", f"paths.cache_dir={eval_cache}", "eval.progress=false"],
                                tmp_path / "eval"))["rows"]
    fid = {r["loops"]: r["fid_digits_cnn"] for r in rows if r["row"] == "model"}
    trivial = next(r["fid_digits_cnn"] for r in rows if r["row"] == "trivial")
    lmax = max(fid)
    assert all(f <= 1.5 * fid[lmax] for f in fid.values()), fid
    assert fid[lmax] < trivial, (fid, trivial)
