"""sample.py on a tiny checkpoint: the choice printed, the grid written, and its one-line refusals."""
import os
import subprocess
import sys

import pytest
from PIL import Image

from elt.core import flops, schedules
from elt.runtime.checkpoint import load_run
from elt.jobs.sample import sample_entry
from elt.jobs.train import train
from support.config import ROOT, compose_cfg


@pytest.fixture
def sample_ckpt(train_cfg):
    return train(train_cfg("N=1", "Lmax=2", "model.sampler.steps=4"))["ckpt_path"]


def test_sample_py_writes_a_grid_and_prints_the_choice(sample_ckpt, tmp_path, capsys):
    model, _ = load_run(sample_ckpt)
    sampler = model.sampler_config()
    fixed2 = flops.gflops_per_sample(model, (2,) * 4, sampler)
    cfg = compose_cfg("sample", [f"ckpt_path={sample_ckpt}", f"budget.gflops={fixed2 * 0.9}", "labels=[3,7]", "n=3"],
                      tmp_path / "out")
    result = sample_entry(cfg)
    printed = capsys.readouterr().out
    choice = result["choice"]
    assert choice.gflops <= fixed2 * 0.9 and choice.source == "candidates"
    assert "steps=" in printed and "schedule=" in printed and schedules.name(choice.schedule) in printed
    assert Image.open(tmp_path / "out" / "samples.png").size[1] > 2 * 64  # two rows of upscaled digits


def test_sample_py_refuses_a_budget_below_the_cheapest_option_in_one_line(sample_ckpt, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "sample.py"), f"ckpt_path={sample_ckpt}", "budget.gflops=1e-9",
                           "front=null", f"hydra.run.dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "ELT_DEBUG": ""})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: budget.gflops=1e-09 is below the cheapest option: steps=2"), lines
