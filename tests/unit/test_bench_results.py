"""Every benchmark results file starts with the machine its numbers come from (CPU, flags, CPU count, torch
threads, fp32 linear kernels): one writer for the scripts' single-run files, one header for the files that
gather entries over several runs (anytime, solvers)."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import anytime  # noqa: E402
import gemm_ceiling  # noqa: E402
import ilsd_overhead  # noqa: E402
import solvers  # noqa: E402


def test_write_results_starts_with_the_machine(tmp_path):
    ilsd_overhead.write_results(str(tmp_path / "r.json"), {"reps": 1}, [{"x": 1}], ["| x |", "|---|", "| 1 |"])
    recorded = json.loads((tmp_path / "r.json").read_text())["meta"]["machine"]
    first = (tmp_path / "r.md").read_text().splitlines()[0]
    assert first == ilsd_overhead.machine_line(recorded)
    assert f"with {torch.get_num_threads()} thread(s)" in first and "CPU flags: " in first


def test_gathered_results_name_each_entrys_machine():
    here = ilsd_overhead.machine()
    other = {**here, "torch_threads": here["torch_threads"] + 1}
    base = {"quality": 1.0, "quality_std": 0.1, "network_evals": 512, "seconds_per_sample": 1.0}
    entry = {"ckpt": "c", "samples_per_class": 1, "cfg_scale": 1.0, "baseline": base, "metric": "fid", "loops": 4,
             "limit": 1.05, "points": [], "cheapest": None}
    md = solvers.markdown([{**entry, "name": "a", "machine": here}, {**entry, "name": "b", "machine": other},
                           {**entry, "name": "c", "machine": here}, {**entry, "name": "d"}])
    assert md.splitlines()[2:6] == [ilsd_overhead.machine_line(here, "a, c"), ilsd_overhead.machine_line(other, "b"),
                                    "Machine (d): not recorded (measured before the results kept it).", ""]
    md = anytime.render({"a": {"machine": here}, "c": {"machine": here}})
    assert md.splitlines()[2] == ilsd_overhead.machine_line(here)


def test_anytime_gain_tests_over_seeds_and_separates_the_sampler_from_the_schedule():
    def point(name, gflops, per_seed, plan, solver=None, paper=False):
        q = torch.tensor(per_seed, dtype=torch.float64)
        return {"name": name, "steps": len(plan), "schedule": plan[0], "gflops": gflops, "plan": plan,
                "solver": solver or {}, "per_seed": per_seed, "quality": float(q.mean()), "quality_std": float(q.std()),
                "paper": paper, "seconds_per_sample": 0.1, "on_front": False}
    guided = {"cfg_scale": 3.0}
    scored = [point("paper L=2", 2.0, [30.0, 31.0, 29.0], [2, 2], paper=True),
              point("paper L=1", 1.0, [40.0, 41.0, 39.0], [1, 1], paper=True),
              point("guided rising", 1.5, [20.0, 21.0, 19.0], [1, 2], guided),
              point("guided L=1", 1.2, [25.0, 26.0, 24.0], [1, 1], guided),
              point("guided L=2, over budget", 4.0, [10.0, 10.5, 9.5], [2, 2], guided)]
    gain = anytime.best_gain({"scored": scored})
    assert gain["best_fixed"]["name"] == "paper L=2" and gain["best_schedule"]["name"] == "guided rising"
    assert gain["fd_gain"] == 1 - 20 / 30
    assert gain["best_fixed_same_solver"]["name"] == "guided L=1"  # within the budget, same solver axes
    assert anytime.welch_cell(scored[2], scored[0]) == "better, p < 0.001"
    assert anytime.welch_cell(scored[3], scored[3]).startswith("no difference")
    pareto = {"scored": scored, "metric": "fid", "proxy": [], "run": "r", "seeds": [0, 1, 2], "samples_per_class": 1,
              "budget_gflops": 2.0}
    md = anytime.render({"x": {"pareto": pareto}})
    assert "| +33.3% | better, p < 0.001 | met |" in md
    assert "- x: guided L=1: 1.2 GFLOPs, 25 ± 1 (the best searched point is +20.0% against it)" in md


def test_gemm_ceiling_counts_a_dit_s_blocks_flops_and_weighs_them_by_time():
    """The rows are one DiT-S/2 block at batch 8 (backward = 2 forwards, as dit_official counts), and the
    ceiling is the rows' FLOPs over their summed time, not a mean of their shares."""
    flops = {}
    for _, kind, shape, n in gemm_ceiling.shapes():
        flops.setdefault((shape[0], kind), 0)
        flops[(shape[0], kind)] += gemm_ceiling.runner(shape, torch.float32)[1] * n
    tokens, w = 8 * 256, 384
    linears, attention = 2 * tokens * (w * 3 * w + w * w + 2 * w * 4 * w), 2 * 2 * (8 * 6) * 256 * 256 * (w // 6)
    assert flops[("linear", "fwd")] == linears and flops[("linear", "bwd")] == 2 * linears
    assert flops[("attention", "fwd")] == attention and flops[("attention-grad", "fwd+bwd")] == 3 * attention
    assert flops[("bmm", "what-if")] == flops[("per-head", "what-if")] == attention
    rows = [{"op": "linear", "gflops": 9.0, "count": 1, "share": 1.0}, {"op": "attention", "gflops": 1.0, "count": 1, "share": 0.25}]
    assert abs(gemm_ceiling.ceiling(rows) - 10 / 13) < 1e-12  # 9 + 4 time units for 10 FLOP units
    assert abs(gemm_ceiling.ceiling(rows, attention_share=0.5) - 10 / 11) < 1e-12
