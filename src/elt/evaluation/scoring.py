"""From samples to numbers: stream batches through the extractors, compare with cached real
statistics. Samples are never all held in memory (50k ImageNet images would not fit): each batch
is reduced to features at once, and only the few shown in the grid are kept."""
from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset, default_collate
from tqdm.auto import tqdm

from elt.runtime.config import ConfigError
from elt.evaluation.extractors import FeatureExtractor
from elt.runtime.files import atomic_path, fingerprint
from elt.evaluation.metrics import FeatureStats, frechet_distance, inception_score, precision_recall

log = logging.getLogger(__name__)

PR_MAX_ITEMS = 10_000  # k-NN precision/recall is quadratic; features beyond this are not kept
INCEPTION_DIM = 2048  # InceptionV3 pool features: what ADM's reference batches hold


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


def balanced_subset(dataset, per_class: int, num_classes: int) -> Subset:
    """The first ``per_class`` items of each class (fewer where a class has fewer), in dataset
    order. Reads the dataset's ``.labels`` (known without decoding an image) when it has them:
    drawing 50 per class from ImageNet's 1.28M training images must not read every image."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = torch.tensor([dataset[i]["label"] for i in range(len(dataset))])
    labels = torch.as_tensor(labels)
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(num_classes)])
    return Subset(dataset, idx.sort().values.tolist())


def reference_statistics(extractor: FeatureExtractor, dataset, tag: str, data_key: dict, cache_dir: str | Path,
                         batch_size: int, device: torch.device, per_class: int | None = None,
                         num_classes: int | None = None) -> dict:
    """Mean/covariance (and up to PR_MAX_ITEMS features) of a real split in ``extractor``'s space,
    computed once per (dataset split, extractor weights, subset) and cached as ``<cache_dir>/``
    ``reference/<tag>_<extractor>_<key>.npz``. ``per_class``: only a class-balanced subset of at
    most that many items per class (``num_classes`` classes), drawn only on a cache miss."""
    subset = {"per_class": per_class} if per_class else {}  # keyed only when set: the whole split's key names no subset
    key = fingerprint({"data": data_key, "extractor": extractor.fingerprint, "tag": tag, **subset})
    path = Path(cache_dir) / "reference" / f"{tag}{f'_{per_class}pc' if per_class else ''}_{extractor.name}_{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return {k: z[k] for k in ("mu", "sigma", "features", "n")}
        except Exception as e:  # corrupt cache: recompute rather than trust or crash
            log.warning("reference statistics %s unreadable (%s); recomputing", path, e)
    if per_class:
        dataset = balanced_subset(dataset, per_class, num_classes)
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


def npz_member_shape(z, name: str) -> tuple[int, ...] | None:
    """Shape of array ``name`` in an open npz, read from its header only (ADM's ``arr_0`` is 2 GB of images)."""
    if name not in z.files:
        return None
    with z.zip.open(f"{name}.npy") as f:
        fmt = np.lib.format
        shape, _, _ = (fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0)(f)
    return tuple(shape)


ADM_REFERENCE_HINT = ("ADM's ImageNet 256 reference batch is https://openaipublic.blob.core.windows.net/diffusion/"
                      "jul-2021/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz (fetch it on a connected machine)")


def load_reference_npz(path, pr_k: int | None = None) -> dict:
    """Precomputed InceptionV3 reference statistics, e.g. ADM's reference batch
    (VIRTUAL_imagenet256_labeled.npz: ``mu`` [2048], ``sigma`` [2048, 2048], images in ``arr_0``),
    checked before any sampling. Precision/recall needs the reference's features themselves (key
    ``features`` [n, 2048]); ADM's files have only their moments, so it is refused for them."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"eval.reference_stats: file not found: {p}; {ADM_REFERENCE_HINT}")
    try:
        z = np.load(p)
    except Exception as e:
        raise ValueError(f"eval.reference_stats: {p} is not a readable .npz ({type(e).__name__}: {str(e)[:200]})") from None
    with z:
        missing = [k for k in ("mu", "sigma") if k not in z.files]
        if missing:
            raise ValueError(f"eval.reference_stats: {p} has no {' or '.join(missing)} array (it holds {sorted(z.files)})")
        mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
        d = INCEPTION_DIM
        if mu.shape != (d,) or sigma.shape != (d, d) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError(f"eval.reference_stats: {p} must hold finite {d}-d InceptionV3 statistics (mu [{d}], "
                             f"sigma [{d}, {d}]), got mu {list(mu.shape)}, sigma {list(sigma.shape)}")
        ref = {"mu": mu, "sigma": sigma, "path": str(p),
               "fingerprint": fingerprint([hashlib.sha256(a.tobytes()).hexdigest() for a in (mu, sigma)])}
        if "features" in z.files:
            feats = z["features"]
            if feats.ndim != 2 or feats.shape[1] != d:
                raise ValueError(f"eval.reference_stats: {p}: features must be [n, {d}], got {list(feats.shape)}")
            ref["features"] = feats[:PR_MAX_ITEMS].astype(np.float32)
            ref["fingerprint"] = fingerprint([ref["fingerprint"], hashlib.sha256(ref["features"].tobytes()).hexdigest()])
        elif pr_k:
            raise ConfigError(f"eval.precision_recall={pr_k} needs the reference images' features, but "
                              f"eval.reference_stats={p} holds only their moments ({', '.join(sorted(z.files))}); "
                              "set eval.precision_recall=false, or eval.reference_stats=null to use the real split")
        shape = npz_member_shape(z, "arr_0")
        ref["n"] = len(feats) if "features" in z.files else (shape[0] if shape else None)
    return ref
