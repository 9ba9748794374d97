"""The diffusion solvers proved on a data distribution whose exact denoiser is closed-form.

Data x0 ~ N(mu, s²) per dimension: E[x0 | z_λ] is affine in z, the probability-flow ODE's flow map
from λ_min to the data is the affine map between N(α·mu, α²s² + σ²) and N(mu, s²), and every solver
is affine in its initial noise and in every fresh draw. So the ODE solvers' error is measured on the
endpoint of fixed noise against the exact flow map, and the SDE solvers' on the exact mean and
variance of their output (one basis draw per step); the log-log slope of the error against the step
count is the solver's order. diffusers' schedulers on the same logSNR grid give the same trajectories.
"""
import math

import numpy as np
import pytest
import torch

from elt.core import diffusion as D
from elt.core.flops import SOLVERS, solver_evaluations
from elt.samplers import diffusion as S

MU, SD = 0.4, 0.5
SCHEDULE = D.ShiftedCosineSchedule()


def exact_x0(z, logsnr):
    a, s = D.alpha_sigma(logsnr)
    return MU + a * SD**2 / (a**2 * SD**2 + s**2) * (z - a * MU)


def flow_map(z, logsnr0):
    a, s = D.alpha_sigma(logsnr0)
    return MU + SD * (z - a * MU) / torch.sqrt(a**2 * SD**2 + s**2)


def grid(steps, spacing):
    return D.step_grid(SCHEDULE, steps, spacing)[1].double()


def run(kind, z, lams):
    points = [j for _, j in solver_evaluations(kind, len(lams) - 1)]
    return S.solve(kind, lambda x, e: exact_x0(x, lams[points[e]]), z, lams)


def slope(ns, errs):
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


def ode_errors(kind, spacing, ns):
    z = torch.linspace(-3, 3, 13, dtype=torch.float64)
    return [(run(kind, z.clone(), grid(n, spacing)) - flow_map(z, grid(n, spacing)[0])).abs().max().item() for n in ns]


@pytest.mark.parametrize("kind,order", [("ddim", 1), ("dpmpp_2m", 2), ("heun", 2)])
def test_ode_solvers_reach_the_exact_flow_map_at_their_order(kind, order):
    """Uniform-logSNR grid, 32..256 steps: the fitted slope is the order (±0.2)."""
    ns = [32, 64, 128, 256]
    errs = ode_errors(kind, "logsnr", ns)
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.025
    assert slope(ns, errs) == pytest.approx(order, abs=0.2), errs


@pytest.mark.parametrize("kind,order,ns", [("ddim", 1, [64, 128, 256, 512]), ("dpmpp_2m", 2, [128, 256, 512]),
                                           ("heun", 2, [32, 64, 128, 256])])
def test_ode_solvers_on_the_uniform_t_grid_are_at_least_their_order(kind, order, ns):
    """The paper's grid puts huge logSNR steps at both ends, so the asymptotic regime starts later:
    the slope is at least the order (Heun's is above it there) and the error falls to near zero."""
    errs = ode_errors(kind, "t", ns)
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.01
    assert slope(ns, errs) >= order - 0.3, errs


def sde_moments(kind, lams, monkeypatch):
    """Exact mean and variance of the output: z_T = 0 and 1 without noise give the affine part, then
    batch row 2 + k takes the unit draw at the k-th noise call only (z_T ~ N(0, 1), draws N(0, 1))."""
    n = len(lams) - 1
    calls = []

    def basis(z, generator=None):
        out = torch.zeros_like(z)
        out[2 + len(calls)] = 1.0
        calls.append(1)
        return out

    monkeypatch.setattr(S, "noise_like", basis)
    z = torch.zeros(n + 2, dtype=torch.float64)
    z[1] = 1.0
    out = run(kind, z, lams)
    b, a, c = out[0], out[1] - out[0], out[2:2 + len(calls)] - out[0]
    assert len(calls) == n - 1  # one draw per step but the last (which returns x̂0)
    return b.item(), (a**2 + (c**2).sum()).item()


@pytest.mark.parametrize("kind", ["ddpm", "euler_sde"])
@pytest.mark.parametrize("spacing", ["t", "logsnr"])
def test_sde_solvers_sample_the_data_distribution_at_first_order(kind, spacing, monkeypatch):
    ns = [32, 64, 128, 256]
    errs = []
    for n in ns:
        mean, var = sde_moments(kind, grid(n, spacing), monkeypatch)
        errs.append(abs(mean - MU) + abs(var - SD**2))
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.03
    assert slope(ns, errs) == pytest.approx(1.0, abs=0.3), errs


def test_ddpm_through_the_solver_is_the_posterior_draw_of_q():
    """One ancestral step with the true x0 is an exact draw from q(z_s | z_t, x0): mean and variance
    from Bayes' rule on z_t = α_t/α_s·z_s + noise."""
    lt, ls = torch.tensor(-1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    a_t, s_t = D.alpha_sigma(lt)
    a_s, s_s = D.alpha_sigma(ls)
    x0, z = torch.tensor(0.7, dtype=torch.float64), torch.tensor(-0.3, dtype=torch.float64)
    a_ts, var_ts = a_t / a_s, s_t**2 - (a_t / a_s) ** 2 * s_s**2  # z_t | z_s
    var = 1 / (1 / s_s**2 + a_ts**2 / var_ts)
    mean = var * (a_s * x0 / s_s**2 + a_ts * z / var_ts)
    draws = S.ddpm_step(z.expand(200_000).clone(), x0, lt, ls, torch.Generator().manual_seed(0))
    assert draws.mean().item() == pytest.approx(mean.item(), abs=3e-3)
    assert draws.var().item() == pytest.approx(var.item(), rel=1e-2)


# ---- diffusers' schedulers on the same grid ------------------------------------------------------
T = 1000


def diffusers_betas():
    """β of a 1000-step discrete schedule whose ᾱ at timestep k is this project's at t = (k + 1)/T."""
    ab = torch.sigmoid(SCHEDULE.logsnr(torch.arange(1, T + 1, dtype=torch.float64) / T).double())
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    return (1 - ab / prev).tolist()


def lams_of(scheduler, timesteps):
    ab = scheduler.alphas_cumprod.double()[torch.as_tensor(timesteps).long()]
    lams = torch.log(ab / (1 - ab))
    return torch.cat([lams, lams[-1:] + 1.0])  # the point after the last is never evaluated


def denoiser_vp(lams):
    return lambda z, e: exact_x0(z, lams[e])


@pytest.mark.parametrize("steps", [5, 12])
def test_dpmpp_2m_matches_diffusers_dpm_solver_multistep(steps):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=diffusers_betas(),
                                                algorithm_type="dpmsolver++", solver_order=2, prediction_type="sample",
                                                final_sigmas_type="zero", lower_order_final=True)
    ts = [T - 1 - (T // steps) * i for i in range(steps)]
    sch.set_timesteps(timesteps=ts)
    lams = lams_of(sch, sch.timesteps)
    z0 = torch.linspace(-2, 2, 9, dtype=torch.float64)
    x = z0.clone()
    for i, t in enumerate(sch.timesteps):
        x = sch.step(exact_x0(x, lams[i]), t, x).prev_sample
    ours = run("dpmpp_2m", z0.clone(), lams)
    torch.testing.assert_close(ours, x.double(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("steps", [4, 10])
def test_ddim_matches_diffusers_ddim(steps):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=diffusers_betas(), prediction_type="sample",
                                  clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    sch.set_timesteps(steps)
    lams = lams_of(sch, sch.timesteps)
    z0 = torch.linspace(-2, 2, 9, dtype=torch.float64)
    x = z0.clone()
    for i, t in enumerate(sch.timesteps):
        x = sch.step(exact_x0(x, lams[i]), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(run("ddim", z0.clone(), lams), x.double(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("steps", [3, 8])
def test_heun_matches_diffusers_heun_discrete(steps):
    """diffusers' Heun runs in x = z/α against σ/α, as ours; its model input is scaled back to z."""
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.HeunDiscreteScheduler(num_train_timesteps=T, trained_betas=diffusers_betas(), prediction_type="sample")
    ts = [T - 1 - (T // steps) * i for i in range(steps)]
    sch.set_timesteps(timesteps=ts)
    lams = lams_of(sch, ts)
    # its float32 σ table, in float64: a 3-step Heun trajectory amplifies rounding by ~1e3
    sigma = torch.exp(-0.5 * lams[:steps])
    sch.sigmas = torch.cat([sigma[:1], sigma[1:].repeat_interleave(2), torch.zeros(1, dtype=torch.float64)])
    z0 = torch.linspace(-2, 2, 9, dtype=torch.float64)
    x = z0 / D.alpha_sigma(lams[0])[0]
    calls = 0
    for t in sch.timesteps:
        z_in = sch.scale_model_input(x, t).double()
        sigma = sch.sigmas[sch.step_index].double()
        x = sch.step(exact_x0(z_in, torch.log(1 / sigma**2)), t, x).prev_sample
        calls += 1
    assert calls == len(solver_evaluations("heun", steps))
    torch.testing.assert_close(run("heun", z0.clone(), lams), x.double(), atol=2e-5, rtol=1e-5)


def test_bad_solver_settings_are_refused_in_one_line():
    for cfg, match in [({"kind": "euler", "steps": 4}, "one of ddpm, ddim, dpmpp_2m, heun, euler_sde"),
                       ({"kind": "heun", "steps": 1}, "heun needs steps >= 2"),
                       ({"kind": "ddim", "steps": 4, "spacing": "karras"}, "spacing must be one of t, logsnr"),
                       ({"kind": "ddim", "steps": 4, "cfg_interval": [3.0, -1.0]}, "needs lo <= hi"),
                       ({"kind": "ddim", "steps": 4, "cfg_interval": [1.0]}, r"\[lo, hi\]")]:
        with pytest.raises(ValueError, match=match):
            S.check_options(cfg)
    for kind in ("euler_sde", "heun", "dpmpp_2m", "ddim"):
        with pytest.raises(ValueError, match=f"needs sampler.kind=ddpm, not {kind}"):
            S.check_options({"kind": kind, "steps": 4}, early_exit_criterion="noise")
    S.check_options({"kind": "heun", "steps": 2, "spacing": "logsnr", "cfg_interval": [-2.0, 2.0]})


def test_logsnr_grid_is_uniform_and_tells_the_network_the_matching_time():
    sched = D.ShiftedCosineSchedule(shift=1.3)
    ts, lams = D.step_grid(sched, 10, "logsnr")
    torch.testing.assert_close(lams, torch.linspace(-15.0, 15.0, 11))
    torch.testing.assert_close(sched.logsnr(ts), lams, atol=2e-3, rtol=0)
    assert ts[0] == 1.0 and ts[-1] == 0.0
    assert math.isclose(S.SAMPLERS.index("ddpm"), 0) and set(S.SAMPLERS) == set(SOLVERS)


def test_eval_preflight_refuses_bad_solver_settings_before_sampling():
    from elt.evaluation.preflight import check_sampler
    from elt.runtime.config import ConfigError

    with pytest.raises(ConfigError, match="eval.sampler.kind=heun needs steps >= 2"):
        check_sampler({"kind": "heun", "steps": 1, "cfg_scale": 1.0})
    with pytest.raises(ConfigError, match="eval.sampler.cfg_interval"):
        check_sampler({"kind": "ddpm", "steps": 8, "cfg_scale": 2.0, "cfg_interval": [2.0, 1.0]})
    with pytest.raises(ConfigError, match="eval.sampler.kind must be ddpm or ddim or dpmpp_2m or heun or euler_sde"):
        check_sampler({"kind": "plms", "steps": 8})
