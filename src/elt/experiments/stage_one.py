"""Stage one of the paper's two-stage pipeline, in miniature: train a small diffusers ``VQModel``
(MaskGIT-ELT's tokenizer: 28×28 → 7×7 tokens) or ``AutoencoderKL`` (DiT-ELT's: 28×28 → 4×7×7
latents) on Fashion-MNIST in a few CPU-minutes, and ``save_pretrained`` it where
``data.tokenizer.path`` / ``data.autoencoder.path`` point, so stage two (prepare.py → shards →
train.py → eval.py) loads it through ``elt.encoders.pretrained`` exactly as it loads the ImageNet VQGAN / SD VAE.

    python -m elt.experiments.stage_one vq --raw-root /usr/share/datasets/fashion-mnist --out data/weights/fashion_mnist_vq
    python -m elt.experiments.stage_one kl --raw-root /usr/share/datasets/fashion-mnist --out data/weights/fashion_mnist_kl

Deterministic on a machine (one thread, fixed seeds), so a rerun gives the same weights and with them
the same encoder fingerprint of the shards; oneDNN stays on (much faster), so another CPU may give
other weights, which the fingerprint then tells prepare.py and train.py about. A directory
whose ``stage_one.json`` records the same settings is kept (a rerun costs nothing); held-out
reconstruction quality (MSE, PSNR; VQ: codebook usage) is written there and printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from elt.data.fashion_mnist import DEFAULT_ROOT, FashionMNISTRaw
from elt.runtime.cli import run_tool
from elt.runtime.devices import single_thread
from elt.runtime.files import fingerprint

INFO = "stage_one.json"
KINDS = ("vq", "kl")
# Width (16, 32, 32): enough for 28×28 grey images, and small enough to train in a few CPU-minutes
ARCH = dict(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
            norm_num_groups=8, sample_size=28)
# 64 codes, not 256: on the held-out split they reconstruct better at this step count and leave MaskGIT-ELT a
# lower-entropy token distribution to model (docs/mini_paper.md)
DEFAULTS = {"vq": dict(steps=800, codes=64, embed_dim=8), "kl": dict(steps=600, latent_channels=4, kl_weight=1e-5)}


def build(kind: str, settings: dict):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers

    if kind == "vq":
        return diffusers.VQModel(**ARCH, latent_channels=settings["embed_dim"], vq_embed_dim=settings["embed_dim"],
                                 num_vq_embeddings=settings["codes"])
    return diffusers.AutoencoderKL(**ARCH, latent_channels=settings["latent_channels"])


def restart_dead_codes(vq, z: torch.Tensor, used: torch.Tensor, gen: torch.Generator) -> int:
    """Codes no encoder output chose since the last restart are moved onto random current encoder
    outputs: without it a few hundred codes collapse onto a few dozen."""
    dead = (~used).nonzero().flatten()
    if len(dead):
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).detach()
        pick = torch.randint(0, len(flat), (len(dead),), generator=gen)
        vq.quantize.embedding.weight.data[dead] = flat[pick]
    return len(dead)


def vq_step(net, x, used):
    h = net.quant_conv(net.encoder(x))
    quant, commit, (_, _, ids) = net.quantize(h)
    recon = net.decoder(net.post_quant_conv(quant))
    used[ids.flatten()] = True
    return F.mse_loss(recon, x) + commit, h


def kl_step(net, x, kl_weight):
    posterior = net.encode(x).latent_dist
    recon = net.decode(posterior.sample()).sample
    return F.mse_loss(recon, x) + kl_weight * posterior.kl().mean(), None


@torch.no_grad()
def reconstruction_quality(kind: str, net, images: torch.Tensor, batch: int = 500) -> dict:
    """Held-out reconstruction (images in [0, 1]): MSE, PSNR; VQ: codes in use; KL: latent std."""
    mse, used, latents = 0.0, set(), []
    for x in images.split(batch):
        x2 = x * 2 - 1
        if kind == "vq":
            h = net.encode(x2).latents
            quant, _, (_, _, ids) = net.quantize(h)
            recon = net.decode(quant, force_not_quantize=True).sample
            used.update(ids.flatten().tolist())
        else:
            z = net.encode(x2).latent_dist.mode()
            latents.append(z)
            recon = net.decode(z).sample
        mse += F.mse_loss(((recon + 1) / 2).clamp(0, 1), x, reduction="sum").item()
    mse /= images.numel()
    out = {"val_mse": mse, "val_psnr_db": 10 * math.log10(1 / max(mse, 1e-12)), "val_items": len(images)}
    if kind == "vq":
        out["codes_used"] = len(used)
    else:
        out["latent_std"] = torch.cat(latents).std().item()
    return out


def fit(kind: str, raw_root, out: Path, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
          limit: int | None = None, val_items: int = 2000, val_per_class: int = 500, **overrides) -> dict:
    """Train (or keep, when up to date) the stage-one network at ``out``; returns its stage_one.json.
    ``val_per_class`` must be the data config's (data.val_per_class): the held-out images it scores
    reconstruction on are then never trained on, here or in stage two."""
    if kind not in KINDS:
        raise ValueError(f"stage_one: kind must be one of {KINDS}, got {kind!r}")
    settings = {**DEFAULTS[kind], **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(settings) - set(DEFAULTS[kind]))
    if unknown:
        raise ValueError(f"stage_one {kind}: unknown setting(s) {unknown} (known: {sorted(DEFAULTS[kind])})")
    key = fingerprint({"kind": kind, "arch": ARCH, **settings, "seed": seed, "batch": batch_size, "lr": lr,
                       "limit": limit, "val_items": val_items, "val_per_class": val_per_class})
    out = Path(out)
    info_path = out / INFO
    if info_path.is_file() and (out / "config.json").is_file():
        info = json.loads(info_path.read_text())
        if info.get("key") == key:
            print(f"stage_one {kind}: {out} is up to date (val PSNR {info['val_psnr_db']:.2f} dB)")
            return info
    train_x, _ = FashionMNISTRaw(raw_root, "train", val_per_class=val_per_class, limit=limit).tensors()
    val_x, _ = FashionMNISTRaw(raw_root, "val", val_per_class=val_per_class).tensors()
    val_x = val_x[:val_items]
    with torch.random.fork_rng(), single_thread():
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        net = build(kind, settings)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=settings["steps"], pct_start=0.1)
        net.train()
        used = torch.zeros(settings.get("codes", 1), dtype=torch.bool)
        restarted = 0
        for step in range(settings["steps"]):
            x = train_x[torch.randint(0, len(train_x), (batch_size,), generator=gen)] * 2 - 1
            loss, h = vq_step(net, x, used) if kind == "vq" else kl_step(net, x, settings["kl_weight"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if kind == "vq" and (step + 1) % 100 == 0 and step + 1 < 0.8 * settings["steps"]:
                restarted += restart_dead_codes(net, h, used, gen)
                used.zero_()
            if (step + 1) % 100 == 0:
                print(f"stage_one {kind}: step {step + 1}/{settings['steps']} loss {loss.item():.4f}", flush=True)
        net.eval()
        info = {"kind": kind, "key": key, "settings": settings, "seed": seed, "train_items": len(train_x),
                **reconstruction_quality(kind, net, val_x)}
        if kind == "vq":
            info["dead_codes_restarted"] = restarted
        else:  # DiT sees unit-variance latents, as the SD VAE's 0.18215 gives on ImageNet
            net.register_to_config(scaling_factor=1.0 / info["latent_std"])
            info["scaling_factor"] = 1.0 / info["latent_std"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # a half-written model directory is never loaded
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / INFO).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"stage_one {kind}: val MSE {info['val_mse']:.5f}, PSNR {info['val_psnr_db']:.2f} dB"
          + (f", {info['codes_used']}/{settings['codes']} codes used" if kind == "vq" else
             f", latent scaling {info['scaling_factor']:.3f}") + f" -> {out}")
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elt.experiments.stage_one", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--raw-root", default=DEFAULT_ROOT, help="folder of the Fashion-MNIST IDX files")
    p.add_argument("--out", required=True, help="the diffusers model directory to write (save_pretrained)")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, help="train on the first LIMIT training images only (tests)")
    p.add_argument("--val-items", type=int, default=2000, help="held-out images reconstruction is scored on")
    p.add_argument("--val-per-class", type=int, default=500, help="the data config's data.val_per_class")
    args = p.parse_args(argv)

    def body() -> int:
        fit(args.kind, args.raw_root, Path(args.out), seed=args.seed, batch_size=args.batch_size, limit=args.limit,
            val_items=args.val_items, val_per_class=args.val_per_class, steps=args.steps)
        return 0

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
