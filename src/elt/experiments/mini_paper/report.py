"""The mini-paper's report: per family the loop-count table, the FD-vs-loops figure, the reference rows and
the claims with their verdicts, then the measured command times and the budget estimates."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from elt import repo_root
from elt.evaluation.tables import grid_table
from elt.experiments.mini_paper.arms import ARMS, FAMILIES, SAMPLES_PER_CLASS, mode_settings
from elt.experiments.mini_paper.walltime import budget_line, measured_times
from elt.experiments.mini_paper.claims import claims
from elt.experiments.mini_paper.plan import plan, run_dir
from elt.experiments.mini_paper.arms import ALPHA, EQUIVALENCE_MARGIN
from elt.experiments.mini_paper.stats import METRIC, fmt, fmt_ref, mean_std


def collect(runs: Path, families, seeds) -> dict:
    """{family: {arm: {L: [FD per seed]}}} plus the reference rows, from each run's results.json."""
    out = {}
    for fam in families:
        per_arm, refs, seen_ref_seeds = {}, {}, set()
        for arm in ARMS:
            by_loop: dict[int, list[float]] = {}
            for seed in seeds:
                path = run_dir(runs, fam, arm, seed) / "eval" / "results.json"
                if not path.is_file():
                    continue
                rows = json.loads(path.read_text())["rows"]
                for r in rows:
                    if r.get(METRIC) is None:
                        continue
                    if r.get("loops") is not None and r["row"] != "schedule":
                        by_loop.setdefault(int(r["loops"]), []).append(float(r[METRIC]))
                    elif r.get("loops") is None and seed not in seen_ref_seeds:  # the same in every arm
                        refs.setdefault(r["name"], []).append(float(r[METRIC]))
                seen_ref_seeds.add(seed)
            if by_loop:
                per_arm[arm] = by_loop
        out[fam] = {"arms": per_arm, "refs": refs}
    return out


def loops_table(arms: dict) -> str:
    loops = sorted({L for by in arms.values() for L in by})
    cells = []
    for arm, by in arms.items():
        row = [ARMS[arm].label, str(ARMS[arm].Lmax)]
        for L in loops:
            row.append(fmt((*mean_std(by[L]), len(by[L]))) if L in by else "")
        cells.append(row)
    return grid_table(["arm", "Lmax", *[f"L={L}" for L in loops]], cells)


def figure(arms: dict, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, by in arms.items():
        loops = sorted(by)
        ms = [mean_std(by[L]) for L in loops]
        ax.errorbar(loops, [m for m, _ in ms], yerr=[s or 0 for _, s in ms], marker="o", capsize=3, label=ARMS[arm].label)
        ax.axvline(ARMS[arm].Lmax, color=ax.lines[-1].get_color(), ls=":", lw=0.8)
    ax.set_xlabel("loops L at sampling (dotted: each arm's Lmax)")
    ax.set_ylabel(f"{METRIC} (lower is better)")
    ax.set_title(title)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stage_one_lines() -> list[str]:
    lines = []
    for f in FAMILIES.values():
        name, kind, weights = f.name, f.stage_one, f.weights
        p = repo_root() / "data" / "weights" / weights / "stage_one.json"
        if p.is_file():
            i = json.loads(p.read_text())
            extra = (f", {i['codes_used']}/{i['settings']['codes']} codes used" if kind == "vq"
                     else f", latent scaling {i['scaling_factor']:.3f}")
            lines.append(f"- {name} stage one ({kind}, {weights}): held-out MSE {i['val_mse']:.4f}, "
                         f"PSNR {i['val_psnr_db']:.2f} dB{extra} ({i['settings']['steps']} steps)")
    return lines


TRIVIAL_FRACTION = 0.8  # an arm whose best FD is above this share of the trivial row's learned little


def power_warning(arms: dict, refs: dict) -> list[str]:
    """A line when no arm clearly beats the trivial row (independent per-class token marginals): the
    models learned little at this budget, and the verdicts then rest on differences among weak models."""
    trivial = [v for k, v in refs.items() if "trivial" in k]
    if not trivial:
        return []
    t = mean_std(trivial[0])[0]
    best = min(mean_std(v)[0] for by in arms.values() for v in by.values())
    if best <= TRIVIAL_FRACTION * t:
        return []
    return [f"**Under-trained**: the best arm's FD ({best:.1f}) is above {TRIVIAL_FRACTION:.0%} of the trivial row's "
            f"({t:.1f}); at this budget the models learned little beyond per-class token statistics, so the "
            "verdicts below compare weak models.", ""]


def judge_line(cache_dir: Path) -> list[str]:
    """The cached judge's held-out accuracy, printed beside the FDs it produced."""
    path = cache_dir / "judges" / "fashion_mnist_cnn.pt"
    if not path.is_file():
        return []
    import torch

    info = torch.load(path, map_location="cpu", weights_only=False).get("info", {})
    if info.get("val_accuracy") is None:
        return []
    return [f"- judge {info['name']}: held-out accuracy {100 * info['val_accuracy']:.1f}% on {info['val_items']} "
            f"images (key {info['key']})"]


def report(runs: Path, out: Path, quick: bool, raw_root: str, img_dir: Path | None = None) -> Path:
    families, seeds = mode_settings(quick)
    data = collect(runs, families, seeds)
    full = plan(runs, quick=False, raw_root=raw_root)
    timings = measured_times(full)
    lines = [f"# Mini-paper: ELT's claims on Fashion-MNIST ({'MINI=quick: ' if quick else ''}"
             f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}, {', '.join(FAMILIES[f].name for f in families)})", "",
             f"Metric: `{METRIC}`, the Fréchet distance in the features of a small CNN trained on Fashion-MNIST's "
             f"training split (not Inception FID), {SAMPLES_PER_CLASS * 10} samples per loop count; mean ± std over "
             f"training seeds. Verdicts: a difference claim holds when Welch's two-sided t-test over the seeds gives "
             f"p < {ALPHA:g} in the claimed direction; an equivalence claim when two one-sided Welch tests (TOST) reject "
             f"a difference beyond ±{EQUIVALENCE_MARGIN:.0%} of the reference arm's mean at {ALPHA:g}; a claim made at "
             "several loop counts names those where it holds (Holm-corrected). One seed a side: untested.", "",
             *stage_one_lines(), *judge_line(repo_root() / "data" / "cache"), ""]
    for fam in families:
        arms, refs = data[fam]["arms"], data[fam]["refs"]
        name = FAMILIES[fam].name
        lines += [f"## {name}", ""]
        if not arms:
            lines += ["No finished evaluation yet.", ""]
            continue
        if refs:
            lines += ["Reference rows (the same data and eval seed in every arm; *reconstructed* is the stage-one "
                      "floor, real images through the tokenizer/autoencoder): "
                      + "; ".join(f"{k}: {fmt_ref(v)}" for k, v in refs.items()), ""]
        lines += [loops_table(arms), "", *power_warning(arms, refs)]
        img = figure(arms, f"{name} on Fashion-MNIST", out / f"mini_{'quick_' if quick else ''}{fam}_fd_vs_loops.png")
        if img_dir is not None:
            shutil.copyfile(img, Path(img_dir) / img.name)
        verdicts = [[c["claim"], c["paper"], c["ours"], c["test"], f"**{c['verdict']}**"] for c in claims(arms)]
        lines += [f"![{name}: FD vs loops]({img.name})", "",
                  grid_table(["claim", "paper's evidence", "ours", "test", "verdict"], verdicts), ""]
    if timings:
        lines += ["## Measured wall time (one thread per command)", "",
                  grid_table(["command", "seconds"], [[k, f"{v:.0f}"] for k, v in timings.items()]), ""]
        lines += [budget_line(timings, plan(runs, quick=True, raw_root=raw_root), "MINI=quick"), "",
                  budget_line(timings, full, "Full mini-paper"), ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
