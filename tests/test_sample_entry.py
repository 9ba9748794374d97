"""sample.py / elt.samplers.budget: budgeted generation on a tiny checkpoint, and its one-line refusals."""
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import ROOT, compose_cfg
from elt.core import flops, schedules
from elt.runtime.checkpoint import load_run
from elt.jobs.sample import sample_entry
from elt.samplers.budget import BudgetError, choose, generate
from elt.jobs.train import train
from helpers import tiny_maskgit


@pytest.fixture
def tiny_ckpt(train_cfg):
    return train(train_cfg("N=1", "Lmax=2", "model.sampler.steps=4"))["ckpt_path"]


def test_sample_py_writes_a_grid_and_prints_the_choice(tiny_ckpt, tmp_path, capsys):
    model, _ = load_run(tiny_ckpt)
    sampler = model.sampler_config()
    fixed2 = flops.gflops_per_sample(model, (2,) * 4, sampler)
    cfg = compose_cfg("sample", [f"ckpt_path={tiny_ckpt}", f"budget.gflops={fixed2 * 0.9}", "labels=[3,7]", "n=3"],
                      tmp_path / "out")
    result = sample_entry(cfg)
    printed = capsys.readouterr().out
    choice = result["choice"]
    assert choice.gflops <= fixed2 * 0.9 and choice.source == "candidates"
    assert "steps=" in printed and "schedule=" in printed and schedules.name(choice.schedule) in printed
    assert Image.open(tmp_path / "out" / "samples.png").size[1] > 2 * 64  # two rows of upscaled digits


def test_the_best_front_point_within_the_budget_is_chosen(tmp_path):
    model = tiny_maskgit().eval()
    sampler = model.sampler_config(steps=4)
    pts = [{"steps": 4, "schedule": 1, "plan": [1] * 4, "gflops": 1.0, "quality": 9.0},
           {"steps": 4, "schedule": "linear:3-1", "plan": [3, 2, 2, 1], "gflops": 2.0, "quality": 5.0},
           {"steps": 4, "schedule": 3, "plan": [3] * 4, "gflops": 3.0, "quality": 4.0}]
    front = tmp_path / "front.json"
    front.write_text(json.dumps({"front": pts}))
    assert choose(model, sampler, gflops=2.5, front=str(front)).schedule == "linear:3-1"
    images, choice = generate(model, [1, 2], gflops=10, front=str(front), generator=torch.Generator().manual_seed(0),
                              steps=4)
    assert choice.plan == (3, 3, 3, 3) and images.shape == (2, 1, 8, 8)
    assert "loops per step=3×4 " in choice.describe() and "measured 4 on the front" in choice.describe()
    with pytest.raises(BudgetError, match=r"budget.gflops=0.5 is below the cheapest option: steps=4 schedule=constant:1"):
        choose(model, sampler, gflops=0.5, front=str(front))


def test_seconds_budget_uses_a_fitted_wall_clock():
    model = tiny_maskgit().eval()
    sampler = model.sampler_config(steps=4)
    choice = choose(model, sampler, seconds=60.0, n=4)
    assert choice.seconds is not None and 0 < choice.seconds <= 60
    assert choice.plan == (model.Lmax,) * 4  # a minute buys the most expensive default candidate
    with pytest.raises(BudgetError, match="budget.seconds=1e-09 is below the cheapest option"):
        choose(model, sampler, seconds=1e-9, n=4)


def test_sample_py_refuses_a_budget_below_the_cheapest_option_in_one_line(tiny_ckpt, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "sample.py"), f"ckpt_path={tiny_ckpt}", "budget.gflops=1e-9",
                           "front=null", f"hydra.run.dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "ELT_DEBUG": ""})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: budget.gflops=1e-09 is below the cheapest option: steps=2"), lines
