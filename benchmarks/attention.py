"""CPU bf16 attention: PyTorch's fused kernel against the explicit form of ``elt.runtime.kernels.attention``.

The threshold ``MATH_ATTENTION_MAX_SCORES`` comes from this table: per token count, forward and forward +
backward of one attention call at DiT-S's shape (batch 8, 6 heads, head dim 64), bf16 inputs, both forms
interleaved, and the bytes each keeps for its backward besides q, k, v (the explicit form: the scaled q and
the probabilities, one bf16 per query-key pair; the fused kernel: its output and a row statistic). Results:
benchmarks/results/attention.{json,md}.

    OMP_NUM_THREADS=1 python benchmarks/attention.py [--tokens 16 64 128 256 512 1024] [--reps 7]
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

BATCH, HEADS, DIM = 8, 6, 64
FORMS = {"fused": 0, "explicit": 1 << 62}  # form -> the score cap that selects it


def call(form: str, q, k, v, go, backward: bool) -> None:
    kernels.MATH_ATTENTION_MAX_SCORES = FORMS[form]
    if backward:  # gradients returned, not accumulated into .grad: the attention's own work only
        torch.autograd.grad(kernels.attention(q, k, v), (q, k, v), go)
    else:
        with torch.no_grad():
            kernels.attention(q, k, v)


def saved_bytes(form: str, q, k, v) -> int:
    """Bytes autograd keeps for the backward of one call (inputs q, k, v not counted)."""
    kernels.MATH_ATTENTION_MAX_SCORES = FORMS[form]
    inputs = {t.data_ptr() for t in (q, k, v)}
    kept = {}

    def pack(t):
        if t.data_ptr() not in inputs:
            kept[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kernels.attention(q, k, v)
    return sum(kept.values())


def measure(tokens: int, reps: int, calls: int) -> dict:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(BATCH, HEADS, tokens, DIM, generator=g, dtype=torch.bfloat16).requires_grad_()
               for _ in range(3))
    go = torch.randn(BATCH, HEADS, tokens, DIM, generator=g, dtype=torch.bfloat16)
    row = {"tokens": tokens}
    for form in FORMS:  # warm-up, backward first: the allocator then keeps its large blocks for both passes
        for backward in (True, False):
            call(form, q, k, v, go, backward)
    for backward in (False, True):
        times = {f: [] for f in FORMS}
        for rep in range(reps):
            for form in (list(FORMS) if rep % 2 == 0 else list(FORMS)[::-1]):
                start = time.perf_counter()
                for _ in range(calls):
                    call(form, q, k, v, go, backward)
                times[form].append((time.perf_counter() - start) / calls)
        ratios = [f / e for f, e in zip(times["fused"], times["explicit"])]
        key = "fwd_bwd" if backward else "fwd"
        row.update({f"{key}_{f}_ms": 1e3 * statistics.median(t) for f, t in times.items()})
        row[f"{key}_speedup"] = statistics.median(ratios)
    row.update({f"saved_{f}_mib": saved_bytes(f, q, k, v) / 2**20 for f in FORMS})
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 128, 256, 512, 1024])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attention.json"))
    args = p.parse_args(argv)
    mode, cap = kernels.cpu_kernels(), kernels.MATH_ATTENTION_MAX_SCORES
    kernels.set_cpu_kernels("auto")
    try:
        rows = [measure(t, args.reps, args.calls) for t in args.tokens]
    finally:
        kernels.MATH_ATTENTION_MAX_SCORES = cap
        kernels.set_cpu_kernels(mode)
    cells = [[str(r["tokens"]), f"{r['fwd_fused_ms']:.2f}", f"{r['fwd_explicit_ms']:.2f}", f"{r['fwd_speedup']:.2f}×",
              f"{r['fwd_bwd_fused_ms']:.2f}", f"{r['fwd_bwd_explicit_ms']:.2f}", f"{r['fwd_bwd_speedup']:.2f}×",
              f"{r['saved_fused_mib']:.2f}", f"{r['saved_explicit_mib']:.2f}",
              "explicit" if r["tokens"] ** 2 <= cap else "fused"] for r in rows]
    table = [f"bf16 attention on the CPU, batch {BATCH}, {HEADS} heads, head dim {DIM}; median of {args.reps} "
             f"interleaved repetitions of {args.calls} calls; speed-up = fused time / explicit time; saved = what "
             "autograd keeps for the backward besides q, k, v; `auto` uses the explicit form up to "
             f"{cap} scores per head ({int(cap ** 0.5)} tokens).", "",
             *table_lines(["tokens", "fwd fused (ms)", "fwd explicit (ms)", "fwd speed-up", "fwd+bwd fused (ms)",
                           "fwd+bwd explicit (ms)", "fwd+bwd speed-up", "saved fused (MiB)",
                           "saved explicit (MiB)", "auto uses"], cells)]
    write_results(args.out, {"batch": BATCH, "heads": HEADS, "dim": DIM, "reps": args.reps, "calls": args.calls,
                             "max_scores": cap}, rows, table)


if __name__ == "__main__":
    main()
