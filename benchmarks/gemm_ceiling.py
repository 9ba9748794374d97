"""The most of the GEMM peak a DiT-S/2 pass could reach on this CPU: its matmuls alone, each at its own shape.

``dit_official.py`` reports DiT-ELT's achieved FLOP/s as a share of a 1024² GEMM's. This benchmark bounds
that share from above: every matmul of one DiT-S/2 block at batch 8 (2048 tokens, width 384, 6 heads of 64),
forward and backward, is timed alone on the kernel DiT-ELT runs it with (linears: ``elt.runtime.kernels``,
oneDNN where available; attention: ``torch.matmul`` on [B·heads, tokens, 64], as the explicit attention
form does), and their FLOPs over their summed time is the share the network would reach if everything
that is not a matmul (softmax, norms, GELU, modulation, copies) cost nothing. What-if rows time the
attention matmuls as one oneDNN GEMM per batch-head instead, the one faster form found. The per-block linears and
attention matmuls are over 99% of DiT-S/2's FLOPs; the embeddings, adaLN and final layer are left out.
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
HEAD_DIM, SEQ, BH = WIDTH // HEADS, 256, 8 * HEADS


def shapes() -> list[tuple[str, str, tuple[int, ...], int]]:
    """(name, pass, shape, count per block): linears as (M, K, N) for x[M, K] · W[N, K]ᵀ, attention as
    (batch, M, K, N). Backward of a linear: dX = dY · W (M, N → K) and dW = dYᵀ · X (N, M → K)."""
    linears = {"qkv": (WIDTH, 3 * WIDTH), "proj": (WIDTH, WIDTH), "fc1": (WIDTH, MLP * WIDTH), "fc2": (MLP * WIDTH, WIDTH)}
    out = []
    for name, (k, n) in linears.items():
        out.append((name, "fwd", ("linear", TOKENS, k, n), 1))
        out.append((f"{name} dX", "bwd", ("linear", TOKENS, n, k), 1))
        out.append((f"{name} dW", "bwd", ("linear", n, TOKENS, k), 1))
    out.append(("q·kᵀ", "fwd", ("bmm", BH, SEQ, HEAD_DIM, SEQ), 1))
    out.append(("p·v", "fwd", ("bmm", BH, SEQ, SEQ, HEAD_DIM), 1))
    out.append(("attention dP, dS·k", "bwd", ("bmm", BH, SEQ, HEAD_DIM, SEQ), 1))  # dO·vᵀ: K = 64
    out.append(("attention dV, dQ, dK", "bwd", ("bmm", BH, SEQ, SEQ, HEAD_DIM), 3))  # N = 64
    # not what DiT-ELT runs: the same attention matmuls as one oneDNN call per batch-head (what-if rows)
    out.append(("q·kᵀ per head", "what-if", ("per-head", BH, SEQ, HEAD_DIM, SEQ), 1))
    out.append(("p·v per head", "what-if", ("per-head", BH, SEQ, SEQ, HEAD_DIM), 1))
    return out


def runner(shape: tuple, dtype: torch.dtype):
    """The call and its FLOPs (multiply-add = 2)."""
    g = torch.Generator().manual_seed(0)
    if shape[0] == "linear":
        _, m, k, n = shape
        x, w = torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
        return (lambda: kernels.linear(x, w)), 2 * m * k * n
    op, b, m, k, n = shape
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
    """Per shape: the median over repetitions of its TFLOP/s over the GEMM peak measured right after it."""
    rows = []
    with torch.no_grad():
        for name, kind, shape, count in shapes():
            fn, flops = runner(shape, dtype)
            fn()
            shares, tflops = [], []
            for _ in range(reps):
                t = seconds(fn)
                peak = gemm_tflops_now(torch.device("cpu"), dtype, 1024, 3)
                tflops.append(flops / t / 1e12)
                shares.append(tflops[-1] / peak)
            rows.append({"dtype": str(dtype).replace("torch.", ""), "matmul": name, "op": shape[0], "pass": kind, "shape": list(shape[1:]),
                         "count": count, "gflops": flops / 1e9, "tflops": statistics.median(tflops),
                         "share": statistics.median(shares)})
    return rows


def ceiling(rows: list[dict], passes: tuple[str, ...], attention_share: float | None = None) -> float:
    """The matmuls' FLOPs over their time (each share-weighted), as a share of the peak; ``attention_share``:
    every attention matmul at that share instead (the what-if of per-head oneDNN calls)."""
    use = [r for r in rows if r["pass"] in passes]

    def share(r):
        return attention_share if attention_share is not None and r["op"] != "linear" else r["share"]

    return sum(r["gflops"] * r["count"] for r in use) / sum(r["gflops"] * r["count"] / share(r) for r in use)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/gemm_ceiling.json"))
    args = p.parse_args(argv)
    dtypes = [torch.float32] + ([torch.bfloat16] if kernels.onednn_bf16() else [])
    rows = [r for dt in dtypes for r in measure(dt, args.reps)]
    table = [f"DiT-S/2's matmuls at batch 8, each alone on DiT-ELT's kernel; share = its TFLOP/s over a 1024² GEMM's "
             f"measured right after it (the faster of ATen's and oneDNN's), median of {args.reps}. Ceiling = all of a "
             "pass's matmuls together (FLOPs over summed time): the most of the peak the network could reach if "
             "nothing else cost time.", "",
             *table_lines(["dtype", "matmul", "pass", "shape", "per block", "GFLOP", "TFLOP/s", "of GEMM peak"],
                          [[r["dtype"], r["matmul"], r["pass"], "×".join(map(str, r["shape"])), str(r["count"]),
                            f"{r['gflops']:.2f}", f"{r['tflops']:.3f}", f"{r['share']:.2f}"] for r in rows]), ""]
    summary = []
    for dt in {r["dtype"]: None for r in rows}:
        mine = [r for r in rows if r["dtype"] == dt]
        per_head = statistics.median(r["share"] for r in mine if r["pass"] == "what-if")
        summary.append({"dtype": dt, "forward": ceiling(mine, ("fwd",)), "forward+backward": ceiling(mine, ("fwd", "bwd")),
                        "linears only": ceiling([r for r in mine if r["op"] == "linear"], ("fwd", "bwd")),
                        "per-head attention": ceiling(mine, ("fwd", "bwd"), per_head)})
    table += table_lines(["dtype", "ceiling: forward", "ceiling: forward + backward", "linears alone (fwd + bwd)",
                          "fwd + bwd, attention matmuls per head on oneDNN (what-if)"],
                         [[s["dtype"], f"{s['forward']:.2f}", f"{s['forward+backward']:.2f}", f"{s['linears only']:.2f}",
                           f"{s['per-head attention']:.2f}"] for s in summary])
    write_results(args.out, {"reps": args.reps, "ceilings": summary}, rows, table)


if __name__ == "__main__":
    main()
