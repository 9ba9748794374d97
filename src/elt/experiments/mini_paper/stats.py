"""The numbers behind the verdicts: two arms differ when their mean FDs differ by more than ``K_SE``
standard errors of the difference (per-seed spread); with one seed there is no spread and the margin
is ``REL_MARGIN`` of the mean, and the verdict is provisional."""
from __future__ import annotations

import math

METRIC = "fid_fashion_mnist_cnn"  # Fréchet distance in the Fashion-MNIST judge's features (not Inception FID)
K_SE = 2.0        # a difference counts when |mean_a - mean_b| > K_SE * sqrt(s_a²/n_a + s_b²/n_b)
REL_MARGIN = 0.05  # one seed: a difference counts when it exceeds 5% of the two means' average


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
