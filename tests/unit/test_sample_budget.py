"""elt.samplers.budget: the best front point within a GFLOPs or wall-time budget."""
import json

import pytest
import torch

from elt.samplers.budget import BudgetError, choose, generate
from support.models import tiny_maskgit


def test_the_best_front_point_within_the_budget_is_chosen(tmp_path):
    model = tiny_maskgit().eval()
    sampler = model.sampler_config(steps=4)
    pts = [{"steps": 4, "schedule": 1, "plan": [1] * 4, "gflops": 1.0, "quality": 9.0},
           {"steps": 4, "schedule": "linear:3-1", "plan": [3, 2, 2, 1], "gflops": 2.0, "quality": 5.0},
           {"steps": 4, "schedule": 3, "plan": [3] * 4, "gflops": 3.0, "quality": 4.0}]
    front = tmp_path / "front.json"
    front.write_text(json.dumps({"front": pts}))
    assert choose(model, sampler, gflops=2.5, front=str(front)).schedule == "linear:3-1"
    images, choice = generate(model, [1, 2], gflops=10, front=str(front), generator=torch.Generator().manual_seed(0),
                              steps=4)
    assert choice.plan == (3, 3, 3, 3) and images.shape == (2, 1, 8, 8)
    assert "loops per step=3×4 " in choice.describe() and "measured 4 on the front" in choice.describe()
    with pytest.raises(BudgetError, match=r"budget.gflops=0.5 is below the cheapest option: steps=4 schedule=constant:1"):
        choose(model, sampler, gflops=0.5, front=str(front))


def test_seconds_budget_uses_a_fitted_wall_clock():
    model = tiny_maskgit().eval()
    sampler = model.sampler_config(steps=4)
    choice = choose(model, sampler, seconds=60.0, n=4)
    assert choice.seconds is not None and 0 < choice.seconds <= 60
    assert choice.plan == (model.Lmax,) * 4  # a minute buys the most expensive default candidate
    with pytest.raises(BudgetError, match="budget.seconds=1e-09 is below the cheapest option"):
        choose(model, sampler, seconds=1e-9, n=4)


def test_budgets_count_every_solver_evaluation_and_the_guidance_interval():
    """Heun's 2K − 1 evaluations and the guidance interval reach both budgets: the GFLOPs of a
    candidate and the wall clock's prediction (fitted on single evaluations, Heun's timed as DDIM's)."""
    from elt.core import flops
    from elt.samplers.budget import WallClock
    from support.models import random_dit

    model = random_dit().eval()
    heun = model.sampler_config(kind="heun", steps=4, cfg_scale=1.0)
    choice = choose(model, heun, gflops=1e9)
    assert choice.gflops == pytest.approx(model.flops_per_eval(choice.plan[0]) * (2 * choice.steps - 1) / 1e9)
    clock = WallClock(model, heun, 2)
    assert clock.seconds([2] * 4) == pytest.approx(7 * (clock.a + 2 * clock.b))
    outside = model.sampler_config(kind="ddim", steps=4, cfg_scale=2.0, cfg_interval=[50.0, 60.0])
    clock = WallClock(model, outside, 2)  # timed guided; no evaluation lies inside the interval
    assert clock.seconds([2] * 4) == pytest.approx(4 * (clock.a + 2 * clock.b) / 2)
    assert flops.gflops_per_sample(model, 2, outside) == pytest.approx(4 * model.flops_per_eval(2) / 1e9)
