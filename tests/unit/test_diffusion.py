"""The diffusion process on analytic cases: schedule, conversions, loss weight, samplers, EMA."""
import math

import pytest
import torch

from elt.core import diffusion as D
from elt.core.ema import EMA
from elt.core.flops import solver_evaluations
from elt.samplers import diffusion as S


# ---- schedule ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [-2.0, 0.0, 4.0])
def test_schedule_endpoints_and_monotone_alpha_bar(shift):
    s = D.ShiftedCosineSchedule(shift=shift, logsnr_min=-15, logsnr_max=15)
    t = torch.linspace(0, 1, 1001)
    lam = s.logsnr(t)
    assert lam[0].item() == pytest.approx(15.0, abs=1e-3)
    assert lam[-1].item() == pytest.approx(-15.0, abs=1e-3)
    alpha_bar = torch.sigmoid(lam)
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()  # strictly less signal as t grows
    assert torch.isfinite(s.dlogsnr_dt(t)).all() and (s.dlogsnr_dt(t) < 0).all()


def test_unshifted_schedule_is_the_cosine_schedule():
    """Without shift (and a wide clamp) alpha_bar(t) = cos^2(pi t / 2) (Nichol & Dhariwal)."""
    s = D.ShiftedCosineSchedule(shift=0.0, logsnr_min=-30, logsnr_max=30)
    t = torch.linspace(0.05, 0.95, 19)
    torch.testing.assert_close(torch.sigmoid(s.logsnr(t)), torch.cos(math.pi * t / 2) ** 2, atol=1e-5, rtol=0)


def test_shift_moves_logsnr_by_the_resolution_rule():
    base = D.ShiftedCosineSchedule.for_resolution(64, base_resolution=64, logsnr_min=-30, logsnr_max=30)
    big = D.ShiftedCosineSchedule.for_resolution(256, base_resolution=64, logsnr_min=-30, logsnr_max=30)
    small = D.ShiftedCosineSchedule.for_resolution(8, base_resolution=64, logsnr_min=-30, logsnr_max=30)
    assert base.shift == 0.0 and big.shift == pytest.approx(2 * math.log(64 / 256))
    t = torch.linspace(0.1, 0.9, 9)
    torch.testing.assert_close(big.logsnr(t) - base.logsnr(t), torch.full_like(t, 2 * math.log(1 / 4)), atol=1e-3, rtol=0)
    assert (small.logsnr(t) > base.logsnr(t)).all()  # smaller images need less noise
    assert base.logsnr(torch.tensor([0.5])).item() == pytest.approx(0.0, abs=1e-5)


def test_dlogsnr_dt_matches_autograd():
    s = D.ShiftedCosineSchedule(shift=1.3)
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float32).requires_grad_()
    (grad,) = torch.autograd.grad(s.logsnr(t).sum(), t)
    torch.testing.assert_close(s.dlogsnr_dt(t.detach()), grad, rtol=1e-3, atol=1e-3)


def test_bad_schedule_range_is_named():
    with pytest.raises(ValueError, match="logsnr_min"):
        D.ShiftedCosineSchedule(logsnr_min=5, logsnr_max=-5)


# ---- parameterisations and loss -----------------------------------------------------------------
@pytest.mark.parametrize("kind", D.PREDICTIONS)
def test_prediction_conversions_round_trip(kind):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    lam = torch.tensor([-8.0, -3.0, 0.0, 0.5, 4.0, 9.0])
    z = D.diffuse(x0, eps, lam)
    target = D.from_x0(x0, z, lam, kind)
    expected = {"x0": x0, "eps": eps, "v": D.alpha_sigma(lam.view(-1, 1, 1, 1))[0] * eps - D.alpha_sigma(lam.view(-1, 1, 1, 1))[1] * x0}[kind]
    torch.testing.assert_close(target, expected, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(D.to_x0(target, z, lam, kind), x0, atol=2e-3, rtol=1e-4)


def test_unknown_prediction_is_named():
    with pytest.raises(ValueError, match="model.prediction"):
        D.to_x0(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), "score")


def test_sigmoid_weight_equals_weighted_eps_loss():
    """weight·||x0 − x̂0||² == −dλ/dt·sigmoid(b − λ)·||ε − ε̂||² (Kingma & Gao's definition)."""
    s, b = D.ShiftedCosineSchedule(shift=0.7), -2.0
    g = torch.Generator().manual_seed(1)
    t = torch.rand(8, generator=g) * 0.9 + 0.05
    lam = s.logsnr(t)
    x0, eps = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    z = D.diffuse(x0, eps, lam)
    x0_hat = x0 + 0.1 * torch.randn(8, 5, generator=g)
    eps_hat = D.from_x0(x0_hat, z, lam, "eps")
    w = D.sigmoid_loss_weight(lam, s.dlogsnr_dt(t), b)
    lhs = w * (x0_hat - x0).pow(2).mean(1)
    rhs = -s.dlogsnr_dt(t) * torch.sigmoid(b - lam) * (eps_hat - eps).pow(2).mean(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-3, atol=1e-6)
    assert torch.isfinite(D.sigmoid_loss_weight(torch.tensor([-15.0, 15.0]), torch.tensor([-1e4, -1e4]), b)).all()


# ---- samplers --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", S.SAMPLERS)
def test_sampler_returns_the_single_data_point(kind):
    """Data that is one point: the exact denoiser always says x0 = x*, and the sampler must end there."""
    x_star = torch.tensor([0.3, -0.7, 0.9]).view(1, 3, 1, 1)
    seen = []

    def denoise(z, t):
        seen.append(z.abs().max().item())
        return x_star.expand_as(z)

    out = S.sample_loop(denoise, (5, 3, 1, 1), D.ShiftedCosineSchedule(), steps=16, kind=kind,
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x_star.expand(5, 3, 1, 1))
    assert len(seen) == len(solver_evaluations(kind, 16)) == (31 if kind == "heun" else 16)


@pytest.mark.parametrize("kind,steps", [("ddpm", 1000), ("ddim", 200)])
def test_sampler_recovers_a_gaussian_with_the_exact_denoiser(kind, steps):
    """x0 ~ N(mu, s²): E[x0 | z] is known in closed form, so samples must come out N(mu, s²)."""
    mu, sd = 0.8, 0.3
    sched = D.ShiftedCosineSchedule()

    def denoise(z, t):
        a, s = D.alpha_sigma(sched.logsnr(t).view(-1, 1))
        return mu + a * sd**2 / (a**2 * sd**2 + s**2) * (z - a * mu)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 1000 steps of tiny element-wise ops: threads only add sync overhead
    try:
        out = S.sample_loop(denoise, (20_000, 1), sched, steps=steps, kind=kind, generator=torch.Generator().manual_seed(0))
    finally:
        torch.set_num_threads(threads)
    assert out.mean().item() == pytest.approx(mu, abs=0.01)
    assert out.std().item() == pytest.approx(sd, rel=0.02)  # few steps shrink it: 0.24 at 16 DDPM steps


def test_sampler_is_deterministic_given_the_generator_and_checks_its_options():
    def denoise(z, t):
        return 0.5 * z

    run = lambda seed: S.sample_loop(denoise, (4, 2), D.ShiftedCosineSchedule(), 8, "ddpm", torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))
    with pytest.raises(ValueError, match="model.sampler.kind must be one of ddpm, ddim, dpmpp_2m, heun, euler_sde"):
        S.sample_loop(denoise, (1, 2), D.ShiftedCosineSchedule(), 8, "euler")
    with pytest.raises(ValueError, match="model.sampler.steps"):
        S.sample_loop(denoise, (1, 2), D.ShiftedCosineSchedule(), 0)


# ---- EMA ---------------------------------------------------------------------------------------
def test_ema_update_rule_with_and_without_warmup():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9, warmup=False)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update([p])
    torch.testing.assert_close(ema.shadow, torch.full((3,), 0.1))  # 0.9·0 + 0.1·1
    ema.update([p])
    torch.testing.assert_close(ema.shadow, torch.full((3,), 0.19))
    warm = EMA([p], decay=0.99, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    warm.update([p])
    assert warm.current_decay() == pytest.approx(2 / 11)
    with pytest.raises(ValueError, match="ema_decay"):
        EMA([p], decay=1.0)


def test_ema_applied_swaps_in_and_restores():
    lin = torch.nn.Linear(2, 2)
    ema = EMA(lin.parameters(), decay=0.5, warmup=False)
    before = [q.detach().clone() for q in lin.parameters()]
    with torch.no_grad():
        for q in lin.parameters():
            q.add_(1.0)
    live = [q.detach().clone() for q in lin.parameters()]
    with ema.applied(lin.parameters()):
        for q, b in zip(lin.parameters(), before):
            torch.testing.assert_close(q, b)
    for q, lv in zip(lin.parameters(), live):
        torch.testing.assert_close(q, lv)
