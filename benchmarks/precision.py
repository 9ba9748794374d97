"""bf16-autocast training-step time / fp32 training-step time for the video demo's MaskGIT-ELT.

Whether bf16 autocast pays on a CPU depends on its bf16 units (AMX or only AVX-512 BF16), the width
and the thread count, so the video experiment's precision is picked from this file rather than
assumed: interleaved repetitions, median ratio, one row per thread count. Results go to
benchmarks/results/precision.{json,md}.

    python benchmarks/precision.py [--widths 64 128] [--threads 1 2] [--reps 5] [--steps 3]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from elt.models import MaskGITELT  # noqa: E402
from elt.encoders.tokenizers import PixelTokenizer  # noqa: E402
from ilsd_overhead import interleaved, table_lines, ratio_cell, step_time, write_results  # noqa: E402  (same folder)


def cpu_flags() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return []
    return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16")))


def video_model(width: int, heads: int, args):
    """The video demo's MaskGIT-ELT 2N×4L with ILSD (seeded), its optimizer and one random batch."""
    torch.manual_seed(0)
    shape = (1, args.frames, args.canvas, args.canvas)
    model = MaskGITELT(PixelTokenizer(17, shape), num_classes=10, N=2, Lmax=4, width=width, heads=heads,
                       mlp_dim=4 * width, ilsd={"enabled": True}).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 17, (args.batch, *shape), generator=g).float() / 16,
             "label": torch.randint(0, 10, (args.batch,), generator=g)}
    return model, opt, batch


def measure(width: int, heads: int, args) -> dict:
    model, opt, batch = video_model(width, heads, args)
    step_time(model, opt, batch, True, 1, bf16=False)  # warm-up both paths
    step_time(model, opt, batch, True, 1, bf16=True)
    fp32, bf16, ratio = interleaved(lambda kind: step_time(model, opt, batch, True, args.steps, bf16=kind), args.reps)
    return {"threads": torch.get_num_threads(), "width": width, "heads": heads,
            "tokens": model.tokenizer.num_tokens, "batch": args.batch,
            "fp32_step_s": fp32, "bf16_step_s": bf16, **ratio}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", nargs="+", type=int, default=[64, 128])
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--canvas", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="intra-op threads, one row each")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "precision.json"))
    args = p.parse_args()
    rows = []
    for n in args.threads:
        torch.set_num_threads(n)
        rows += [measure(w, max(2, w // 32), args) for w in args.widths]
    meta = {"torch": torch.__version__, "cores": os.cpu_count(), "cpu_flags": cpu_flags()}
    lines = [f"CPU bf16 flags: {', '.join(meta['cpu_flags']) or 'none'}; {meta['cores']} cores", "", *table_lines(
        ["threads", "width", "heads", "tokens", "batch", "fp32 step (s)", "bf16 step (s)", "bf16 / fp32 (median, min–max)"],
        [[*(str(r[k]) for k in ("threads", "width", "heads", "tokens", "batch")), f"{r['fp32_step_s']:.3f}",
          f"{r['bf16_step_s']:.3f}", ratio_cell(r, 2)] for r in rows])]
    write_results(args.out, meta, rows, lines)


if __name__ == "__main__":
    main()
