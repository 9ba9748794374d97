"""DiT-ELT: DiT fidelity, the conditioning contract, losses, sampling, EMA, video latents."""
import math

import pytest
import torch

from elt.core import diffusion as D
from elt.core import flops
from elt.core.flops import solver_evaluations
from elt.models import DiTELT
from elt.samplers import diffusion as S
from elt.core.positions import sincos_1d, sincos_2d
from elt.encoders.tokenizers import PixelAutoencoder
from support.models import CallCounter, digits_batch, random_dit, randomise_zero_init, tiny_dit


# ---- DiT family fidelity ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "width,heads,depth,published",
    [(384, 6, 12, 33e6), (768, 12, 12, 130e6), (1024, 16, 24, 458e6), (1152, 16, 28, 675e6)],
    ids=["S/2", "B/2", "L/2", "XL/2"],
)
def test_parameter_counts_match_dit(width, heads, depth, published):
    """L=1, N=depth, patch 2, 4x32x32 latents, 1000 classes, learn_sigma: DiT-S/B/L/XL-2 within 1%."""
    with torch.device("meta"):  # counts only: no memory, no init time
        dit = DiTELT(PixelAutoencoder((4, 32, 32)), 1000, N=depth, Lmax=1, width=width, heads=heads,
                     mlp_dim=4 * width, patch_size=2, learn_sigma=True, ema_decay=None)
        looped = DiTELT(PixelAutoencoder((4, 32, 32)), 1000, N=depth // 4, Lmax=4, width=width, heads=heads,
                        mlp_dim=4 * width, patch_size=2, learn_sigma=True, ema_decay=None)
    n = sum(p.numel() for p in dit.parameters())
    assert abs(n / published - 1) < 0.01, n
    # same effective depth N·L, a quarter of the unique block parameters
    blocks = lambda m: sum(p.numel() for p in m.backbone.parameters())
    assert blocks(looped) * 4 == blocks(dit)


# ---- the network -----------------------------------------------------------------------------
def test_zero_init_outputs_zero_and_every_block_starts_as_identity():
    model = tiny_dit()
    batch = digits_batch(4)
    inputs, _ = model.training_inputs(batch)
    h = torch.randn(4, 16, 32)
    cond = model.condition(inputs["t"], inputs["labels"])
    (out,) = model.backbone(h, loops=3, cond=cond)
    torch.testing.assert_close(out, h)
    for pred in model.predict(inputs, loops=3, exits=[1, 3]):
        assert pred.shape == (4, 1, 8, 8) and not pred.any()


def test_conditioning_computed_once_per_evaluation_and_reused_by_every_loop():
    model = tiny_dit(N=2, Lmax=3)
    inputs, _ = model.training_inputs(digits_batch(4))
    time_mlp, modulation, block = (CallCounter(m) for m in (model.time_embed, model.backbone.blocks[0].modulation,
                                                             model.backbone.blocks[0]))
    model.predict(inputs, loops=5, exits=[2, 5])
    assert (time_mlp.calls, modulation.calls, block.calls) == (1, 1, 5)


def test_patchify_any_channel_count_and_bad_patch_size_is_named():
    model = tiny_dit(latent=(3, 8, 4), patch_size=2)
    randomise_zero_init(model)
    inputs = {"z": torch.randn(2, 3, 8, 4), "t": torch.rand(2), "labels": torch.tensor([1, 10])}
    (out,) = model.predict(inputs, loops=2, exits=[2])
    assert out.shape == (2, 3, 8, 4) and out.abs().sum() > 0
    with pytest.raises(ValueError, match="model.patch_size"):
        tiny_dit(latent=(1, 8, 8), patch_size=3)
    with pytest.raises(ValueError, match="model.prediction"):
        tiny_dit(prediction="score")
    with pytest.raises(ValueError, match="model.schedule.*shfit"):
        tiny_dit(schedule={"shfit": 1.0})
    assert tiny_dit(schedule={"base_resolution": 32}).schedule.shift == pytest.approx(2 * math.log(32 / 8))


def test_training_inputs_label_drop_only_in_training():
    model = tiny_dit().train()
    batch = digits_batch(n=2000)
    inputs, targets = model.training_inputs(batch)
    assert 0.07 < (inputs["labels"] == 10).float().mean() < 0.13
    assert ((inputs["t"] >= 0) & (inputs["t"] <= 1)).all() and torch.isfinite(targets["weight"]).all()
    torch.testing.assert_close(targets["x0"], batch["image"] * 2 - 1)
    model.eval()
    inputs, _ = model.training_inputs(batch)
    assert (inputs["labels"] == batch["label"]).all()


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_ilsd_step_is_finite_and_distillation_is_the_weighted_mse_to_the_teacher(prediction):
    model = tiny_dit(prediction=prediction).train()
    randomise_zero_init(model)
    model.ilsd_lambda = 0.5
    loss, parts = model.loss(digits_batch(16))
    assert torch.isfinite(loss) and set(parts) == {"teacher_gt", "student_gt", "student_dist"}
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    inputs, targets = model.training_inputs(digits_batch(8))
    student, teacher = model.predict(inputs, loops=3, exits=[1, 3])
    assert model.distill_loss(teacher, teacher, targets).item() == pytest.approx(0.0, abs=1e-6)
    assert model.distill_loss(student, teacher, targets).item() > 0


# ---- sampling ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", S.SAMPLERS)
def test_sampler_shape_range_and_determinism(kind):
    model = tiny_dit().eval()
    randomise_zero_init(model)
    labels = torch.arange(4)
    run = lambda seed, loops=2: model.sample(labels, loops, generator=torch.Generator().manual_seed(seed), kind=kind, steps=4, cfg_scale=1.0)
    a = run(7)
    assert a.shape == (4, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, run(7)) and not torch.equal(a, run(8))
    assert not torch.equal(run(7, loops=1), run(7, loops=3))


@pytest.mark.parametrize("kind", S.SAMPLERS)
def test_every_solver_runs_loop_schedules_early_exit_and_the_guidance_interval(kind):
    """Per-evaluation stats: Heun's two evaluations of a step share its schedule entry; under early
    exit no sample runs more than its step's entry; outside the guidance interval one pass."""
    model = random_dit(Lmax=3).eval()
    y = torch.arange(3)
    steps, plan = 4, [3, 1, 2, 3]
    stats: dict = {}
    kw = dict(kind=kind, steps=steps, spacing="logsnr", cfg_scale=2.0, cfg_interval=[-4.0, 4.0])
    out = model.sample(y, plan, generator=torch.Generator().manual_seed(0), stats=stats, **kw)
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()
    evals = solver_evaluations(kind, steps)
    assert stats["loops"].shape == (3, len(evals))
    assert stats["loops"][0].tolist() == [plan[k] for k, _ in evals]
    lams = D.step_grid(model.schedule, steps, "logsnr")[1].tolist()  # -15, -7.5, 0, 7.5, 15: one inside
    assert [p for _, p in flops.evaluations(model, kw)] == [2 if -4 <= lams[j] <= 4 else 1 for _, j in solver_evaluations(kind, steps)]
    assert model.network_evals_per_sample(**kw) == len(evals) + (2 if kind == "heun" else 1)
    ee: dict = {}
    model.sample(y, plan, generator=torch.Generator().manual_seed(0), stats=ee, early_exit={"tau": 0.5}, **kw)
    assert ee["loops"].shape == stats["loops"].shape and (ee["loops"] <= stats["loops"]).all()
    with pytest.raises(ValueError, match="lo <= hi"):
        model.sample(y, 2, **{**kw, "cfg_interval": [1.0, 0.0]})


def test_guidance_interval_applies_guidance_only_inside_it():
    model = random_dit().eval()
    y = torch.arange(4)
    run = lambda **kw: model.sample(y, 2, generator=torch.Generator().manual_seed(3), kind="ddim", steps=5, **kw)  # noqa: E731
    everywhere = run(cfg_scale=3.0)
    assert torch.equal(run(cfg_scale=3.0, cfg_interval=[-100.0, 100.0]), everywhere)
    assert torch.equal(run(cfg_scale=3.0, cfg_interval=[40.0, 50.0]), run(cfg_scale=1.0))
    assert not torch.equal(run(cfg_scale=3.0, cfg_interval=[-5.0, 5.0]), everywhere)


def test_guidance_scale_zero_is_the_unconditional_model():
    model = tiny_dit().eval()
    randomise_zero_init(model)
    labels, null = torch.arange(6), torch.full((6,), 10)
    run = lambda y, s: model.sample(y, loops=2, generator=torch.Generator().manual_seed(1), steps=4, cfg_scale=s)
    torch.testing.assert_close(run(labels, 0.0), run(null, 1.0))
    assert not torch.equal(run(labels, 1.0), run(null, 1.0))
    assert not torch.equal(run(labels, 3.0), run(labels, 1.0))
    assert model.network_evals_per_sample(steps=4, cfg_scale=3.0) == 8
    assert model.network_evals_per_sample(steps=4, cfg_scale=1.0) == 4


def test_sampling_uses_the_ema_weights_which_live_in_the_state_dict():
    model = tiny_dit(ema_decay=0.5, ema_warmup=False).train()
    randomise_zero_init(model)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02)
    model.update_ema()  # one update at decay 0.5: EMA = before + 0.01
    with model.ema_weights():
        for p, b in zip(model.parameters(), before):
            torch.testing.assert_close(p, b + 0.01)
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p, b + 0.02)  # live weights restored
    model.eval()
    run = lambda m, **kw: m.sample(torch.arange(3), 2, generator=torch.Generator().manual_seed(0), steps=3, cfg_scale=1.0, **kw)
    default = run(model)
    assert not torch.equal(default, run(model, ema=False))
    twin = tiny_dit(ema_decay=0.5, ema_warmup=False)
    twin.load_state_dict(model.state_dict())  # what load_run does
    assert int(twin.ema.num_updates) == 1
    torch.testing.assert_close(run(twin.eval()), default)


@pytest.mark.parametrize("latent,temporal_patch", [((1, 8, 8), 1), ((2, 4, 8, 4), 2)], ids=["image", "video"])
def test_flops_per_eval_matches_the_flop_counter(latent, temporal_patch):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_dit(N=2, Lmax=3, latent=latent, temporal_patch=temporal_patch)
    inputs = {"z": torch.randn(1, *latent), "t": torch.rand(1), "labels": torch.tensor([3])}
    # the math backend: the counter does not see the fused CPU attention kernel's matmuls
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.predict(inputs, loops=3, exits=[3])
    assert model.flops_per_eval(3) == counter.get_total_flops()


# ---- video latents (C, T, H, W) ---------------------------------------------------------------
VIDEO = (1, 4, 8, 8)


def video_batch(n: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, *VIDEO, generator=g), "label": torch.randint(0, 10, (n,), generator=g)}


def patchify(z: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """Reference: [B, C, *dims] -> [B, tokens, prod(patch)·C], tokens row-major, patch axes then channel."""
    b, c, *dims = z.shape
    n = len(dims)
    z = z.reshape(b, c, *(x for d, k in zip(dims, patch) for x in (d // k, k)))
    z = z.permute(0, *range(2, 2 + 2 * n, 2), *range(3, 3 + 2 * n, 2), 1)
    return z.reshape(b, math.prod(d // k for d, k in zip(dims, patch)), -1)


@pytest.mark.parametrize(
    "latent,temporal_patch,grid",
    [((3, 8, 4), 1, (4, 2)), ((2, 4, 8, 4), 1, (4, 4, 2)), ((2, 4, 8, 4), 2, (2, 4, 2))],
    ids=["image", "video", "video-tubelet2"],
)
def test_token_grid_patch_embedding_and_unpatchify_agree(latent, temporal_patch, grid):
    model = tiny_dit(latent=latent, temporal_patch=temporal_patch)
    seq, patch = math.prod(grid), (temporal_patch,) * (len(latent) - 3) + (2, 2)
    assert model.grid == grid and model.pos_embed.shape == (1, seq, 32)
    z = torch.randn(2, *latent)
    ref = patchify(z, patch)  # [2, seq, prod(patch)·C]
    assert ref.shape == (2, seq, model.final_linear.out_features)
    torch.testing.assert_close(model.unpatchify(ref), z)  # exact inverse, same token and in-patch order
    # the conv sees token i's patch: its output is that patch vector times the flattened kernel
    kernel = model.patch_embed.weight.movedim(1, -1).reshape(32, -1)
    tokens = model.patch_embed(z).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, ref @ kernel.T + model.patch_embed.bias, rtol=1e-4, atol=1e-5)
    sigma = tiny_dit(latent=latent, temporal_patch=temporal_patch, learn_sigma=True)
    out = torch.randn(2, seq, sigma.final_linear.out_features)
    assert sigma.unpatchify(out).shape == (2, *latent)  # the variance channels are dropped


def test_video_positions_are_the_image_table_per_frame_plus_a_temporal_table():
    model = tiny_dit(latent=VIDEO)  # grid (4, 4, 4)
    temporal = model.pos_embed[0].view(4, 16, 32) - sincos_2d(32, 4, 4)  # what is left after the spatial part
    torch.testing.assert_close(temporal, temporal[:, :1].expand_as(temporal))  # one code per frame
    torch.testing.assert_close(temporal[:, 0], sincos_1d(32, torch.arange(4)).float())
    distances = torch.cdist(temporal[:, 0], temporal[:, 0])
    assert (distances + torch.eye(4)).min() > 0.1  # every frame index has its own code
    torch.testing.assert_close(tiny_dit().pos_embed[0], sincos_2d(32, 4, 4), rtol=0, atol=0)  # images: unchanged


@pytest.mark.parametrize("latent,temporal_patch", [(VIDEO, 3), (VIDEO, 0), ((1, 8, 8), 2)])
def test_bad_temporal_patch_is_named_in_one_line(latent, temporal_patch):
    with pytest.raises(ValueError, match=r"^model\.temporal_patch") as err:
        tiny_dit(latent=latent, temporal_patch=temporal_patch)
    assert "\n" not in str(err.value)


def test_bad_latent_rank_is_named():
    with pytest.raises(ValueError, match=r"model\.autoencoder.*\(C, T, H, W\)"):
        tiny_dit(latent=(1, 2, 4, 8, 8))


def test_diffusion_process_treats_video_latents_per_sample():
    """5-d latents give exactly what the same numbers laid out as 4-d images give."""
    g = torch.Generator().manual_seed(0)
    x0, eps, pred = (torch.randn(3, *VIDEO, generator=g) for _ in range(3))
    logsnr, weight = torch.tensor([-3.0, 0.0, 4.0]), torch.rand(3, generator=g)
    image = lambda x: x.reshape(3, 1, 32, 8)
    z = D.diffuse(x0, eps, logsnr)
    torch.testing.assert_close(image(z), D.diffuse(image(x0), image(eps), logsnr))
    for kind in D.PREDICTIONS:
        torch.testing.assert_close(image(D.to_x0(pred, z, logsnr, kind)), D.to_x0(image(pred), image(z), logsnr, kind))
    torch.testing.assert_close(D.weighted_mse(pred, x0, weight), D.weighted_mse(image(pred), image(x0), weight))
    assert D.weighted_mse(pred, x0, torch.tensor([1.0, 0.0, 0.0])) == pytest.approx((pred[0] - x0[0]).pow(2).mean().item() / 3)


def test_video_ilsd_training_step_and_ddim_sampling():
    model = tiny_dit(latent=VIDEO, temporal_patch=2).train()
    randomise_zero_init(model)
    model.ilsd_lambda = 0.5
    loss, parts = model.loss(video_batch(8))
    assert torch.isfinite(loss) and set(parts) == {"teacher_gt", "student_gt", "student_dist"}
    loss.backward()
    assert model.patch_embed.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    # cfg_scale 2: the conditional and null halves go through one doubled 5-d batch
    run = lambda seed: model.sample(torch.arange(3), loops=2, generator=torch.Generator().manual_seed(seed),
                                    kind="ddim", steps=3, cfg_scale=2.0)
    video = run(0)
    assert video.shape == (3, *VIDEO) and torch.isfinite(video).all()
    assert video.min() >= 0 and video.max() <= 1 and video.std() > 0
    assert torch.equal(video, run(0))
