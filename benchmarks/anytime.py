"""Any-time inference beyond the paper, measured on the project's four demo checkpoints.

For each checkpoint (digits and moving digits, MaskGIT-ELT and DiT-ELT, trained with the experiment
configs into outputs/anytime/ckpt/<name>):

1. the Pareto search (elt.jobs.pareto) over sampling steps × loop schedules within the GFLOPs of
   the paper's most expensive fixed-L point (L = Lmax at the config's steps), the real metric at 3
   sampling seeds; the paper's fixed-L points are scored on the same seeds;
2. per-sample early exit on the paper's L = Lmax point: τ calibrated on held-out draws for a 5%
   Fréchet-distance loss, then block applications, measured GFLOPs, wall time and Fréchet distance
   with and without it, on the same 3 seeds.

Every scored point is cached in outputs/anytime/pareto/<name>/points (a rerun only renders).
Writes benchmarks/results/anytime.{json,md} and docs/img/anytime_{fronts,early_exit}.png.

    OMP_NUM_THREADS=1 python benchmarks/anytime.py [--only digits_maskgit ...]
    OMP_NUM_THREADS=1 python benchmarks/anytime.py --only digits_dit --exit-only state_snr --out ee.json

``--exit-only`` with ``--out`` measures early exit alone (one criterion, ``--taus`` to widen its grid)
and writes its entry to that file, leaving benchmarks/results untouched.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from statistics import median
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("ELT_ROOT", str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402

from elt.core import flops  # noqa: E402
from elt.samplers.early_exit import EarlyExit  # noqa: E402
from elt.evaluation import judges  # noqa: E402
from elt.runtime.distributed import Ranks  # noqa: E402
from elt.evaluation.sweep import LoopSweep, balanced_labels  # noqa: E402
from elt.jobs.evaluate import load_for_evaluation  # noqa: E402
from elt.jobs.pareto import Search, calibrate_tau, front_figure, front_table, pick_metric, run_search  # noqa: E402
from elt.samplers.budget import CALIBRATION_SEED  # noqa: E402
from elt.evaluation.plots import save_figure  # noqa: E402
from elt.experiments.mini_paper.stats import compare, fmt_p  # noqa: E402
from elt.runtime.files import write_text_atomic  # noqa: E402
from elt.samplers.budget import run_lengths  # noqa: E402
from ilsd_overhead import machine, machine_lines  # noqa: E402  (same folder)

SEEDS = [0, 1, 2]
TARGET_LOSS = 0.05  # early exit: at most 5% Fréchet-distance cost on the calibration draws
WALL_PAIRS, WALL_PER_CLASS = 5, 2  # early exit's wall time: 5 interleaved off/on pairs of a 2-per-class batch
# videos cost 4-9x more per sample (the DiT ~2 s per video at L=4 on this CPU): fewer schedules
VIDEO_SCHEDULES = "[1,2,3,4,linear:4-1,linear:1-4,step:4-1,step:4-2,change:2,change:3]"
VIDEO_DIT_SCHEDULES = "[1,2,3,4,linear:1-4,step:1-4,step:2-4,change:2.5]"
# --solver-axes: the any-time search over the sampler's other axes too (pareto.solvers). DiT: the solver,
# its grid, and guidance inside a logSNR interval (EDM2's σ ∈ (0.28, 5.42] is λ ∈ [-3.4, 2.5]; scale 3, the
# paper's, beat 1.5 there and 3 everywhere on the Fashion-MNIST DiT-ELT: docs/dit.md#guidance-interval), with
# the few steps a second-order solver needs. MaskGIT: the guidance scale ({} = the checkpoint's).
SOLVER_AXES = {"dit": "[{kind:ddpm},{kind:dpmpp_2m,spacing:logsnr},"
                      "{kind:dpmpp_2m,spacing:logsnr,cfg_scale:3.0,cfg_interval:[-3.4,2.5]}]",
               "maskgit": "[{},{cfg_scale:1.5},{cfg_scale:3.0}]"}
SOLVER_STEPS = [16, 32]
# DiT's state criteria (no extra heads): the normed state's RMS change between loops is 0.06-0.31 on the
# digits demo checkpoint (x̂0's 0.003-0.09); state_snr multiplies it by the step's SNR gain (digits, 128 steps:
# 2e-4 at the first step, 5e3 at the last but one; moving digits' 64 steps gain about twice as much each)
STATE_TAUS = [0.05, 0.07, 0.1, 0.13, 0.16, 0.2]
STATE_SNR_TAUS = [0.006, 0.01, 0.013, 0.016, 0.02, 0.025]
# early-exit settings measured under a name of their own (the entries' "criterion"): state_snr from loop 1 on,
# with the later loops carried over from a full step every 4 (elt.samplers.early_exit.Carry). Its exits cost
# far less, so its τ reach higher (held-out draws, seeds 100-102, moving digits: refresh 2 and 3 saved 20-33%
# at +0.6-1.2%, 4 saved 41-46% at +0.7-0.8%; digits: refresh 3 29% at -0.4%, 4 40.5% at -1.6%)
EXIT_RULES = {"carry": {"criterion": "state_snr", "min_loops": 1, "refresh": 4}}
CARRY_TAUS = [0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5]
# steps searched (the config's K and around it; the budget drops what costs more than L = Lmax at K),
# samples per class for the real metric and the proxy, τ grid of the family's criterion
CHECKPOINTS = {
    "digits_maskgit": dict(steps=[8, 12, 16, 24, 32], per_class=20, proxy=5, candidates=4,
                           exits={"commit": [1e-6, 0.05, 0.1, 0.2, 0.34]}),
    "digits_dit": dict(steps=[64, 96, 128, 192], per_class=20, proxy=3, candidates=3,
                       exits={"rel": [0.01, 0.02, 0.03, 0.05, 0.08], "noise": [0.005, 0.01, 0.015, 0.02, 0.03, 0.05],
                              "state": STATE_TAUS, "state_snr": STATE_SNR_TAUS, "carry": CARRY_TAUS}),
    # videos cost 4-9x more per sample: fewer steps, schedules and samples on a 2-core CPU
    "moving_digits_maskgit": dict(steps=[12, 24, 36], per_class=8, proxy=2, candidates=2, schedules=VIDEO_SCHEDULES,
                                  exits={"commit": [1e-6, 0.1, 0.2, 0.34]}),
    "moving_digits_dit": dict(steps=[32, 64], per_class=6, proxy=2, candidates=1, schedules=VIDEO_DIT_SCHEDULES,
                              exits={"rel": [0.02, 0.03, 0.04, 0.05, 0.08], "noise": [0.005, 0.01, 0.015, 0.02, 0.03],
                                     "state": STATE_TAUS, "state_snr": [0.01, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05],
                                     "carry": CARRY_TAUS}),
}


CKPT_ROOT = ROOT / "outputs/anytime/ckpt"  # --ckpt-root


def checkpoint(name: str) -> Path:
    return CKPT_ROOT / name / "checkpoints/last.ckpt"


def config(name: str, spec: dict, budget: float | None, extra=()):
    ckpt = checkpoint(name)
    out = ROOT / "outputs/anytime/pareto" / name
    overrides = [f"ckpt_path={ckpt}", f"eval.output_dir={out}", f"hydra.run.dir={out}", "eval.precision=32",
                 "eval.progress=false", f"eval.samples_per_class={spec['per_class']}", f"pareto.proxy_per_class={spec['proxy']}",
                 "pareto.steps=[" + ",".join(map(str, spec["steps"])) + "]", "pareto.seeds=[" + ",".join(map(str, SEEDS)) + "]",
                 f"pareto.candidates={spec['candidates']}", *([f"pareto.schedules={spec['schedules']}"] if "schedules" in spec else []),
                 *([f"budget.gflops={budget}"] if budget else []),
                 *([f"pareto.solvers={spec['solvers']}"] if "solvers" in spec else []), *extra]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="pareto", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    return cfg


def paper_budget(name: str, spec: dict) -> float:
    from elt.runtime.checkpoint import load_run

    model, _ = load_run(checkpoint(name))
    sampler = model.sampler_config()
    return flops.gflops_per_sample(model, (model.Lmax,) * int(sampler["steps"]), sampler) * (1 + 1e-9)


def mean_std(values) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(t) > 1 else 0.0


def early_exit(name: str, spec: dict, metric: str | None, criterion: str, taus: list[float]) -> dict:
    """τ calibrated on held-out draws at the paper's L = Lmax point, then the 3 seeds with and without
    (``metric`` None: the point's Fréchet distance)."""
    cfg = config(name, spec, None)
    ranks = Ranks()
    model, train_cfg, s, sampler, device, prec, npz = load_for_evaluation(cfg, ranks)
    sweep = LoopSweep(cfg, model, train_cfg, s, sampler, device, prec, ranks, npz)
    search = Search(sweep, Path(cfg.eval.output_dir))
    p = search.point(int(sampler["steps"]), model.Lmax)
    metric = metric or pick_metric(search.score(p, CALIBRATION_SEED, spec["per_class"]), "auto")
    tau, table = calibrate_tau(search, p, taus, TARGET_LOSS, metric, spec["per_class"], exit_rule(model, criterion))
    runs = {"off": [search.score(p, seed, s.samples_per_class) for seed in SEEDS]}
    rule = {"tau": tau, **(exit_rule(model, criterion) or {})}
    runs["on"] = [search.score(p, seed, s.samples_per_class, rule) for seed in SEEDS] if tau > 0 else runs["off"]
    out = {"point": p["name"], "criterion": criterion, "metric": metric, "tau": tau, "target_loss": TARGET_LOSS, "calibration": table,
           "N": model.N, "judge": [judges.JUDGES[train_cfg.data.name].version],
           "wall": wall_pairs(model, sampler, device, rule, f"{name} {criterion}")}
    for k, rs in runs.items():
        out[k] = {key: mean_std([r[key] for r in rs]) for key in (metric, "block_applications", "gflops_measured",
                                                                 "seconds_per_sample")}
        out[k]["per_seed"] = [r[metric] for r in rs]
    on, off = out["on"], out["off"]
    out["block_saving"] = 1 - on["block_applications"][0] / off["block_applications"][0]
    out["gflops_saving"] = 1 - on["gflops_measured"][0] / off["gflops_measured"][0]
    out["wall_saving"] = 1 - on["seconds_per_sample"][0] / off["seconds_per_sample"][0]
    out["fd_cost"] = on[metric][0] / off[metric][0] - 1
    return out


def exit_rule(model, criterion: str) -> dict | None:
    """The early-exit settings besides τ: a named setting's (EXIT_RULES), else the criterion; the family's
    default criterion stays unnamed (its cache keys)."""
    if criterion in EXIT_RULES:
        return dict(EXIT_RULES[criterion])
    family = "maskgit" if "maskgit" in type(model).__name__.lower() else "dit"
    return None if criterion == EarlyExit.CRITERIA[family][0] else {"criterion": criterion}


def exit_label(e: dict) -> str:
    """An entry's early-exit setting as the tables name it: the criterion and any option beyond it."""
    rule = EXIT_RULES.get(e["criterion"])
    if rule is None:
        return e["criterion"]
    return rule["criterion"] + "".join(f", {k} {v}" for k, v in rule.items() if k != "criterion")


def wall_pairs(model, sampler: dict, device, rule: dict, label: str) -> dict | None:
    """Early exit's wall-time saving measured in interleaved pairs (off, on, off, on, ...) on one batch
    at the same point, so both sides of each ratio see the same machine load: the median pair ratio."""
    if not rule["tau"] > 0:
        return None  # calibration kept no early exit: on = off, nothing to time
    labels = balanced_labels(model.num_classes, WALL_PER_CLASS).to(device)

    def seconds(early_exit: dict | None) -> float:
        gen = torch.Generator(device=device).manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            model.sample(labels, loops=model.Lmax, generator=gen, progress=False,
                         **({"early_exit": early_exit} if early_exit else {}), **sampler)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    seconds(None), seconds(rule)  # warm-up: allocator and kernels
    pairs = [(seconds(None), seconds(rule)) for _ in range(WALL_PAIRS)]
    ratios = [on / off for off, on in pairs]
    print(f"{label}: early exit's wall-time ratio {median(ratios):.3f} (pairs {sorted(f'{r:.3f}' for r in ratios)})", flush=True)
    return {"samples": len(labels), "pairs_s": pairs, "ratio_median": median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "off_s_per_sample": median(off for off, _ in pairs) / len(labels),
            "on_s_per_sample": median(on for _, on in pairs) / len(labels)}


def remeasure_wall(name: str, spec: dict, entries: list[dict]) -> None:
    """``--wall-pairs``: the pairs of finished early-exit entries again, e.g. on a machine that is now idle."""
    model, _, _, sampler, device, _, _ = load_for_evaluation(config(name, spec, None), Ranks())
    for e in entries:
        rule = {"tau": e["tau"], **(exit_rule(model, e["criterion"]) or {})}
        e["wall"] = wall_pairs(model, sampler, device, rule, f"{name} {e['criterion']}")


def slim(result: dict) -> dict:
    """The search result without the proxy points' bulk (their full rows live in points/)."""
    keep = ("name", "steps", "gflops", "proxy")
    return {**result, "proxy": [{k: p[k] for k in keep if k in p} for p in result["proxy"]]}


def best_gain(result: dict) -> dict:
    """The best fixed-L point (paper protocol) and the best searched point at equal or lower GFLOPs."""
    paper = [p for p in result["scored"] if p["paper"]]
    best_fixed = min(paper, key=lambda p: p["quality"])
    rivals = [p for p in result["scored"] if not p["paper"] and p["gflops"] <= best_fixed["gflops"] * (1 + 1e-9)]
    best = min(rivals, key=lambda p: p["quality"], default=None)
    varying = min((p for p in rivals if len(set(p["plan"])) > 1), key=lambda p: p["quality"], default=None)
    gain = None if best is None else 1 - best["quality"] / best_fixed["quality"]
    # what the loops add beyond the sampler setting: the best fixed-L point scored with the winner's solver axes
    same = None if best is None else min((p for p in rivals if (p.get("solver") or {}) == (best.get("solver") or {})
                                          and len(set(p["plan"])) == 1), key=lambda p: p["quality"], default=None)
    return {"best_fixed": best_fixed, "best_schedule": best, "fd_gain": gain, "best_varying": varying,
            "fd_gain_varying": None if varying is None else 1 - varying["quality"] / best_fixed["quality"],
            "best_fixed_same_solver": same}


def welch_cell(a: dict, b: dict) -> str:
    """Is point ``a`` better than ``b`` over the sampling seeds (the mini-paper's rule: Welch, α = 0.05)?"""
    if "per_seed" not in a or "per_seed" not in b:
        return "–"
    c = compare(a["per_seed"], b["per_seed"])
    return f"{c['outcome']}, {fmt_p(c['p'])}"


def fmt(ms, digits=3) -> str:
    return f"{ms[0]:.{digits}g} ± {ms[1]:.2g}"


def render(results: dict) -> str:
    gains = {n: best_gain(r["pareto"]) for n, r in results.items() if "pareto" in r}  # today's rules, any result's age
    lines = ["# Any-time inference: loop schedules, Pareto search, early exit (`benchmarks/anytime.py`)", "",
             *machine_lines({n: r.get("machine") for n, r in results.items()}), "",
             f"CPU, fp32 sampling, {len(SEEDS)} sampling seeds {SEEDS} (mean ± std). Quality = the Fréchet distance in the "
             "feature space of the dataset's domain judge (`fid_digits_cnn`, `fvd_moving_digits_cnn`: not Inception "
             "FID/I3D FVD). GFLOPs/sample analytic (elt.core.flops), early exit: measured from the loops actually run. "
             f"Early exit's wall time: where measured, {WALL_PAIRS} interleaved off/on pairs on one batch ({WALL_PER_CLASS} per "
             "class) at the same point, so both sides of each ratio share the machine's load, and the saving is the median "
             "pair ratio's; rows marked *not paired* come from the scored runs, measured at different times. The fronts' "
             "s/sample come from a shared 2-core machine (indicative only).", ""]
    lines += ["Checkpoints (outputs/anytime/ckpt/<name>, `make anytime-ckpts`), training steps done / in the recipe: "
              + ", ".join(f"{n} {r['ckpt_step']['trained']}/{r['ckpt_step']['recipe']}" for n, r in results.items()
                          if "ckpt_step" in r) + ".", ""]
    lines += ["## Pareto search against the paper's fixed-L protocol", "",
              "| checkpoint | metric (judge recipe) | best fixed L (steps, L) | its GFLOPs | its FD | best searched at ≤ GFLOPs | GFLOPs | FD | FD gain | Welch over seeds | target ≥ 10% |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "pareto" not in r:
            continue
        g, m = gains[name], r["pareto"]["metric"]
        bf, bs = g["best_fixed"], g["best_schedule"]
        lines.append(f"| {name} | {m} ({r.get('judge', '?')}) | {bf['steps']}, L={bf['plan'][0]} | {bf['gflops']:.3g} | {bf['quality']:.3g} ± {bf['quality_std']:.2g} | "
                     + (f"{bs['name']} | {bs['gflops']:.3g} | {bs['quality']:.3g} ± {bs['quality_std']:.2g} | {100 * g['fd_gain']:+.1f}% | "
                        f"{welch_cell(bs, bf)} | {'met' if g['fd_gain'] >= 0.10 else 'missed'} |" if bs else "– | – | – | – | – | missed |"))
    lines += ["", "Best point whose loop count varies over the steps (a non-constant schedule) at ≤ the best fixed-L GFLOPs:", ""]
    for name, r in results.items():
        v = gains.get(name, {}).get("best_varying")
        if v:
            lines.append(f"- {name}: {v['name']} (loops {run_lengths(v['plan'])}): {v['gflops']:.3g} GFLOPs, {v['quality']:.3g} ± "
                         f"{v['quality_std']:.2g} ({100 * gains[name]['fd_gain_varying']:+.1f}% vs the best fixed L)")
    lines += ["", "The best searched point's sampler setting with a fixed loop count (what the loop schedule adds beyond "
              "the solver, grid and guidance; among the points scored with the real metric at ≤ the same GFLOPs):", ""]
    for name, r in results.items():
        g = gains.get(name, {})
        bs, same = g.get("best_schedule"), g.get("best_fixed_same_solver")
        if bs:
            if same is None:
                lines.append(f"- {name}: none of its fixed-L points was scored with the real metric")
            elif same["name"] == bs["name"]:
                lines.append(f"- {name}: the best searched point has a fixed loop count itself (its gain is its step count and sampler setting)")
            else:
                lines.append(f"- {name}: {same['name']}: {same['gflops']:.3g} GFLOPs, {same['quality']:.3g} ± {same['quality_std']:.2g} "
                             f"(the best searched point is {100 * (1 - bs['quality'] / same['quality']):+.1f}% against it)")
    lines += ["", "## Per-sample early exit at the paper's L = Lmax point", "",
              "| checkpoint | point | criterion, τ (calibrated: ≤ 5% FD on held-out draws) | block applications/sample off → on | saving | "
              "GFLOPs/sample off → on | wall s/sample off → on | FD off → on | FD cost | target ≥ 25% at ≤ 5% |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r, e in exit_runs(results):
        m = r["pareto"]["metric"]
        ok = e["block_saving"] >= 0.25 and e["fd_cost"] <= 0.05
        lines.append(f"| {name} ({', '.join(e.get('judge', []))}) | {e['point']} | {exit_label(e)} τ={e['tau']:g} | {fmt(e['off']['block_applications'], 4)} → "
                     f"{fmt(e['on']['block_applications'], 4)} | {100 * e['block_saving']:.1f}% | "
                     f"{fmt(e['off']['gflops_measured'])} → {fmt(e['on']['gflops_measured'])} | "
                     f"{wall_cell(e)} | {fmt(e['off'][m])} → {fmt(e['on'][m])} | {100 * e['fd_cost']:+.1f}% | "
                     f"{'met' if ok else 'missed'} |")
    for name, r in results.items():
        if "pareto" in r:
            lines += ["", f"### {name}", "", front_table(r["pareto"]).strip()]  # from the results: no local run needed
        for e in r.get("early_exit") or []:
            lines += ["", f"Early-exit calibration ({e['point']}, {exit_label(e)}, held-out draws, FD relative to τ=0): "
                      + ", ".join(f"τ={row['tau']:g}: {row['relative']:.3f}×" for row in e["calibration"])]
    return "\n".join(lines) + "\n"


def wall_cell(e: dict) -> str:
    """Early exit's wall time: from the interleaved pairs where measured, else from the scored runs."""
    w = e.get("wall")
    if w:
        off, on, saving = f"{w['off_s_per_sample']:.2g}", f"{w['on_s_per_sample']:.2g}", 1 - w["ratio_median"]
        note = f"pair ratios {w['ratio_range'][0]:.2f}–{w['ratio_range'][1]:.2f}"
    else:
        off, on, saving = fmt(e["off"]["seconds_per_sample"], 2), fmt(e["on"]["seconds_per_sample"], 2), e["wall_saving"]
        note = "not paired"
    return f"{off} → {on} ({100 * abs(saving):.0f}% {'less' if saving >= 0 else 'more'}; {note})"


def exit_runs(results: dict):
    for name, r in results.items():
        for e in r.get("early_exit") or []:
            yield name, r, e


def figures(results: dict) -> None:
    from matplotlib.figure import Figure

    names = [n for n in results if "pareto" in results[n]]
    if names:
        fig = Figure(figsize=(5.0 * len(names), 3.9))
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, n in zip(axes, names):
            front_figure(results[n]["pareto"], n, ax=ax)
        fig.tight_layout()
        save_figure(fig, ROOT / "docs/img/anytime_fronts.png")
    runs = list(exit_runs(results))
    if runs:
        fig = Figure(figsize=(8.4, 3.8))
        ax = fig.subplots()
        for i, (n, _, e) in enumerate(runs):
            for row in e["calibration"][1:]:
                if "block_applications" in row:
                    saving = 1 - row["block_applications"] / (e["off"]["block_applications"][0])
                    ax.scatter(100 * saving, 100 * (row["relative"] - 1), color=f"C{i}", alpha=0.35, s=14)
            per_seed = torch.tensor(e["on"]["per_seed"]) / torch.tensor(e["off"]["per_seed"]) - 1
            ax.errorbar(100 * e["block_saving"], 100 * e["fd_cost"], yerr=100 * float(per_seed.std()), fmt="o",
                        color=f"C{i}", ms=7, capsize=3, label=f"{n}, {exit_label(e)} τ={e['tau']:g}")
        ax.set_xlim(0, 100)
        ax.axvline(25, color="grey", ls=":", lw=1)
        ax.axhline(5, color="grey", ls=":", lw=1)
        ax.set_xlabel("block applications saved (%)")
        ax.set_ylabel("Fréchet-distance cost (%)")
        ax.set_title("early exit: saving vs quality cost (error bar: std over seeds; faint: calibration τ grid)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the points, not over them
        fig.tight_layout()
        save_figure(fig, ROOT / "docs/img/anytime_early_exit.png")


def exit_taus(spec: dict, args) -> list[float]:
    if args.taus:
        return [float(t) for t in args.taus.split(",")]
    if args.exit_only not in spec["exits"]:
        raise SystemExit(f"--exit-only {args.exit_only}: no τ grid for it here ({', '.join(spec['exits'])}); give --taus")
    return spec["exits"][args.exit_only]


def exit_only(args) -> None:
    """``--exit-only CRITERION --out FILE``: early exit alone on --only's checkpoints, into FILE (merged)."""
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for name in args.only or []:
        if name not in CHECKPOINTS or not checkpoint(name).is_file():
            raise SystemExit(f"--only {name}: no checkpoint at {checkpoint(name)} (one of {', '.join(CHECKPOINTS)})")
        e = early_exit(name, CHECKPOINTS[name], None, args.exit_only, exit_taus(CHECKPOINTS[name], args))
        results.setdefault(name, {})[args.exit_only] = e
        write_text_atomic(out, json.dumps(results, indent=2, default=str))
        print(f"{name} {args.exit_only} τ={e['tau']:g}: blocks {e['off']['block_applications'][0]:.1f} -> "
              f"{e['on']['block_applications'][0]:.1f} ({100 * e['block_saving']:.1f}% saved), {e['metric']} "
              f"{fmt(e['off'][e['metric']])} -> {fmt(e['on'][e['metric']])} ({100 * e['fd_cost']:+.1f}%), wall ratio "
              + (f"{e['wall']['ratio_median']:.3f}" if e["wall"] else "-"), flush=True)


def main() -> None:
    global CKPT_ROOT, WALL_PAIRS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="checkpoint names (default: all that exist)")
    ap.add_argument("--no-early-exit", action="store_true")
    ap.add_argument("--render", action="store_true", help="only re-render the tables and figures from anytime.json")
    ap.add_argument("--exit-only", default=None, help="only (re)measure early exit with this criterion or named setting (EXIT_RULES), added to --only's entries")
    ap.add_argument("--taus", default=None, help="with --exit-only: its τ grid, comma-separated (default: the checkpoint's)")
    ap.add_argument("--out", default=None, help="with --exit-only: write its entries to this JSON file, not to benchmarks/results")
    ap.add_argument("--ckpt-root", default=None, help="where the checkpoints are (default: outputs/anytime/ckpt)")
    ap.add_argument("--pairs", type=int, default=WALL_PAIRS, help=f"early exit's interleaved wall-time pairs (default {WALL_PAIRS})")
    ap.add_argument("--wall-pairs", action="store_true", help="only (re)measure early exit's wall time (interleaved pairs)")
    ap.add_argument("--solver-axes", action="store_true",
                    help="search the sampler's other axes too (SOLVER_AXES; DiT: ddpm, dpmpp_2m on the logSNR grid "
                         "and it with guidance in an interval, SOLVER_STEPS added to the steps; MaskGIT: the "
                         "guidance scale)")
    args = ap.parse_args()
    if (args.taus or args.out) and not args.exit_only:
        ap.error("--taus and --out need --exit-only")
    if args.out and not args.only:
        ap.error("--out measures the checkpoints named by --only: name at least one")
    WALL_PAIRS = args.pairs
    if args.ckpt_root:
        CKPT_ROOT = Path(args.ckpt_root).resolve()
    if args.out:
        return exit_only(args)
    if args.solver_axes:
        for name, spec in CHECKPOINTS.items():
            family = name.rsplit("_", 1)[1]
            if family == "dit":
                spec["steps"] = sorted(set(spec["steps"]) | set(SOLVER_STEPS))
            if family in SOLVER_AXES:
                spec["solvers"] = SOLVER_AXES[family]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path = ROOT / "benchmarks/results/anytime.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name, spec in CHECKPOINTS.items():
        if args.render or (args.only is not None and name not in args.only):
            continue
        if not checkpoint(name).is_file():
            print(f"skip {name}: no checkpoint (train it: python train.py experiment={name} "
                  f"hydra.run.dir=outputs/anytime/ckpt/{name})")
            continue
        r = results.setdefault(name, {})
        ckpt = torch.load(checkpoint(name), map_location="cpu", weights_only=False)
        r["ckpt_step"] = {"trained": int(ckpt["global_step"]), "recipe": int(ckpt["elt_config"]["trainer"]["max_steps"])}
        r["machine"] = machine()  # of this entry's latest measurement
        if args.wall_pairs:
            remeasure_wall(name, spec, r.get("early_exit") or [])
        elif args.exit_only:
            done = [e for e in r.get("early_exit") or [] if e["criterion"] != args.exit_only]
            r["early_exit"] = done + [early_exit(name, spec, r["pareto"]["metric"], args.exit_only, exit_taus(spec, args))]
        else:
            r["pareto"] = slim(run_search(config(name, spec, paper_budget(name, spec))))
            r["judge"] = judges.JUDGES[name.rsplit("_", 1)[0]].version  # the recipe the search was scored with
            r["gain"] = best_gain(r["pareto"])
        if not args.no_early_exit and not args.exit_only and not args.wall_pairs:
            r["early_exit"] = [early_exit(name, spec, r["pareto"]["metric"], crit, taus) for crit, taus in spec["exits"].items()]
        latest = json.loads(path.read_text()) if path.is_file() else {}  # another --only run may have written
        results = {**latest, name: r}
        write_text_atomic(path, json.dumps(results, indent=2, default=str))
    write_text_atomic(ROOT / "benchmarks/results/anytime.md", render(results))
    figures(results)
    print(render(results))


if __name__ == "__main__":
    main()
