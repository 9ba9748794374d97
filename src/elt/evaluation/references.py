"""What every row is scored with: the feature extractors (the dataset's judge or the literature's
networks) and each one's statistics of the real reference split, trained or computed on a cache miss."""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from elt.evaluation import judges
from elt.evaluation.extractors import STANDARD_EXTRACTORS, FeatureExtractor, JudgeExtractor
from elt.evaluation.scoring import reference_statistics
from elt.evaluation.settings import Settings
from elt.runtime.config import ConfigError
from elt.runtime.distributed import Ranks


def build_extractors(names: list[str], cfg: DictConfig, train_cfg: DictConfig, datamodule) -> list[FeatureExtractor]:
    dataset = datamodule.name
    modality = "video" if len(datamodule.image_shape) == 4 else "image"
    if names == ["auto"]:  # the dataset's own judge where one exists, else the literature's network
        names = ["judge"] if dataset in judges.JUDGES else (["inception"] if modality == "image" else ["i3d"])
    out = []
    for name in names:
        if name in STANDARD_EXTRACTORS:
            out.append(STANDARD_EXTRACTORS[name](OmegaConf.select(cfg, f"eval.weights.{name}")))
            continue
        if name not in ("judge", judges.judge_name(dataset)):
            raise ConfigError(f"eval.extractors: {name!r} is not the judge of dataset {dataset!r} ({judges.judge_name(dataset)})")
        net, info = judges.load_or_train_judge(dataset, datamodule, train_cfg.data.module, cfg.paths.cache_dir)
        out.append(JudgeExtractor(net, info, modality))
    return out


def judges_and_references(cfg: DictConfig, train_cfg: DictConfig, s: Settings, device: torch.device,
                          num_classes: int, ranks: Ranks, npz: dict | None = None):
    """-> (datamodule, extractors, {extractor: real statistics}): the judge trained and the statistics
    computed on a cache miss (statistics on rank 0 only). Shared with ``elt.jobs.warm``, which
    fills these caches before evaluations that run side by side would each fill them."""
    with ranks.main_first():  # rank 0 writes the data and judge caches, the others read them
        datamodule = instantiate(train_cfg.data.module)
        datamodule.setup()
        extractors = [e.to(device) for e in build_extractors(s.extractors, cfg, train_cfg, datamodule)]
    names = [e.name for e in extractors]
    if npz is not None and "inception" not in names:
        raise ConfigError(f"eval.reference_stats holds InceptionV3 statistics, but eval.extractors gives {names}; "
                          "add inception to eval.extractors or set eval.reference_stats=null")
    split = {"train": datamodule.train_dataset, "val": datamodule.val_dataset}[s.reference_split]
    references = {  # only rank 0 scores
        e.name: npz if npz is not None and e.name == "inception" else reference_statistics(
            e, split, f"{datamodule.name}_{s.reference_split}", judges.data_key(train_cfg.data.module),
            cfg.paths.cache_dir, s.batch_size, device, per_class=s.reference_per_class, num_classes=num_classes)
        for e in extractors
    } if ranks.main else {}
    return datamodule, extractors, references
