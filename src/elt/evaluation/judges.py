"""Domain judges: small classifiers the project trains on a dataset's real training split.

InceptionV3 features of 8×8 digits mean little, so the embedded datasets are judged in the
feature space of a classifier trained on their own training images. Each dataset registers one
recipe; the trained judge is cached at ``<cache_dir>/judges/<dataset>_cnn.pt`` together with its
held-out accuracy, which every report prints beside the metrics it produced.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import trange

from elt.files import atomic_path, fingerprint

log = logging.getLogger(__name__)


class DigitsCNN(nn.Module):
    """~120k parameters; the 64-d penultimate layer is the feature space for Fréchet distance."""

    feature_dim = 64

    def __init__(self, num_classes: int = 10, channels: int = 1):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),  # 8×8 -> 4×4
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, self.feature_dim), nn.ReLU())
        self.classify = nn.Sequential(nn.Dropout(0.3), nn.Linear(self.feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(self.conv(x))
        return h, self.classify(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image (or every frame of a video) by up to ``max_shift`` pixels, zero fill."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[..., dy:dy + h, dx:dx + w]


@dataclass(frozen=True)
class JudgeRecipe:
    """How to build and train the judge of one dataset. Bump ``version`` when any of it changes:
    the cached judge, and every reference statistic computed with it, is then rebuilt."""

    build: Callable[[int], nn.Module]  # num_classes -> network with .features(x) -> (features, logits)
    version: str
    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    augment: Callable | None = random_shift
    min_val_accuracy: float = 0.9  # below this the judge is refused: its metrics would mislead


JUDGES: dict[str, JudgeRecipe] = {}


def register_judge(dataset: str, recipe: JudgeRecipe) -> None:
    """A new dataset (e.g. moving-digits videos with a 3D CNN) plugs its judge in here."""
    JUDGES[dataset] = recipe


register_judge("digits", JudgeRecipe(build=lambda k: DigitsCNN(k), version="digits_cnn-v1"))


def judge_name(dataset: str) -> str:
    return f"{dataset}_cnn"


def data_key(data_module_cfg: DictConfig | dict) -> dict:
    """What defines the splits (not loader settings), so a different split retrains the judge."""
    cfg = OmegaConf.to_container(data_module_cfg, resolve=True) if isinstance(data_module_cfg, DictConfig) else dict(data_module_cfg)
    return {k: v for k, v in cfg.items() if k not in ("batch_size", "num_workers")}


@torch.no_grad()
def accuracy(net: nn.Module, dataset, batch_size: int = 512) -> float:
    net.eval()
    correct = total = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        correct += (net(batch["image"]).argmax(1) == batch["label"]).sum().item()
        total += len(batch["label"])
    return correct / total


@contextmanager
def single_thread():
    """Kernels this small gain nothing from threads, and on a busy machine OpenMP workers waiting
    for each other made judge training 10x slower (64 s vs 6 s for 3 epochs on 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_judge(recipe: JudgeRecipe, num_classes: int, train_dataset, seed: int = 0) -> nn.Module:
    # fork_rng leaves the caller's RNG stream (and thus its samples) untouched
    with torch.random.fork_rng(), single_thread():
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        net = recipe.build(num_classes)
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        loader = DataLoader(train_dataset, batch_size=recipe.batch_size, shuffle=True, drop_last=True, generator=gen)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.epochs * len(loader))
        net.train()
        for _ in trange(recipe.epochs, desc="train judge (epochs)", leave=False):
            for batch in loader:
                x = batch["image"]
                if recipe.augment is not None:
                    x = recipe.augment(x, gen)
                loss = F.cross_entropy(net(x), batch["label"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return net.eval()


def load_or_train_judge(dataset: str, datamodule, data_module_cfg, cache_dir: str | Path) -> tuple[nn.Module, dict]:
    """The cached judge of ``dataset`` if it matches recipe and split, else train, check, cache.

    Returns (network in eval mode, info with name, val_accuracy, val_items, key)."""
    if dataset not in JUDGES:
        raise ValueError(f"no judge registered for dataset {dataset!r} (known: {sorted(JUDGES)}); "
                         "register one in elt.evaluation.judges or choose eval.extractors=[inception]")
    recipe = JUDGES[dataset]
    key = fingerprint({"recipe": recipe.version, "data": data_key(data_module_cfg), "classes": datamodule.num_classes})
    path = Path(cache_dir) / "judges" / f"{judge_name(dataset)}.pt"
    net = recipe.build(datamodule.num_classes)
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a corrupt cache file is rebuilt, never trusted
            log.warning("judge cache %s unreadable (%s); retraining", path, e)
            cached = {}
        if cached.get("key") == key:
            net.load_state_dict(cached["state_dict"])
            return net.eval(), cached["info"]
        log.info("judge cache %s is for other data or an older recipe; retraining", path)
    datamodule.setup()
    log.info("training the %s judge on %d real training images", judge_name(dataset), len(datamodule.train_dataset))
    net = train_judge(recipe, datamodule.num_classes, datamodule.train_dataset)
    val_acc = accuracy(net, datamodule.val_dataset)
    if val_acc < recipe.min_val_accuracy:
        raise ValueError(f"judge {judge_name(dataset)} reached only {val_acc:.1%} held-out accuracy "
                         f"(< {recipe.min_val_accuracy:.0%}); its metrics would mislead, fix the recipe")
    info = {"name": judge_name(dataset), "val_accuracy": val_acc, "val_items": len(datamodule.val_dataset), "key": key}
    with atomic_path(path) as tmp:
        torch.save({"key": key, "info": info, "state_dict": net.state_dict()}, tmp)
    log.info("judge %s: held-out accuracy %.2f%% on %d images, cached at %s", info["name"], 100 * val_acc, info["val_items"], path)
    return net.eval(), info
