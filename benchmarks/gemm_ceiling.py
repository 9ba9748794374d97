"""The most of the GEMM peak a DiT-S/2 pass could reach on this CPU: its linears and attention alone.

``dit_official.py`` reports DiT-ELT's achieved FLOP/s as a share of a 1024² GEMM's. This benchmark bounds
that share from above: every linear of one DiT-S/2 block at batch 8 (2048 tokens, width 384, 6 heads of
64), forward and backward, and its attention call (forward, and forward + backward), each timed alone on
the kernels DiT-ELT runs them with (``elt.runtime.kernels``: linears on oneDNN where available; attention
through ``kernels.attention``, which is PyTorch's fused kernel in fp32 and the explicit bf16 form up to
257 tokens, softmax included in both). Their FLOPs over their summed time is the share the network would
reach if everything else (norms, GELU, modulation, copies) cost nothing. What-if rows time only the
attention's two matmuls, as one batched ``torch.matmul`` and as one oneDNN GEMM per batch-head (the
fastest form found), and give the ceiling with the attention at that speed. The linears and attention are
over 99% of DiT-S/2's FLOPs; the embeddings, adaLN and final layer are left out.
Results: benchmarks/results/gemm_ceiling.{json,md}.

    OMP_NUM_THREADS=1 python benchmarks/gemm_ceiling.py [--reps 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ilsd_overhead import table_lines, write_results  # noqa: E402

from elt.runtime import kernels  # noqa: E402
from elt.runtime.peak import gemm_tflops_now  # noqa: E402

TOKENS, WIDTH, HEADS, MLP = 8 * 256, 384, 6, 4
HEAD_DIM, SEQ, BATCH = WIDTH // HEADS, 256, 8
BH = BATCH * HEADS
ATTENTION_FLOPS = 2 * 2 * BH * SEQ * SEQ * HEAD_DIM  # q·kᵀ and p·v


def shapes() -> list[tuple[str, str, tuple, int]]:
    """(name, pass, op and shape, count per block): linears as (M, K, N) for x[M, K] · W[N, K]ᵀ (backward:
    dX = dY · W, (M, N → K), and dW = dYᵀ · X, (N, M → K)); the attention call; what-if matmuls as
    (batch, M, K, N)."""
    linears = {"qkv": (WIDTH, 3 * WIDTH), "proj": (WIDTH, WIDTH), "fc1": (WIDTH, MLP * WIDTH), "fc2": (MLP * WIDTH, WIDTH)}
    out = []
    for name, (k, n) in linears.items():
        out.append((name, "fwd", ("linear", TOKENS, k, n), 1))
        out.append((f"{name} dX", "bwd", ("linear", TOKENS, n, k), 1))
        out.append((f"{name} dW", "bwd", ("linear", n, TOKENS, k), 1))
    out.append(("attention", "fwd", ("attention", BATCH, HEADS, SEQ, HEAD_DIM), 1))
    out.append(("attention", "fwd+bwd", ("attention-grad", BATCH, HEADS, SEQ, HEAD_DIM), 1))
    for form in ("bmm", "per-head"):  # not what DiT-ELT runs: the attention's matmuls alone
        out.append((f"q·kᵀ, {form}", "what-if", (form, BH, SEQ, HEAD_DIM, SEQ), 1))
        out.append((f"p·v, {form}", "what-if", (form, BH, SEQ, SEQ, HEAD_DIM), 1))
    return out


def runner(shape: tuple, dtype: torch.dtype):
    """The call and its FLOPs (multiply-add = 2; a backward = 2 forwards)."""
    g = torch.Generator().manual_seed(0)
    op = shape[0]
    if op == "linear":
        _, m, k, n = shape
        x, w = torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
        return (lambda: kernels.linear(x, w)), 2 * m * k * n
    if op.startswith("attention"):
        q, k, v = (torch.randn(*shape[1:], generator=g).to(dtype).requires_grad_(op == "attention-grad") for _ in range(3))
        if op == "attention":
            return (lambda: kernels.attention(q, k, v)), ATTENTION_FLOPS
        go = torch.randn(*shape[1:], generator=g).to(dtype)
        return (lambda: torch.autograd.grad(kernels.attention(q, k, v), (q, k, v), go)), 3 * ATTENTION_FLOPS
    _, b, m, k, n = shape
    a, c = torch.randn(b, m, k, generator=g).to(dtype), torch.randn(b, k, n, generator=g).to(dtype)
    if op == "per-head":  # one oneDNN GEMM per batch-head: a[i] · c[i] as a linear with weight c[i]ᵀ
        ct = c.transpose(1, 2).contiguous()
        return (lambda: [kernels.onednn_linear(a[i], ct[i]) for i in range(b)]), 2 * b * m * k * n
    return (lambda: torch.matmul(a, c)), 2 * b * m * k * n


def seconds(fn, calls: int = 3) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure(dtype: torch.dtype, reps: int) -> list[dict]:
    """Per row: the median over repetitions of its TFLOP/s over the GEMM peak measured right after it."""
    rows = []
    for name, kind, shape, count in shapes():
        fn, flops = runner(shape, dtype)
        with torch.set_grad_enabled(shape[0] == "attention-grad"):
            fn()
            shares, tflops = [], []
            for _ in range(reps):
                t = seconds(fn)
                peak = gemm_tflops_now(torch.device("cpu"), dtype, 1024, 3)
                tflops.append(flops / t / 1e12)
                shares.append(tflops[-1] / peak)
        rows.append({"dtype": str(dtype).replace("torch.", ""), "matmul": name, "op": shape[0], "pass": kind,
                     "shape": list(shape[1:]), "count": count, "gflops": flops / 1e9,
                     "tflops": statistics.median(tflops), "share": statistics.median(shares)})
    return rows


def ceiling(rows: list[dict], attention_share: float | None = None) -> float:
    """The rows' FLOPs over their summed time, as a share of the peak; ``attention_share``: the attention
    rows at that share instead (a what-if)."""
    def share(r):
        return attention_share if attention_share is not None and r["op"].startswith("attention") else r["share"]

    return sum(r["gflops"] * r["count"] for r in rows) / sum(r["gflops"] * r["count"] / share(r) for r in rows)


def ceilings(rows: list[dict]) -> dict:
    linear = [r for r in rows if r["op"] == "linear"]
    forward = [r for r in linear if r["pass"] == "fwd"] + [r for r in rows if r["op"] == "attention"]
    training = linear + [r for r in rows if r["op"] == "attention-grad"]
    what_if = {op: statistics.median(r["share"] for r in rows if r["op"] == op) for op in ("bmm", "per-head")}
    return {"forward": ceiling(forward), "forward+backward": ceiling(training), "linears only": ceiling(linear),
            **{f"attention matmuls {op}": ceiling(training, s) for op, s in what_if.items()}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/gemm_ceiling.json"))
    args = p.parse_args(argv)
    dtypes = [torch.float32] + ([torch.bfloat16] if kernels.onednn_bf16() else [])
    rows = [r for dt in dtypes for r in measure(dt, args.reps)]
    table = [f"One DiT-S/2 block at batch 8, each linear and attention call alone on DiT-ELT's kernels; share = its "
             f"TFLOP/s over a 1024² GEMM's measured right after it (the faster of ATen's and oneDNN's), median of "
             f"{args.reps}. Ceiling = a pass's rows together (FLOPs over summed time): the most of the peak the "
             "network could reach if nothing else cost time. What-if: the attention's matmuls alone, batched "
             "(torch.matmul) or one oneDNN GEMM per batch-head, in place of the attention call.", "",
             *table_lines(["dtype", "call", "pass", "shape", "per block", "GFLOP", "TFLOP/s", "of GEMM peak"],
                          [[r["dtype"], r["matmul"], r["pass"], "×".join(map(str, r["shape"])), str(r["count"]),
                            f"{r['gflops']:.2f}", f"{r['tflops']:.3f}", f"{r['share']:.2f}"] for r in rows]), ""]
    summary = [{"dtype": dt, **ceilings([r for r in rows if r["dtype"] == dt])} for dt in {r["dtype"]: None for r in rows}]
    table += table_lines(["dtype", "ceiling: forward", "ceiling: forward + backward", "linears alone (fwd + bwd)",
                          "fwd + bwd, attention as batched matmuls (what-if)", "fwd + bwd, attention as per-head oneDNN GEMMs (what-if)"],
                         [[s["dtype"], f"{s['forward']:.2f}", f"{s['forward+backward']:.2f}", f"{s['linears only']:.2f}",
                           f"{s['attention matmuls bmm']:.2f}", f"{s['attention matmuls per-head']:.2f}"] for s in summary])
    write_results(args.out, {"reps": args.reps, "ceilings": summary}, rows, table)


if __name__ == "__main__":
    main()
