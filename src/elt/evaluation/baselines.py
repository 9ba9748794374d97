"""The trivial reference model of the results table.

Every token (for the embedded data: every pixel's gray level) is drawn independently from its
per-class training marginal. It knows the class-typical ink layout and nothing about how pixels
co-occur, so a generator that does not beat it has learnt no structure. On the digits it already
fools the judge most of the time, which is why the Fréchet columns, not accuracy, rank models.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from elt.tokenizers import Tokenizer


class IndependentTokens:
    def __init__(self, tokenizer: Tokenizer, num_classes: int):
        self.tokenizer, self.num_classes = tokenizer, num_classes
        self.probs: torch.Tensor | None = None  # [classes, tokens, vocab]

    def fit(self, dataset, batch_size: int = 1024) -> "IndependentTokens":
        tok = self.tokenizer
        counts = torch.zeros(self.num_classes, tok.num_tokens, tok.vocab_size, dtype=torch.float64)
        for batch in DataLoader(dataset, batch_size=batch_size):
            tokens = tok.encode(batch["image"])  # [B, T]
            one_hot = torch.nn.functional.one_hot(tokens, tok.vocab_size).double()
            counts.index_add_(0, batch["label"], one_hot)
        seen = counts.sum((1, 2)) > 0
        if not seen.all():
            missing = torch.nonzero(~seen).flatten().tolist()
            raise ValueError(f"trivial model: classes {missing} have no training images")
        self.probs = (counts / counts.sum(-1, keepdim=True)).float()
        return self

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.probs is None:
            raise RuntimeError("IndependentTokens.sample before fit")
        p = self.probs[labels.cpu()]  # [B, T, V]
        tokens = torch.multinomial(p.flatten(0, 1), 1, generator=generator).view(p.shape[:2])
        return self.tokenizer.decode(tokens)
