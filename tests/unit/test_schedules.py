"""Loop schedules: parsing, resolution, GFLOPs accounting, and a constant schedule is int loops."""
import pytest
import torch

from elt.core import flops, schedules
from elt.samplers.budget import change_profile, resolve_schedule
from support.config import compose_cfg
from support.models import random_dit, tiny_maskgit


@pytest.mark.parametrize("spec,steps,want", [
    (3, 4, (3, 3, 3, 3)),
    ("constant:2", 3, (2, 2, 2)),
    ([4, 3, 2, 1], 4, (4, 3, 2, 1)),
    ("linear:1-4", 4, (1, 2, 3, 4)),
    ("linear:4-1", 7, (4, 4, 3, 3, 2, 2, 1)),
    ("linear:1-3", 1, (1,)),
    ("step:4-2", 4, (4, 4, 2, 2)),
    ("step:1-3@0.25", 8, (1, 1, 3, 3, 3, 3, 3, 3)),
])
def test_resolve(spec, steps, want):
    assert schedules.resolve(spec, steps) == want


@pytest.mark.parametrize("spec,fragment", [
    (0, "loops must be >= 1"),
    (True, "must be"),
    ([], "one per step"),
    ([2, 0], "one per step"),
    ("cosine:1-4", "unknown family 'cosine'"),
    ("linear:1", "malformed"),
    ("linear:0-3", "loops must be >= 1"),
    ("step:4-2@1.5", "must be in (0, 1)"),
    ("change:0.5", "m >= 1"),
    (2.5, "must be"),
])
def test_bad_specs_are_named_in_one_line(spec, fragment):
    with pytest.raises(schedules.ScheduleError) as e:
        schedules.parse(spec)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_explicit_length_must_match_the_steps_and_change_needs_a_profile():
    with pytest.raises(schedules.ScheduleError, match="3 entries for 4 sampling steps"):
        schedules.resolve([1, 2, 3], 4)
    with pytest.raises(schedules.ScheduleError, match="change profile"):
        schedules.resolve("change:2", 4)
    with pytest.raises(ValueError, match="unknown family"):
        tiny_maskgit().sample(torch.arange(2), loops="bogus:3", steps=2)


def test_names_are_canonical():
    assert schedules.name(4) == "constant:4" == schedules.name("constant:4")
    assert schedules.name("step:4-2") == "step:4-2@0.5"
    assert schedules.name([1, 2]) == "[1,2]"
    assert schedules.name("change:2.50") == "change:2.5"


def test_change_allocation_spends_loops_where_the_profile_changes_most():
    profile = [[0.9, 0.5, 0.1], [0.2, 0.1, 0.05], [0.6, 0.4, 0.3]]  # change from exit l to l+1 at each step
    assert schedules.allocate(1.0, profile) == (1, 1, 1)
    assert schedules.allocate(2.0, profile) == (3, 1, 2)  # gains 0.9, 0.6, 0.5 in that order
    assert schedules.allocate(4.0, profile) == (4, 4, 4)
    assert sum(schedules.allocate(1.5, profile)) == 5  # 4.5 loops round half up (not Python's round-half-even)
    with pytest.raises(schedules.ScheduleError, match=r"\[1, 4\]"):
        schedules.allocate(4.5, profile)


def test_change_profile_of_a_model_resolves_to_the_mean():
    model = tiny_maskgit(Lmax=3).eval()
    sampler = model.sampler_config(steps=4)
    profile = change_profile(model, sampler)
    assert len(profile) == 4 and all(len(row) == 2 and min(row) >= 0 for row in profile)
    plan = resolve_schedule(model, "change:2", sampler)
    assert len(plan) == 4 and sum(plan) == 8 and set(plan) <= {1, 2, 3}


@pytest.mark.parametrize("family", ["maskgit", "dit"])
def test_constant_schedule_is_int_loops_bit_for_bit(family):
    model = (tiny_maskgit() if family == "maskgit" else random_dit()).eval()
    y = torch.arange(6)
    for cfg in (1.0, 2.0):
        run = lambda loops: model.sample(y, loops, generator=torch.Generator().manual_seed(5), steps=3, cfg_scale=cfg)  # noqa: E731
        ref = run(2)
        assert torch.equal(ref, run("constant:2")) and torch.equal(ref, run([2, 2, 2]))
        assert not torch.equal(ref, run([2, 1, 2]))  # the schedule is really applied per step


@pytest.mark.parametrize("family", ["maskgit", "dit"])
def test_gflops_are_flops_per_eval_summed_over_steps_and_doubled_by_guidance(family):
    model = tiny_maskgit() if family == "maskgit" else random_dit()
    sampler = model.sampler_config(steps=4, cfg_scale=1.0)
    guided = model.sampler_config(steps=4, cfg_scale=2.0)
    assert flops.gflops_per_sample(model, (2,) * 4, sampler) == pytest.approx(flops.gflops_per_sample(model, 2, sampler))
    want = sum(model.flops_per_eval(L) for L in (1, 2, 3, 3)) / 1e9
    assert flops.gflops_per_sample(model, (1, 2, 3, 3), sampler) == pytest.approx(want)
    assert flops.gflops_per_sample(model, (1, 2, 3, 3), guided) == pytest.approx(2 * want)
    # measured accounting: the same when every sample ran the plan and read one head per step
    loops = torch.tensor([[1, 2, 3, 3]] * 5)
    assert flops.measured_gflops_per_sample(model, loops, torch.ones(5, 4), sampler) == pytest.approx(want)
    extra = flops.measured_gflops_per_sample(model, loops, torch.full((5, 4), 2), sampler)
    assert extra == pytest.approx(want + 4 * model.flops_per_exit() / 1e9)


def test_eval_schedules_are_validated_before_any_work():
    from omegaconf import OmegaConf

    from elt.runtime.config import ConfigError
    from elt.evaluation.settings import read_settings

    cfg = compose_cfg("eval", ["ckpt_path=x", "eval.schedules=[linear:1-3,bad:2]"])
    with pytest.raises(ConfigError, match="eval.schedules: loop schedule 'bad:2'"):
        read_settings(cfg, 3, 10)
    cfg = compose_cfg("eval", ["ckpt_path=x", "eval.schedules=[linear:1-3,[1,2,3]]"])
    assert read_settings(cfg, 3, 10).schedules == ["linear:1-3", [1, 2, 3]]
    assert OmegaConf.select(cfg, "eval.schedules") is not None
