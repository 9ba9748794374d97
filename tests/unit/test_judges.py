"""Judges come out bit-identical whatever the CPU's kernels and the caller's thread settings."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.config import ROOT


HASH = """
import dataclasses, hashlib, json, sys
from hydra.utils import instantiate
from omegaconf import OmegaConf
from elt.evaluation import judges
cfg = OmegaConf.create({"data": OmegaConf.load("configs/data/digits.yaml")}).data
dm = instantiate(cfg.module); dm.setup()
recipe = dataclasses.replace(judges.JUDGES["digits"], epochs=1)
train = judges.train_judge_pinned if sys.argv[1] == "pinned" else judges.train_judge
net = train(recipe, 10, dm.train_dataset)
print(json.dumps(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.state_dict().values())).hexdigest()))
"""


def weights_hash(how: str, capability: str, threads: int) -> str:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": str(threads), "ELT_ROOT": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", HASH, how], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # four processes, each training a judge
def test_pinned_judge_training_ignores_the_callers_kernels_and_threads():
    # the control: trained in the caller's process, ATen's AVX2 and portable kernels give other weights
    assert weights_hash("here", "avx2", 2) != weights_hash("here", "default", 1)
    assert weights_hash("pinned", "avx2", 2) == weights_hash("pinned", "default", 1)
