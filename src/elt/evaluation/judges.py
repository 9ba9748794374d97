"""Domain judges: small classifiers the project trains on a dataset's real training split.

InceptionV3 features of 8×8 digits (and I3D features of 12×12 moving digits) mean little, so the
embedded datasets are judged in the feature space of a classifier trained on their own training
items. Each dataset registers one recipe; the trained judge is cached at
``<cache_dir>/judges/<dataset>_cnn.pt`` together with its held-out accuracy, which every report
prints beside the metrics it produced.
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

from elt.data.moving_digits import DIRECTIONS
from elt.runtime.checkpoint import FIRST_TARGETS, retarget
from elt.runtime.devices import single_thread
from elt.runtime.files import atomic_path, fingerprint

log = logging.getLogger(__name__)


class ConvJudge(nn.Module):
    """conv -> embed -> classify. The 64-d embedding is the feature space of the Fréchet distance;
    the class logits give IS and accuracy."""

    feature_dim = 64

    def __init__(self, conv: nn.Module, conv_out: int, num_classes: int):
        super().__init__()
        self.conv = conv
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(conv_out, self.feature_dim), nn.ReLU())
        self.classify = nn.Sequential(nn.Dropout(0.3), nn.Linear(self.feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(self.conv(x))
        return h, self.classify(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]


class DigitsCNN(ConvJudge):
    """~120k parameters."""

    def __init__(self, num_classes: int = 10, channels: int = 1):
        super().__init__(nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),  # 8×8 -> 4×4
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        ), 64 * 4 * 4, num_classes)


class MovingDigitsCNN3D(ConvJudge):
    """~52k parameters; 3-D kernels see each pixel's neighbours in the previous and next frame, so
    the features (the FVD space) can encode motion, which a per-frame classifier cannot.

    ``aux_head`` predicts the motion direction, in training only: with the class loss alone the
    features keep little motion, so videos frozen at their first frame would score close to real ones."""

    def __init__(self, num_classes: int = 10, num_motions: int = len(DIRECTIONS), channels: int = 1):
        super().__init__(nn.Sequential(
            nn.Conv3d(channels, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(),
            nn.MaxPool3d((1, 2, 2)),  # space only: the temporal kernels below still see every frame
            nn.Conv3d(16, 32, 3, padding=1), nn.BatchNorm3d(32), nn.ReLU(),
            nn.AdaptiveMaxPool3d((2, 3, 3)),  # 4×6×6 -> 2×3×3 by default; other data.frames/canvas fit too
        ), 32 * 2 * 3 * 3, num_classes)
        self.aux_head = nn.Linear(self.feature_dim, num_motions)


class FashionCNN(ConvJudge):
    """~110k parameters for 28×28 gray images (Fashion-MNIST); narrow, so that its 4 epochs over the
    training split stay short on the one thread a pinned judge trains on."""

    def __init__(self, num_classes: int = 10, channels: int = 1):
        super().__init__(nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),  # 14 -> 7
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        ), 32 * 7 * 7, num_classes)


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate the whole batch (every image, every frame of a video) by one shared offset of up
    to ``max_shift`` pixels, zero fill."""
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
    # A second batch key the features must also predict (through the network's .aux_head), so the
    # feature space keeps what the class alone would let it discard; the logits stay the class's.
    aux_target: str | None = None
    aux_weight: float = 1.0


JUDGES: dict[str, JudgeRecipe] = {}


def register_judge(dataset: str, recipe: JudgeRecipe) -> None:
    """A new dataset (e.g. moving-digits videos with a 3D CNN) plugs its judge in here."""
    JUDGES[dataset] = recipe


register_judge("digits", JudgeRecipe(build=DigitsCNN, version="digits_cnn-v2"))
register_judge("fashion_mnist", JudgeRecipe(build=FashionCNN, version="fashion_mnist_cnn-v1", epochs=4,
                                            batch_size=128, min_val_accuracy=0.85))
# Moving digits without random_shift: the data already show every digit at every position, and a
# shift cuts ink off digits touching a wall and moves their bounce off it.
register_judge("moving_digits", JudgeRecipe(build=MovingDigitsCNN3D, version="moving_digits_cnn3d-v3",
                                            epochs=10, batch_size=32, augment=None, aux_target="motion"))


def judge_name(dataset: str) -> str:
    return f"{dataset}_cnn"


LOADER_KEYS = ("batch_size", "num_workers", "cache_dir", "root", "shuffle_buffer", "skip_bad", "max_bad_fraction",
               "pin_memory", "persistent_workers", "prefetch_factor")


def data_key(data_module_cfg: DictConfig | dict) -> dict:
    """What defines the splits (not loader settings, not where generated data is cached, not where a
    model family's shards are: MaskGIT-ELT's tokens and DiT-ELT's latents of one dataset share its
    judge), so a different split retrains the judge."""
    cfg = OmegaConf.to_container(data_module_cfg, resolve=True) if isinstance(data_module_cfg, DictConfig) else dict(data_module_cfg)
    return retarget({k: v for k, v in cfg.items() if k not in LOADER_KEYS}, FIRST_TARGETS)


def judge_key(recipe: JudgeRecipe, data_module_cfg, num_classes: int) -> str:
    """Identifies a trained judge, and so every reference statistic computed with it."""
    return fingerprint({"recipe": recipe.version, "data": data_key(data_module_cfg), "classes": num_classes})


def predictions(net: nn.Module, x: torch.Tensor, target: str) -> torch.Tensor:
    """Logits for ``target``: the class head for "label", the auxiliary head otherwise."""
    h, logits = net.features(x)
    return logits if target == "label" else net.aux_head(h)


@torch.no_grad()
def accuracy(net: nn.Module, dataset, target: str = "label", batch_size: int = 512) -> float:
    net.eval()
    correct = total = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        correct += (predictions(net, batch["image"], target).argmax(1) == batch[target]).sum().item()
        total += len(batch[target])
    return correct / total


@contextmanager
def reproducible(seed: int):
    """Training whose weights depend on the seed, the data and the kernels only: the caller's RNG
    stream is left untouched (fork_rng), one thread, oneDNN off, deterministic algorithms. This
    does not make two CPUs agree: ATen's AVX-512 and portable kernels give other weights, which is
    what the pinned process below is for."""
    before = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(), single_thread(), torch.backends.mkldnn.flags(enabled=False):
        torch.use_deterministic_algorithms(True)
        try:
            torch.manual_seed(seed)
            yield
        finally:
            torch.use_deterministic_algorithms(before)


def train_judge(recipe: JudgeRecipe, num_classes: int, train_dataset, seed: int = 0) -> nn.Module:
    with reproducible(seed):
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
                h, logits = net.features(x)
                loss = F.cross_entropy(logits, batch["label"])
                if recipe.aux_target is not None:
                    loss = loss + recipe.aux_weight * F.cross_entropy(net.aux_head(h), batch[recipe.aux_target])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return net.eval()


# Which kernels run depends on the CPU (AVX2 or AVX-512 code in ATen and MKL, oneDNN's convolutions),
# and over many epochs those last-bit differences grow into another judge, with another held-out
# accuracy. Judges are therefore trained in a fresh process pinned to ATen's portable kernels, MKL's
# conditional numerical reproducibility mode, no oneDNN and one thread: the same weights on any x86
# machine with the same packages, at about twice the training time.
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _train_pinned_child(recipe: JudgeRecipe, num_classes: int, train_dataset, seed: int, out: str) -> None:
    torch.backends.mkldnn.enabled = False
    torch.save(train_judge(recipe, num_classes, train_dataset, seed).state_dict(), out)


def train_judge_pinned(recipe: JudgeRecipe, num_classes: int, train_dataset, seed: int = 0) -> nn.Module:
    """``train_judge`` in a spawned process with ``PINNED_ENV``. A recipe or dataset that cannot be
    sent to another process (a lambda in a user's recipe) is trained here instead, with a warning
    that its weights may differ between machines."""
    import multiprocessing as mp
    import os
    import pickle
    import tempfile

    try:
        pickle.dumps((recipe, train_dataset))
    except Exception as e:  # noqa: BLE001 - anything unpicklable
        log.warning("judge recipe %s cannot be trained in a pinned process (%s); training in this one, whose "
                    "weights may differ between CPUs", recipe.version, e)
        return train_judge(recipe, num_classes, train_dataset, seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "judge.pt")
        saved = {k: os.environ.get(k) for k in PINNED_ENV}
        os.environ.update(PINNED_ENV)  # a spawned child starts from this environment
        try:
            proc = mp.get_context("spawn").Process(target=_train_pinned_child,
                                                   args=(recipe, num_classes, train_dataset, seed, out))
            proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        proc.join()
        if proc.exitcode != 0 or not os.path.isfile(out):
            raise RuntimeError(f"training the judge ({recipe.version}) in a pinned process failed (exit {proc.exitcode})")
        net = recipe.build(num_classes)
        net.load_state_dict(torch.load(out, map_location="cpu", weights_only=True))
    return net.eval()


def load_or_train_judge(dataset: str, datamodule, data_module_cfg, cache_dir: str | Path) -> tuple[nn.Module, dict]:
    """The cached judge of ``dataset`` if it matches recipe and split, else train, check, cache.

    Returns (network in eval mode, info with name, val_accuracy, val_items, key, and with an
    auxiliary target aux_target and val_aux_accuracy)."""
    if dataset not in JUDGES:
        raise ValueError(f"no judge registered for dataset {dataset!r} (known: {sorted(JUDGES)}); "
                         "register one in elt.evaluation.judges or choose eval.extractors=[inception]")
    recipe = JUDGES[dataset]
    key = judge_key(recipe, data_module_cfg, datamodule.num_classes)
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
    log.info("training the %s judge on %d real training items", judge_name(dataset), len(datamodule.train_dataset))
    net = train_judge_pinned(recipe, datamodule.num_classes, datamodule.train_dataset)
    val_acc = accuracy(net, datamodule.val_dataset)
    if val_acc < recipe.min_val_accuracy:
        raise ValueError(f"judge {judge_name(dataset)} reached only {val_acc:.1%} held-out accuracy "
                         f"(< {recipe.min_val_accuracy:.0%}); its metrics would mislead, fix the recipe")
    info = {"name": judge_name(dataset), "val_accuracy": val_acc, "val_items": len(datamodule.val_dataset), "key": key}
    if recipe.aux_target is not None:
        info["aux_target"] = recipe.aux_target
        info["val_aux_accuracy"] = accuracy(net, datamodule.val_dataset, recipe.aux_target)
    with atomic_path(path) as tmp:
        torch.save({"key": key, "info": info, "state_dict": net.state_dict()}, tmp)
    log.info("judge %s: held-out accuracy %.2f%% on %d held-out items, cached at %s", info["name"], 100 * val_acc, info["val_items"], path)
    return net.eval(), info
