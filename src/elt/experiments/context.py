"""Does a masked-token model read its context? Held-out loss on the masked tokens at a few mask
ratios, per loop count.

A model on the independent-pixel plateau (it learned per-position marginals and ignores the visible
tokens) scores the same with 10% masked as with everything masked; one that uses context scores much
better with more visible. docs/demo_results.md reports this beside the video demo's FVD, because
near the plateau the samples alone do not say which side a run is on.

    python -m elt.experiments.context <ckpt> [--ratios 0.1 1.0] [--loops 1 4] [--n 200]
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from elt.evaluation.tables import grid_table
from elt.runtime.checkpoint import load_run
from elt.runtime.cli import run_tool


@torch.no_grad()
def masked_loss(model, images: torch.Tensor, labels: torch.Tensor, ratios, loops, seed: int = 0) -> dict:
    """{(ratio, L): mean cross-entropy on the masked tokens}; each ratio masks a fixed random subset
    (the same for every L), so rows differ only in what the model is shown and how deep it runs."""
    if not hasattr(model, "mask_id"):
        raise ValueError(f"the context test needs a masked-token model (MaskGIT-ELT), got {type(model).__name__}")
    if any(not 0 < r <= 1 for r in ratios):
        raise ValueError(f"mask ratios must be in (0, 1], got {list(ratios)}")
    tokens = model.tokenizer.encode(images)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for ratio in ratios:
        mask = torch.rand(tokens.shape, generator=g) < ratio
        inputs = {"tokens": torch.where(mask, torch.full_like(tokens, model.mask_id), tokens), "labels": labels}
        for L, logits in zip(loops, model.predict(inputs, loops=max(loops), exits=list(loops))):
            out[(ratio, L)] = F.cross_entropy(logits[mask].float(), tokens[mask]).item()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.5, 0.9, 1.0])
    p.add_argument("--loops", nargs="+", type=int, default=None, help="default: 1 and the run's Lmax")
    p.add_argument("--n", type=int, default=200, help="held-out videos/images (the first n of the val split)")
    args = p.parse_args(argv)

    def body() -> int:
        model, cfg = load_run(args.ckpt)
        loops = args.loops or sorted({1, int(cfg.Lmax)})
        datamodule = instantiate(cfg.data.module)
        datamodule.setup()
        val = datamodule.val_dataset
        batch = [val[i] for i in range(min(args.n, len(val)))]
        images = torch.stack([b["image"] for b in batch])
        labels = torch.tensor([b["label"] for b in batch])
        losses = masked_loss(model, images, labels, args.ratios, loops)
        print(f"held-out masked-token loss, {len(batch)} samples ({cfg.run_name})")
        print(grid_table(["masked", *(f"L={L}" for L in loops)],
                         [[f"{r:.0%}", *(f"{losses[(r, L)]:.3f}" for L in loops)] for r in args.ratios]))
        return 0

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
