"""Sharded training: weight-decay groups by module type, the FSDP wrap policy, trainer=fsdp, and a
2-rank CPU (gloo) FSDP run against single-process training.

Lightning's FSDPStrategy refuses accelerator=cpu, and passes device_id=None for CPU devices, which
torch's FSDP1 rejects; FSDP1 itself runs on CPU with gloo when given device_id=cpu. So the 2-rank
test drives torch's FullyShardedDataParallel with the exact arguments trainer=fsdp gives Lightning
(policy, FULL_SHARD, use_orig_params) and the optimizer groups configure_optimizers builds, and the
Lightning Trainer itself is only composed here (GPU-only).
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate
from torch import nn

from elt.core.backbone import Block, Modulation, fsdp_wrap_policy
from elt.core.optim import param_groups, split_decay
from support.config import compose_cfg
from support.models import digits_batch, random_dit, tiny_dit, tiny_maskgit

FSDP_PREFIX = "_fsdp_wrapped_module."
STEPS, LR, CLIP = 3, 1e-3, 0.3


def tiny(family: str, **kw):
    if family == "maskgit":
        return tiny_maskgit(Lmax=3, **kw)
    model = random_dit(Lmax=3, **kw)  # adaLN-Zero: else every block gradient is exactly 0 at first
    model.ema = None  # no EMA under FSDP (train refuses it)
    return model


def decay_names(module: nn.Module) -> tuple[list[str], list[str]]:
    decay, no_decay = split_decay(module)
    strip = lambda pairs: sorted(n.replace(FSDP_PREFIX, "") for n, _ in pairs)
    return strip(decay), strip(no_decay)


# ---- weight-decay groups ------------------------------------------------------------------------
BLOCK_MATRICES = ["qkv", "proj", "fc1", "fc2"]


def test_maskgit_groups_exactly():
    model = tiny_maskgit(N=2, loop_embedding=True)
    decay, no_decay = decay_names(model)
    assert decay == sorted([f"backbone.blocks.{i}.{m}.weight" for i in range(2) for m in BLOCK_MATRICES]
                           + ["head.1.weight"])
    assert set(no_decay) == {n for n, _ in model.named_parameters()} - set(decay)
    assert {"token_embed.weight", "class_embed.weight", "pos_embed", "backbone.loop_embed",
            "head.0.weight", "backbone.blocks.0.norm1.weight", "backbone.blocks.0.qkv.bias"} <= set(no_decay)


@pytest.mark.parametrize("latent", [(1, 8, 8), (1, 2, 8, 8)], ids=["Conv2d", "Conv3d"])
def test_dit_groups_exactly(latent):
    model = tiny_dit(N=2, latent=latent)
    decay, no_decay = decay_names(model)
    assert decay == sorted(
        [f"backbone.blocks.{i}.{m}.weight" for i in range(2) for m in BLOCK_MATRICES + ["modulation.1"]]
        + ["patch_embed.weight", "time_embed.0.weight", "time_embed.2.weight", "final_modulation.1.weight",
           "final_linear.weight"])
    assert set(no_decay) == {n for n, _ in model.named_parameters()} - set(decay)
    assert "class_embed.weight" in no_decay and all(n.endswith(".bias") for n in no_decay if n != "class_embed.weight")
    assert not any(n.startswith("ema") for n in decay + no_decay)  # EMA shadows are buffers


@pytest.mark.parametrize("family", ["maskgit", "dit"])
def test_groups_do_not_depend_on_shapes(family):
    """FSDP (use_orig_params) leaves every parameter a 1-D shard, possibly empty: same groups."""
    model = tiny(family)
    before = decay_names(model)
    groups = param_groups(model)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.data = p.data.flatten()[: i % 3]  # 1-D, some empty, as on a rank that holds no shard
    assert decay_names(model) == before
    assert [len(g["params"]) for g in param_groups(model)] == [len(g["params"]) for g in groups]
    assert groups[1]["weight_decay"] == 0.0 and "weight_decay" not in groups[0]  # the optimizer's value


def test_configure_optimizers_uses_the_groups():
    model = tiny_maskgit()
    model.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    model.trainer = type("T", (), {"estimated_stepping_batches": 10})()  # what configure_optimizers reads
    opt = model.configure_optimizers()["optimizer"]
    want = param_groups(model)
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [[id(p) for p in g["params"]] for g in want]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


# ---- wrap policy and trainer=fsdp --------------------------------------------------------------
@pytest.mark.parametrize("family", ["maskgit", "dit"])
def test_wrap_policy_picks_exactly_the_unique_blocks_and_their_modulation(family):
    model = tiny(family, N=3)
    chosen = fsdp_wrap_policy()._run_policy(model, ignored_modules=set(), root_kwargs={})
    # the root unit (embeddings, heads) is FSDP's own wrapper, not the policy's
    blocks = list(model.backbone.blocks)
    modulations = [b.modulation for b in blocks if b.modulation is not None]
    assert set(chosen) == set(blocks + modulations) and len(modulations) == (3 if family == "dit" else 0)
    assert all(type(m) in (Block, Modulation) for m in chosen)
    assert not any(isinstance(m, Modulation) for n, m in model.named_modules() if "backbone" not in n)


def test_trainer_fsdp_composes_and_builds_the_strategy(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    cfg = compose_cfg("train", ["trainer=fsdp", "model=dit_elt", "model.checkpointing=true"], tmp_path)
    assert cfg.trainer.precision == "auto" and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.gradient_clip_val == 1.0  # clipped by the FSDP root (configure_gradient_clipping)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert isinstance(strategy.kwargs["auto_wrap_policy"], ModuleWrapPolicy)
    assert strategy.kwargs["use_orig_params"] is True
    assert not strategy._activation_checkpointing_kwargs  # activation memory is model.checkpointing's job
    assert instantiate(cfg.model).backbone.checkpointing is True


# ---- 2 ranks on CPU vs one process -----------------------------------------------------------------
def optimizer(model: nn.Module):
    return torch.optim.AdamW(param_groups(model), lr=LR, weight_decay=0.1)  # decay live, to test the groups


class TrainingStep(nn.Module):
    """The FSDP root, as Lightning's forward redirection makes it: its forward is the training loss,
    so the root unit's parameters (embeddings, head) are gathered for it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)[0]


def seeded_loss(loss_fn, model, step: int, rank: int) -> torch.Tensor:
    """This rank's half of the step's data, with its draws (ILSD's Lint, masks / noise) seeded by
    (step, rank) whether the model draws from the global RNG or from its own noise_seed."""
    torch.manual_seed(1000 * step + rank)
    model.noise_seed = 1000 * step + rank
    return loss_fn(digits_batch(8, seed=100 * step + rank))


def fsdp_worker(rank: int, world: int, port: int, out: str, cases):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    results = {}
    for family, checkpointing in cases:
        model = tiny(family, checkpointing=checkpointing).train()
        model.ilsd_lambda = 0.5  # both ILSD terms live
        before = decay_names(model)
        # configs/trainer/fsdp.yaml's arguments; device_id=cpu is what Lightning cannot pass on CPU
        root = FSDP(TrainingStep(model), auto_wrap_policy=fsdp_wrap_policy(), use_orig_params=True,
                    sharding_strategy=ShardingStrategy.FULL_SHARD, device_id=torch.device("cpu"))
        units = [m for m in root.modules() if isinstance(m, FSDP)]
        dit = family == "dit"
        assert {type(u.module) for u in units} == {TrainingStep, Block} | ({Modulation} if dit else set())
        assert len(units) == 1 + model.N * (1 + dit)
        assert decay_names(model) == before  # groups built after wrapping (as Lightning does) are unchanged
        opt = optimizer(model)
        calls = {Block: [0], Modulation: [0]}  # of block 0's units
        first = model.backbone.blocks[0]  # now FSDP's unit, as is its .modulation (DiT)
        for unit in (u for u in units if u is first or u is first.modulation):
            counter = calls[type(unit.module)]
            unit.register_forward_pre_hook(lambda *_, c=counter: c.__setitem__(0, c[0] + 1))
        losses, norms, grads = [], [], None
        for step in range(STEPS):
            loss = seeded_loss(root, model, step, rank)
            loss.backward()
            if step == 0:
                with FSDP.summon_full_params(root, with_grads=True):
                    grads = {n.replace(FSDP_PREFIX, ""): p.grad.clone() for n, p in model.named_parameters()}
            norms.append(root.clip_grad_norm_(CLIP).reshape(1))  # the sharded-gradient norm, all ranks
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(torch.tensor([loss.item()]))
        both = [torch.zeros(STEPS) for _ in range(world)]
        dist.all_gather(both, torch.cat(losses))
        with FSDP.summon_full_params(root):
            weights = {n.replace(FSDP_PREFIX, ""): p.detach().clone() for n, p in model.named_parameters()}
        results[(family, checkpointing)] = dict(losses=torch.stack(both), norms=torch.cat(norms), grads=grads,
                                                weights=weights,
                                                calls=(calls[Block][0], calls[Modulation][0]))
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


def single_process(family: str, world: int):
    """The same steps in one process: the mean of the ranks' losses is what FSDP's averaged gradient optimises."""
    model = tiny(family).train()
    model.ilsd_lambda = 0.5
    opt = optimizer(model)
    losses, norms, grads = [], [], None
    for step in range(STEPS):
        per_rank = [seeded_loss(lambda b: model.loss(b)[0], model, step, r) for r in range(world)]
        (sum(per_rank) / world).backward()
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).reshape(1))
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(torch.stack([l.detach() for l in per_rank]))
    return torch.stack(losses, 1), torch.cat(norms), grads, {n: p.detach() for n, p in model.named_parameters()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_rank_cpu_fsdp_matches_single_process(tmp_path):
    """FULL_SHARD over 2 gloo ranks, each looped Block one FSDP unit called L times per forward (and
    again in backward with model.checkpointing): first-step gradients, gradient norms (clipped), the
    loss trajectory and the final weights match one process training on both ranks' data."""
    cases = [("maskgit", False), ("dit", True)]
    out = tmp_path / "fsdp.pt"
    mp.spawn(fsdp_worker, args=(2, free_port(), str(out), cases), nprocs=2, join=True)
    results = torch.load(out, weights_only=False)
    for family, checkpointing in cases:
        got = results[(family, checkpointing)]
        losses, norms, grads, weights = single_process(family, 2)
        # one Block unit runs L=3 times per forward (+ L recomputations); DiT's modulation unit once
        assert got["calls"] == (STEPS * 3 * (1 + checkpointing), STEPS * (family == "dit"))
        torch.testing.assert_close(got["losses"], losses, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["norms"], norms, rtol=1e-5, atol=0)  # FSDP's clip_grad_norm_ (clipping live)
        assert (norms > CLIP).any()  # clipping changed some step
        assert got["grads"].keys() == grads.keys() == weights.keys()
        assert any(g.abs().max() > 0 for n, g in grads.items() if "blocks" in n)
        for name in grads:
            torch.testing.assert_close(got["grads"][name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
            torch.testing.assert_close(got["weights"][name], weights[name], rtol=1e-4, atol=1e-5, msg=name)
