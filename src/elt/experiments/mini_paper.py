"""The mini-paper: the paper's claims tested with seeds on Fashion-MNIST, through the real two-stage
pipeline (stage-one VQModel / AutoencoderKL → prepare.py shards → train.py → eval.py), on a CPU.

    python -m elt.experiments.mini_paper plan  [--quick]          the commands and the arms, nothing run
    python -m elt.experiments.mini_paper run   [--quick] [--jobs 2] train and evaluate what is missing, then report
    python -m elt.experiments.mini_paper report                    outputs/mini_paper/report.md from the finished evals

Every arm of a family is the same experiment config (configs/experiment/mini/fashion_<family>.yaml)
with a few overrides (``ARMS``): the same data, steps, batch and optimizer. Each (family, arm, seed)
has its own run directory; a rerun skips what is done (a ``.done`` marker per finished command, and
train.py's ``ckpt_path=last`` / eval.py's row cache inside an interrupted one). Commands run in
parallel, ``--jobs`` at a time, one thread each.

Verdicts are computed from the numbers (``compare``): two arms differ when their mean FDs differ by
more than ``K_SE`` standard errors of the difference (per-seed spread); with one seed there is no
spread and the margin is ``REL_MARGIN`` of the mean, and the report marks the verdict provisional.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from elt import repo_root

METRIC = "fid_fashion_mnist_cnn"  # Fréchet distance in the Fashion-MNIST judge's features (not Inception FID)
K_SE = 2.0        # a difference counts when |mean_a - mean_b| > K_SE * sqrt(s_a²/n_a + s_b²/n_b)
REL_MARGIN = 0.05  # one seed: a difference counts when it exceeds 5% of the two means' average
RAW_ROOT = "/usr/share/datasets/fashion-mnist"
N, LMAX = 2, 4  # the ELT arms: 2 unique layers looped 4 times
ARMS = {  # name -> (label, train.py overrides); equal compute per sample at the trained depth (8 layer applications)
    "ilsd": ("ELT 2N×4L, ILSD", [f"N={N}", f"Lmax={LMAX}", "ilsd=on"]),
    "vanilla": ("ELT 2N×4L, vanilla looped", [f"N={N}", f"Lmax={LMAX}", "ilsd=off"]),
    "baseline": ("8N×1L, not looped", [f"N={N * LMAX}", "Lmax=1"]),
    "capacity": ("ELT 1N×8L, ILSD", ["N=1", f"Lmax={N * LMAX}", "ilsd=on"]),
}
ARM_LMAX = {"ilsd": LMAX, "vanilla": LMAX, "baseline": 1, "capacity": N * LMAX}
FAMILIES = {"maskgit": ("MaskGIT-ELT", "vq", "fashion_mnist_vq"), "dit": ("DiT-ELT", "kl", "fashion_mnist_kl")}
EXTRA_LOOPS = 2
# eval.py's loop counts per arm: the ELT arms at 1..Lmax+2 (any-time and extrapolation claims); the baseline at
# its one depth; the 1N arm at a spread up to its Lmax (its claim reads L=8; all of 1..10 would cost 2.6x)
ARM_EVAL_LOOPS = {"ilsd": ("all", EXTRA_LOOPS), "vanilla": ("all", EXTRA_LOOPS), "baseline": ("[1]", 0),
                  "capacity": (f"[1,2,4,6,{N * LMAX}]", 0)}
SEEDS_FULL, SEEDS_QUICK = (0, 1, 2), (0,)
SAMPLES_PER_CLASS = 50


@dataclass
class Task:
    name: str
    cmd: list[str]
    done: Path  # the marker written when the command succeeded
    deps: list[str] = field(default_factory=list)


def mode_settings(quick: bool) -> tuple[list[str], tuple[int, ...]]:
    return (["maskgit"], SEEDS_QUICK) if quick else (list(FAMILIES), SEEDS_FULL)


def run_dir(runs: Path, family: str, arm: str, seed: int) -> Path:
    return runs / family / arm / f"seed{seed}"


def plan(runs: Path, quick: bool, raw_root: str = RAW_ROOT, samples_per_class: int = SAMPLES_PER_CLASS) -> list[Task]:
    """Every command of the mini-paper, with what each waits for, in the order ``run_tasks`` starts
    them when several are ready: stage one and the judge first, then every training, then the
    evaluations (an evaluation started before the last training would leave that training, the
    longest command, to run alone at the end)."""
    root, py = repo_root(), sys.executable
    families, seeds = mode_settings(quick)
    first, prepares, trains, evals = [], [], [], []
    for fam in families:
        _, kind, weights = FAMILIES[fam]
        exp = f"experiment=mini/fashion_{fam}"
        first.append(Task(f"stage_one_{kind}", [py, "-m", "elt.experiments.stage_one", kind, "--raw-root", raw_root,
                                                "--out", str(root / "data" / "weights" / weights)],
                          runs / "markers" / f"stage_one_{kind}.done"))
        prepares.append(Task(f"prepare_{fam}", [py, str(root / "prepare.py"), exp, f"data.raw_root={raw_root}",
                                                f"hydra.run.dir={runs / fam / 'prepare'}", "prepare.num_workers=0",
                                                "prepare.batch_size=500"],
                             runs / "markers" / f"prepare_{fam}.done", [f"stage_one_{kind}"]))
        for arm, (_, arm_overrides) in ARMS.items():
            loops, extra = ARM_EVAL_LOOPS[arm]
            for seed in seeds:
                d = run_dir(runs, fam, arm, seed)
                trains.append(Task(f"train_{fam}_{arm}_s{seed}", [
                    py, str(root / "train.py"), exp, *arm_overrides, f"seed={seed}", f"data.raw_root={raw_root}",
                    f"hydra.run.dir={d}", "ckpt_path=last"], d / ".train.done", [f"prepare_{fam}"]))
                evals.append(Task(f"eval_{fam}_{arm}_s{seed}", [
                    py, str(root / "eval.py"), f"ckpt_path={d / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={d / 'eval'}",
                    f"eval.loops={loops}", f"eval.extra_loops={extra}", "eval.precision=32", "eval.reconstruction_row=true",
                    f"eval.samples_per_class={samples_per_class}", f"data.raw_root={raw_root}", "eval.progress=false",
                    "eval.grid_per_class=4"], d / ".eval.done", [f"train_{fam}_{arm}_s{seed}", "judge"]))
    # the judge and its reference statistics (shared by both families: the same images), cached once
    # while stage one trains, so that no evaluation trains it and the evaluations can run side by side
    judge = Task("judge", [py, "-m", "elt.jobs.warm", f"experiment=mini/fashion_{families[0]}",
                           f"data.raw_root={raw_root}"], runs / "markers" / "judge.done")
    return [*first, judge, *prepares, *trains, *evals]


def startable(todo: dict[str, Task], finished: set[str], free: int) -> list[Task]:
    """The scheduling rule (shared by ``run_tasks`` and ``simulated_wall``): the first ``free`` tasks,
    in plan order, whose dependencies have all finished."""
    return [t for t in todo.values() if all(d in finished for d in t.deps)][:max(0, free)]


def run_tasks(tasks: list[Task], jobs: int, log_dir: Path) -> None:
    """Runs what is not done, at most ``jobs`` at a time, each after its dependencies. A failed
    command stops only what needs it: the others go on, so a late failure costs no finished work.
    Each ``.done`` marker holds its command's wall seconds."""
    env = {**os.environ, "ELT_ROOT": str(repo_root()), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log_dir.mkdir(parents=True, exist_ok=True)
    todo = {t.name: t for t in tasks if not t.done.is_file()}
    finished = {t.name for t in tasks if t.done.is_file()}
    failed: list[str] = []

    def launch(t: Task) -> tuple[Task, int, float]:
        start = time.time()
        with open(log_dir / f"{t.name}.log", "w") as log:
            rc = subprocess.run(t.cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        return t, rc, time.time() - start

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        running = {}
        while todo or running:
            for t in startable(todo, finished, jobs - len(running)):
                print(f"+ [{len(finished) + len(failed) + len(running) + 1}/{len(tasks)}] {t.name}: {' '.join(t.cmd[1:])}",
                      flush=True)
                running[pool.submit(launch, t)] = t
                del todo[t.name]
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                t, rc, secs = fut.result()
                del running[fut]
                if rc:
                    failed.append(t.name)
                    print(f"error: {t.name} exited {rc}; see {log_dir / (t.name + '.log')}", flush=True)
                    continue
                t.done.parent.mkdir(parents=True, exist_ok=True)
                t.done.write_text(f"{secs:.1f}\n")
                finished.add(t.name)
                print(f"  {t.name} done in {secs:.0f} s", flush=True)
    if failed:
        blocked = f"; not started, as they need it: {', '.join(todo)}" if todo else ""
        raise SystemExit(f"error: {', '.join(failed)} failed (logs in {log_dir}){blocked}; rerun to resume")


# ---- numbers ------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float | None]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def compare(a: list[float], b: list[float]) -> dict:
    """Is ``a`` better (lower FD) than ``b``? ``outcome`` is better / worse / tie against the margin
    (module docstring); ``provisional`` when either side has a single seed."""
    if not a or not b:
        raise ValueError("compare: both sides need at least one value")
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    provisional = sa is None or sb is None
    if provisional:
        margin = REL_MARGIN * (abs(ma) + abs(mb)) / 2
    else:
        margin = K_SE * math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
    diff = ma - mb
    outcome = "tie" if abs(diff) <= margin else ("better" if diff < 0 else "worse")
    return {"outcome": outcome, "diff": diff, "margin": margin, "provisional": provisional,
            "a": (ma, sa, len(a)), "b": (mb, sb, len(b))}


def fmt(ms) -> str:
    m, s, n = ms
    return f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}"


def fmt_ref(values: list[float]) -> str:
    """A reference row over the seeds' evals: one number where they agree (the same images and seed),
    a spread where a sampled encoder (the KL posterior) made them differ."""
    m, s = mean_std(values)
    return f"{m:.2f}" if not s or s < 0.005 else f"{m:.2f} ± {s:.2f}"


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


def claims(arms: dict) -> list[dict]:
    """The paper's five claims, each with our numbers and a verdict decided by ``compare``."""
    out = []

    def have(arm, *loops):
        return arm in arms and all(L in arms[arm] for L in loops)

    early = list(range(1, LMAX))
    if have("ilsd", *early, LMAX) and have("vanilla", *early, LMAX):
        poor = [compare(arms["vanilla"][L], arms["vanilla"][LMAX]) for L in early]
        usable = [compare(arms["ilsd"][L], arms["vanilla"][L]) for L in early]
        a, b = all(c["outcome"] == "worse" for c in poor), all(c["outcome"] == "better" for c in usable)
        out.append({"claim": "Any-time: with ILSD every exit is usable, without it the early exits are poor",
                    "paper": "loop-count curves: vanilla looped models degrade sharply below Lmax, ILSD ones stay usable (docs/method.md)",
                    "ours": "vanilla L=1..3 vs its L=4: " + ", ".join(fmt(c["a"]) for c in poor) + f" vs {fmt(poor[0]['b'])}; "
                            "ILSD L=1..3: " + ", ".join(fmt(c["a"]) for c in usable),
                    "test": "vanilla's early exits worse than its L=Lmax, and ILSD's better than vanilla's, at every L < Lmax",
                    "verdict": "reproduced" if a and b else ("partly reproduced" if a or b else "not reproduced"),
                    "provisional": any(c["provisional"] for c in poor + usable)})
    if have("ilsd", LMAX) and have("vanilla", LMAX):
        c = compare(arms["ilsd"][LMAX], arms["vanilla"][LMAX])
        every = [compare(arms["ilsd"][L], arms["vanilla"][L])["outcome"] for L in sorted(arms["ilsd"]) if L in arms["vanilla"]]
        out.append({"claim": "ILSD improves on vanilla looped training at L = Lmax",
                    "paper": "ILSD is better at every loop count, Lmax included",
                    "ours": f"ILSD {fmt(c['a'])} vs vanilla {fmt(c['b'])} at L={LMAX}; ILSD better at "
                            f"{every.count('better')}/{len(every)} loop counts, worse at {every.count('worse')}",
                    "test": "ILSD's mean lower by more than the margin at L = Lmax",
                    "verdict": {"better": "reproduced", "tie": "not reproduced (no difference)",
                                "worse": "not reproduced (vanilla better)"}[c["outcome"]],
                    "provisional": c["provisional"]})
    if have("ilsd", LMAX) and have("baseline", 1):
        c = compare(arms["ilsd"][LMAX], arms["baseline"][1])
        out.append({"claim": f"N×L = {N}N×{LMAX}L with 1/{LMAX} of the block parameters matches the {N * LMAX}N×1L baseline at equal compute",
                    "paper": "ELT-L 8N×3L FID 2.2 vs MaskGIT-L (24 layers) 2.1; DiT ELT 8N×4L 3.16 vs DiT 32 layers 3.43",
                    "ours": f"ELT {fmt(c['a'])} vs baseline {fmt(c['b'])}",
                    "test": "ELT not worse than the baseline by more than the margin",
                    "verdict": "reproduced" if c["outcome"] != "worse" else "not reproduced (baseline better)",
                    "provisional": c["provisional"]})
    if have("ilsd", LMAX, LMAX + 1, LMAX + 2):
        gain = compare(arms["ilsd"][LMAX + 1], arms["ilsd"][LMAX])
        best = min((LMAX, LMAX + 1), key=lambda L: mean_std(arms["ilsd"][L])[0])
        drop = compare(arms["ilsd"][LMAX + 2], arms["ilsd"][best])
        a, b = gain["outcome"] == "better", drop["outcome"] == "worse"
        out.append({"claim": "Extrapolation to L > Lmax: small gains, then degradation",
                    "paper": "small gains past Lmax, then degradation (UCF-101 ELT 6N×4L: FVD 72.8 at L=4, 60.8 at L=6 with 24 decoding steps)",
                    "ours": f"ILSD L={LMAX}: {fmt(gain['b'])}, L={LMAX + 1}: {fmt(gain['a'])}, L={LMAX + 2}: {fmt(drop['a'])}",
                    "test": f"L={LMAX + 1} better than L={LMAX}, and L={LMAX + 2} worse than the better of the two",
                    "verdict": "reproduced" if a and b else (
                        "partly reproduced (" + ("gain" if a else "degradation") + " only)" if a or b else
                        "not reproduced (" + ("no gain" if gain["outcome"] == "tie" else "extra loops worse") + ")"),
                    "provisional": gain["provisional"] or drop["provisional"]})
    if have("capacity", N * LMAX) and have("ilsd", LMAX):
        c = compare(arms["capacity"][N * LMAX], arms["ilsd"][LMAX])
        out.append({"claim": "Too few unique layers (1N) loses capacity at equal compute",
                    "paper": "DiT ELT 1N×32L FID 10.30 vs 4N×8L 3.96",
                    "ours": f"1N×{N * LMAX}L {fmt(c['a'])} vs {N}N×{LMAX}L {fmt(c['b'])}",
                    "test": "1N×8L worse than 2N×4L by more than the margin",
                    "verdict": "reproduced" if c["outcome"] == "worse" else "not reproduced (" + (
                        "no difference" if c["outcome"] == "tie" else "1N better") + ")",
                    "provisional": c["provisional"]})
    return out


# ---- report -------------------------------------------------------------------------------------
def loops_table(arms: dict) -> str:
    from elt.evaluation.tables import grid_table

    loops = sorted({L for by in arms.values() for L in by})
    cells = []
    for arm, by in arms.items():
        row = [ARMS[arm][0], str(ARM_LMAX[arm])]
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
        ax.errorbar(loops, [m for m, _ in ms], yerr=[s or 0 for _, s in ms], marker="o", capsize=3, label=ARMS[arm][0])
        ax.axvline(ARM_LMAX[arm], color=ax.lines[-1].get_color(), ls=":", lw=0.8)
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
    for fam, (name, kind, weights) in FAMILIES.items():
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


def report(runs: Path, out: Path, quick: bool, img_dir: Path | None = None) -> Path:
    families, seeds = mode_settings(quick)
    data = collect(runs, families, seeds)
    timings = measured_times(runs)
    lines = [f"# Mini-paper: ELT's claims on Fashion-MNIST ({'MINI=quick: ' if quick else ''}"
             f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}, {', '.join(FAMILIES[f][0] for f in families)})", "",
             f"Metric: `{METRIC}`, the Fréchet distance in the features of a small CNN trained on Fashion-MNIST's "
             f"training split (not Inception FID), {SAMPLES_PER_CLASS * 10} samples per loop count; mean ± std over "
             f"training seeds. Verdict rule: a difference counts when it exceeds {K_SE:g} standard errors of the "
             f"difference of the means (one seed: {REL_MARGIN:.0%} of the means, marked provisional).", "",
             *stage_one_lines(), *judge_line(repo_root() / "data" / "cache"), ""]
    for fam in families:
        arms, refs = data[fam]["arms"], data[fam]["refs"]
        name = FAMILIES[fam][0]
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
        lines += [f"![{name}: FD vs loops]({img.name})", "", "| claim | paper's evidence | ours | test | verdict |",
                  "|---|---|---|---|---|"]
        for c in claims(arms):
            verdict = c["verdict"] + (" (provisional: 1 seed)" if c["provisional"] else "")
            lines.append(f"| {c['claim']} | {c['paper']} | {c['ours']} | {c['test']} | **{verdict}** |")
        lines.append("")
    if timings:
        lines += ["## Measured wall time (one thread per command)", "", "| command | seconds |", "|---|---|",
                  *[f"| {k} | {v:.0f} |" for k, v in timings.items()], ""]
        lines += [budget_line(timings, quick=True), "", budget_line(timings), ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def measured_times(runs: Path, raw_root: str = RAW_ROOT) -> dict:
    """Wall seconds of every finished command of the full plan, read from its ``.done`` marker."""
    out = {}
    for t in plan(runs, quick=False, raw_root=raw_root):
        if t.done.is_file():
            try:
                out[t.name] = float(t.done.read_text().split()[0])
            except (ValueError, IndexError):
                pass
    return out


def simulated_wall(tasks: list[Task], seconds: dict[str, float], jobs: int) -> float:
    """The wall time of ``tasks`` under ``run_tasks``' rule (``startable``) with these durations."""
    todo, finished, running, now = {t.name: t for t in tasks}, set(), {}, 0.0  # running: name -> end time
    while todo or running:
        for t in startable(todo, finished, jobs - len(running)):
            running[t.name] = now + seconds[t.name]
            del todo[t.name]
        if not running:
            break  # unreachable dependencies: nothing left can start
        name = min(running, key=running.get)
        now = running.pop(name)
        finished.add(name)
    return now


def fallbacks(name: str) -> list[str]:
    """Where an unmeasured command's time comes from, in order: its arm's other seeds, then its kind."""
    kind = name.split("_")[0]
    return [name.rsplit("_s", 1)[0] + "_", kind + "_"] if kind in ("train", "eval") else [kind]


def budget_line(timings: dict, quick: bool = False, jobs: int = 2) -> str:
    """A mode's wall time estimated from the measured commands, scheduled as ``run_tasks`` would; an
    unmeasured command counts as the mean of the measured ones it resembles (``fallbacks``)."""
    def mean_of(prefix):
        v = [s for k, s in timings.items() if k.startswith(prefix)]
        return sum(v) / len(v) if v else None

    tasks = plan(Path("runs"), quick)
    seconds, guessed, unknown = {}, [], []
    for t in tasks:
        m = timings.get(t.name)
        if m is None:
            m = next((v for v in map(mean_of, fallbacks(t.name)) if v is not None), None)
            (guessed if m is not None else unknown).append(t.name)
        seconds[t.name] = m or 0.0
    named = f": {', '.join(guessed)}" if len(guessed) <= 4 else ""  # a full run estimated from a quick one: 42 of them
    note = f"; {len(guessed)} unmeasured, counted as the mean of the measured ones they resemble{named}" if guessed else ""
    note += f"; unmeasured and counted as 0 s: {', '.join(unknown)}" if unknown else ""
    mode = "MINI=quick" if quick else "Full mini-paper"
    return (f"{mode} estimate from these times: {sum(seconds.values()) / 60:.0f} CPU-minutes of commands, about "
            f"{simulated_wall(tasks, seconds, jobs) / 60:.0f} min wall at {jobs} parallel jobs (scheduled as "
            f"`run` schedules them{note}).")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elt.experiments.mini_paper", description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=["plan", "run", "report"])
    p.add_argument("--quick", action="store_true", help="1 seed, MaskGIT-ELT only (MINI=quick)")
    p.add_argument("--jobs", type=int, default=2, help="commands run in parallel (one thread each)")
    p.add_argument("--runs", help="run directories (default outputs/mini_paper/runs, shared by --quick)")
    p.add_argument("--out", help="report directory (default outputs/mini_paper, --quick: outputs/mini_paper/quick)")
    p.add_argument("--raw-root", default=RAW_ROOT)
    p.add_argument("--img-dir", help="also copy the plots here (docs/img)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    # quick and full share run directories: MINI=quick's runs are the full run's MaskGIT-ELT seed 0
    base = repo_root() / "outputs" / "mini_paper"
    out = Path(args.out or (base / "quick" if args.quick else base))
    runs = Path(args.runs or base / "runs")
    if args.cmd != "report" and not Path(args.raw_root, "train-images-idx3-ubyte.gz").is_file():
        print(f"error: no Fashion-MNIST IDX files in {args.raw_root}: sudo apt-get install dataset-fashion-mnist, "
              f"or pass --raw-root <folder of the four IDX .gz files>", file=sys.stderr)
        return 2
    tasks = plan(runs, args.quick, args.raw_root)
    if args.cmd == "plan":
        for t in tasks:
            state = "done" if t.done.is_file() else "todo"
            print(f"[{state}] {t.name}: {' '.join(t.cmd[1:])}")
        return 0
    if args.cmd == "run":
        run_tasks(tasks, args.jobs, out / "logs")
    path = report(runs, out, args.quick, Path(args.img_dir) if args.img_dir else None)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
