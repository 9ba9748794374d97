"""The loops x steps study on a tiny DiT checkpoint: grid, cached resume, table, figure, verdict."""
import json

import pytest

from elt.experiments.loops_steps import matched_pairs, run_study, verdict
from elt.jobs.train import train
from elt.models.dit import DiTELT
from elt.runtime.config import ConfigError
from support.config import compose_cfg, tiny_train


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory, eval_cache):
    tmp = tmp_path_factory.mktemp("loops_steps_run")
    base = ["experiment=digits_dit", "N=1", "Lmax=2", *tiny_train(eval_cache)]
    return train(compose_cfg("train", base, tmp / "train"))["ckpt_path"], eval_cache


def study_cfg(run, out, *overrides):
    ckpt, cache = run
    base = [f"ckpt_path={ckpt}", f"paths.cache_dir={cache}", "eval.samples_per_class=2", "eval.batch_size=20",
            "eval.progress=false", "study.kinds=[ddim,heun]", "study.steps=[2,4]", "study.loops=[1,2]",
            "study.seeds=[0,1]", "study.match=0.3"]
    return compose_cfg("loops_steps", base + list(overrides), out)


def test_study_writes_table_figure_verdict_and_resumes(dit_run, tmp_path, monkeypatch):
    out = tmp_path / "study"
    cfg = study_cfg(dit_run, out)
    calls, original = [], DiTELT.sample

    def counted(model, *a, **k):
        calls.append(k.get("kind"))
        return original(model, *a, **k)

    monkeypatch.setattr(DiTELT, "sample", counted)
    result = run_study(cfg)
    first = len(calls)
    assert first == 2 * 2 * 2 * 2  # kinds x steps x loops x seeds, one batch each
    for name in ("study.json", "study.md", "study.png"):
        assert (out / name).is_file()
    saved = json.loads((out / "study.json").read_text())
    heun4 = next(p for p in saved["points"] if p["solver"]["kind"] == "heun" and p["steps"] == 4 and p["schedule"] == 2)
    assert heun4["network_evals"] == 7 and len(heun4["per_seed"]) == 2
    ddim2 = next(p for p in saved["points"] if p["solver"]["kind"] == "ddim" and p["steps"] == 2 and p["schedule"] == 2)
    ddim4 = next(p for p in saved["points"] if p["solver"]["kind"] == "ddim" and p["steps"] == 4 and p["schedule"] == 1)
    assert (ddim2["name"], ddim4["name"]) in {(a["name"], b["name"]) for a, b in matched_pairs(result["points"], 0.3)}
    assert result["verdict"]["answer"] in {"more loops", "more steps", "no difference", "split"}
    assert "more loops or more steps?" in (out / "study.md").read_text()
    run_study(cfg)  # every (point, seed) cached: no sampling
    assert len(calls) == first


def test_study_refuses_a_bad_grid_before_sampling(dit_run, tmp_path):
    with pytest.raises(ConfigError, match="heun needs steps >= 2"):
        run_study(study_cfg(dit_run, tmp_path / "a", "study.steps=[1,2]"))
    with pytest.raises(ConfigError, match="outside this checkpoint's 1..2"):
        run_study(study_cfg(dit_run, tmp_path / "b", "study.loops=[1,3]"))
    with pytest.raises(ConfigError, match="lo <= hi"):
        run_study(study_cfg(dit_run, tmp_path / "c", "study.guidance=[{cfg_scale:2.0,cfg_interval:[2,-2]}]"))


def test_verdict_counts_matched_pairs_by_welchs_test():
    def pt(steps, loops, fds, gflops):
        return {"name": f"{steps}x{loops}", "steps": steps, "mean_loops": loops, "gflops": gflops, "per_seed": fds,
                "solver": {"kind": "ddim", "spacing": "t"}}

    clear = [pt(4, 2, [1.0, 1.1, 0.9], 8.0), pt(8, 1, [3.0, 3.1, 2.9], 8.0), pt(8, 2, [0.5, 0.6, 0.4], 16.0)]
    v = verdict(clear, 0.1)
    assert v["answer"] == "more loops" and v["wins"] == {"loops": 1, "steps": 0, "tie": 0}
    assert v["by_setting"] == {"ddim, t grid": {"answer": "more loops", "wins": v["wins"]}}
    noisy = [pt(4, 2, [1.0, 3.0, 2.0], 8.0), pt(8, 1, [2.0, 1.0, 3.0], 8.4)]
    assert verdict(noisy, 0.1)["answer"] == "no difference"
    assert verdict(noisy, 0.01)["answer"] == "no matched pairs in this grid"


def test_pareto_searches_the_solver_axes(dit_run, tmp_path):
    """pareto.solvers: every solver setting over every step count and schedule, named in the front."""
    from elt.jobs.pareto import run_search

    ckpt, cache = dit_run
    base = [f"ckpt_path={ckpt}", f"paths.cache_dir={cache}", "eval.samples_per_class=2", "eval.batch_size=20",
            "eval.progress=false", "eval.sampler={steps:2}", "pareto.steps=[2]", "pareto.schedules=[1,2]",
            "pareto.seeds=[0]", "pareto.proxy_per_class=1", "pareto.candidates=0"]
    solvers = "pareto.solvers=[{kind:ddpm},{kind:heun,spacing:logsnr}]"
    result = run_search(compose_cfg("pareto", base + [solvers], tmp_path / "p"))
    kinds = {(p["solver"].get("kind"), p["plan"][0], p["network_evals"]) for p in result["proxy"]}
    assert kinds == {("ddpm", 1, 2), ("ddpm", 2, 2), ("heun", 1, 3), ("heun", 2, 3)}
    with pytest.raises(ConfigError, match="heun needs steps >= 2"):
        run_search(compose_cfg("pareto", base + [solvers, "pareto.steps=[1]"], tmp_path / "q"))
    with pytest.raises(ConfigError, match="unknown sampler option"):
        run_search(compose_cfg("pareto", base + ["pareto.solvers=[{solver:heun}]"], tmp_path / "r"))


def test_study_runs_on_maskgit_with_kinds_null(tmp_path, eval_cache):
    """MaskGIT-ELT has no solvers: study.kinds=null grids steps x loops (and guidance) only."""
    base = ["scale=tiny", "N=1", "Lmax=2", *tiny_train(eval_cache, steps=1)]
    run = train(compose_cfg("train", base, tmp_path / "train"))["ckpt_path"], eval_cache
    with pytest.raises(ConfigError, match="study.kinds=null for a model without solvers"):
        run_study(study_cfg(run, tmp_path / "a"))
    result = run_study(study_cfg(run, tmp_path / "b", "study.kinds=null", "study.steps=[2,4]", "study.seeds=[0]"))
    assert {(p["steps"], p["schedule"]) for p in result["points"]} == {(2, 1), (2, 2), (4, 1), (4, 2)}
    assert all(p["solver"] == {} for p in result["points"]) and "the model's sampler" in (tmp_path / "b/study.md").read_text()
