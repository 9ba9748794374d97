"""torchrun with two CPU ranks (gloo) writes the table one process writes: the same rows, number for
number, and the same grids, because batch i keeps its seed and labels whichever rank draws it."""
import json
import os
import subprocess
import sys

import numpy as np

from support.config import ROOT


# 30 samples in batches of 7: five batches, so the last round leaves rank 1 without one
SETTINGS = ["eval.samples_per_class=3", "eval.batch_size=7", "eval.grid_per_class=2", "eval.is_splits=3",
            "eval.progress=false", "eval.sampler={steps:2}", "eval.loops=[1,2]", "eval.save_samples=true"]


def run_eval(launcher: list[str], ckpt, out, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ELT_ROOT": str(ROOT), "ELT_DEBUG": ""}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = launcher + [str(ROOT / "eval.py"), f"ckpt_path={ckpt}", f"hydra.run.dir={out}", f"paths.cache_dir={cache}", *SETTINGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_gloo_ranks_reproduce_the_single_process_table(tiny_ckpt, eval_cache, tmp_path):
    one = tmp_path / "one"
    run_eval([sys.executable], tiny_ckpt, one, eval_cache)  # first: trains the judge and caches the references
    two = tmp_path / "two"
    proc = run_eval([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
                    tiny_ckpt, two, eval_cache)
    printed = proc.stdout + proc.stderr
    assert printed.count("distributed evaluation: 2 ranks (gloo)") == 1, printed[-3000:]
    assert printed.count("eval.precision=") == 1  # only rank 0 logs

    rows = {d: json.loads((d / "results.json").read_text())["rows"] for d in (one, two)}
    assert [(r["row"], r["loops"]) for r in rows[two]] == [("real", None), ("trivial", None), ("model", 1), ("model", 2)]
    for a, b in zip(rows[one], rows[two], strict=True):
        assert a["num_samples"] == b["num_samples"] == 30
        for key in set(a) | set(b):
            if key == "wall_s_per_sample":  # timing: positive on both, never equal
                assert (a[key] is None) == (b[key] is None) and (a[key] is None or b[key] > 0)
            else:  # exactly: same batches folded in the same order
                assert a[key] == b[key], (a["name"], key, a[key], b[key])
    for grid in ("L1.png", "L2.png", "real.png", "trivial.png"):  # the gathered grid images, pixel for pixel
        assert (one / "grids" / grid).read_bytes() == (two / "grids" / grid).read_bytes(), grid
    assert sorted(p.name for p in (two / "loops").iterdir()) == ["L1.json", "L2.json", "ref_real.json", "ref_trivial.json"]
    for L in (1, 2):  # eval.save_samples: both ranks' batches in one ADM-format file, as one process writes it
        with np.load(one / "samples" / f"L{L}.npz") as a, np.load(two / "samples" / f"L{L}.npz") as b:
            assert a["arr_0"].shape == (30, 8, 8, 3) and a["arr_0"].dtype == np.uint8
            np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
            np.testing.assert_array_equal(a["labels"], b["labels"])
    assert sorted(p.name for p in (two / "samples").iterdir()) == ["L1.npz", "L2.npz"]
