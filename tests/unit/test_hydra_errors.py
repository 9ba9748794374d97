"""Hydra's own command-line errors as the one ``error:`` line of every other bad input, naming the
closest valid key or option, from the entry points as processes (they fail before any heavy import)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from elt.runtime.cli import hydra_error
from support.config import ROOT, child_env


@pytest.mark.parametrize("args, line", [
    (["trainer.max_stepz=5"],
     "trainer.max_stepz=5: trainer.max_stepz is not a config key; did you mean trainer.max_steps? "
     "(a new key: +trainer.max_stepz=5)"),
    (["modle=dit_elt"], "modle=dit_elt: modle is not a config key; did you mean model? (a new key: +modle=dit_elt)"),
    (["model=maskgit_eltt"],
     "model=maskgit_eltt: model has no option maskgit_eltt; did you mean model=maskgit_elt? (options: dit_elt, maskgit_elt)"),
    (["depth=2Nx4k"], "depth=2Nx4k: depth has no option 2Nx4k; did you mean depth=2Nx4L? (options: 1Nx8L, 2Nx4L, 4Nx2L, 8Nx1L)"),
    (["ilsd.Lmin=[1"], "ilsd.Lmin=[1: not a valid override (no viable alternative at input '[1'); write key=value, "
                       "e.g. N=2 or eval.loops=[1,2]"),
    (["~trainer.nope"], "~trainer.nope: trainer.nope is not a config key"),
    (["-m", "N=1,2", "trainer.max_stepz=5"],  # a sweep is checked as its first job
     "trainer.max_stepz=5: trainer.max_stepz is not a config key; did you mean trainer.max_steps? "
     "(a new key: +trainer.max_stepz=5)"),
    (["-m", "model=dit_elt,maskgit_eltt"],  # every option of a swept group exists
     "model=dit_elt,maskgit_eltt: model has no option maskgit_eltt; did you mean model=maskgit_elt? "
     "(options: dit_elt, maskgit_elt)"),
])
def test_hydra_errors_name_the_closest_key(args, line):
    assert hydra_error("train", args) == line


def test_good_command_lines_and_hydras_own_flags_pass():
    assert hydra_error("train", ["N=2", "model=dit_elt", "+foo=1", "-m", "Lmax=2,4", "ilsd=off"]) is None
    assert hydra_error("train", ["--cfg", "job", "trainer.max_stepz=5"]) is None  # Hydra's own mode, its own words
    assert hydra_error("eval", ["eval.loops=[1,2]", "ckpt_path=x.ckpt"]) is None


@pytest.mark.parametrize("script, arg, fragment", [
    ("train.py", "trainer.max_stepz=5", "did you mean trainer.max_steps?"),
    ("eval.py", "eval.loopz=3", "did you mean eval.loops?"),
    ("sample.py", "budget.gflop=2", "did you mean budget.gflops?"),
    ("prepare.py", "prepare.shard_sizee=3", "did you mean prepare.shard_size?"),
])
def test_entry_points_say_it_in_one_line_and_exit_2(script, arg, fragment, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / script), arg, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {arg}: ") and fragment in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()  # refused before Hydra made the run directory


def test_an_uncreatable_run_directory_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path / 'a_file' / 'run'}"],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: not a directory: {tmp_path / 'a_file' / 'run'}"]
