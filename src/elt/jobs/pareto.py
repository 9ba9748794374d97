"""Pareto search over sampling steps × loop schedules (× solvers) under a GFLOPs budget.

    python -m elt.jobs.pareto ckpt_path=<run>/checkpoints/last.ckpt budget.gflops=<max> [pareto.seeds=[0,1,2]]

Every candidate (steps, schedule) within the budget first gets a cheap proxy: the Fréchet distance
on ``pareto.proxy_per_class`` samples per class at the first seed. The proxy's Pareto front, the
``pareto.candidates`` best proxy points besides it, and the paper's fixed-L points (the same L at
every step, at the checkpoint's own step count) then get the real metric: ``eval.samples_per_class``
per class at every seed of ``pareto.seeds``, mean ± std. The front of those is written as
``front.{json,md}`` and ``front.png`` (quality against GFLOPs/sample, fixed-L points marked).
``pareto.solvers`` adds the diffusion solver's axes: a list of sampler overrides (kind, spacing,
cfg_scale, cfg_interval), each searched over every step count and schedule.
Every scored point is cached in ``points/`` under a hash of what determines it, so an interrupted
or widened search resumes (the same semantics as eval.py's ``loops/``).

``pareto.early_exit``: ``{tau: τ}`` samples every point with per-sample early exit, or
``{target: 0.05}`` first calibrates τ on held-out draws (``calibrate_tau``): scanning ``pareto.taus``
upwards, the last τ before the first whose Fréchet distance is more than 5% above τ=0's. GFLOPs are
then the measured ones.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from elt.core import flops, schedules
from elt.evaluation.plots import save_figure
from elt.evaluation.tables import grid_table
from elt.evaluation.sweep import LoopSweep, RowCache, balanced_labels, schedule_key
from elt.jobs.evaluate import load_for_evaluation
from elt.runtime.cli import launch, run_cli
from elt.runtime.config import ConfigError
from elt.runtime.distributed import Ranks
from elt.runtime.files import fingerprint, write_text_atomic
from elt.samplers.budget import CALIBRATION_SEED, resolve_schedule, run_lengths
from elt.samplers.diffusion import check_options

log = logging.getLogger(__name__)


def default_schedules(lmax: int) -> list:
    """Constant L (the paper), ramps both ways, two-level steps and change-allocated means."""
    specs: list = list(range(1, lmax + 1))
    for a in range(1, lmax + 1):
        for b in range(1, lmax + 1):
            if a != b and (a == lmax or b == lmax):
                specs += [f"linear:{a}-{b}", f"step:{a}-{b}"]
    specs += [f"change:{m:g}" for m in [1 + 0.5 * i for i in range(1, 2 * (lmax - 1))]]
    return specs


def default_steps(steps: int) -> list[int]:
    return sorted({max(1, steps // 2), max(1, (3 * steps) // 4), steps})


def non_dominated(points: list[dict], key: str) -> list[dict]:
    """Points no other point beats on both GFLOPs (lower) and ``key`` (lower), cheapest first."""
    front, best = [], math.inf
    for p in sorted(points, key=lambda p: (p["gflops"], p[key])):
        if p[key] < best:
            front.append(p)
            best = p[key]
    return front


def pick_metric(rows: dict, spec: str) -> str:
    if spec != "auto":
        if spec not in rows:
            raise ConfigError(f"pareto.metric={spec!r} is not a metric of this evaluation: {sorted(rows)}")
        return spec
    fds = [k for k in rows if k.startswith(("fid", "fvd")) and not k.endswith("_std")]
    if not fds:
        raise ConfigError(f"pareto.metric=auto found no Fréchet distance among {sorted(rows)}")
    return fds[0]


class Search:
    """Scores (steps, schedule[, early exit]) points through one LoopSweep, cached per point."""

    def __init__(self, sweep: LoopSweep, out_dir: Path):
        self.sweep, self.model = sweep, sweep.model
        self.cache = RowCache(Path(out_dir) / "points", fingerprint({**sweep.common, "pareto": 1}))
        self.ranks = Ranks()

    def point(self, steps: int, spec, solver: dict | None = None) -> dict:
        """One candidate; ``solver``: sampler overrides besides the steps (kind, spacing, cfg_scale,
        cfg_interval), the any-time search's and the loops x steps study's other axes."""
        solver = dict(solver or {})
        sampler = {**self.sweep.sampler, **solver, "steps": int(steps)}
        plan = resolve_schedule(self.model, spec, sampler)
        tag = "".join(f", {k}={v}" for k, v in solver.items())
        return {"steps": int(steps), "schedule": spec, "name": f"{steps} steps, {schedules.name(spec)}{tag}",
                "plan": list(plan), "gflops": flops.gflops_per_sample(self.model, plan, sampler),
                "network_evals": self.model.network_evals_per_sample(**sampler), "solver": solver,
                "mean_loops": sum(plan) / len(plan), "fixed_l": schedules.parse(spec)[0] == "constant"}

    def score(self, p: dict, seed: int, per_class: int, early_exit: dict | None = None) -> dict:
        """Metrics of one point at one seed and sample count (and its measured cost under early exit)."""
        solver = p.get("solver") or {}
        sampler = {**self.sweep.sampler, **solver, "steps": p["steps"]}
        ee = f"_ee{fingerprint(early_exit)[:8]}" if early_exit else ""
        sv = f"_{solver.get('kind', '')}{fingerprint(solver)[:8]}" if solver else ""  # no solver: the key is unchanged, so points already cached still match
        # the spec's name for the reader, the plan's hash for uniqueness (a 128-step plan is no file name)
        key = f"s{p['steps']}_{schedule_key(p['schedule'])}_{fingerprint(p['plan'])[:8]}{sv}_seed{seed}_n{per_class}{ee}"

        def compute():
            stats: list = []
            labels = balanced_labels(self.model.num_classes, per_class)
            metrics, seconds = self.sweep.sampled_scores(list(p["plan"]), key, f"pareto {p['name']} seed {seed}",
                                                         sampler=sampler, seed=seed, labels=labels,
                                                         early_exit=early_exit, stats=stats)
            loops = torch.cat([st["loops"] for st in stats])
            heads = torch.cat([st["heads"] for st in stats])
            return {**metrics, "seconds_per_sample": seconds / len(labels),
                    "block_applications": float(loops.sum(1).double().mean()) * self.model.N,
                    "gflops_measured": flops.measured_gflops_per_sample(self.model, loops, heads, sampler)}

        return self.cache.get_or_compute(key, compute, self.ranks)


def calibrate_tau(search: Search, p: dict, taus: list[float], target: float, metric: str, per_class: int,
                  rule: dict | None = None) -> tuple[float, list[dict]]:
    """τ from an increasing scan on held-out draws (CALIBRATION_SEED, never an evaluation seed):
    the last τ before the first whose Fréchet distance exceeds (1 + target) × that of τ = 0, so a
    noisy pass beyond a failing τ is never taken. ``rule``: the other early-exit settings
    (criterion, min_loops), used for every τ. -> (τ, the calibration table)."""
    base = search.score(p, CALIBRATION_SEED, per_class)[metric]
    table, best = [{"tau": 0.0, metric: base, "relative": 1.0}], 0.0
    for tau in sorted(t for t in taus if t > 0):
        got = search.score(p, CALIBRATION_SEED, per_class, {**(rule or {}), "tau": float(tau)})
        table.append({"tau": float(tau), metric: got[metric], "relative": got[metric] / base,
                      "block_applications": got["block_applications"]})
        if got[metric] > (1 + target) * base:
            break
        best = float(tau)
    return best, table


def _list(cfg, key, default):
    v = OmegaConf.select(cfg, key)
    if v is None:
        return default
    if not isinstance(v, (list, ListConfig)) or not len(v):
        raise ConfigError(f"{key} must be a non-empty list, got {v!r}")
    return [OmegaConf.to_container(x) if isinstance(x, ListConfig) else x for x in v]


def read_budget(cfg) -> float | None:
    b = OmegaConf.select(cfg, "budget.gflops")
    if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0):
        raise ConfigError(f"budget.gflops must be a number > 0 (GFLOPs per sample) or null, got {b!r}")
    return None if b is None else float(b)


def run_search(cfg: DictConfig) -> dict:
    ranks = Ranks.from_env()
    if ranks.world > 1:
        raise ConfigError("elt.jobs.pareto runs in one process; launch it without torchrun")
    budget = read_budget(cfg)
    model, train_cfg, s, sampler, device, prec, npz = load_for_evaluation(cfg, ranks)
    pc = cfg.pareto
    seeds = _list(cfg, "pareto.seeds", [0, 1, 2])
    steps_list = _list(cfg, "pareto.steps", default_steps(int(sampler["steps"])))
    specs = _list(cfg, "pareto.schedules", default_schedules(model.Lmax))
    for key, values in (("pareto.seeds", seeds), ("pareto.steps", steps_list)):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= (0 if key.endswith("seeds") else 1) for v in values):
            raise ConfigError(f"{key} must be a list of integers, got {values!r}")
    schedules.check_specs(specs, "pareto.schedules")
    for key in ("pareto.proxy_per_class", "pareto.candidates"):
        v = OmegaConf.select(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key.endswith("class") else 0):
            raise ConfigError(f"{key} must be an integer >= {1 if key.endswith('class') else 0}, got {v!r}")
    proxy_n, extra = int(pc.proxy_per_class), int(pc.candidates)
    taus = _list(cfg, "pareto.taus", [])
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0 for t in taus):
        raise ConfigError(f"pareto.taus must be a list of numbers >= 0, got {taus!r}")
    out = Path(cfg.eval.output_dir)
    sweep = LoopSweep(cfg, model, train_cfg, s, sampler, device, prec, ranks, npz)
    search = Search(sweep, out)

    solvers = [OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x
               for x in _list(cfg, "pareto.solvers", [None])]
    for solver in solvers:
        if solver is not None and not isinstance(solver, dict):
            raise ConfigError(f"pareto.solvers entries must be mappings like {{kind: dpmpp_2m, spacing: logsnr}}, got {solver!r}")
        try:
            model.sampler_config(**(solver or {}))
        except ValueError as e:
            raise ConfigError(f"pareto.solvers: {e}") from None
    grid, seen = [], set()
    for solver in solvers:
        for steps in steps_list:
            if solver is not None:
                try:
                    check_options({**sampler, **solver, "steps": steps})
                except ValueError as e:
                    raise ConfigError(f"pareto.solvers: {e}") from None
            for spec in specs:
                p = search.point(steps, spec, solver)
                ident = (json.dumps(solver, sort_keys=True), p["steps"], tuple(p["plan"]))
                if ident not in seen:  # e.g. linear:1-4 over 4 steps is [1,2,3,4]
                    seen.add(ident)
                    grid.append(p)
    paper = [search.point(int(sampler["steps"]), L) for L in range(1, model.Lmax + 1)]
    within = [p for p in grid if budget is None or p["gflops"] <= budget]
    if not within:
        cheapest = min(grid, key=lambda p: p["gflops"])
        raise ConfigError(f"budget.gflops={budget:g} is below the cheapest point: {cheapest['name']} "
                          f"({cheapest['gflops']:.4g} GFLOPs/sample)")
    ee = OmegaConf.to_container(pc.early_exit, resolve=True) if pc.get("early_exit") else None

    # 1. the cheap proxy on every point within the budget
    first = search.score(within[0], seeds[0], proxy_n)
    metric = pick_metric(first, str(pc.metric))
    for p in within:
        p["proxy"] = search.score(p, seeds[0], proxy_n)[metric]
    proxy_front = non_dominated(within, "proxy")
    chosen = {id(p): p for p in proxy_front}
    for p in sorted(within, key=lambda p: p["proxy"])[:extra]:
        chosen[id(p)] = p
    for p in paper:
        if budget is None or p["gflops"] <= budget:
            match = next((q for q in within if q["steps"] == p["steps"] and q["plan"] == p["plan"]), p)
            chosen[id(match)] = match
            match["paper"] = True

    # 2. early exit: τ fixed, or calibrated on the most expensive fixed-L point for a target loss
    calibration = None
    if ee is not None and "target" in ee:
        ref = max((p for p in paper if budget is None or p["gflops"] <= budget), key=lambda p: p["gflops"], default=within[0])
        rule = {k: v for k, v in ee.items() if k != "target"}  # criterion, min_loops: as the user gave them
        tau, table = calibrate_tau(search, ref, [float(t) for t in taus], float(ee["target"]), metric, proxy_n * 2, rule)
        calibration = {"point": ref["name"], "target": float(ee["target"]), "tau": tau, "table": table}
        ee = {**rule, "tau": tau}

    # 3. the real metric on the candidates, every seed
    scored = []
    for p in sorted(chosen.values(), key=lambda p: p["gflops"]):
        runs = [search.score(p, seed, s.samples_per_class, ee) for seed in seeds]
        vals = torch.tensor([r[metric] for r in runs], dtype=torch.float64)
        p.update(quality=float(vals.mean()), quality_std=float(vals.std()) if len(vals) > 1 else 0.0,
                 per_seed=vals.tolist(), seconds_per_sample=sum(r["seconds_per_sample"] for r in runs) / len(runs),
                 block_applications=sum(r["block_applications"] for r in runs) / len(runs),
                 paper=bool(p.get("paper")))
        if ee is not None:  # the measured cost, not the plan's ceiling
            p["gflops_plan"], p["gflops"] = p["gflops"], sum(r["gflops_measured"] for r in runs) / len(runs)
        scored.append(p)
    front = non_dominated(scored, "quality")
    for p in scored:
        p["on_front"] = any(p is q for q in front)
    result = {"ckpt_path": str(cfg.ckpt_path), "run": train_cfg.run_name, "metric": metric, "budget_gflops": budget,
              "seeds": seeds, "samples_per_class": s.samples_per_class, "proxy_per_class": proxy_n,
              "sampler": sampler, "early_exit": ee, "calibration": calibration,
              "front": front, "scored": scored, "proxy": within}
    return write_result(out / "front", result, front_table(result),
                        front_figure(result, f"{train_cfg.run_name}: {model.N}N×{model.Lmax}L"))


def write_result(stem: Path, result: dict, markdown: str, figure) -> dict:
    """A search's files beside each other, ``<stem>.json`` / ``.md`` / ``.png``; prints the table."""
    write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2, default=str))
    write_text_atomic(stem.with_suffix(".md"), markdown)
    save_figure(figure, stem.with_suffix(".png"))
    print(markdown)
    return result


def front_table(result: dict) -> str:
    m = result["metric"]
    lines = [f"**{result['run']}**: Pareto front of {m} (mean ± std over seeds {result['seeds']}, "
             f"{result['samples_per_class']} samples per class) against GFLOPs/sample"
             + (f" within {result['budget_gflops']:g}" if result["budget_gflops"] else "") + ".", ""]
    cells = [[str(p["steps"]), schedules.name(p["schedule"]) + "".join(f", {k}={v}" for k, v in (p.get("solver") or {}).items()),
              run_lengths(p["plan"]), f"{p['gflops']:.4g}",
              f"{p['quality']:.4g} ± {p['quality_std']:.2g}", f"{p['seconds_per_sample']:.3g}",
              "yes" if p["on_front"] else "", "yes" if p["paper"] else ""] for p in result["scored"]]
    table = grid_table(["steps", "schedule", "loops per step", "GFLOPs/sample", m, "s/sample", "front", "paper fixed-L"],
                       cells)
    return "\n".join(lines + [table]) + "\n"


def front_figure(result: dict, title: str, ax=None):
    """Quality against GFLOPs/sample: the scored points with error bars over seeds, the front as a
    line, the paper's fixed-L points as red crosses (proxy-only points are left out: their smaller
    sample count biases the Fréchet distance upward, so they do not share the axis)."""
    from matplotlib.figure import Figure

    fig = None
    if ax is None:
        fig = Figure(figsize=(5.2, 3.8))
        ax = fig.subplots()
    m = result["metric"]
    scored = result["scored"]
    ax.errorbar([p["gflops"] for p in scored], [p["quality"] for p in scored], yerr=[p["quality_std"] for p in scored],
                fmt="o", color="C0", ms=4, alpha=0.6, label="searched (mean ± std)")
    front = result["front"]
    ax.plot([p["gflops"] for p in front], [p["quality"] for p in front], "-", color="C0", label="Pareto front")
    paper = sorted((p for p in scored if p["paper"]), key=lambda p: p["gflops"])
    ax.plot([p["gflops"] for p in paper], [p["quality"] for p in paper], "x--", color="C3", ms=8,
            label="paper: fixed L, default steps" + (" (+ early exit)" if result.get("early_exit") else ""))
    for p in paper:
        ax.annotate(f"L={p['plan'][0]}", (p["gflops"], p["quality"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7, color="C3")
    ax.set_xlabel("GFLOPs per sample")
    ax.set_ylabel(m)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax


@hydra.main(version_base="1.3", config_path="../../../configs", config_name="pareto")
def main(cfg: DictConfig) -> None:
    run_cli(run_search, cfg)


if __name__ == "__main__":
    launch(main)
