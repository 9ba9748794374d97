"""Sample-quality metrics on extracted features: one Fréchet distance (FID and FVD alike),
Inception Score, and k-NN precision/recall.

Everything is float64: covariances of 2048-d features from a few thousand samples are nearly
singular, and float32 sums lose the digits that separate good models.
"""
from __future__ import annotations

import numpy as np
import torch


class FeatureStats:
    """Streaming mean and covariance (Chan et al.'s pairwise merge), so a 1.28M-image reference
    set never has to sit in memory and large means do not cancel in a sum of squares."""

    def __init__(self):
        self.n = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None  # sum of outer products of centred features

    def add(self, features) -> "FeatureStats":
        x = np.asarray(features.detach().cpu() if torch.is_tensor(features) else features, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"features must be a non-empty [N, D] array, got shape {x.shape}")
        m = x.mean(0)
        centred = x - m
        s = centred.T @ centred
        if self.n == 0:
            self.n, self.mean, self.scatter = len(x), m, s
            return self
        n_a, n_b = self.n, len(x)
        delta = m - self.mean
        n = n_a + n_b
        self.mean = self.mean + delta * (n_b / n)
        self.scatter = self.scatter + s + np.outer(delta, delta) * (n_a * n_b / n)
        self.n = n
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        return self.mean, self.scatter / (self.n - 1)  # unbiased, as pytorch-fid and torch-fidelity


def _sqrt_eigenvalues(w: np.ndarray) -> np.ndarray:
    """√ of a PSD matrix's eigenvalues, with those below its numerical rank zeroed: √ would turn
    round-off of 1e-16 into 1e-8 per null direction (there are many when N < D)."""
    tol = np.abs(w).max(initial=0.0) * len(w) * np.finfo(np.float64).eps
    return np.sqrt(np.where(w > tol, w, 0.0))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * _sqrt_eigenvalues(w)) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d² = |μ1−μ2|² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½).

    Tr((Σ1Σ2)^½) is computed as Σ√λ of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½, which has the same
    eigenvalues as Σ1Σ2: no non-symmetric sqrtm, no complex round-off to discard, no diagonal
    jitter needed when Σ is singular (fewer samples than dimensions).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    tr_covmean = _sqrt_eigenvalues(np.linalg.eigvalsh((middle + middle.T) / 2)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """exp E_x KL(p(y|x) ‖ p(y)), mean and std over ``splits`` consecutive chunks (the standard
    protocol, so numbers compare with the literature at equal sample counts)."""
    p = np.asarray(probs.detach().cpu() if torch.is_tensor(probs) else probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < splits:
        raise ValueError(f"need [N, K] probabilities with N >= splits={splits}, got shape {p.shape}")
    scores = []
    for chunk in np.array_split(p, splits):
        marginal = chunk.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(chunk > 0, chunk * (np.log(chunk) - np.log(marginal)), 0.0).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radius(x: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    radii = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(radii)


def _covered(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    inside = []
    for i in range(0, len(queries), chunk):
        inside.append((torch.cdist(queries[i:i + chunk], support) <= radii[None]).any(1))
    return torch.cat(inside)


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019): the share of generated samples inside
    the real k-NN manifold (fidelity) and of real samples inside the generated one (coverage)."""
    real = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _covered(fake, real, _kth_neighbour_radius(real, k)).double().mean()
    recall = _covered(real, fake, _kth_neighbour_radius(fake, k)).double().mean()
    return float(precision), float(recall)
