"""torch.compile'd looped blocks (``compile=true``) vs eager: training-step time of the video demo's
MaskGIT-ELT (2N×4L, ILSD, 400 tokens), in fp32 and under bf16 autocast.

Two identically seeded models, one with ``backbone.compile_blocks()``; interleaved repetitions,
median ratio compiled / eager (< 1 = compile is faster), plus the one-off compile time paid by the
first steps of a run. Results go to benchmarks/results/compile.{json,md}.

    python benchmarks/compile.py [--width 64] [--reps 5] [--steps 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ilsd_overhead import interleaved, table_lines, ratio_cell, step_time, write_results  # noqa: E402  (same folder)
from precision import cpu_flags, video_model  # noqa: E402


def measure(bf16: bool, args) -> dict:
    eager, eager_opt, batch = video_model(args.width, args.heads, args)
    compiled, compiled_opt, _ = video_model(args.width, args.heads, args)
    compiled.backbone.compile_blocks()
    step_time(eager, eager_opt, batch, True, 1, bf16=bf16)  # warm-up
    start = time.perf_counter()
    for _ in range(3):  # the first call builds the forward and backward graphs
        step_time(compiled, compiled_opt, batch, True, 1, bf16=bf16)
    build = time.perf_counter() - start
    models = {False: (eager, eager_opt), True: (compiled, compiled_opt)}
    e, c, ratio = interleaved(lambda kind: step_time(*models[kind], batch, True, args.steps, bf16=bf16), args.reps)
    return {"precision": "bf16-mixed" if bf16 else "fp32", "threads": torch.get_num_threads(), "width": args.width,
            "tokens": eager.tokenizer.num_tokens, "batch": args.batch, "eager_step_s": e, "compiled_step_s": c,
            "first_steps_s": build, **ratio}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--canvas", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compile.json"))
    args = p.parse_args()
    rows = [measure(bf16, args) for bf16 in (False, True)]
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_flags": cpu_flags()}
    lines = [f"torch {meta['torch']}, {meta['threads']} threads; first 3 compiled steps include building the graphs", "", *table_lines(
        ["precision", "width", "tokens", "batch", "eager step (s)", "compiled step (s)",
         "compiled / eager (median, min–max)", "first 3 compiled steps (s)"],
        [[*(str(r[k]) for k in ("precision", "width", "tokens", "batch")), f"{r['eager_step_s']:.3f}",
          f"{r['compiled_step_s']:.3f}", ratio_cell(r, 2), f"{r['first_steps_s']:.0f}"] for r in rows])]
    write_results(args.out, meta, rows, lines)


if __name__ == "__main__":
    main()
