"""MaskGIT parallel decoding: from all-[MASK] tokens, each step samples every masked token and keeps
the most confident, re-masking the rest on a cosine schedule (Chang et al., 2022).

The model is duck-typed: ``sampler_config``, ``guided_predict`` (and what early exit needs:
``embed``, ``backbone``, ``readout``, ``num_classes``), ``tokenizer`` (``num_tokens``, ``vocab_size``,
``decode``), ``mask_id`` and ``device``.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import trange

from elt.core import schedules
from elt.samplers.early_exit import StepLoops, maskgit_distance


def cosine_schedule(ratio: torch.Tensor | float):
    """Fraction of tokens still masked at ``ratio`` ∈ [0, 1] of the way through decoding."""
    return torch.cos(torch.as_tensor(ratio) * math.pi / 2)


def gumbel(shape, generator, device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp(1e-20, 1 - 1e-7)
    return -torch.log(-torch.log(u))


@torch.no_grad()
def sample(model, labels: torch.Tensor, loops, generator: torch.Generator | None = None,
           progress: bool = False, early_exit=None, stats: dict | None = None, **overrides) -> torch.Tensor:
    """MaskGIT parallel decoding. ``loops``: an int (the same L at every step) or a loop schedule
    (elt.core.schedules); ``early_exit``: stop each sample's loops once successive exits agree
    (elt.samplers.early_exit.EarlyExit). ``stats``, if a dict, receives ``loops`` and ``heads``
    [B, steps]: the loops each sample ran and the heads read at every step."""
    cfg = model.sampler_config(**overrides)
    steps, dev, mask_id = int(cfg["steps"]), model.device, model.mask_id
    if steps < 1:
        raise ValueError(f"sampler steps must be >= 1, got {steps}")
    labels = labels.to(dev)
    b, t = len(labels), model.tokenizer.num_tokens
    run = StepLoops(loops, steps, early_exit, "maskgit", b, dev)
    tokens = torch.full((b, t), mask_id, dtype=torch.long, device=dev)
    desc = f"decode L={loops}" if isinstance(loops, int) else f"decode {schedules.name(loops)}"
    for k in trange(steps, disable=not progress, desc=desc, leave=False):
        ratio = (k + 1) / steps
        last = k == steps - 1
        temp = cfg["temperature_end"] + (cfg["temperature_start"] - cfg["temperature_end"]) * (1 - ratio)
        # the step's noise, drawn before the network (which draws none): the same numbers in the
        # same order as drawing after it, and fixed across exits so that their commits compare
        noise_tok = gumbel((b, t, model.tokenizer.vocab_size), generator, dev)
        noise_conf = None if last else gumbel((b, t), generator, dev)
        unknown = tokens == mask_id

        def commit(logits, idx=slice(None)):
            return decode_step(logits, tokens[idx], unknown[idx], noise_tok[idx], None if last else noise_conf[idx],
                               temp, ratio, cfg["choice_temperature"], last, mask_id)

        distance = maskgit_distance(run.criterion, commit, unknown, mask_id)
        logits = run.predict(model, k, {"tokens": tokens, "labels": labels}, float(cfg["cfg_scale"]), distance)
        tokens = commit(logits)
    run.report(stats)
    return model.tokenizer.decode(tokens)


def decode_step(logits, tokens, unknown, noise_tok, noise_conf, temp: float, ratio: float,
                choice_temperature: float, last: bool, mask_id: int) -> torch.Tensor:
    """One parallel-decoding update from a step's logits and its pre-drawn Gumbel noise: sample
    every masked token, then (except at the last step) re-mask the least confident ones."""
    t = tokens.shape[1]
    sampled = (logits / max(temp, 1e-6) + noise_tok).argmax(-1)
    sampled = torch.where(unknown, sampled, tokens)
    if last:
        return sampled
    conf = logits.log_softmax(-1).gather(-1, sampled[..., None]).squeeze(-1)
    conf = conf + choice_temperature * (1 - ratio) * noise_conf
    conf = torch.where(unknown, conf, torch.full_like(conf, float("inf")))
    n_sched = torch.floor(cosine_schedule(ratio) * t).long().to(tokens.device)
    n_mask = torch.clamp(torch.minimum(unknown.sum(1) - 1, n_sched), min=1)
    remask = conf.argsort(1).argsort(1) < n_mask[:, None]  # the least confident
    return torch.where(remask, torch.full_like(sampled, mask_id), sampled)
