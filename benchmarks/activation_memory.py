"""Peak memory of one ILSD training step (forward + backward) with and without model.checkpointing.

Paper rows shrunk to this machine (width, tokens, batch): DiT-ELT 16N×2L against the non-looped
DiT at the same effective depth (32 layers), and MaskGIT-ELT 8N×4L. Each measurement is a fresh
subprocess (so one config's freed memory cannot hide another's), the two settings interleaved
across repetitions, median reported. What is measured: the kernel's peak resident set (VmHWM,
reset through /proc/self/clear_refs after a warm-up step) minus the resident set just before the
measured step, i.e. what the step adds on top of weights, gradients and batch: activations kept for
backward plus the transient buffers of the step. glibc is told to mmap every block over 64 KiB
(MALLOC_MMAP_THRESHOLD_), so freed tensors leave the resident set instead of being cached.
Results go to benchmarks/results/activation_memory.{json,md}.

    python benchmarks/activation_memory.py [--reps 2] [--rows dit_elt dit maskgit_elt]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ilsd_overhead import interleaved, table_lines, ratio_cell, write_results  # noqa: E402  (same folder)

WIDTH, HEADS = 256, 4
ROWS = {  # name -> family, N, Lmax, batch, data shape (DiT: latent C,H,W with patch 2; MaskGIT: token grid)
    "dit_elt": dict(label="DiT-ELT 16N×2L", family="dit", N=16, Lmax=2, batch=8, shape=(4, 16, 16)),
    "dit": dict(label="DiT 32N×1L", family="dit", N=32, Lmax=1, batch=8, shape=(4, 16, 16)),
    "maskgit_elt": dict(label="MaskGIT-ELT 8N×4L", family="maskgit", N=8, Lmax=4, batch=2, shape=(1, 16, 16)),
}


def build(row: dict, checkpointing: bool):
    from elt.models import DiTELT, MaskGITELT
    from elt.encoders.tokenizers import PixelAutoencoder, PixelTokenizer

    torch.manual_seed(0)
    common = dict(num_classes=10, N=row["N"], Lmax=row["Lmax"], width=WIDTH, heads=HEADS, mlp_dim=4 * WIDTH,
                  ilsd={"enabled": True}, checkpointing=checkpointing)
    if row["family"] == "dit":
        model = DiTELT(PixelAutoencoder(tuple(row["shape"])), patch_size=2, ema_decay=None, **common)
        tokens = (row["shape"][1] // 2) * (row["shape"][2] // 2)
    else:
        model = MaskGITELT(PixelTokenizer(17, tuple(row["shape"])), **common)
        tokens = model.tokenizer.num_tokens + 1  # + the class token
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 17, (row["batch"], *row["shape"]), generator=g).float() / 16,
             "label": torch.randint(0, 10, (row["batch"],), generator=g)}
    model.train().ilsd_lambda = 0.5  # both ILSD terms live
    return model, batch, tokens


def status_kib(key: str) -> int:
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1])


def child(row: dict, checkpointing: bool) -> dict:
    """One process, one config: warm-up step, then the measured step's peak over its starting RSS."""
    torch.set_num_threads(1)
    model, batch, tokens = build(row, checkpointing)

    def step():
        loss, _ = model.loss(batch)
        loss.backward()
        model.zero_grad(set_to_none=False)  # gradients stay allocated: they are not activations

    step()  # warm-up: gradient buffers, thread pools, lazily built kernels
    gc.collect()
    base = status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss (peak not resettable: includes the warm-up step)"
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() for p in model.parameters())
    return {"step_mib": (peak - base) / 1024, "base_mib": base / 1024, "step_s": seconds, "method": method,
            "tokens": tokens, "params_m": params / 1e6}


def measure_in_subprocess(name: str, checkpointing: bool) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", name, str(int(checkpointing))], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(name: str, reps: int) -> dict:
    runs = {False: [], True: []}

    def mib(checkpointing: bool) -> float:
        r = measure_in_subprocess(name, checkpointing)
        runs[checkpointing].append(r)
        return r["step_mib"]

    plain, ckpt, ratio = interleaved(mib, reps)
    row, last = ROWS[name], runs[False][-1]
    seconds = {k: sorted(r["step_s"] for r in v)[len(v) // 2] for k, v in runs.items()}
    return {"row": name, "label": row["label"], "family": row["family"], "N": row["N"], "Lmax": row["Lmax"],
            "width": WIDTH, "tokens": last["tokens"], "batch": row["batch"], "params_m": last["params_m"],
            "plain_step_mib": plain, "checkpointed_step_mib": ckpt, **ratio, "saved_factor": plain / ckpt,
            "plain_step_s": seconds[False], "checkpointed_step_s": seconds[True], "method": last["method"],
            "runs": {str(k): v for k, v in runs.items()}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--child", nargs=2, metavar=("ROW", "CHECKPOINTING"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "activation_memory.json"))
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(ROWS[args.child[0]], bool(int(args.child[1])))))
        return
    rows = [measure(name, args.reps) for name in args.rows]
    torch.set_num_threads(1)  # the children's count, for the header
    meta = {"torch": torch.__version__, "threads": 1,
            "measured": rows[0]["method"] + " minus VmRSS before the step, fresh subprocess per measurement",
            "reps": args.reps}
    lines = [f"Peak RSS added by one ILSD training step (forward + backward), fp32 CPU, width {WIDTH}; "
             f"{meta['measured']}; median of {args.reps} interleaved runs.", "",
             "Checkpointing keeps one state per (loop, block) call. The looped rows keep a floor of up to one extra "
             "copy of the backbone's gradients: autograd sums a shared weight's per-loop gradient contributions "
             "before accumulating them (the same with ILSD off), so it scales with N, not with N·L. Step times are "
             "one step each on a shared CPU: indicative only.", "", *table_lines(
        ["model", "params (M)", "tokens", "batch", "step peak (MiB)", "checkpointed (MiB)",
         "checkpointed / plain (median, min–max)", "saved", "step time plain → checkpointed (s, 1 step)"],
        [[r["label"], f"{r['params_m']:.1f}", str(r["tokens"]), str(r["batch"]), f"{r['plain_step_mib']:.0f}",
          f"{r['checkpointed_step_mib']:.0f}", ratio_cell(r, 3), f"{r['saved_factor']:.1f}×",
          f"{r['plain_step_s']:.2f} → {r['checkpointed_step_s']:.2f}"] for r in rows])]
    write_results(args.out, meta, rows, lines)


if __name__ == "__main__":
    main()
