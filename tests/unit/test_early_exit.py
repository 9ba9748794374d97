"""Per-sample early exit: loop by loop on a shrinking batch, and exact at its two limits."""
import statistics

import pytest
import torch

from elt.core import diffusion as D
from elt.core import schedules
from elt.core.backbone import LoopedBackbone
from elt.samplers import diffusion as S
from elt.samplers.early_exit import Carry, EarlyExit, dit_distance, early_exit_predict, snr_gain, state_change
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
                                            ("dit", "state")])  # state_snr: state's loop, weighted per step (below)
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
@pytest.mark.parametrize("min_loops", [1, 3])
def test_state_criterion_exits_with_the_prediction_of_its_exit(cfg, min_loops):
    """A sample that leaves after loop l gets exactly the plain sampler's loop-l prediction: with a
    huge τ every sample leaves at min_loops, which is the plain sampler at that loop count (1: loop 1's
    state is compared with the loop's input)."""
    model = family("dit", Lmax=4)
    stats = {}
    rule = {"tau": 1e9, "criterion": "state", "min_loops": min_loops}
    assert torch.equal(run(model, rule, loops=4, cfg=cfg, stats=stats), run(model, None, loops=min_loops, cfg=cfg))
    assert stats["loops"].eq(min_loops).all() and stats["heads"].eq(1).all()


def test_state_snr_from_loop_one_leaves_after_one_loop_only_where_the_step_gains_little_snr():
    """With min_loops 1 the state criteria also measure loop 1 (against the embedded input): a τ
    between the first and the last steps' weighted changes lets samples leave after one loop at the
    noisiest steps, never at the last, and τ = 0 is still the plain sampler."""
    model, steps = random_dit(Lmax=4).eval(), 8
    assert torch.equal(run(model, {"tau": 0.0, "criterion": "state_snr", "min_loops": 1}, loops=4, steps=steps),
                       run(model, None, loops=4, steps=steps))
    probe = EarlyExit(tau=0.0, criterion="state_snr", min_loops=1, record=[])
    run(model, probe, loops=4, steps=steps)
    assert all(len(step) == 4 for step in probe.record)  # input→1, 1→2, 2→3, 3→4
    first, later = probe.record[0][0], probe.record[-2][0]
    assert first < later  # the same kind of change weighs less at high noise
    stats = {}
    run(model, {"tau": (first * later) ** 0.5, "criterion": "state_snr", "min_loops": 1}, loops=4, steps=steps, stats=stats)
    ran = stats["loops"]
    assert ran[:, 0].eq(1).all() and ran[:, -1].eq(4).all()


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_a_carried_exit_reads_the_later_loops_of_its_own_row(cfg):
    """After a refresh step, a sample leaving after loop l on the same input gets the full-L prediction
    back (up to rounding): its state plus what loops l + 1..L added to its own rows at the refresh, also
    when samples leave at different loops and the batch (both guidance halves) shrinks between them."""
    model, b = random_dit(Lmax=4).eval(), 8
    inputs = {"z": torch.randn(b, *model.autoencoder.latent_shape), "t": torch.full((b,), 0.6), "labels": torch.arange(b)}

    def go(rule, carry=None, step=0):
        with torch.no_grad():
            return early_exit_predict(model, inputs, 4, cfg, rule, state_change, model.x0_of, carry, step)

    probe = EarlyExit(tau=0.0, criterion="state", min_loops=1, record=[])
    go(probe)
    rule = EarlyExit(tau=probe.record[0][0], criterion="state", min_loops=1, refresh=2)  # loop 1's batch mean
    carry = Carry(2)
    full, ran, _ = go(rule, carry, step=0)
    assert ran.eq(4).all()  # a refresh step: nobody leaves, whatever τ
    carried, ran, heads = go(rule, carry, step=1)
    assert len(set(ran.tolist())) > 1 and ran.min() == 1 and heads.eq(1).all()  # left at different loops
    torch.testing.assert_close(carried, full, rtol=1e-5, atol=1e-5)
    plain, _, _ = go(EarlyExit(tau=rule.tau, criterion="state", min_loops=1))
    assert (plain - full).abs().max() > 100 * (carried - full).abs().max()  # the exits alone are far from it


def test_refresh_under_a_guidance_interval_refreshes_where_the_rows_change():
    """Steps inside ``cfg_interval`` run twice the rows of those outside: the gaps kept on one kind of
    step do not fit the other, so the first step of each kind after a change runs every loop again."""
    model, steps = random_dit(Lmax=4).eval(), 8
    lams = D.step_grid(model.schedule, steps, "t")[1]
    stats = {}
    model.sample(torch.arange(6), 4, generator=torch.Generator().manual_seed(2), steps=steps, cfg_scale=2.0,
                 cfg_interval=[float(lams[2]), float(lams[5])], stats=stats,
                 early_exit={"tau": 1e9, "criterion": "state", "min_loops": 1, "refresh": 4})
    guided = [bool(float(lams[2]) <= float(lams[i]) <= float(lams[5])) for i in range(steps)]
    plan = [4 if i % 4 == 0 or guided[i] != guided[i - 1] else 1 for i in range(steps)]
    assert guided != [guided[0]] * steps and stats["loops"].eq(torch.tensor(plan)).all()


def test_refresh_runs_every_loop_on_its_steps_and_carries_between_them():
    """τ = 0 with refresh is the plain sampler bit for bit; a huge τ leaves after min_loops between the
    refresh steps only, and the carried later loops bring the samples nearer the plain L = 4 sampler's
    than the same loop plan without them (the change the later loops make drifts slowly over steps)."""
    model, steps, y = random_dit(Lmax=4).eval(), 16, torch.arange(6)
    assert torch.equal(run(model, {"tau": 0.0, "criterion": "state", "min_loops": 1, "refresh": 2}, loops=4, steps=steps, y=y),
                       run(model, None, loops=4, steps=steps, y=y))
    stats = {}
    carried = run(model, {"tau": 1e9, "criterion": "state", "min_loops": 1, "refresh": 2}, loops=4, steps=steps, y=y,
                  stats=stats)
    plan = [4 if i % 2 == 0 else 1 for i in range(steps)]
    assert stats["loops"].eq(torch.tensor(plan)).all() and stats["heads"].eq(1).all()
    plain, skipped = run(model, None, loops=4, steps=steps, y=y), run(model, None, loops=plan, steps=steps, y=y)
    assert (carried - plain).norm() < 0.5 * (skipped - plain).norm()


def test_bad_early_exit_settings_are_named():
    model = family("maskgit")
    for spec, fragment in [({"tau": -1}, "tau must be a number >= 0"), ({"taux": 1}, "must give tau"),
                           ({"tau": 0.1, "min_loops": 0}, "min_loops must be an integer >= 1"),
                           ({"tau": 0.1, "min_loops": 1}, "min_loops 1 needs a state criterion"),
                           ({"tau": 0.1, "refresh": 2}, "refresh carries backbone states over and needs a state criterion"),
                           ({"tau": 0.1, "criterion": "state", "refresh": 1}, "refresh must be 0 .off. or an integer >= 2"),
                           ({"tau": 0.1, "criterion": "rel"}, "not one of maskgit's")]:
        with pytest.raises(schedules.ScheduleError, match=fragment):
            run(model, spec)


HEAD_FREE = ["state", "state_snr"]


@pytest.mark.parametrize("kind", S.SAMPLERS)
@pytest.mark.parametrize("criterion", HEAD_FREE)
@pytest.mark.parametrize("options", [{}, {"min_loops": 1, "refresh": 2}])
def test_head_free_criteria_read_no_extra_head_and_stop_samples_with_every_solver(kind, criterion, options):
    """The head (``readout``) reads no more rows than the plain sampler's, samples still leave early,
    and τ = 0 is the plain sampler bit for bit, whatever the solver (and with the later loops carried)."""
    model = random_dit(Lmax=4).eval()
    rows = []
    real = model.readout
    model.readout = lambda state, cond: (rows.append(len(state)), real(state, cond))[1]
    y, kw = torch.arange(6), dict(kind=kind, steps=4, cfg_scale=2.0)

    def go(early_exit, stats=None):
        rows.clear()
        out = model.sample(y, 4, generator=torch.Generator().manual_seed(1), early_exit=early_exit, stats=stats, **kw)
        return out, sum(rows)

    plain, plain_rows = go(None)
    same, same_rows = go({"tau": 0.0, "criterion": criterion, **options})
    assert torch.equal(same, plain) and same_rows == plain_rows
    probe = EarlyExit(tau=0.0, criterion=criterion, record=[], **options)
    go(probe)
    finite = [d for step in probe.record for d in step if d < float("inf")]
    stats = {}
    _, exit_rows = go({"tau": statistics.median(finite), "criterion": criterion, **options}, stats)
    assert exit_rows <= plain_rows and stats["heads"].eq(1).all()
    assert stats["loops"].float().mean() < 4  # samples stopped


def test_state_snr_weighs_the_steps_like_noise_and_never_exits_at_the_last():
    """The same state change counts for more the lower the step's noise; the last step adds none;
    ``noise`` weighs by the root of the same gain."""
    steps = 6
    lams = D.step_grid(random_dit().schedule, steps, "t")[1]
    prev, cur = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    idx = torch.arange(2)
    d = [dit_distance("state_snr", lams, i, steps)(prev, cur, idx) for i in range(steps)]
    base = dit_distance("state", lams, 0, steps)(prev, cur, idx)
    for i in range(steps - 1):
        torch.testing.assert_close(d[i], snr_gain(lams[i], lams[i + 1]) * base)
    assert all((d[i] < d[i + 1]).all() for i in range(steps - 2)) and torch.isinf(d[-1]).all()
    a_s, s_s = D.alpha_sigma(lams[2])
    c = -torch.expm1(lams[1] - lams[2])
    x0 = torch.randn(2, 1, 8, 8)
    noise = dit_distance("noise", lams, 1, steps)(x0, x0 + 0.1, idx)
    torch.testing.assert_close(noise, (a_s * c * 0.1 / (s_s * c.sqrt())).expand(2))  # mean moved / noise added


def test_an_unknown_criterion_lists_the_valid_ones_in_one_line():
    with pytest.raises(schedules.ScheduleError, match=r"'bogus' is not one of dit's: rel, noise, state, state_snr$"):
        EarlyExit(tau=0.1, criterion="bogus").criterion_for("dit")
