"""MaskGIT-ELT: class-conditional masked token modelling on the looped backbone.

Bidirectional transformer over [class token, image or video tokens]; loss = cross-entropy on the masked
positions (cosine mask ratio); 10% label drop trains the null class used by guidance. The sampler
is MaskGIT's parallel decoding (``elt.samplers.maskgit``) and takes ``loops=L`` like everything else.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from elt.core.backbone import LoopedBackbone
from elt.core.positions import POS_INITS, sincos_1d, sincos_2d
from elt.encoders.tokenizers import Tokenizer
from elt.models.base import LoopedGenerativeModule
from elt.runtime.kernels import Linear
from elt.samplers import maskgit as decoding


def frame_layout(grid_shape) -> tuple[int, int]:
    """(frames, tokens per frame) of a token grid (..., H, W): leading axes are frames, e.g.
    (T, H, W) for video, (1, H, W) for gray images, (4, 16, 16) for MAGVIT's UCF-101 tokens."""
    grid = tuple(int(g) for g in grid_shape)
    if len(grid) < 2:
        return 1, math.prod(grid)
    return math.prod(grid[:-2]), grid[-2] * grid[-1]


class MaskGITELT(LoopedGenerativeModule):
    DEFAULT_SAMPLER = dict(
        steps=24,  # the paper's ImageNet setting
        temperature_start=1.3,  # token sampling temperature, linear from start to end over steps:
        temperature_end=0.5,  # the paper's rule 0.5 + 0.8·(1 − (k+1)/K)
        choice_temperature=4.5,  # Gumbel noise on confidence, annealed to 0 (MaskGIT)
        cfg_scale=1.0,  # guided = uncond + s·(cond − uncond): 1 = plain conditional, 0 = unconditional
    )

    def __init__(
        self,
        tokenizer: Tokenizer,
        num_classes: int,
        N: int,
        Lmax: int,
        width: int,
        heads: int,
        mlp_dim: int,
        ilsd: dict | None = None,
        optimizer=None,
        scheduler: dict | None = None,
        label_drop: float = 0.1,
        sampler: dict | None = None,
        input_injection: bool = False,
        loop_embedding: bool = False,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        pos_init: str = "normal",
        checkpointing: bool = False,
        name: str = "maskgit_elt",
    ):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if pos_init not in POS_INITS:
            raise ValueError(f"model.pos_init must be one of {', '.join(POS_INITS)}, got {pos_init!r}")
        super().__init__(N=N, Lmax=Lmax, num_classes=num_classes, ilsd=ilsd, optimizer=optimizer, scheduler=scheduler,
                         label_drop=label_drop)
        self.save_hyperparameters(logger=False, ignore=["tokenizer", "optimizer"])
        self.tokenizer = tokenizer
        self.label_smoothing = float(label_smoothing)
        self.sampler_defaults = {**self.DEFAULT_SAMPLER, **dict(sampler or {})}
        vocab = tokenizer.vocab_size
        self.mask_id = vocab
        self.token_embed = nn.Embedding(vocab + 1, width)  # + [MASK]
        self.class_embed = nn.Embedding(num_classes + 1, width)  # + null class for guidance
        frames, frame_tokens = frame_layout(tokenizer.grid_shape)
        # factorised positions: [class, one frame's H·W] table + a per-frame table for videos
        self.pos_embed = nn.Parameter(torch.zeros(1, frame_tokens + 1, width))
        self.backbone = LoopedBackbone(
            width, heads, N, mlp_dim, Lmax=Lmax, input_injection=input_injection,
            loop_embedding=loop_embedding, dropout=dropout, checkpointing=checkpointing,
        )
        self.head = nn.Sequential(nn.LayerNorm(width), Linear(width, vocab))  # shared by every exit
        for t in (self.token_embed.weight, self.class_embed.weight, self.pos_embed, self.head[1].weight):
            nn.init.normal_(t, std=0.02)
        nn.init.zeros_(self.head[1].bias)
        # created last, and only for videos, so image models keep their exact initialisation
        self.frame_embed = nn.Parameter(torch.randn(frames, width) * 0.02) if frames > 1 else None
        if pos_init == "sincos":
            self.init_sincos_positions(tokenizer.grid_shape, width)

    @torch.no_grad()
    def init_sincos_positions(self, grid_shape, width: int) -> None:
        """Start the learned (H, W) and frame tables from sin-cos codes, centred over the grid and
        scaled to the normal init's RMS (0.02): neighbouring positions start alike, so a pattern
        learned at one position (a stroke, a digit shifted by its motion) carries to the next.
        Centring drops the channels whose period dwarfs a small grid: uncentred, two codes of a
        10×10 grid are ~0.8 cosine-similar on average (≥ 0.6 at width 64), mostly one shared constant."""
        grid = tuple(int(g) for g in grid_shape)
        if len(grid) < 2:
            raise ValueError(f"model.pos_init=sincos needs an (..., H, W) token grid, got {grid}")

        def centred(table: torch.Tensor) -> torch.Tensor:
            table = table - table.mean(0)
            return table * (0.02 / table.pow(2).mean().sqrt().clamp_min(1e-12))

        self.pos_embed[0, 1:] = centred(sincos_2d(width, grid[-2], grid[-1]))
        if self.frame_embed is not None:
            self.frame_embed.copy_(centred(sincos_1d(width, torch.arange(len(self.frame_embed))).float()))

    def positions(self) -> torch.Tensor:
        """[1, 1 + tokens, width]: frame t's token (h, w) gets space[h, w] + frame[t]."""
        if self.frame_embed is None:
            return self.pos_embed
        cls, space = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        return torch.cat([cls, (space[:, None] + self.frame_embed[None, :, None]).flatten(1, 2)], dim=1)

    # ---- network -----------------------------------------------------------------------------
    def predict(self, inputs, loops: int, exits: list[int]) -> list[torch.Tensor]:
        h, _ = self.embed(inputs)
        return [self.readout(s, None) for s in self.backbone(h, loops=loops, exits=exits)]  # logits [B, T, vocab]

    def embed(self, inputs):
        h = torch.cat([self.class_embed(inputs["labels"])[:, None], self.token_embed(inputs["tokens"])], dim=1)
        return h + self.positions(), None

    def readout(self, state, cond=None) -> torch.Tensor:
        return self.head(state[:, 1:])

    def flops_per_eval(self, loops: int) -> float:
        seq, vocab, width = self.tokenizer.num_tokens, self.tokenizer.vocab_size, self.backbone.width
        return self.backbone.flops(seq + 1, loops) + 2.0 * seq * width * vocab

    def flops_per_exit(self) -> float:
        """The shared head once: what every extra exit read out by early exit costs."""
        return 2.0 * self.tokenizer.num_tokens * self.backbone.width * self.tokenizer.vocab_size

    # ---- training ------------------------------------------------------------------------------
    def training_inputs(self, batch, generator: torch.Generator | None = None):
        # shards hold the tokens already (prepare.py); the embedded data are encoded here
        tokens = batch["tokens"] if "tokens" in batch else self.tokenizer.encode(batch["image"])
        labels = batch["label"]
        b, t = tokens.shape
        dev = tokens.device
        n_masked = torch.ceil(decoding.cosine_schedule(torch.rand(b, generator=generator, device=dev)) * t).long().clamp(1, t)
        rank = torch.rand(b, t, generator=generator, device=dev).argsort(1).argsort(1)
        mask = rank < n_masked[:, None]
        labels = self.drop_labels(labels, generator)
        inputs = {"tokens": torch.where(mask, torch.full_like(tokens, self.mask_id), tokens), "labels": labels}
        return inputs, {"tokens": tokens, "mask": mask}

    def task_loss(self, logits, targets) -> torch.Tensor:
        """Cross-entropy on the masked positions, with MaskGIT's label smoothing (its class-conditional
        config: 0.1); the distillation target, a full softmax, needs none."""
        m = targets["mask"]
        return F.cross_entropy(logits[m].float(), targets["tokens"][m], label_smoothing=self.label_smoothing)

    def distill_loss(self, student_logits, teacher_logits, targets) -> torch.Tensor:
        """Cross-entropy against the teacher's full softmax, on the masked positions."""
        m = targets["mask"]
        p_teacher = teacher_logits[m].float().softmax(-1)
        return -(p_teacher * student_logits[m].float().log_softmax(-1)).sum(-1).mean()

    # ---- sampling ------------------------------------------------------------------------------
    def sample(self, labels: torch.Tensor, loops, generator: torch.Generator | None = None,
               progress: bool = False, early_exit=None, stats: dict | None = None, **overrides) -> torch.Tensor:
        """MaskGIT parallel decoding (elt.samplers.maskgit.sample)."""
        return decoding.sample(self, labels, loops, generator=generator, progress=progress,
                               early_exit=early_exit, stats=stats, **overrides)
