"""From samples to numbers: stream batches through the extractors, compare with cached real
statistics. Samples are never all held in memory (50k ImageNet images would not fit): each batch
is reduced to features at once, and only the few shown in the grid are kept."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from elt.evaluation.extractors import FeatureExtractor
from elt.files import atomic_path, fingerprint
from elt.evaluation.metrics import FeatureStats, frechet_distance, inception_score, precision_recall

log = logging.getLogger(__name__)

PR_MAX_ITEMS = 10_000  # k-NN precision/recall is quadratic; features beyond this are not kept


class Scorer:
    """Accumulates, per extractor, streaming feature statistics, class probabilities and labels."""

    def __init__(self, extractors: list[FeatureExtractor], device: torch.device, keep_features: bool = False):
        self.extractors, self.device, self.keep_features = extractors, device, keep_features
        self.stats = {e.name: FeatureStats() for e in extractors}
        self.features = {e.name: [] for e in extractors}
        self.probs = {e.name: [] for e in extractors}
        self.labels: list[torch.Tensor] = []
        self.kept = 0

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Per extractor, one batch's features (and class probabilities) on the CPU: what a rank
        of a distributed evaluation sends to rank 0. Always fp32, whatever the sampling precision."""
        images = images.to(self.device).float()
        outputs = {}
        for e in self.extractors:
            out = e(images)
            outputs[e.name] = {"features": out["features"].float().cpu()}
            if "logits" in out:
                outputs[e.name]["probs"] = out["logits"].double().softmax(-1).cpu()
        return outputs

    def accumulate(self, outputs: dict[str, dict[str, torch.Tensor]], labels: torch.Tensor | None = None) -> None:
        """Fold in one batch's ``extract`` output; batches must come in a fixed order for the
        numbers (float64 sums, the first PR_MAX_ITEMS features) to be reproducible."""
        n = 0
        for e in self.extractors:
            out = outputs[e.name]
            n = len(out["features"])
            self.stats[e.name].add(out["features"])
            if self.keep_features and self.kept < PR_MAX_ITEMS:
                self.features[e.name].append(out["features"][: PR_MAX_ITEMS - self.kept].double())
            if "probs" in out:
                self.probs[e.name].append(out["probs"])
        self.kept += n
        if labels is not None:
            self.labels.append(labels.cpu())

    def add(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.accumulate(self.extract(images), labels)

    def kept_features(self, name: str) -> np.ndarray:
        return torch.cat(self.features[name]).numpy()

    def metrics(self, references: dict[str, dict], is_splits: int, pr_k: int | None) -> dict[str, float]:
        """Fréchet distance to the reference set for every extractor; IS and conditional accuracy
        where the extractor classifies; improved precision/recall when ``pr_k`` is set."""
        out = {}
        labels = torch.cat(self.labels) if self.labels else None
        for e in self.extractors:
            ref = references[e.name]
            mu, sigma = self.stats[e.name].mean_cov()
            out[e.fd_metric] = frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
            probs = torch.cat(self.probs[e.name]) if self.probs[e.name] else None
            if e.is_metric and probs is not None:
                splits = min(is_splits, len(probs))
                out[e.is_metric], std = inception_score(probs, splits)
                out[f"{e.is_metric}_std"] = std if splits > 1 else None  # one split: no spread, not "± 0"
            if e.acc_metric and probs is not None and labels is not None:
                out[e.acc_metric] = float((probs.argmax(1) == labels).double().mean())
            if pr_k:
                p, r = precision_recall(ref["features"], self.kept_features(e.name), k=pr_k)
                out[f"precision_{e.name}"], out[f"recall_{e.name}"] = p, r
        return out


def dataset_batch(dataset, batch_size: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch i of ``dataset`` in order, as a DataLoader without shuffling would yield it; random
    access, so that ranks of a distributed evaluation each load only their own batches."""
    batch = default_collate([dataset[j] for j in range(i * batch_size, min((i + 1) * batch_size, len(dataset)))])
    return batch["image"], batch["label"]


def dataset_batches(dataset, batch_size: int):
    for i in range(math.ceil(len(dataset) / batch_size)):
        yield dataset_batch(dataset, batch_size, i)


def reference_statistics(extractor: FeatureExtractor, dataset, tag: str, data_key: dict, cache_dir: str | Path,
                         batch_size: int, device: torch.device) -> dict:
    """Mean/covariance (and up to PR_MAX_ITEMS features) of a real split in ``extractor``'s space,
    computed once per (dataset split, extractor weights) and cached as ``<cache_dir>/reference/``
    ``<tag>_<extractor>_<key>.npz``."""
    key = fingerprint({"data": data_key, "extractor": extractor.fingerprint, "tag": tag})
    path = Path(cache_dir) / "reference" / f"{tag}_{extractor.name}_{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return {k: z[k] for k in ("mu", "sigma", "features", "n")}
        except Exception as e:  # corrupt cache: recompute rather than trust or crash
            log.warning("reference statistics %s unreadable (%s); recomputing", path, e)
    scorer = Scorer([extractor], device, keep_features=True)
    with tqdm(total=len(dataset), desc=f"reference {tag} ({extractor.name})", unit="img", leave=False) as bar:
        for images, _ in dataset_batches(dataset, batch_size):
            scorer.add(images)
            bar.update(len(images))
    mu, sigma = scorer.stats[extractor.name].mean_cov()
    ref = {"mu": mu, "sigma": sigma, "features": scorer.kept_features(extractor.name).astype(np.float32),  # k-NN only
           "n": np.array(len(dataset))}
    with atomic_path(path) as tmp:
        np.savez(tmp, **ref)
    return ref
