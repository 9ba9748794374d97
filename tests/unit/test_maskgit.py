import pytest
import torch

from elt.samplers.maskgit import cosine_schedule
from elt.encoders.tokenizers import PixelTokenizer
from support.models import digits_batch, tiny_maskgit


def test_pixel_tokenizer_round_trip():
    tok = PixelTokenizer(17, (1, 8, 8))
    images = torch.randint(0, 17, (4, 1, 8, 8)).float() / 16
    tokens = tok.encode(images)
    assert tokens.shape == (4, 64) and tokens.dtype == torch.long and tokens.max() < 17
    torch.testing.assert_close(tok.decode(tokens), images)


def test_training_inputs_mask_between_one_and_all_and_drop_labels():
    model = tiny_maskgit().train()
    batch = digits_batch(n=2000)
    inputs, targets = model.training_inputs(batch)
    n_masked = targets["mask"].sum(1)
    assert n_masked.min() >= 1 and n_masked.max() <= 64
    assert (inputs["tokens"] == model.mask_id).sum() == targets["mask"].sum()
    assert (inputs["tokens"][~targets["mask"]] == targets["tokens"][~targets["mask"]]).all()
    # cosine schedule: E[mask ratio] = 2/pi
    assert abs(n_masked.float().mean() / 64 - 2 / torch.pi) < 0.03
    dropped = (inputs["labels"] == 10).float().mean()
    assert 0.07 < dropped < 0.13
    model.eval()
    inputs, _ = model.training_inputs(batch)
    assert (inputs["labels"] == batch["label"]).all()  # no label drop outside training


def test_cosine_schedule_endpoints():
    assert cosine_schedule(0.0) == pytest.approx(1.0)
    assert cosine_schedule(1.0) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("loops", [1, 2, 3, 5])
def test_sampler_shape_range_and_determinism_at_every_loop_count(loops):
    model = tiny_maskgit(N=2, Lmax=3).eval()
    labels = torch.arange(10)
    a = model.sample(labels, loops=loops, generator=torch.Generator().manual_seed(7), steps=4)
    b = model.sample(labels, loops=loops, generator=torch.Generator().manual_seed(7), steps=4)
    c = model.sample(labels, loops=loops, generator=torch.Generator().manual_seed(8), steps=4)
    assert a.shape == (10, 1, 8, 8)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # every value is one of the 17 gray levels: no token left masked
    assert torch.allclose(a * 16, torch.round(a * 16))


def test_guidance_scale_zero_is_the_unconditional_model():
    model = tiny_maskgit().eval()
    with torch.no_grad():  # make the class embedding matter
        model.class_embed.weight.normal_(std=1.0)
        model.head[1].weight.normal_(std=1.0)
    labels = torch.arange(10)
    null = torch.full_like(labels, 10)
    guided0 = model.sample(labels, loops=2, generator=torch.Generator().manual_seed(1), steps=4, cfg_scale=0.0)
    uncond = model.sample(null, loops=2, generator=torch.Generator().manual_seed(1), steps=4, cfg_scale=1.0)
    cond = model.sample(labels, loops=2, generator=torch.Generator().manual_seed(1), steps=4, cfg_scale=1.0)
    assert torch.equal(guided0, uncond)
    assert not torch.equal(cond, uncond)
    assert model.network_evals_per_sample(steps=4, cfg_scale=2.0) == 8
    assert model.network_evals_per_sample(steps=4, cfg_scale=1.0) == 4


def test_zero_sampler_steps_rejected():
    with pytest.raises(ValueError, match="steps"):
        tiny_maskgit().sample(torch.arange(2), loops=1, steps=0)


def test_unknown_sampler_option_is_named():
    with pytest.raises(ValueError, match="stepz"):
        tiny_maskgit().sample(torch.arange(2), loops=1, stepz=3)


def test_non_finite_loss_stops_with_a_clear_error():
    model = tiny_maskgit().train()
    with torch.no_grad():
        model.head[1].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        model.training_step(digits_batch(), 0)


def test_flops_count_every_loop():
    model = tiny_maskgit(N=2, Lmax=3)
    head = 2.0 * 64 * 32 * 17
    assert model.flops_per_eval(2) - head == pytest.approx(2 * (model.flops_per_eval(1) - head))


def test_context_test_masks_fixed_subsets_and_scores_the_masked_tokens():
    import torch.nn.functional as F
    from elt.experiments.context import masked_loss

    model, batch = tiny_maskgit().eval(), digits_batch(8)
    out = masked_loss(model, batch["image"], batch["label"], ratios=(0.1, 1.0), loops=(1, 3))
    assert set(out) == {(0.1, 1), (0.1, 3), (1.0, 1), (1.0, 3)}
    assert out == masked_loss(model, batch["image"], batch["label"], ratios=(0.1, 1.0), loops=(1, 3))
    tokens = model.tokenizer.encode(batch["image"])  # 100% masked, by hand
    with torch.no_grad():
        (logits,) = model.predict({"tokens": torch.full_like(tokens, model.mask_id), "labels": batch["label"]}, 1, [1])
    assert out[(1.0, 1)] == pytest.approx(F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).item(), rel=1e-5)
    with pytest.raises(ValueError, match="MaskGIT"):
        masked_loss(torch.nn.Linear(1, 1), batch["image"], batch["label"], (1.0,), (1,))


def test_label_smoothing_spreads_the_task_targets_and_is_checked():
    """MaskGIT's label smoothing: the task loss is the smoothed cross-entropy on the masked positions."""
    torch.manual_seed(0)
    logits = torch.randn(2, 64, 17)
    targets = {"tokens": torch.randint(0, 17, (2, 64)), "mask": torch.rand(2, 64) < 0.5}
    plain, smooth = tiny_maskgit(), tiny_maskgit(label_smoothing=0.1)
    m = targets["mask"]
    log_p = logits[m].log_softmax(-1)
    nll = -log_p.gather(1, targets["tokens"][m][:, None]).mean()
    expected = 0.9 * nll + 0.1 * (-log_p.mean(-1)).mean()  # (1 - e)·NLL + e·uniform cross-entropy
    torch.testing.assert_close(plain.task_loss(logits, targets), nll)
    torch.testing.assert_close(smooth.task_loss(logits, targets), expected)
    with pytest.raises(ValueError, match="model.label_smoothing must be in"):
        tiny_maskgit(label_smoothing=1.0)
