"""Loop schedules: how many loops each sampling step runs, and what that costs.

The paper samples with one loop count L at every step. A schedule gives L per step instead, so a
budget can be spent where it matters. Specs (the same strings in eval.py, pareto, sample.py and
``model.sample(loops=...)``):

- ``4`` or ``constant:4``: the paper's fixed-L protocol;
- ``[4, 4, 3, 2]``: explicit, one entry per sampling step;
- ``linear:a-b``: a ramp from a loops at the first step to b at the last (rounded);
- ``step:a-b@f``: a loops for the first fraction f of the steps (default 0.5), then b;
- ``change:m``: m loops per step on average (m may be fractional), allocated greedily where the
  model's prediction changes most from one loop to the next, measured once per model and sampler
  on held-out calibration samples (``elt.samplers.budget.change_profile``).

Everything else here is bookkeeping shared by both families: resolving a spec to a per-step tuple
and naming it (what a plan costs is ``elt.core.flops``).
"""
from __future__ import annotations

import math
import re
from typing import Sequence

FAMILIES = ("constant", "linear", "step", "change")
_INT = r"(\d+)"
_PATTERNS = {
    "constant": re.compile(rf"^constant:{_INT}$"),
    "linear": re.compile(rf"^linear:{_INT}-{_INT}$"),
    "step": re.compile(rf"^step:{_INT}-{_INT}(?:@([0-9]*\.?[0-9]+))?$"),
    "change": re.compile(r"^change:([0-9]*\.?[0-9]+)$"),
}
_EXAMPLES = "an integer, a list of integers (one per step), constant:L, linear:a-b, step:a-b@f or change:m"


class ScheduleError(ValueError):
    pass


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse(spec):
    """-> (family, params): validates a spec without knowing the step count; one line on error."""
    if is_int(spec):
        if spec < 1:
            raise ScheduleError(f"loop schedule {spec!r}: loops must be >= 1")
        return "constant", (spec,)
    if isinstance(spec, (list, tuple)) or type(spec).__name__ == "ListConfig":
        loops = list(spec)
        if not loops or not all(is_int(L) and L >= 1 for L in loops):
            raise ScheduleError(f"loop schedule {loops!r}: an explicit schedule needs integers >= 1, one per step")
        return "explicit", tuple(loops)
    if not isinstance(spec, str):
        raise ScheduleError(f"loop schedule {spec!r}: must be {_EXAMPLES}")
    text = spec.strip()
    family = text.split(":", 1)[0]
    if family not in _PATTERNS:
        raise ScheduleError(f"loop schedule {spec!r}: unknown family {family!r}; must be {_EXAMPLES}")
    m = _PATTERNS[family].match(text)
    if m is None:
        raise ScheduleError(f"loop schedule {spec!r}: malformed; must be {_EXAMPLES}")
    if family == "change":
        mean = float(m.group(1))
        if mean < 1:
            raise ScheduleError(f"loop schedule {spec!r}: change:m needs a mean m >= 1")
        return family, (mean,)
    ints = tuple(int(g) for g in m.groups()[:2] if g is not None)
    if min(ints) < 1:
        raise ScheduleError(f"loop schedule {spec!r}: loops must be >= 1")
    if family == "step":
        frac = float(m.group(3)) if m.group(3) is not None else 0.5
        if not 0 < frac < 1:
            raise ScheduleError(f"loop schedule {spec!r}: the switch point f of step:a-b@f must be in (0, 1)")
        return family, (*ints, frac)
    return family, ints


def name(spec) -> str:
    """A short stable name: the key of a cached row and the label of a plotted point."""
    family, params = parse(spec)
    if family == "explicit":
        return "[" + ",".join(map(str, params)) + "]"
    if family == "constant":
        return f"constant:{params[0]}"
    if family == "linear":
        return f"linear:{params[0]}-{params[1]}"
    if family == "step":
        return f"step:{params[0]}-{params[1]}@{params[2]:g}"
    return f"change:{params[0]:g}"


def allocate(mean: float, profile: Sequence[Sequence[float]], min_loops: int = 1) -> tuple[int, ...]:
    """Greedy: every step gets ``min_loops``; each further loop goes to the step whose next loop
    changes the prediction most (``profile[k][l-1]``: mean change from exit l to exit l+1 at step
    k), until ⌊mean·steps + 0.5⌋ loops are spent. Ties go to the earlier step."""
    steps = len(profile)
    cap = min(len(row) for row in profile) + 1
    if not min_loops <= mean <= cap:
        raise ScheduleError(f"loop schedule change:{mean:g}: the mean must be in [{min_loops}, {cap}] "
                            f"(the change profile covers loops 1..{cap})")
    plan = [min_loops] * steps
    for _ in range(math.floor(mean * steps + 0.5) - min_loops * steps):
        gains = [(profile[k][plan[k] - 1] if plan[k] < cap else -math.inf, -k) for k in range(steps)]
        best = max(range(steps), key=lambda k: gains[k])
        plan[best] += 1
    return tuple(plan)


def resolve(spec, steps: int, profile: Sequence[Sequence[float]] | None = None) -> tuple[int, ...]:
    """The loop count of every one of ``steps`` sampling steps."""
    family, params = parse(spec)
    steps = int(steps)
    if family == "constant":
        return (params[0],) * steps
    if family == "explicit":
        if len(params) != steps:
            raise ScheduleError(f"loop schedule {name(spec)}: {len(params)} entries for {steps} sampling steps")
        return params
    if family == "linear":
        a, b = params
        if steps == 1:
            return (a,)
        # floor(x + 0.5), not round(): Python's banker's rounding would make ramps lopsided
        return tuple(int(math.floor(a + (b - a) * k / (steps - 1) + 0.5)) for k in range(steps))
    if family == "step":
        a, b, frac = params
        switch = int(math.floor(frac * steps + 0.5))
        return tuple(a if k < switch else b for k in range(steps))
    if profile is None:
        raise ScheduleError(f"loop schedule {name(spec)} needs the model's change profile: resolve it with "
                            "elt.samplers.budget.resolve_schedule(model, spec, sampler)")
    if len(profile) != steps:
        raise ScheduleError(f"loop schedule {name(spec)}: a change profile of {len(profile)} steps for {steps} steps")
    return allocate(params[0], profile)


def check_specs(specs, key: str) -> None:
    """Every spec of config list ``key`` parses, else one ConfigError line naming the key."""
    from elt.runtime.config import ConfigError

    for spec in specs:
        try:
            parse(spec)
        except ScheduleError as e:
            raise ConfigError(f"{key}: {e}") from None
