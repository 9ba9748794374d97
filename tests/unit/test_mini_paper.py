"""The mini-paper's verdicts are decided by the numbers: synthetic per-seed FDs that follow the
paper give "reproduced", reversed ones "not reproduced"; the plan and the report."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from elt.experiments import runner
from elt.experiments.mini_paper import arms, claims, plan, report, stats, walltime
from elt.experiments.mini_paper.__main__ import main as mini_main

RAW = "/fashion-mnist"  # never read: the plan only writes it into the commands


def test_compare_is_welchs_t_test_at_the_stated_alpha():
    a, b = [10.0, 10.5, 9.5], [20.0, 23.0, 17.0]
    c = stats.compare(a, b)
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert c["p"] == pytest.approx(ref.pvalue) and c["t"] == pytest.approx(ref.statistic)
    assert c["outcome"] == "better" and c["alpha"] == arms.ALPHA == 0.05
    assert stats.compare(b, a)["outcome"] == "worse"
    # a wide spread: not told apart
    wide = stats.compare([2.0, 10.0, 18.0], [12.0, 14.0, 10.0])
    assert wide["outcome"] == "no difference" and wide["p"] == pytest.approx(
        scipy_stats.ttest_ind([2.0, 10.0, 18.0], [12.0, 14.0, 10.0], equal_var=False).pvalue)
    # 3 seeds, means 2.08 standard errors apart (p = 0.11): the old "2 standard errors" rule called this a difference
    close = stats.compare([0.0, 1.0, 2.0], [1.7, 2.7, 3.7])
    assert close["outcome"] == "no difference" and 0.1 < close["p"] < 0.12
    assert stats.compare([10.0], [11.0])["outcome"] == "untested"  # one seed: no spread, no test
    with pytest.raises(ValueError):
        stats.compare([], [1.0])


def test_equivalence_is_tost_against_the_fixed_margin():
    a, b, margin = [80.1, 80.6, 79.9, 80.4], [80.0, 80.5, 79.7, 80.2], 1.0
    e = stats.equivalent(a, b, margin)
    lower = scipy_stats.ttest_ind([x + margin for x in a], b, equal_var=False, alternative="greater").pvalue
    upper = scipy_stats.ttest_ind([x - margin for x in a], b, equal_var=False, alternative="less").pvalue
    assert e["p"] == pytest.approx(max(lower, upper)) and e["outcome"] == "equivalent"
    # the same means, noisier seeds: equivalence is harder to show, not easier
    noisy = stats.equivalent([76.0, 84.6, 79.9, 81.1], [75.5, 84.5, 79.0, 81.4], margin)
    assert noisy["outcome"] == "not shown" and noisy["p"] > e["p"]
    assert stats.equivalent([80.0, 85.0, 75.0], [80.0, 80.1, 79.9], 0.5)["outcome"] == "not shown"
    assert stats.equivalent([1.0], [1.0], 0.5)["outcome"] == "untested"
    with pytest.raises(ValueError, match="margin must be > 0"):
        stats.equivalent(a, b, 0.0)


def test_holm_adjusts_step_down():
    adj = stats.holm({1: 0.01, 2: 0.04, 3: 0.03, 4: None})
    assert adj[4] is None and [adj[k] for k in (1, 2, 3)] == pytest.approx([0.03, 0.06, 0.06])


def seeds(m: float, spread: float = 0.2) -> list[float]:
    return [m - spread, m, m + spread]


def paper_like() -> dict:
    """FD per loop count and seed as the paper describes it."""
    return {"ilsd": {1: seeds(14), 2: seeds(12), 3: seeds(11), 4: seeds(10), 5: seeds(9), 6: seeds(11)},
            "vanilla": {1: seeds(80), 2: seeds(60), 3: seeds(30), 4: seeds(12), 5: seeds(20), 6: seeds(40)},
            "baseline": {1: seeds(10.1), 2: seeds(50), 3: seeds(70)},
            "capacity": {L: seeds(20 + abs(L - 8)) for L in range(1, 11)}}


def verdicts(arms) -> list[str]:
    return [c["verdict"] for c in claims.claims(arms)]


def test_numbers_that_follow_the_paper_reproduce_every_claim():
    got = claims.claims(paper_like())
    assert len(got) == 5 and [c["verdict"].split(" (")[0] for c in got] == ["reproduced"] * 5
    assert got[1]["verdict"].startswith("reproduced (p ") and "TOST p = " in got[2]["verdict"]


def test_numbers_against_the_paper_do_not_reproduce():
    arms = paper_like()
    arms["ilsd"] = {L: seeds(v) for L, v in {1: 90, 2: 70, 3: 35, 4: 15, 5: 15, 6: 15}.items()}  # worse than vanilla
    arms["baseline"][1] = seeds(5)
    arms["capacity"][8] = seeds(15)  # the same as 2N×4L
    v = verdicts(arms)
    assert v[0] == "not reproduced"  # vanilla's early exits are poor, but ILSD's are not better at any L
    assert v[1].startswith("not reproduced (vanilla better, p ")
    assert v[2].startswith("not reproduced (baseline better, p ")
    assert v[3] == "not reproduced (no gain)"  # extra loops change nothing: neither gain nor degradation
    assert v[4] == "not reproduced (no significant difference, p = 1.000)"
    arms["ilsd"][5], arms["ilsd"][6] = seeds(16), seeds(20)
    assert verdicts(arms)[3] == "partly reproduced (degradation only)"


def test_a_per_loop_claim_names_the_loop_counts_where_it_holds():
    arms = paper_like()
    arms["ilsd"][3] = seeds(30)  # at L=3 ILSD's exit is no better than vanilla's
    assert verdicts(arms)[0] == "partly reproduced (holds at L=1, L=2)"


def test_equivalence_with_the_baseline_needs_tost_not_a_non_significant_difference():
    arms = paper_like()
    arms["baseline"][1] = [7.0, 10.1, 13.2]  # the same mean as ELT's within the margin, but noisy
    c = claims.claims(arms)[2]
    assert c["verdict"].startswith("not reproduced (equivalence within ±0.51 not shown, TOST p = ")
    assert "±5% of the baseline's mean" in c["test"]


def test_one_seed_is_untested():
    arms = {a: {L: v[:1] for L, v in by.items()} for a, by in paper_like().items()}
    assert all(v.startswith("untested (1 seed") for v in verdicts(arms))


def test_plan_quick_and_full(tmp_path):
    quick = plan.plan(tmp_path, quick=True, raw_root=RAW)
    names = [t.name for t in quick]
    assert names[:3] == ["stage_one_vq", "judge", "prepare_maskgit"] and len(names) == 3 + 2 * len(arms.ARMS)
    # every training before any evaluation
    assert names[3:] == [f"{step}_maskgit_{arm}_s0" for step in ("train", "eval") for arm in arms.ARMS]
    ev = {t.name: t for t in quick}["eval_maskgit_vanilla_s0"]
    assert ev.deps == ["train_maskgit_vanilla_s0", "judge"]
    assert "eval.extra_loops=2" in ev.cmd
    full = plan.plan(tmp_path, quick=False, raw_root=RAW)
    trains = [t for t in full if t.name.startswith("train_")]
    assert len(trains) == 2 * len(arms.ARMS) * 3 and {t.name for t in full} >= {"stage_one_kl", "prepare_dit"}
    base = {t.name: t for t in full}["train_dit_baseline_s2"]
    assert {"N=8", "Lmax=1", "seed=2", "experiment=mini/fashion_dit", "ckpt_path=last"} <= set(base.cmd)


def test_simulated_wall_follows_the_run_order():
    T = runner.Task
    tasks = [T("a", [], Path("a")), T("b", [], Path("b")), T("c", [], Path("c"), ["a"]), T("d", [], Path("d"), ["a", "b"])]
    secs = {"a": 10, "b": 30, "c": 5, "d": 7}
    # two slots: a and b at 0; c at 10 (ends 15); d waits for b until 30 (ends 37)
    assert walltime.simulated_wall(tasks, secs, jobs=2) == 37
    assert walltime.simulated_wall(tasks, secs, jobs=1) == 52 and walltime.simulated_wall(tasks, secs, jobs=4) == 37
    assert walltime.fallbacks("eval_dit_ilsd_s2") == ["eval_dit_ilsd_", "eval_"] and walltime.fallbacks("judge") == ["judge"]


def test_a_failed_command_stops_only_what_needs_it(tmp_path, capsys):
    py = [sys.executable, "-c"]
    T = runner.Task
    tasks = [T("bad", [*py, "raise SystemExit(3)"], tmp_path / "bad.done"),
             T("needs_bad", [*py, "pass"], tmp_path / "needs_bad.done", ["bad"]),
             T("good", [*py, "pass"], tmp_path / "good.done"),
             T("after_good", [*py, "pass"], tmp_path / "after_good.done", ["good"])]
    with pytest.raises(SystemExit) as e:
        runner.run_tasks(tasks, jobs=1, log_dir=tmp_path / "logs")
    assert str(e.value).startswith("error: bad failed") and "not started, as they need it: needs_bad" in str(e.value)
    assert [t.done.is_file() for t in tasks] == [False, False, True, True]
    assert "error: bad exited 3" in capsys.readouterr().out


def test_jobs_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        mini_main(["plan", "--jobs", "0"])
    assert "--jobs must be at least 1" in capsys.readouterr().err


def write_results(runs, family, arm, seed, by_loop):
    d = plan.run_dir(runs, family, arm, seed) / "eval"
    d.mkdir(parents=True)
    rows = [{"name": "real val split", "row": "real", "loops": None, stats.METRIC: 1.0}]
    rows += [{"name": f"L={L}", "row": "model", "loops": L, stats.METRIC: v} for L, v in by_loop.items()]
    (d / "results.json").write_text(json.dumps({"meta": {"hparams": {}}, "rows": rows}))


def test_report_from_results(tmp_path):
    runs = tmp_path / "runs"
    for arm, by in paper_like().items():
        for s in range(3):
            write_results(runs, "maskgit", arm, s, {L: v[s] for L, v in by.items()})
    for name, secs in (("ilsd/seed0/.train.done", 300), ("ilsd/seed0/.eval.done", 60)):
        (runs / "maskgit" / name).write_text(f"{secs}\n")
    assert report.collect(runs, ["maskgit"], (0, 1, 2))["maskgit"]["arms"]["ilsd"][4] == seeds(10)
    img = tmp_path / "img"
    img.mkdir()
    path = report.report(runs, tmp_path / "out", quick=False, raw_root=RAW, img_dir=img)
    text = path.read_text()
    assert "| ELT 2N×4L, ILSD | 4 | 14.00 ± 0.20 |" in text and text.count("**reproduced") == 5
    assert "Welch's two-sided t-test" in text and "not reproduced" not in text
    assert "## DiT-ELT" in text and "No finished evaluation yet." in text
    assert (img / "mini_maskgit_fd_vs_loops.png").is_file()
    # 24 trains and evals, each counted as the measured 300 + 60 s; nothing else measured
    assert "estimate from these times: 144 CPU-minutes of commands, about 72 min wall" in text


def test_a_budget_that_beats_no_trivial_row_is_flagged():
    arms = paper_like()
    assert report.power_warning(arms, {"trivial (independent tokens)": [100.0]}) == []
    assert "Under-trained" in report.power_warning(arms, {"trivial (independent tokens)": [11.0]})[0]
    assert report.power_warning(arms, {}) == []
