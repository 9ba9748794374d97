"""Spending a sampling budget: loop schedules resolved for a model, and budgeted generation.

``resolve_schedule`` turns any schedule spec into per-step loop counts, measuring the model's
change profile for ``change:m`` (once per model and sampler, on held-out calibration draws).
``choose`` picks sampling steps and a schedule for a GFLOPs or wall-time budget: the best measured
point of a Pareto front (``elt.jobs.pareto``) when one is given, else the most expensive
candidate that fits. ``generate`` is the Python call behind sample.py, for serving a model.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from elt.core import flops, schedules
from elt.runtime.files import fingerprint
from elt.samplers.early_exit import EarlyExit

CALIBRATION_SEED = 7_919  # never an evaluation seed (those are small integers), so τ and profiles are held out
CALIBRATION_PER_CLASS = 2
_PROFILES: dict[tuple, list] = {}


class BudgetError(ValueError):
    pass


def calibration_labels(num_classes: int, per_class: int = CALIBRATION_PER_CLASS) -> torch.Tensor:
    return torch.arange(num_classes).repeat(per_class)


def change_profile(model, sampler: dict, max_loops: int | None = None, per_class: int = CALIBRATION_PER_CLASS,
                   seed: int = CALIBRATION_SEED) -> list[list[float]]:
    """profile[k][l-1]: the batch-mean change of the prediction from exit l to exit l+1 at sampling
    step k (the early-exit distance of the family), sampling at ``max_loops`` (default Lmax) loops
    every step on held-out calibration draws. Cached in memory per model, sampler and settings."""
    cap = int(max_loops or model.Lmax)
    if cap < 2:
        raise schedules.ScheduleError(f"a change profile needs at least 2 loops, got max_loops={cap}")
    key = (id(model), fingerprint(sampler), cap, per_class, seed)
    if key not in _PROFILES:
        rule = EarlyExit(tau=0.0, record=[])
        gen = torch.Generator(device=model.device).manual_seed(seed)
        model.sample(calibration_labels(model.num_classes, per_class), loops=cap, generator=gen, early_exit=rule, **sampler)
        steps = [k for k, _ in flops.evaluations(model, sampler)]  # a step evaluated twice (Heun): its first
        _PROFILES[key] = [rec for e, rec in enumerate(rule.record) if e == 0 or steps[e] != steps[e - 1]]
    return _PROFILES[key]


def resolve_schedule(model, spec, sampler: dict) -> tuple[int, ...]:
    """Per-step loop counts of ``spec`` for this model and sampler (``change:m`` measures the profile)."""
    steps = int(sampler["steps"])
    family, _ = schedules.parse(spec)
    profile = change_profile(model, sampler) if family == "change" else None
    return schedules.resolve(spec, steps, profile)


@dataclass
class Choice:
    steps: int
    schedule: object  # a spec: int, list or string
    plan: tuple[int, ...]
    gflops: float  # analytic GFLOPs per sample
    seconds: float | None = None  # predicted wall seconds for the whole batch (budget.seconds)
    quality: float | None = None  # the front's measured metric, when chosen from a front
    source: str = "candidates"

    def describe(self) -> str:
        q = f", measured {self.quality:.4g} on the front" if self.quality is not None else ""
        s = f", ~{self.seconds:.3g} s predicted" if self.seconds is not None else ""
        return (f"steps={self.steps} schedule={schedules.name(self.schedule)} loops per step={run_lengths(self.plan)} "
                f"({self.gflops:.4g} GFLOPs/sample{s}{q}; from {self.source})")


def run_lengths(plan) -> str:
    """[4, 4, 4, 2, 2] -> "4×3, 2×2": a 128-step plan in one readable line."""
    runs: list[list[int]] = []
    for L in plan:
        if runs and runs[-1][0] == L:
            runs[-1][1] += 1
        else:
            runs.append([L, 1])
    return ", ".join(f"{L}×{n}" for L, n in runs)


def default_candidates(model, sampler: dict) -> list[tuple[int, object]]:
    """(steps, schedule) pairs tried without a front: the sampler's steps and its half, at every
    fixed L in 1..Lmax and the ramps between 1 and Lmax."""
    k = int(sampler["steps"])
    out = []
    for steps in sorted({max(1, k // 2), k}):
        out += [(steps, L) for L in range(1, model.Lmax + 1)]
        if model.Lmax > 1:
            out += [(steps, f"linear:{model.Lmax}-1"), (steps, f"linear:1-{model.Lmax}")]
    return out


def read_front(path) -> list[dict]:
    """The points of a front written by elt.jobs.pareto (front.json)."""
    p = Path(str(path))
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise BudgetError(f"front {p} could not be read ({type(e).__name__}); write one with python -m elt.jobs.pareto") from None
    points = data.get("front") if isinstance(data, dict) else None
    if not points:
        raise BudgetError(f"front {p} holds no points")
    return points


class WallClock:
    """Predicts the wall seconds of a plan for n samples from two timed network evaluations at
    batch n (1 and 2 loops, guided wherever the sampler guides at all): seconds = Σ_e (a + b·L_e)
    over the solver's network evaluations e (``flops.evaluations``), halved for an evaluation
    outside the guidance interval. The fit is per machine and batch size."""

    def __init__(self, model, sampler: dict, n: int):
        self.model, self.sampler, self.n = model, sampler, n
        self.a, self.b = self._fit()

    @torch.no_grad()
    def _time(self, loops: int) -> float:
        gen = torch.Generator(device=self.model.device).manual_seed(CALIBRATION_SEED)
        labels = calibration_labels(self.model.num_classes, math.ceil(self.n / self.model.num_classes))[: self.n]
        one = {**self.sampler, "steps": 1, **({"cfg_interval": None} if "cfg_interval" in self.sampler else {})}
        if one.get("kind") == "heun":  # one Heun step is refused; its evaluations cost what DDIM's do
            one["kind"] = "ddim"
        self.model.sample(labels, loops=loops, generator=gen, **one)  # warm-up
        t0 = time.perf_counter()
        self.model.sample(labels, loops=loops, generator=gen, **one)
        return time.perf_counter() - t0

    def _fit(self):
        t1, t2 = self._time(1), self._time(2)
        b = max(t2 - t1, 1e-9)
        return max(t1 - b, 0.0), b

    def seconds(self, plan) -> float:
        evals = flops.evaluations(self.model, {**self.sampler, "steps": len(plan)})
        full = flops.evals_per_step(self.sampler.get("cfg_scale", 1.0))
        return sum((self.a + self.b * plan[k]) * passes / full for k, passes in evals)


def choose(model, sampler: dict, gflops: float | None = None, seconds: float | None = None, front=None,
           n: int = 1, candidates=None) -> Choice:
    """The (steps, schedule) to sample with under a budget: per-sample GFLOPs and/or wall seconds
    for all ``n`` samples. From a front: its best measured point within the budget; otherwise the
    most expensive of ``candidates`` that fits. A budget below every option is refused in one line."""
    if gflops is None and seconds is None:
        raise BudgetError("give a budget: budget.gflops=<GFLOPs per sample> or budget.seconds=<wall seconds>")
    for key, v in (("budget.gflops", gflops), ("budget.seconds", seconds)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise BudgetError(f"{key} must be a number > 0, got {v!r}")
    options = []
    if front is not None:
        for p in read_front(front) if not isinstance(front, list) else front:
            options.append(Choice(int(p["steps"]), p["schedule"], tuple(p["plan"]), float(p["gflops"]),
                                  quality=float(p["quality"]), source="front"))
    else:
        for steps, spec in candidates or default_candidates(model, sampler):
            cfg = {**sampler, "steps": steps}
            plan = resolve_schedule(model, spec, cfg)
            options.append(Choice(steps, spec, plan, flops.gflops_per_sample(model, plan, cfg)))
    clock = WallClock(model, sampler, n) if seconds is not None else None
    for o in options:
        if clock is not None:
            o.seconds = clock.seconds(o.plan)
    fits = [o for o in options if (gflops is None or o.gflops <= gflops) and (seconds is None or o.seconds <= seconds)]
    if not fits:
        cheapest = min(options, key=lambda o: (o.gflops, o.seconds or 0))
        asked = ", ".join(f"{k}={v:g}" for k, v in (("budget.gflops", gflops), ("budget.seconds", seconds)) if v is not None)
        raise BudgetError(f"{asked} is below the cheapest option: {cheapest.describe()}")
    if front is not None:
        return min(fits, key=lambda o: (o.quality, o.gflops))
    return max(fits, key=lambda o: (o.gflops, -o.steps))


@torch.no_grad()
def generate(model, labels, gflops: float | None = None, seconds: float | None = None, front=None,
             generator: torch.Generator | None = None, early_exit=None, **sampler_overrides):
    """Samples for ``labels`` under a budget: -> (images or videos in [0, 1], the Choice)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    sampler = model.sampler_config(**sampler_overrides)
    choice = choose(model, sampler, gflops=gflops, seconds=seconds, front=front, n=len(labels))
    out = model.sample(labels, loops=list(choice.plan), generator=generator, early_exit=early_exit,
                       **{**sampler, "steps": choice.steps})
    return out, choice


