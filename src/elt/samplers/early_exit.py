"""Per-sample early exit: inside each sampling step every sample stops looping once its prediction
has converged, and the rest of the batch runs on without it.

``EarlyExit`` is the rule (threshold, criterion, earliest exit); ``early_exit_predict`` is one step's
loop-by-loop prediction on a shrinking batch; the criteria are the distances each family measures
between two successive exits; ``StepLoops`` is what a sampler holds across its steps: the loop plan,
the rule, and the loops and heads every sample used (``stats``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from elt.core import guidance, schedules
from elt.core.flops import evals_per_step
from elt.core.schedules import ScheduleError, is_int


@dataclass
class EarlyExit:
    """Per-sample early exit inside each sampling step: a sample stops looping once the distance
    between its predictions at two successive exits falls below ``tau`` (strictly, so ``tau=0``
    never exits and is the plain sampler). The step's schedule entry is the most it may run.

    criterion: MaskGIT ``commit`` (share of the tokens this step would commit that change between
    the exits; the step's Gumbel noise is fixed first, so agreement is exact) or ``kl`` (mean KL of
    the token distributions over still-masked positions); DiT ``rel`` (‖x̂0_l − x̂0_{l−1}‖/‖x̂0_l‖),
    ``noise`` (DDPM: the RMS change of the step's posterior mean in units of the noise it adds),
    ``state`` (the RMS change of the layer-normed backbone state, what the head reads: no head is read
    but the one at the exit) or ``state_snr`` (``state`` times the SNR the step gains, for every
    solver: reads no extra head and exits early at high noise).
    ``min_loops``: the earliest exit: ≥ 2 for the head criteria (loop 1's head has none before it to
    compare with); the state criteria may take 1, comparing loop 1's state with the loop's input (the
    embedded tokens), so that ``state_snr`` lets samples leave after one loop at the noisiest steps,
    where a looped DiT's later loops change little that matters. ``refresh`` (state criteria; 0: off):
    every ``refresh``-th sampling step runs every sample's loops to the end and keeps what the loops
    after each l added to its state; at the steps between, a sample leaving after loop l gets that
    change added to its state before the head reads it. The later loops' contribution drifts slowly
    from one step to the next, so the carried one stands in for the loops skipped (see
    docs/anytime.md). ``record``: a list to which every step appends the batch-mean distance at each
    loop (profiling, no exits if tau=0).
    """

    tau: float
    criterion: str | None = None
    min_loops: int = 2
    refresh: int = 0
    record: list | None = None

    CRITERIA = {"maskgit": ("commit", "kl"), "dit": ("rel", "noise", "state", "state_snr")}
    ON_STATE = ("state", "state_snr")  # decided on backbone states (state_exit_predict): may exit after loop 1

    def __post_init__(self):
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not self.tau >= 0:
            raise ScheduleError(f"early_exit.tau must be a number >= 0, got {self.tau!r}")
        if not is_int(self.min_loops) or self.min_loops < 1:
            raise ScheduleError(f"early_exit.min_loops must be an integer >= 1, got {self.min_loops!r}")
        if self.min_loops == 1 and self.criterion not in self.ON_STATE:
            raise ScheduleError(f"early_exit.min_loops 1 needs a state criterion ({', '.join(self.ON_STATE)}): "
                                f"criterion {self.criterion or 'default'} compares heads, and loop 1's has none before it")
        if not is_int(self.refresh) or self.refresh < 0 or self.refresh == 1:
            raise ScheduleError(f"early_exit.refresh must be 0 (off) or an integer >= 2 (every refresh-th step runs "
                                f"every loop), got {self.refresh!r}")
        if self.refresh and self.criterion not in self.ON_STATE:
            raise ScheduleError(f"early_exit.refresh carries backbone states over and needs a state criterion "
                                f"({', '.join(self.ON_STATE)}), not {self.criterion or 'the default'}")
        self.tau = float(self.tau)

    @classmethod
    def from_spec(cls, spec) -> "EarlyExit | None":
        """None, a number (tau), a mapping {tau, criterion, min_loops, refresh} or an EarlyExit."""
        if spec is None or isinstance(spec, cls):
            return spec
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls(tau=spec)
        if hasattr(spec, "keys"):
            spec = dict(spec)
            unknown = set(spec) - {"tau", "criterion", "min_loops", "refresh"}
            if unknown or "tau" not in spec:
                raise ScheduleError(f"early_exit must give tau (and optionally criterion, min_loops, refresh), got {sorted(spec)}")
            return cls(**spec)
        raise ScheduleError(f"early_exit must be null, a number tau or a mapping {{tau: ..}}, got {spec!r}")

    def criterion_for(self, family: str) -> str:
        known = self.CRITERIA[family]
        crit = self.criterion or known[0]
        if crit not in known:
            raise ScheduleError(f"early_exit.criterion {crit!r} is not one of {family}'s: {', '.join(known)}")
        return crit


def _start(model, inputs: dict, cfg_scale: float):
    """What both early-exit predictors start from: the embedded (guidance-paired) batch, its
    modulations, every sample active and no loops run yet."""
    b, pair = len(inputs["labels"]), evals_per_step(cfg_scale)
    feed = guidance.guidance_batch(inputs, cfg_scale, model.num_classes)
    x, cond = model.embed(feed)
    active = torch.arange(b, device=x.device)
    return b, pair, feed, x, cond, model.backbone.modulations(cond), active, torch.zeros_like(active)


def early_exit_predict(model, inputs: dict, loops: int, cfg_scale: float, rule: EarlyExit, distance, post=None,
                       carry: "Carry | None" = None, step: int = 0):
    """``model.guided_predict`` at most ``loops`` loops, each sample stopping at its own exit.

    Loop by loop on the still-active rows only (under guidance, a sample's conditional and
    null-class rows leave together): after loop l ≥ ``rule.min_loops`` a sample whose
    ``distance(prev, cur, idx)`` (per active sample; ``idx`` their batch indices) is below
    ``rule.tau`` keeps its exit-l prediction and leaves the batch, so later loops run on fewer
    rows. Heads are read only where a decision needs them (none before the last loop when
    tau=0 and nothing is recorded, which is then ``guided_predict`` exactly). ``carry``, ``step``: the
    state criteria's carried-over later loops (``rule.refresh``) and the sampling step.
    -> (prediction [B, ...], loops run [B], heads read [B])."""
    post = post or guidance.as_float
    if rule.criterion in EarlyExit.ON_STATE:
        return state_exit_predict(model, inputs, loops, cfg_scale, rule, distance, post, carry, step)
    b, pair, feed, x, cond, mods, active, ran = _start(model, inputs, cfg_scale)
    x0, bb, dev = x, model.backbone, x.device
    heads = torch.zeros(b, dtype=torch.long, device=dev)
    probing = rule.tau > 0 or rule.record is not None
    first_read = max(rule.min_loops - 1, 1)
    out, prev, trace = None, None, []
    for loop in range(1, int(loops) + 1):
        x = bb.apply_loop(x, loop, mods, x0)
        ran[active] += 1
        last = loop == int(loops)
        if not (last or (probing and loop >= first_read)):
            continue
        pred = guidance.combine(post(model.readout(x, cond), feed), cfg_scale)
        heads[active] += 1
        if out is None:
            out = torch.empty((b, *pred.shape[1:]), dtype=pred.dtype, device=dev)
        if prev is not None and loop >= rule.min_loops and (not last or rule.record is not None):
            dist = distance(prev, pred, active)
            if rule.record is not None:
                trace.append(float(dist.float().mean()))
            done = dist < rule.tau
            if not last and done.any():
                out[active[done]] = pred[done]
                keep = ~done
                rows = keep.repeat(pair)
                active, pred = active[keep], pred[keep]
                x, x0, mods = x[rows], x0[rows], bb.select_mods(mods, rows)
                cond = None if cond is None else cond[rows]
                feed = {k: v[rows] for k, v in feed.items()}
                if not len(active):
                    break
        if last:
            out[active] = pred
            break
        prev = pred
    if rule.record is not None:
        rule.record.append(trace)
    return out, ran, heads


def state_exit_predict(model, inputs: dict, loops: int, cfg_scale: float, rule: EarlyExit, distance, post,
                       carry: "Carry | None" = None, step: int = 0):
    """``early_exit_predict`` deciding on the backbone states: after loop l ≥ ``rule.min_loops`` a
    sample whose state changed by less than τ since loop l − 1 (loop 1: since the loop's input) leaves,
    and the head is read once, at its exit. Under guidance a sample's state is its conditional and
    null-class rows together. With ``carry`` (``rule.refresh``), a refresh step lets no sample leave
    and keeps its later loops' change; between refreshes a leaving sample's state gets it added."""
    b, pair, feed, x, cond, mods, active, ran = _start(model, inputs, cfg_scale)
    x0, bb, dev, loops = x, model.backbone, x.device, int(loops)
    full = carry is not None and rule.tau > 0 and carry.refreshing(step, loops, len(x))
    probing = (rule.tau > 0 and not full) or rule.record is not None
    out, prev, trace = None, (x if probing and rule.min_loops == 1 else None), []  # loop 1 against its input
    states, origin = [], torch.arange(len(x), device=dev)  # a refresh's states; each row's row at the start

    def read(rows, idx, loop):
        nonlocal out
        sub = {k: v[rows] for k, v in feed.items()}
        h = x[rows] if carry is None or full or loop == loops else carry.add(x[rows], loop, origin[rows])
        pred = guidance.combine(post(model.readout(h, None if cond is None else cond[rows]), sub), cfg_scale)
        if out is None:
            out = torch.empty((b, *pred.shape[1:]), dtype=pred.dtype, device=dev)
        out[idx] = pred

    for loop in range(1, loops + 1):
        x = bb.apply_loop(x, loop, mods, x0)
        ran[active] += 1
        last = loop == loops
        if full:
            states.append(x)
        if prev is not None and loop >= rule.min_loops and (not last or rule.record is not None):
            dist = distance(prev, x, active)
            if rule.record is not None:
                trace.append(float(dist.float().mean()))
            done = dist < rule.tau
            if not (last or full) and done.any():
                read(done.repeat(pair), active[done], loop)
                keep = ~done
                rows = keep.repeat(pair)
                active, x, x0, mods = active[keep], x[rows], x0[rows], bb.select_mods(mods, rows)
                origin = origin[rows]
                cond = None if cond is None else cond[rows]
                feed = {k: v[rows] for k, v in feed.items()}
                if not len(active):
                    break
        if last:
            read(torch.ones(len(x), dtype=torch.bool, device=dev), active, loop)
            break
        if probing:
            prev = x
    if full:
        carry.keep(states)
    if rule.record is not None:
        rule.record.append(trace)
    return out, ran, torch.ones(b, dtype=torch.long, device=dev)


class Carry:
    """The later loops' change of every row's state at the last refresh step: ``gaps[l − 1]`` = h_L −
    h_l, what loops l + 1..L added after loop l. A step refreshes every ``every`` steps, and also
    where nothing is kept yet, or its loop count or row count differs from the kept one's (the gaps
    are per L, and per row: a guidance interval doubles the rows of the steps inside it)."""

    def __init__(self, every: int):
        self.every, self.gaps = int(every), None

    def refreshing(self, step: int, loops: int, rows: int) -> bool:
        return (step % self.every == 0 or self.gaps is None or len(self.gaps) != loops - 1
                or (loops > 1 and len(self.gaps[0]) != rows))

    def keep(self, states: list) -> None:
        self.gaps = None  # the old gaps go before the new ones are made: at most L + (L − 1) states at once
        self.gaps = [states[-1] - h for h in states[:-1]]

    def add(self, h: torch.Tensor, loop: int, rows: torch.Tensor) -> torch.Tensor:
        return h + self.gaps[loop - 1][rows].to(h.dtype)


class StepLoops:
    """The loops of every network evaluation: its step's schedule entry (``loops``: an int or a loop
    schedule, elt.core.schedules), or under early exit as many as each sample needs up to it. Counts
    the loops each sample ran and the heads it read per evaluation (``evals``: the step of each, for
    solvers that evaluate a step more than once; default one per step), which ``report`` hands to a
    sampler's ``stats``."""

    def __init__(self, loops, steps: int, early_exit, family: str, batch: int, device, evals=None):
        self.plan = schedules.resolve(loops, steps)
        self.rule = EarlyExit.from_spec(early_exit)
        self.criterion = self.rule.criterion_for(family) if self.rule is not None else None
        self.step_of = list(range(steps)) if evals is None else list(evals)
        self.ran = torch.zeros(batch, len(self.step_of), dtype=torch.long, device=device)
        self.heads = torch.ones(batch, len(self.step_of), dtype=torch.long, device=device)
        self.carry = Carry(self.rule.refresh) if self.rule is not None and self.rule.refresh else None

    def predict(self, model, e: int, inputs: dict, cfg_scale: float, distance, post=None) -> torch.Tensor:
        """Evaluation ``e``'s guided prediction; ``distance`` is the family's criterion (used under early exit)."""
        loops = self.plan[self.step_of[e]]
        if self.rule is None:
            self.ran[:, e] = loops
            return model.guided_predict(inputs, loops, cfg_scale, post)
        out, self.ran[:, e], self.heads[:, e] = early_exit_predict(
            model, inputs, loops, cfg_scale, self.rule, distance, post, self.carry, self.step_of[e])
        return out

    def report(self, stats: dict | None) -> None:
        if stats is not None:
            stats.update(loops=self.ran.cpu(), heads=self.heads.cpu(), plan=self.plan)


# ---- criteria: distance(prev, cur, idx) between two successive exits of the active samples idx ----
def token_kl(prev, cur, unknown) -> torch.Tensor:
    """MaskGIT ``kl``: mean KL(cur ‖ prev) of the token distributions over the still-masked positions."""
    log_cur, log_prev = cur.log_softmax(-1), prev.log_softmax(-1)
    kl = (log_cur.exp() * (log_cur - log_prev)).sum(-1)
    m = unknown.float()
    return (kl * m).sum(1) / m.sum(1).clamp_min(1)


def commit_change(before, after, unknown, mask_id: int) -> torch.Tensor:
    """MaskGIT ``commit``: the share of the tokens ``after`` commits on which the two commits differ."""
    committed = (after != mask_id) & unknown
    return ((before != after) & unknown).sum(1).float() / committed.sum(1).clamp_min(1)


def maskgit_distance(criterion: str | None, commit, unknown, mask_id: int):
    """The criterion at one decoding step: ``commit(logits, idx)`` is that step's update (its noise
    fixed), ``unknown`` [B, T] its still-masked positions."""
    if criterion == "kl":
        return lambda prev, cur, idx: token_kl(prev, cur, unknown[idx])
    return lambda prev, cur, idx: commit_change(commit(prev, idx), commit(cur, idx), unknown[idx], mask_id)


def relative_change(prev, cur, idx=None) -> torch.Tensor:
    """DiT ``rel``: ‖x̂0_l − x̂0_{l−1}‖ / ‖x̂0_l‖ per sample."""
    return (cur - prev).flatten(1).norm(dim=1) / cur.flatten(1).norm(dim=1).clamp_min(1e-12)


def snr_gain(logsnr_t, logsnr_s):
    """SNR_s − SNR_t, the signal-to-noise ratio step t → s gains: also the square of how much a change
    of x̂0 moves the ancestral step's mean (a_s·c·Δx̂0) in units of the noise it adds (σ_s·√c), as
    a_s²·c/σ_s² = SNR_s·(1 − SNR_t/SNR_s)."""
    return torch.exp(logsnr_s) * -torch.expm1(logsnr_t - logsnr_s)


def noise_scaled_change(logsnr_t, logsnr_s):
    """DiT ``noise``: the RMS change of the ancestral step t → s's mean (a_s·c·Δx̂0) in units of the
    noise the step adds (σ_s·√c): a change far below the fresh noise cannot matter."""
    weight = snr_gain(logsnr_t, logsnr_s).sqrt()
    return lambda prev, cur, idx: weight * (cur - prev).flatten(1).pow(2).mean(1).sqrt()


def state_change(prev, cur, idx) -> torch.Tensor:
    """DiT ``state``: the RMS change per sample of the layer-normed backbone state over its rows (both
    halves under guidance). Normed as the head's input is: the raw state's norm keeps growing with the
    loops while the prediction settles, its normed direction settles with it."""
    n = len(idx)

    def per_sample(h):  # [halves·n, tokens, width] -> [n, halves·tokens·width], normed per token
        normed = F.layer_norm(h.float(), h.shape[-1:])
        return normed.reshape(h.shape[0] // n, n, -1).transpose(0, 1).reshape(n, -1)

    return (per_sample(cur) - per_sample(prev)).pow(2).mean(1).sqrt()


def scaled_state_change(weight):
    """DiT ``state_snr``: ``state`` times the step's ``snr_gain`` (``None``: the last step, whose gain
    is infinite, so nothing exits there). The gain, not its root (``noise``'s weight): a state's change
    predicts x̂0's less well than x̂0's own change does, so its exits are kept nearer high noise, where
    a wrong one costs least (measured: docs/anytime.md)."""
    if weight is None:
        return lambda prev, cur, idx: torch.full((len(idx),), math.inf, device=cur.device)
    return lambda prev, cur, idx: weight * state_change(prev, cur, idx)


def dit_distance(criterion: str | None, logsnrs, i: int, steps: int):
    """The criterion at sampling step ``i`` of ``steps`` on the λ grid ``logsnrs``; the last step adds
    no noise, so ``noise`` falls back to ``rel`` there and ``state_snr`` never exits. ``state_snr``'s
    weight is a property of the grid, so it ranks the steps the same way for every solver."""
    last = i + 1 >= steps
    if criterion == "noise" and not last:
        return noise_scaled_change(logsnrs[i], logsnrs[i + 1])
    if criterion == "state_snr":
        return scaled_state_change(None if last else snr_gain(logsnrs[i], logsnrs[i + 1]))
    if criterion == "state":
        return state_change
    return relative_change
