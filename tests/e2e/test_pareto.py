"""The Pareto search on a tiny checkpoint: proxy then real metric, written front, cached resume."""
import json

import pytest

from elt.runtime.config import ConfigError
from elt.jobs.pareto import default_schedules, non_dominated, run_search
from elt.models.maskgit import MaskGITELT
from elt.jobs.train import train
from support.config import compose_cfg, tiny_train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, eval_cache):
    """A 2-step Lmax=2 checkpoint shared by this module's tests, and the session's evaluation cache."""
    tmp = tmp_path_factory.mktemp("pareto_run")
    base = ["scale=tiny", "N=1", "Lmax=2", *tiny_train(eval_cache)]
    return train(compose_cfg("train", base, tmp / "train"))["ckpt_path"], eval_cache


def pareto_cfg(run, out, *overrides):
    ckpt, cache = run
    base = [f"ckpt_path={ckpt}", f"paths.cache_dir={cache}", "eval.samples_per_class=2", "eval.batch_size=16",
            "eval.is_splits=2", "eval.progress=false", "eval.sampler={steps:2}", "pareto.steps=[1,2]",
            "pareto.schedules=[1,2,linear:1-2,step:2-1]", "pareto.seeds=[0,1]", "pareto.proxy_per_class=1",
            "pareto.candidates=1"]
    return compose_cfg("pareto", base + list(overrides), out)


class Calls:
    def __init__(self, monkeypatch, die_after=None):
        self.n, original = 0, MaskGITELT.sample

        def sample(model, *a, **k):
            if die_after is not None and self.n >= die_after:
                raise KeyboardInterrupt("simulated interruption")
            self.n += 1
            return original(model, *a, **k)

        monkeypatch.setattr(MaskGITELT, "sample", sample)


def test_search_writes_the_front_and_resumes_from_cached_points(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "pareto"
    cfg = pareto_cfg(tiny_run, out)
    with monkeypatch.context() as m:
        Calls(m, die_after=3)
        with pytest.raises(KeyboardInterrupt):
            run_search(cfg)
    assert len(list((out / "points").glob("*.json"))) == 3
    with monkeypatch.context() as m:
        calls = Calls(m)
        result = run_search(cfg)
        fresh = calls.n
    assert fresh > 0
    for name in ("front.json", "front.md", "front.png"):
        assert (out / name).is_file()
    saved = json.loads((out / "front.json").read_text())
    assert saved["metric"] == "fid_digits_cnn" and saved["seeds"] == [0, 1]
    # 2 steps x 4 schedules, minus duplicates (1 step: linear:1-2 = [1], step:2-1 = [1]... resolved plans)
    plans = {(p["steps"], tuple(p["plan"])) for p in result["proxy"]}
    assert len(plans) == len(result["proxy"])
    paper = [p for p in result["scored"] if p["paper"]]
    assert {tuple(p["plan"]) for p in paper} == {(1, 1), (2, 2)}  # fixed L at the sampler's 2 steps
    assert all(len(p["per_seed"]) == 2 for p in result["scored"])
    front = result["front"]
    assert [p["gflops"] for p in front] == sorted(p["gflops"] for p in front)
    assert all(a["quality"] > b["quality"] for a, b in zip(front, front[1:]))
    with monkeypatch.context() as m:
        calls = Calls(m)
        again = run_search(cfg)
        assert calls.n == 0  # every point was cached
    assert again["front"] == result["front"]


def test_budget_restricts_the_search_and_one_below_the_cheapest_is_refused(tiny_run, tmp_path):
    out = tmp_path / "pareto"
    with pytest.raises(ConfigError, match=r"budget.gflops=1e-09 is below the cheapest point: 1 steps, constant:1"):
        run_search(pareto_cfg(tiny_run, out, "budget.gflops=1e-9"))
    with pytest.raises(ConfigError, match="budget.gflops must be a number > 0"):
        run_search(pareto_cfg(tiny_run, out, "budget.gflops=-1"))


def test_non_dominated_and_default_grid():
    pts = [{"gflops": 1, "q": 5}, {"gflops": 2, "q": 6}, {"gflops": 3, "q": 4}, {"gflops": 0.5, "q": 9}]
    assert [p["gflops"] for p in non_dominated(pts, "q")] == [0.5, 1, 3]
    grid = default_schedules(3)
    assert grid[:3] == [1, 2, 3] and "linear:1-3" in grid and "step:3-1" in grid and "change:2.5" in grid


def test_early_exit_search_calibrates_tau_and_reports_measured_gflops(tiny_run, tmp_path):
    result = run_search(pareto_cfg(tiny_run, tmp_path / "pareto", "pareto.early_exit={target:1e9}",
                                   "pareto.taus=[0.05,1e9]", "pareto.schedules=[2]", "pareto.steps=[2]"))
    cal = result["calibration"]
    assert [row["tau"] for row in cal["table"]] == [0.0, 0.05, 1e9] and cal["tau"] == 1e9  # any loss is in target
    assert result["early_exit"]["tau"] == 1e9
    p = next(p for p in result["scored"] if p["plan"] == [2, 2])
    # Lmax=2: every sample "exits" at loop 2, its last, so nothing is saved and the head read at
    # loop 1 is paid on top: measured GFLOPs exceed the plan's, block applications are the plan's
    assert p["block_applications"] == 4 and p["gflops"] > p["gflops_plan"]


def test_tau_calibration_stops_at_the_first_failing_tau_and_keeps_the_other_settings():
    """A noisy pass beyond a failing τ is not taken; criterion and min_loops reach every τ's run."""
    from elt.jobs.pareto import calibrate_tau

    fd = {None: 10.0, 0.1: 10.2, 0.2: 11.0, 0.3: 10.1}  # 0.2 fails a 5% target, 0.3 passes by noise
    seen = []

    class FakeSearch:
        def score(self, p, seed, per_class, early_exit=None):
            seen.append(early_exit)
            return {"fd": fd[early_exit and early_exit["tau"]], "block_applications": 1.0}

    tau, table = calibrate_tau(FakeSearch(), {}, [0.3, 0.1, 0.2], 0.05, "fd", 2, {"criterion": "kl", "min_loops": 3})
    assert tau == 0.1 and [r["tau"] for r in table] == [0.0, 0.1, 0.2]
    assert seen[1:] == [{"criterion": "kl", "min_loops": 3, "tau": 0.1}, {"criterion": "kl", "min_loops": 3, "tau": 0.2}]
