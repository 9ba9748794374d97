"""The trivial reference model of the results table.

Every token (for the embedded data: every pixel's gray level) is drawn independently from its
per-class training marginal. It knows the class-typical ink layout and nothing about how pixels
co-occur, so a generator that does not beat it has learnt no structure. On the digits it already
fools the judge most of the time, which is why the Fréchet columns, not accuracy, rank models.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from elt.encoders.tokenizers import Tokenizer


class IndependentTokens:
    def __init__(self, tokenizer: Tokenizer, num_classes: int):
        self.tokenizer, self.num_classes = tokenizer, num_classes
        self.probs: torch.Tensor | None = None  # [classes, tokens, vocab]

    def fit(self, dataset, batch_size: int = 1024, device: torch.device | str = "cpu") -> "IndependentTokens":
        """Per-class token counts over ``dataset``: its items' ``"tokens"`` when it yields them
        (pre-tokenised shards), else the tokenizer's encoding of ``"image"`` on ``device`` (a
        pretrained VQ encoder is slow on a CPU). Counted by flat index, never as one-hot batches:
        ImageNet's [1000 classes, 256 tokens, 1024 codes] table is large enough as it is."""
        tok = self.tokenizer
        t, v = tok.num_tokens, tok.vocab_size
        counts = torch.zeros(self.num_classes * t * v, dtype=torch.int64)
        for batch in DataLoader(dataset, batch_size=batch_size):
            if "tokens" in batch:
                tokens = batch["tokens"].flatten(1).long()
            else:
                tokens = tok.encode(batch["image"].to(device)).cpu()  # [B, T]
            if tokens.shape[1] != t or tokens.min() < 0 or tokens.max() >= v:
                raise ValueError(f"trivial model: tokens of shape {tuple(tokens.shape)} with ids "
                                 f"{int(tokens.min())}..{int(tokens.max())} do not fit {t} tokens from a vocabulary of {v}")
            flat = (batch["label"][:, None] * t + torch.arange(t)) * v + tokens
            counts.index_add_(0, flat.flatten(), torch.ones(flat.numel(), dtype=torch.int64))
        counts = counts.view(self.num_classes, t, v)
        seen = counts.sum((1, 2)) > 0
        if not seen.all():
            missing = torch.nonzero(~seen).flatten().tolist()
            raise ValueError(f"trivial model: classes {missing} have no training images")
        self.probs = torch.empty(counts.shape, dtype=torch.float32)
        for c in range(self.num_classes):  # in float64, one class at a time
            self.probs[c] = counts[c] / counts[c].sum(-1, keepdim=True).double()
        return self

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """Tokens drawn on the CPU (the same whatever the device), decoded on ``device``."""
        if self.probs is None:
            raise RuntimeError("IndependentTokens.sample before fit")
        p = self.probs[labels.cpu()]  # [B, T, V]
        tokens = torch.multinomial(p.flatten(0, 1), 1, generator=generator).view(p.shape[:2])
        return self.tokenizer.decode(tokens.to(device))
