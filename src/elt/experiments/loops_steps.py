"""python -m elt.experiments.loops_steps: at matched compute, more loops or more sampling steps?

    python -m elt.experiments.loops_steps ckpt_path=<run>/checkpoints/last.ckpt \
        study.kinds=[ddim,dpmpp_2m] study.steps=[8,16,32] study.loops=[1,2,4]

Samples a grid of solver (``sampler.kind``, spacing), step count, loop count (or loop schedule) and
guidance setting (scale and interval) at every seed of ``study.seeds``, scores each point with the
evaluation's Fréchet distance (mean ± std over seeds), and records its analytic GFLOPs per sample,
network evaluations and measured seconds per sample. Every (point, seed) is cached under
``${eval.output_dir}/points/`` (``elt.jobs.pareto.Search``), so an interrupted or widened grid resumes.

The verdict compares, within one solver setting, every pair of points whose GFLOPs agree within
``study.match`` (relative) and that trade loops against steps (more loops and fewer steps against
fewer loops and more steps), by the mini-paper's rule (``elt.experiments.mini_paper.stats.compare``:
Welch's two-sided t-test over the sampling seeds at the stated alpha; p is reported). Writes ``study.{json,md,png}``:
the table, the iso-compute figure (FD against GFLOPs, one curve per L and one per step count) and
the verdict.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from elt.core import schedules
from elt.evaluation.sweep import LoopSweep
from elt.evaluation.tables import grid_table
from elt.experiments.mini_paper.arms import ALPHA
from elt.experiments.mini_paper.stats import compare, fmt, fmt_p, mean_std
from elt.jobs.evaluate import load_for_evaluation
from elt.jobs.pareto import Search, pick_metric, write_result
from elt.runtime.cli import launch, run_cli
from elt.runtime.config import ConfigError
from elt.runtime.distributed import Ranks
from elt.samplers.diffusion import check_options

log = logging.getLogger(__name__)


def _list(cfg, key: str) -> list:
    v = OmegaConf.select(cfg, key)
    if not OmegaConf.is_list(v) or not len(v):
        raise ConfigError(f"{key} must be a non-empty list, got {v!r}")
    return OmegaConf.to_container(v, resolve=True)


def guidance_settings(study) -> list[dict]:
    """study.guidance: [{cfg_scale: s, cfg_interval: [lo, hi] | null}, ...]; empty = the checkpoint's."""
    out = []
    for g in _list(study, "guidance") if OmegaConf.select(study, "guidance") else [{}]:
        if not isinstance(g, dict) or set(g) - {"cfg_scale", "cfg_interval"}:
            raise ConfigError(f"study.guidance entries must be mappings of cfg_scale / cfg_interval, got {g!r}")
        out.append(g)
    return out


def grid(search: Search, study, lmax: int) -> list[dict]:
    """Every point of the grid, checked (solver options, loop schedules) before any sampling."""
    diffusion = OmegaConf.select(study, "kinds") is not None  # null: a model without solvers (MaskGIT-ELT)
    kinds = _list(study, "kinds") if diffusion else [None]
    spacings = _list(study, "spacings") if diffusion else [None]
    steps_list = _list(study, "steps")
    loops = _list(study, "loops")
    schedules.check_specs(loops, "study.loops")
    for L in loops:
        if isinstance(L, int) and not 1 <= L <= lmax:
            raise ConfigError(f"study.loops: {L} is outside this checkpoint's 1..{lmax}")
    points = []
    for kind in kinds:
        for spacing in spacings:
            for g in guidance_settings(study):
                solver = {**({"kind": kind, "spacing": spacing} if diffusion else {}), **g}
                try:
                    search.model.sampler_config(**solver)
                except ValueError as e:
                    raise ConfigError(f"study: {e} (study.kinds=null for a model without solvers)") from None
                for steps in steps_list:
                    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
                        raise ConfigError(f"study.steps must be integers >= 1, got {steps!r}")
                    try:
                        if diffusion:
                            check_options({**search.sweep.sampler, **solver, "steps": steps})
                    except ValueError as e:
                        raise ConfigError(str(e).replace("model.sampler.", "study: ")) from None
                    for L in loops:
                        points.append(search.point(int(steps), L, solver))
    return points


def setting(p: dict) -> str:
    """The solver setting a point belongs to: everything but the steps and loops."""
    s = p["solver"]
    g = "" if "cfg_scale" not in s else f", cfg {s['cfg_scale']:g}"
    g += "" if s.get("cfg_interval") is None else f" in λ∈[{s['cfg_interval'][0]:g}, {s['cfg_interval'][1]:g}]"
    return (f"{s['kind']}, {s['spacing']} grid" if "kind" in s else "the model's sampler") + g


def loops_of(p: dict) -> float:
    return p["mean_loops"]


def matched_pairs(points: list[dict], match: float) -> list[tuple[dict, dict]]:
    """(more loops & fewer steps, fewer loops & more steps) pairs of one setting within ``match`` GFLOPs."""
    pairs = []
    for a in points:
        for b in points:
            if (setting(a) == setting(b) and loops_of(a) > loops_of(b) and a["steps"] < b["steps"]
                    and abs(a["gflops"] - b["gflops"]) <= match * max(a["gflops"], b["gflops"])):
                pairs.append((a, b))
    return pairs


def answer(wins: dict, n: int) -> str:
    if not n:
        return "no matched pairs in this grid"
    if wins.get("untested", 0) == n:
        return "untested (one seed: no spread to test against)"
    if wins["loops"] != wins["steps"]:
        return "more loops" if wins["loops"] > wins["steps"] else "more steps"
    return "no difference" if not wins["loops"] else "split"


def verdict(points: list[dict], match: float) -> dict:
    """Counts of the matched-compute comparisons won by more loops, by more steps, and ties, over
    the grid and per solver setting; the answer is the side that wins more of them (``no
    difference`` when none counts)."""
    rows, wins, per = [], {"loops": 0, "steps": 0, "tie": 0}, {}
    for a, b in matched_pairs(points, match):
        c = compare(a["per_seed"], b["per_seed"])
        side = {"better": "loops", "worse": "steps", "untested": "untested"}.get(c["outcome"], "tie")
        wins[side] = wins.get(side, 0) + 1
        w = per.setdefault(setting(a), {"loops": 0, "steps": 0, "tie": 0})
        w[side] = w.get(side, 0) + 1
        rows.append({"setting": setting(a), "loops": a["name"], "steps": b["name"], "gflops": (a["gflops"], b["gflops"]),
                     "fd_loops": c["a"], "fd_steps": c["b"], "p": c["p"], "winner": side})
    by_setting = {k: {"answer": answer(w, sum(w.values())), "wins": w} for k, w in per.items()}
    return {"answer": answer(wins, len(rows)), "wins": wins, "by_setting": by_setting, "pairs": rows, "match": match}


def score_points(search: Search, points: list[dict], seeds: list[int], per_class: int, metric: str = "auto") -> str:
    """Every point at every seed (cached): ``per_seed``, ``quality`` ± ``quality_std`` and measured
    ``seconds_per_sample`` added to each point. -> the metric's name."""
    for p in points:
        runs = [search.score(p, seed, per_class) for seed in seeds]
        metric = pick_metric(runs[0], metric) if metric == "auto" else metric
        p["per_seed"] = [r[metric] for r in runs]
        p["quality"], p["quality_std"] = mean_std(p["per_seed"])
        p["seconds_per_sample"] = sum(r["seconds_per_sample"] for r in runs) / len(runs)
    return metric


def run_study(cfg: DictConfig) -> dict:
    ranks = Ranks.from_env()
    if ranks.world > 1:
        raise ConfigError("elt.experiments.loops_steps runs in one process; launch it without torchrun")
    study = cfg.study
    seeds = _list(study, "seeds")
    match = study.match
    if isinstance(match, bool) or not isinstance(match, (int, float)) or not 0 < match < 1:
        raise ConfigError(f"study.match must be a number in (0, 1), got {match!r}")
    model, train_cfg, s, sampler, device, prec, npz = load_for_evaluation(cfg, ranks)
    out = Path(cfg.eval.output_dir)
    search = Search(LoopSweep(cfg, model, train_cfg, s, sampler, device, prec, ranks, npz), out)
    points = grid(search, study, model.Lmax)
    log.info("loops x steps: %d points x %d seeds", len(points), len(seeds))
    metric = score_points(search, points, seeds, s.samples_per_class, str(study.metric))
    result = {"ckpt_path": str(cfg.ckpt_path), "run": train_cfg.run_name, "metric": metric, "seeds": seeds,
              "samples_per_class": s.samples_per_class, "sampler": sampler, "points": points,
              "verdict": verdict(points, float(match))}
    return write_result(out / "study", result, study_markdown(result),
                        iso_figure(result, f"{train_cfg.run_name}: {model.N}N×{model.Lmax}L"))


def study_markdown(result: dict) -> str:
    m, v = result["metric"], result["verdict"]
    lines = [f"**{result['run']}**: {m} (mean ± std over seeds {result['seeds']}, {result['samples_per_class']} "
             f"samples per class) against GFLOPs/sample.", ""]
    cells = [[setting(p), str(p["steps"]), schedules.name(p["schedule"]), str(p["network_evals"]), f"{p['gflops']:.4g}",
              fmt((p["quality"], p["quality_std"], len(p["per_seed"]))), f"{p['seconds_per_sample']:.3g}"]
             for p in sorted(result["points"], key=lambda p: (setting(p), p["gflops"]))]
    lines += [grid_table(["solver", "steps", "loops", "network evals", "GFLOPs/sample", m, "s/sample"], cells), ""]
    lines += [f"**At matched compute (GFLOPs within {v['match']:.0%}), more loops or more steps? {v['answer']}** "
              f"(comparisons won by more loops: {v['wins']['loops']}, by more steps: {v['wins']['steps']}, "
              f"no difference by Welch's t-test at alpha {ALPHA}: {v['wins']['tie']}).", ""]
    if len(v.get("by_setting", {})) > 1:
        lines += [grid_table(["solver", "answer", "won by more loops", "won by more steps", "no difference"],
                             [[k, b["answer"], str(b["wins"]["loops"]), str(b["wins"]["steps"]), str(b["wins"]["tie"])]
                              for k, b in v["by_setting"].items()]), ""]
    if v["pairs"]:
        cells = [[r["setting"], r["loops"], r["steps"], f"{r['gflops'][0]:.3g} / {r['gflops'][1]:.3g}",
                  fmt(r["fd_loops"]), fmt(r["fd_steps"]), fmt_p(r["p"]), r["winner"]] for r in v["pairs"]]
        lines.append(grid_table(["solver", "more loops", "more steps", "GFLOPs", f"{m} (loops)", f"{m} (steps)",
                                 "Welch p", "winner"], cells))
    return "\n".join(lines) + "\n"


def iso_figure(result: dict, title: str):
    """FD against GFLOPs per solver setting: left one curve per loop count (steps vary along it),
    right one curve per step count (loops vary along it); error bars are the seeds' std."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    settings = sorted({setting(p) for p in result["points"]})
    fig = Figure(figsize=(9.5, 3.2 * len(settings)))
    axes = fig.subplots(len(settings), 2, squeeze=False)
    for row, name in zip(axes, settings):
        pts = [p for p in result["points"] if setting(p) == name]
        for ax, by, label in ((row[0], lambda p: schedules.name(p["schedule"]), "L {}"),
                              (row[1], lambda p: p["steps"], "{} steps")):
            for i, key in enumerate(sorted({by(p) for p in pts}, key=lambda k: (str(type(k)), k))):
                curve = sorted((p for p in pts if by(p) == key), key=lambda p: p["gflops"])
                ax.errorbar([p["gflops"] for p in curve], [p["quality"] for p in curve],
                            yerr=[p["quality_std"] or 0.0 for p in curve], fmt="o-", ms=3, color=f"C{i}",
                            label=label.format(key))
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow decade labels its minor ticks otherwise
            ax.set_xlabel("GFLOPs per sample")
            ax.set_ylabel(result["metric"])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        row[0].set_title(f"{name}: one curve per loop count", fontsize=8)
        row[1].set_title(f"{name}: one curve per step count", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@hydra.main(version_base="1.3", config_path="../../../configs", config_name="loops_steps")
def main(cfg: DictConfig) -> None:
    run_cli(run_study, cfg)


if __name__ == "__main__":
    launch(main)
