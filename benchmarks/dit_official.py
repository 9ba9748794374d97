"""DiT-ELT against facebookresearch/DiT's own ``models.py``, same weights, same machine, interleaved.

DiT-S/2 (12 layers, width 384, 6 heads, learn_sigma) on 32×32×4 latents at batch 8: the official model from the
``models.py`` a user points to (it imports timm; neither is a dependency of this project, and the file is never
copied into it), and DiT-ELT built as 12N×1L with the official weights ported into it (the outputs are checked
to agree before anything is timed). DiT-ELT runs on its default CPU kernels (``elt.runtime.kernels``: fp32
linears on oneDNN), and again on ATen's own to show what that lever is worth. Timed per repetition, order alternating: forward, and forward + backward of
a mean-square loss, in fp32 and, on a CPU with native bf16 (AVX512-BF16 / AMX), under bf16 autocast. After each
repetition a square GEMM at the same precision (the faster of MKL and oneDNN): DiT-ELT's analytic TFLOP/s over that peak says how close the model
gets to the best this machine's matmul does. Results: benchmarks/results/dit_official.{json,md}.

    python benchmarks/dit_official.py /path/to/DiT/models.py [--reps 9] [--threads 1] [--compile]

(``git show HEAD:models.py`` in a clone of github.com/facebookresearch/DiT gives the file; ``pip install timm``.)
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ilsd_overhead import table_lines, write_results  # noqa: E402

from elt.encoders.tokenizers import PixelAutoencoder  # noqa: E402
from elt.models import DiTELT  # noqa: E402
from elt.runtime.kernels import set_cpu_kernels  # noqa: E402
from elt.runtime.peak import gemm_tflops_now  # noqa: E402
from elt.runtime.precision import bf16_supported  # noqa: E402

BATCH, LATENT = 8, (4, 32, 32)
S2 = dict(depth=12, width=384, heads=6, patch=2)


def load_official(path: str):
    """The ``DiT`` class of the user's models.py (which imports timm)."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"error: {path} is not a file: pass facebookresearch/DiT's models.py")
    spec = importlib.util.spec_from_file_location("official_dit_models", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        raise SystemExit(f"error: {path} needs {e.name}: pip install timm (for this benchmark only)") from None
    return module.DiT


def official_model(DiT):
    torch.manual_seed(0)
    model = DiT(input_size=LATENT[1], patch_size=S2["patch"], in_channels=LATENT[0], hidden_size=S2["width"],
                depth=S2["depth"], num_heads=S2["heads"], learn_sigma=True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # adaLN-Zero and the zero head would make every output 0: randomise them
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model.eval()


def ported(official) -> DiTELT:
    """DiT-ELT 12N×1L holding the official model's weights (and its position table)."""
    ours = DiTELT(PixelAutoencoder(LATENT), num_classes=1000, N=S2["depth"], Lmax=1, width=S2["width"],
                  heads=S2["heads"], mlp_dim=4 * S2["width"], patch_size=S2["patch"], learn_sigma=True,
                  ema_decay=None, ilsd={"enabled": False})
    src = official.state_dict()
    names = {"patch_embed": "x_embedder.proj", "time_embed.0": "t_embedder.mlp.0", "time_embed.2": "t_embedder.mlp.2",
             "class_embed": "y_embedder.embedding_table", "final_linear": "final_layer.linear",
             "final_modulation.1": "final_layer.adaLN_modulation.1"}
    for i in range(S2["depth"]):
        names.update({f"backbone.blocks.{i}.{a}": f"blocks.{i}.{b}" for a, b in (
            ("qkv", "attn.qkv"), ("proj", "attn.proj"), ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2"),
            ("modulation.1", "adaLN_modulation.1"))})
    state = {}
    for ours_name in ours.state_dict():
        prefix, leaf = ours_name.rsplit(".", 1)
        state[ours_name] = src[f"{names[prefix]}.{leaf}"]
    ours.load_state_dict(state)
    ours.pos_embed.copy_(official.pos_embed.detach())
    return ours.eval()


def inputs():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(BATCH, *LATENT, generator=g)
    t = torch.rand(BATCH, generator=g)
    y = torch.randint(0, 1000, (BATCH,), generator=g)
    return z, t, y


def runners(official, ours):
    """name -> output function: the official model takes DiT's timesteps (0..1000), ours t in [0, 1]."""
    z, t, y = inputs()
    return {"official": lambda: official(z, 1000 * t, y)[:, : LATENT[0]],
            "ours": lambda: ours.predict({"z": z, "t": t, "labels": y}, loops=1, exits=[1])[0]}


def timed(fn, backward: bool, bf16: bool, calls: int) -> float:
    """Seconds per call of ``fn`` (and its backward)."""
    start = time.perf_counter()
    for _ in range(calls):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if backward:
                fn().float().square().mean().backward()
            else:
                with torch.no_grad():
                    fn()
    return (time.perf_counter() - start) / calls


def gemm_tflops(bf16: bool, size: int = 1024, calls: int = 3) -> float:
    """This moment's GEMM peak at the benchmark's precision, in TFLOP/s: the best square matmul over ATen's
    kernel and oneDNN's (elt.runtime.peak), so a faster library does not inflate the share."""
    return gemm_tflops_now(torch.device("cpu"), torch.bfloat16 if bf16 else torch.float32, size, calls)


def measure(fns: dict, backward: bool, bf16: bool, reps: int, calls: int, flops: float) -> dict:
    """Interleaved repetitions (order alternating), each with a GEMM peak of its own moment: medians, the
    per-repetition ratio official / ours, and the per-repetition share of the GEMM peak ours reaches."""
    for fn in fns.values():
        timed(fn, backward, bf16, 1)  # warm-up
    times = {k: [] for k in fns}
    ratios, shares, peaks = [], [], []
    for rep in range(reps):
        order = list(fns) if rep % 2 == 0 else list(fns)[::-1]
        got = {k: timed(fns[k], backward, bf16, calls) for k in order}
        peak = gemm_tflops(bf16)
        for k, v in got.items():
            times[k].append(v)
        ratios.append(got["official"] / got["ours"])
        shares.append(flops / got["ours"] / 1e12 / peak)
        peaks.append(peak)
    return {**{f"{k}_s": statistics.median(v) for k, v in times.items()},
            "speedup_median": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
            "gemm_tflops": statistics.median(peaks), "ours_of_gemm": statistics.median(shares),
            "ours_of_gemm_min": min(shares), "ours_of_gemm_max": max(shares)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models_py", help="facebookresearch/DiT's models.py (git show HEAD:models.py > /tmp/dit_models.py)")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--calls", type=int, default=3, help="calls per timed repetition")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    p.add_argument("--compile", action="store_true", help="also time DiT-ELT with its blocks torch.compiled")
    p.add_argument("--no-aten-rows", action="store_true",
                   help="skip the fp32 rows with DiT-ELT on ATen's kernels (cpu_kernels=aten)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dit_official.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    official = official_model(load_official(args.models_py))
    ours = ported(official)
    fns = runners(official, ours)
    with torch.no_grad():
        diff = (fns["official"]() - fns["ours"]()).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"error: the ported DiT-ELT differs from the official model by {diff:.3g}: not the same network")
    flops_fwd = ours.flops_per_eval(1) * BATCH
    precisions = [False] + ([True] if bf16_supported("cpu") else [])
    rows = []

    def row(backward: bool, bf16: bool, compiled: bool, kernels: str = "auto") -> dict:
        flops = flops_fwd * (3 if backward else 1)
        set_cpu_kernels(kernels)
        try:
            r = measure(fns, backward, bf16, args.reps, args.calls, flops)
        finally:
            set_cpu_kernels("auto")
        out = {"precision": "bf16 autocast" if bf16 else "fp32", "pass": "fwd+bwd" if backward else "fwd",
               "compiled": compiled, "kernels": kernels, **r, "ours_tflops": flops / r["ours_s"] / 1e12,
               "official_tflops": flops / r["official_s"] / 1e12, "target_speedup": 1.15, "target_of_gemm": 0.85}
        print(out, flush=True)
        return out

    for bf16 in precisions:
        for backward in (False, True):
            rows.append(row(backward, bf16, False))
    if not args.no_aten_rows:  # the lever: the same model on ATen's own kernels
        for backward in (False, True):
            rows.append(row(backward, False, False, "aten"))
    if args.compile:
        ours.backbone.compile_blocks()
        fns = runners(official, ours)
        for backward in (False, True):
            rows.append(row(backward, False, True))
    meta = {"batch": BATCH, "latent": list(LATENT), "model": "DiT-S/2", "reps": args.reps,
            "calls": args.calls, "max_abs_output_difference": diff}
    lines = [f"DiT-ELT vs facebookresearch/DiT models.py, DiT-S/2 with the same (ported) weights, batch {BATCH}, "
             f"{LATENT[1]}×{LATENT[2]}×{LATENT[0]} latents. Interleaved, median of {args.reps} repetitions of "
             f"{args.calls} calls; outputs agree to {diff:.1e}.", "",
             "speed-up = official time / DiT-ELT time (median, min–max over repetitions); TFLOP/s are DiT-ELT's analytic "
             "FLOPs (matmuls, multiply-add = 2; backward = 2 forwards) over its time; of GEMM = that over a 1024² "
             "matmul's best TFLOP/s measured right after each repetition at the same precision and thread count (median, "
             "min–max over repetitions); the GEMM is the faster of ATen's (MKL) and oneDNN's. DiT-ELT kernels: auto = "
             "its defaults (elt.runtime.kernels: fp32 linears on oneDNN), aten = PyTorch's own kernels, as the "
             "official code runs.", "",
             *table_lines(["precision", "pass", "DiT-ELT compiled", "DiT-ELT kernels", "official (ms)", "DiT-ELT (ms)", "speed-up",
                           "target", "DiT-ELT TFLOP/s", "GEMM TFLOP/s", "DiT-ELT of GEMM", "target "],
                          [[r["precision"], r["pass"], "yes" if r["compiled"] else "no", r["kernels"], f"{1e3 * r['official_s']:.1f}",
                            f"{1e3 * r['ours_s']:.1f}",
                            f"{r['speedup_median']:.2f}× ({r['speedup_min']:.2f}–{r['speedup_max']:.2f})",
                            f"≥ {r['target_speedup']}×", f"{r['ours_tflops']:.3f}", f"{r['gemm_tflops']:.3f}",
                            f"{r['ours_of_gemm']:.2f} ({r['ours_of_gemm_min']:.2f}–{r['ours_of_gemm_max']:.2f})",
                            f"≥ {r['target_of_gemm']}"] for r in rows])]
    write_results(args.out, meta, rows, lines)


if __name__ == "__main__":
    main()
