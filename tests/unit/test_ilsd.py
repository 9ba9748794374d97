import lightning as L
import pytest
import torch
import torch.nn.functional as F

from elt.core.ilsd import ILSDCallback, draw_lint, ilsd_objective, lambda_at
from support.models import CallCounter, digits_batch, tiny_maskgit


def test_lint_uniform_strictly_below_Lmax():
    g = torch.Generator().manual_seed(0)
    draws = [draw_lint(2, 5, g) for _ in range(3000)]
    assert set(draws) == {2, 3, 4}
    counts = torch.bincount(torch.tensor(draws))[2:].float()
    assert (counts / counts.sum() - 1 / 3).abs().max() < 0.04
    with pytest.raises(ValueError, match="Lmin"):
        draw_lint(3, 3)


@pytest.mark.parametrize("ilsd", [True, False])
def test_one_training_step_runs_exactly_Lmax_loops(ilsd):
    model = tiny_maskgit(N=2, Lmax=4, ilsd=ilsd).train()
    counter = CallCounter(model.backbone.blocks[0])
    loss, parts = model.loss(digits_batch())
    assert counter.calls == 4  # one pass: the student is a prefix of the teacher's trajectory
    assert ("student_dist" in parts) == ilsd
    assert (model.last_lint is not None) == ilsd


def test_loss_equals_the_spec_formula_by_hand():
    model = tiny_maskgit(N=2, Lmax=3).train()
    model.ilsd_lambda = lam = 0.3
    batch = digits_batch()
    loss, _ = model.loss(batch)
    lint = model.last_lint

    noise, exit_gen = model.step_generators()  # the step's own streams: same masks, label drop and Lint
    inputs, targets = model.training_inputs(batch, generator=noise)
    assert draw_lint(1, 3, generator=exit_gen) == lint
    h = torch.cat([model.class_embed(inputs["labels"])[:, None], model.token_embed(inputs["tokens"])], 1)
    x = h + model.pos_embed
    logits = {}
    for loop in range(1, 4):
        for blk in model.backbone.blocks:
            x = blk(x)
        logits[loop] = model.head(x[:, 1:])
    m, y = targets["mask"], targets["tokens"]
    gt = lambda lg: F.cross_entropy(lg[m], y[m])
    p_teacher = logits[3][m].detach().softmax(-1)
    dist = -(p_teacher * logits[lint][m].log_softmax(-1)).sum(-1).mean()
    expected = gt(logits[3]) + lam * gt(logits[lint]) + (1 - lam) * dist
    torch.testing.assert_close(loss, expected)


def test_distillation_does_not_push_the_teacher():
    teacher = torch.randn(5, 7, requires_grad=True)
    student = torch.randn(5, 7, requires_grad=True)
    target = torch.randint(0, 7, (5,))
    task = lambda p: F.cross_entropy(p, target)
    dist = lambda s, t: -(t.softmax(-1) * s.log_softmax(-1)).sum(-1).mean()
    loss, _ = ilsd_objective(teacher, student, task, dist, lam=0.0)
    loss.backward()
    t_only = teacher.detach().clone().requires_grad_(True)
    task(t_only).backward()
    torch.testing.assert_close(teacher.grad, t_only.grad)  # teacher gets only its ground-truth term
    assert student.grad.abs().sum() > 0


def test_lambda_schedule_endpoints_and_shapes():
    assert lambda_at(0.0) == 1.0 and lambda_at(1.0) == 0.0
    assert lambda_at(0.5) == pytest.approx(0.5)
    assert lambda_at(0.5, span=0.5) == 0.0 and lambda_at(0.25, span=0.5) == pytest.approx(0.5)
    assert lambda_at(0.2, start=0.2, span=0.8) == 1.0
    assert lambda_at(0.0, "cosine") == 1.0 and lambda_at(1.0, "cosine") == pytest.approx(0.0)
    assert lambda_at(0.7, "constant") == 1.0
    xs = [i / 20 for i in range(21)]
    for shape in ("linear", "cosine"):
        vals = [lambda_at(x, shape) for x in xs]
        assert all(a >= b for a, b in zip(vals, vals[1:]))
    with pytest.raises(ValueError, match="schedule"):
        ILSDCallback(schedule="exp")


def test_callback_drives_lambda_during_real_fit(tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from elt.data import DigitsDataModule

    model = tiny_maskgit(N=1, Lmax=2)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *a):
            seen.append((pl_module.ilsd_lambda, pl_module.last_lint))

    trainer = L.Trainer(max_steps=5, logger=CSVLogger(tmp_path), callbacks=[ILSDCallback(), Spy()],
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        accelerator="cpu", enable_model_summary=False)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    lams = [lam for lam, _ in seen]
    assert lams == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert {lint for _, lint in seen} == {1}


def test_ilsd_without_callback_is_refused(tmp_path):
    from elt.data import DigitsDataModule

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, accelerator="cpu", enable_model_summary=False)
    with pytest.raises(RuntimeError, match="ILSDCallback"):
        trainer.fit(tiny_maskgit(N=1, Lmax=2), datamodule=DigitsDataModule(batch_size=16))
