"""The tests behind the verdicts, over training seeds (``arms.yaml``: ``alpha`` and each claim's margin,
fixed before any run).

- A **difference** ("A is better than B") is Welch's two-sided t-test at ``ALPHA``: it holds when p < α and
  the means differ in the claimed direction.
- An **equivalence** ("A matches B") is two one-sided Welch tests (TOST) against a margin ±δ stated in the
  claim: it holds when both one-sided p < α, i.e. the (1 − 2α) confidence interval of the difference lies
  inside ±δ. A non-significant difference is not evidence of equivalence: noisier runs make TOST harder.
- A claim made at several loop counts lists the loop counts where it holds, with Holm's correction over them.

With one seed a side there is no spread to test against: the outcome is ``untested``.
"""
from __future__ import annotations

import math

from scipy import stats as st

from elt.experiments.mini_paper.arms import ALPHA

METRIC = "fid_fashion_mnist_cnn"  # Fréchet distance in the Fashion-MNIST judge's features (not Inception FID)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _welch(a: list[float], b: list[float]) -> dict:
    """Mean difference a − b, its standard error and Welch–Satterthwaite degrees of freedom."""
    if not a or not b:
        raise ValueError("a test needs at least one value on each side")
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    out = {"diff": ma - mb, "a": (ma, sa, len(a)), "b": (mb, sb, len(b)), "se": None, "df": None}
    if sa is None or sb is None:
        return out
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    out["se"] = math.sqrt(va + vb)
    out["df"] = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else math.inf
    return out


def _upper_tail(t: float, df: float) -> float:
    """P(T >= t) for Student's t with ``df`` degrees of freedom (a zero standard error: t is ±inf or nan)."""
    if math.isnan(t):
        return 0.5
    return float(st.t.sf(t, df))


def compare(a: list[float], b: list[float], alpha: float = ALPHA) -> dict:
    """Is ``a`` better (lower FD) than ``b``? Welch's two-sided t-test: ``outcome`` is better / worse when
    p < alpha, ``no difference`` otherwise, ``untested`` with one seed a side; ``p`` is reported."""
    w = _welch(a, b)
    if w["se"] is None:
        return {**w, "outcome": "untested", "p": None, "t": None, "alpha": alpha}
    t = w["diff"] / w["se"] if w["se"] > 0 else (0.0 if w["diff"] == 0 else math.copysign(math.inf, w["diff"]))
    p = min(1.0, 2 * _upper_tail(abs(t), w["df"]))
    outcome = "no difference" if p >= alpha else ("better" if w["diff"] < 0 else "worse")
    return {**w, "outcome": outcome, "p": p, "t": t, "alpha": alpha}


def equivalent(a: list[float], b: list[float], margin: float, alpha: float = ALPHA) -> dict:
    """Is ``a`` within ±``margin`` of ``b``? Two one-sided Welch tests (H0: diff <= −margin, H0: diff >=
    +margin); ``p`` is the larger of the two, ``outcome`` equivalent when p < alpha."""
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin}")
    w = _welch(a, b)
    if w["se"] is None:
        return {**w, "outcome": "untested", "p": None, "margin": margin, "alpha": alpha}
    if w["se"] == 0:
        p = 0.0 if abs(w["diff"]) < margin else 1.0
    else:
        p_low = _upper_tail((w["diff"] + margin) / w["se"], w["df"])  # rejects diff <= -margin
        p_high = _upper_tail((margin - w["diff"]) / w["se"], w["df"])  # rejects diff >= +margin
        p = max(p_low, p_high)
    return {**w, "outcome": "equivalent" if p < alpha else "not shown", "p": p, "margin": margin, "alpha": alpha}


def holm(pvalues: dict, alpha: float = ALPHA) -> dict:
    """Holm's step-down adjusted p-values ({key: p} -> {key: adjusted p}); untested (None) stay None."""
    tested = sorted(((p, k) for k, p in pvalues.items() if p is not None), key=lambda x: x[0])
    out, running, m = {k: None for k, p in pvalues.items() if p is None}, 0.0, len(tested)
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def fmt(ms) -> str:
    m, s, n = ms
    return f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "untested (1 seed)"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def fmt_ref(values: list[float]) -> str:
    """A reference row over the seeds' evals: one number where they agree (the same images and seed),
    a spread where a sampled encoder (the KL posterior) made them differ."""
    m, s = mean_std(values)
    return f"{m:.2f}" if not s or s < 0.005 else f"{m:.2f} ± {s:.2f}"
