import pytest
import torch

from elt.core.backbone import LoopedBackbone
from support.models import digits_batch, random_dit, tiny_maskgit


def make(N=2, Lmax=3, **kw):
    torch.manual_seed(0)
    return LoopedBackbone(width=32, heads=4, N=N, mlp_dim=64, Lmax=Lmax, **kw)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_count_independent_of_loops():
    counts = {L: n_params(make(N=3, Lmax=L)) for L in (1, 2, 4, 8)}
    assert len(set(counts.values())) == 1, counts
    assert n_params(make(N=6, Lmax=1)) == 2 * n_params(make(N=3, Lmax=1))  # grows with N only


def test_L_loops_equal_block_stack_applied_by_hand():
    net = make(N=2).eval()
    x = torch.randn(3, 5, 32)
    for L in (1, 2, 3, 5):
        (out,) = net(x, loops=L)
        ref = x
        for _ in range(L):
            for blk in net.blocks:
                ref = blk(ref)
        torch.testing.assert_close(out, ref)


def test_exits_are_prefixes_of_one_pass():
    net = make(N=2).eval()
    x = torch.randn(2, 7, 32)
    exits = net(x, loops=4, exits=[1, 2, 3, 4])
    for L, state in zip((1, 2, 3, 4), exits):
        torch.testing.assert_close(state, net(x, loops=L)[0])
    # order of requested exits is respected and duplicates are fine
    b, a = net(x, loops=4, exits=[3, 1])
    torch.testing.assert_close(a, exits[0])
    torch.testing.assert_close(b, exits[2])


def test_extrapolation_beyond_Lmax_runs():
    net = make(N=2, Lmax=2).eval()
    (out,) = net(torch.randn(1, 4, 32), loops=6)
    assert out.shape == (1, 4, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("loops,exits", [(0, None), (2, [3]), (2, []), (3, [0, 1])])
def test_bad_exits_rejected(loops, exits):
    with pytest.raises(ValueError, match="exits"):
        make()(torch.randn(1, 2, 32), loops=loops, exits=exits)


def test_adaln_blocks_start_as_identity_and_modulation_runs_once_per_evaluation():
    net = make(N=3, Lmax=4, cond_dim=16)
    x, c = torch.randn(2, 5, 32), torch.randn(2, 16)
    calls = []
    for blk in net.blocks:
        blk.modulation.register_forward_hook(lambda *a: calls.append(1))
    (out,) = net(x, loops=4, cond=c)
    torch.testing.assert_close(out, x)  # adaLN-Zero: gates are zero at init
    assert len(calls) == 3  # N modulations, not N·L: conditioning is reused by every loop
    with pytest.raises(ValueError, match="cond"):
        net(x, loops=1)


def test_residual_branches_start_small():
    """GPT-2 init: residual output projections scaled by 1/sqrt(2·N·Lmax)."""
    net = make(N=4, Lmax=4)
    std_proj = torch.stack([b.proj.weight.std() for b in net.blocks]).mean()
    std_qkv = torch.stack([b.qkv.weight.std() for b in net.blocks]).mean()
    assert abs(std_qkv - 0.02) < 0.003
    assert abs(std_proj - 0.02 / (2 * 16) ** 0.5) < 0.001
    x = torch.randn(4, 8, 32)
    (out,) = net.eval()(x, loops=4)
    assert (out - x).norm() / x.norm() < 0.5  # near identity, not exploding


def test_options_input_injection_and_loop_embedding_change_the_function():
    x = torch.randn(2, 4, 32)
    plain = make()(x, loops=3)[0]
    inj = make(input_injection=True)(x, loops=3)[0]
    assert not torch.allclose(plain, inj)
    emb_net = make(loop_embedding=True)
    torch.testing.assert_close(emb_net(x, loops=3)[0], plain)  # zero-init embedding: same start
    with torch.no_grad():
        emb_net.loop_embed.normal_()
    assert not torch.allclose(emb_net(x, loops=3)[0], plain)
    emb_net(x, loops=100)  # beyond the embedding table: reuses its last row


def test_flops_grow_linearly_with_loops():
    net = make(N=2)
    f1, f3 = net.flops(10, 1), net.flops(10, 3)
    assert f3 == pytest.approx(3 * f1)


@pytest.mark.parametrize("cond_dim", [None, 16])
def test_compiled_blocks_match_eager_at_every_exit_and_keep_parameter_names(cond_dim):
    from torch._dynamo.utils import counters

    eager, compiled = make(cond_dim=cond_dim), make(cond_dim=cond_dim)
    compiled.compile_blocks()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.randn(2, 5, 32)
    cond = torch.randn(2, 16) if cond_dim else None
    for i, (loops, exits) in enumerate(((3, [1, 3]), (2, [2]), (5, [4, 5]))):  # student exits, any L, > Lmax
        want = eager(x, loops, exits, cond=cond)
        got = compiled(x, loops, exits, cond=cond)
        if i == 0:
            graphs = counters["stats"]["unique_graphs"]
        assert counters["stats"]["unique_graphs"] == graphs  # no recompile for another L or exit
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    sum(s.sum() for s in compiled(x, 3, [1, 3], cond=cond)).backward()
    sum(s.sum() for s in eager(x, 3, [1, 3], cond=cond)).backward()
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)


# ---- activation checkpointing (model.checkpointing) ---------------------------------------------
def count_calls(module) -> list[int]:
    """Calls of ``module`` counted on entry: a recomputation stops early once it has what backward
    needs, so forward hooks (support.models.CallCounter) miss it."""
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("cond_dim", [None, 16])
def test_checkpointing_recomputes_each_block_call_with_identical_outputs_and_grads(cond_dim):
    plain, ckpt = make(cond_dim=cond_dim, dropout=0.1), make(cond_dim=cond_dim, dropout=0.1, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 32)
    cond = torch.randn(2, 16, requires_grad=True) if cond_dim else None
    outs, grads = [], []
    for net in (plain, ckpt):
        calls = count_calls(net.blocks[0])
        torch.manual_seed(7)  # dropout masks: the recomputation must replay the same ones
        states = net(x, 3, [1, 3], cond=cond)
        forward_calls = calls[0]
        sum((s * torch.arange(s.numel()).view_as(s).sin()).sum() for s in states).backward()
        # checkpointed: each of the 3 loops' block calls runs again in backward (the modulation does not)
        assert calls[0] == forward_calls + (3 if net is ckpt else 0)
        outs.append(states)
        grads.append({n: p.grad for n, p in net.named_parameters()} | ({"cond": cond.grad} if cond_dim else {}))
        if cond_dim:
            cond.grad = None
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-6, atol=1e-7, msg=name)


def test_checkpointing_only_when_training_with_grad():
    x = torch.randn(2, 5, 32, requires_grad=True)
    for mode, grad in (("eval", True), ("train", False)):
        net = getattr(make(checkpointing=True), mode)()
        calls = count_calls(net.blocks[0])
        with torch.set_grad_enabled(grad):
            (out,) = net(x, loops=2)
            if grad:
                out.sum().backward()
        assert calls[0] == 2  # once per loop: nothing recomputed


@pytest.mark.parametrize("family", ["maskgit", "dit"])
def test_checkpointed_model_has_the_same_ilsd_loss_and_grads(family):
    """Whole models, one ILSD step (exits [Lint, Lmax], both terms live): checkpointing changes nothing."""
    def build(checkpointing):
        if family == "maskgit":
            return tiny_maskgit(Lmax=3, checkpointing=checkpointing)
        return random_dit(Lmax=3, checkpointing=checkpointing)  # adaLN-Zero: most block gradients 0 otherwise

    batch, results = digits_batch(8), []
    for checkpointing in (False, True):
        model = build(checkpointing).train()
        model.ilsd_lambda = 0.5
        torch.manual_seed(3)
        loss, parts = model.loss(batch)
        loss.backward()
        assert model.last_lint is not None and model.last_lint < model.Lmax
        results.append((model.last_lint, loss, parts, {n: p.grad for n, p in model.named_parameters()}))
    (lint0, loss0, parts0, g0), (lint1, loss1, parts1, g1) = results
    assert lint0 == lint1
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
    assert parts0.keys() == parts1.keys()
    assert g0.keys() == g1.keys() and all(g is not None for g in g0.values())
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-6, atol=1e-7, msg=name)
