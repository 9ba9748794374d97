"""Per-sample early exit: loop by loop on a shrinking batch, and exact at its two limits."""
import statistics

import pytest
import torch

from elt.core import schedules
from elt.samplers.early_exit import EarlyExit
from elt.core.backbone import LoopedBackbone
from support.models import random_dit, tiny_maskgit


def family(name, **kw):
    return (tiny_maskgit(**kw) if name == "maskgit" else random_dit(**kw)).eval()


@pytest.mark.parametrize("cond_dim,injection,embedding", [(None, False, False), (16, True, True)])
def test_apply_loop_by_loop_is_forward_bit_for_bit(cond_dim, injection, embedding):
    torch.manual_seed(0)
    bb = LoopedBackbone(16, 2, 2, 32, Lmax=3, cond_dim=cond_dim, input_injection=injection, loop_embedding=embedding).eval()
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(3, 5, 16)
        cond = torch.randn(3, 16) if cond_dim else None
        want = bb(x, loops=4, exits=[2, 4], cond=cond)
        mods, h, got = bb.modulations(cond), x, []
        for loop in range(1, 5):
            h = bb.apply_loop(h, loop, mods, x)
            got.append(h)
    assert torch.equal(want[0], got[1]) and torch.equal(want[1], got[3])


def run(model, early_exit, loops=3, cfg=1.0, steps=3, stats=None, y=None):
    y = torch.arange(8) if y is None else y
    return model.sample(y, loops, generator=torch.Generator().manual_seed(3), steps=steps, cfg_scale=cfg,
                        early_exit=early_exit, stats=stats)


@pytest.mark.parametrize("name", ["maskgit", "dit"])
@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_tau_zero_is_the_plain_sampler_and_a_huge_tau_is_min_loops(name, cfg):
    model = family(name)
    stats = {}
    assert torch.equal(run(model, 0.0, cfg=cfg, stats=stats), run(model, None, cfg=cfg))
    assert stats["loops"].eq(3).all() and stats["heads"].eq(1).all()  # no extra head read when nothing can exit
    assert torch.equal(run(model, 1e9, cfg=cfg, stats=stats), run(model, None, loops=2, cfg=cfg))
    assert stats["loops"].eq(2).all() and stats["heads"].eq(2).all()


@pytest.mark.parametrize("name,criterion", [("maskgit", "commit"), ("maskgit", "kl"), ("dit", "rel"), ("dit", "noise"),
                                            ("dit", "state")])
def test_the_batch_shrinks_as_samples_exit(name, criterion):
    model = family(name, Lmax=4)
    probe = EarlyExit(tau=0.0, criterion=criterion, record=[])
    run(model, probe, loops=4, steps=4)
    dists = [d for step in probe.record for d in step]
    assert len(probe.record) == 4 and all(len(step) == 3 for step in probe.record)  # exits 1→2, 2→3, 3→4
    sizes = []
    hook = model.backbone.blocks[0].register_forward_hook(lambda m, a, o: sizes.append(a[0].shape[0]))
    stats = {}
    rule = {"tau": statistics.median(dists) + 1e-12, "criterion": criterion}
    run(model, rule, loops=4, steps=4, stats=stats, y=torch.arange(10).repeat(3))
    hook.remove()
    ran = stats["loops"]
    assert sum(sizes) == int(ran.sum())  # every block application is one sample-loop actually run
    assert ran.min() >= 2 and ran.max() <= 4 and 2 < ran.float().mean() < 4
    assert len(set(sizes)) > 1 and max(sizes) == 30 and min(sizes) < 30  # rows left between loops
    if criterion == "state":  # decided on backbone states: one head per sample and step, at its exit
        assert stats["heads"].eq(1).all()


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_state_criterion_exits_with_the_prediction_of_its_exit(cfg):
    """A sample that leaves after loop l gets exactly the plain sampler's loop-l prediction: with a
    huge τ every sample leaves at min_loops, which is the plain sampler at that loop count."""
    model = family("dit", Lmax=4)
    stats = {}
    rule = {"tau": 1e9, "criterion": "state", "min_loops": 3}
    assert torch.equal(run(model, rule, loops=4, cfg=cfg, stats=stats), run(model, None, loops=3, cfg=cfg))
    assert stats["loops"].eq(3).all() and stats["heads"].eq(1).all()


def test_bad_early_exit_settings_are_named():
    model = family("maskgit")
    for spec, fragment in [({"tau": -1}, "tau must be a number >= 0"), ({"taux": 1}, "must give tau"),
                           ({"tau": 0.1, "min_loops": 1}, "min_loops must be an integer >= 2"),
                           ({"tau": 0.1, "criterion": "rel"}, "not one of maskgit's")]:
        with pytest.raises(schedules.ScheduleError, match=fragment):
            run(model, spec)
