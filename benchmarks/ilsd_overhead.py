"""ILSD training-step time / plain Lmax training-step time, same model, batch and machine.

ILSD's student is a prefix of the teacher's pass, so the extra cost should be only the shared head
at one more exit and two more loss terms. Repetitions of the two step kinds are interleaved and the
median ratio reported, because this machine's speed drifts. Results go to benchmarks/results/.

    python benchmarks/ilsd_overhead.py [--families maskgit dit] [--reps 7] [--steps 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from elt.models import MaskGITELT  # noqa: E402
from elt.encoders.tokenizers import PixelAutoencoder, PixelTokenizer  # noqa: E402
from elt.evaluation.tables import grid_table  # noqa: E402


def build(family: str, width: int, N: int, Lmax: int):
    """The digits demo's model shapes (width 128, 4 heads, N=2, Lmax=4)."""
    common = dict(num_classes=10, N=N, Lmax=Lmax, width=width, heads=4, mlp_dim=4 * width, ilsd={"enabled": True})
    if family == "maskgit":
        return MaskGITELT(PixelTokenizer(17, (1, 8, 8)), **common)
    if family == "dit":
        from elt.models import DiTELT

        return DiTELT(PixelAutoencoder((1, 8, 8)), **common)
    raise SystemExit(f"unknown family {family!r} (maskgit, dit)")


def step_time(model, opt, batch, ilsd: bool, steps: int, bf16: bool = False) -> float:
    """Seconds per optimiser step; ``bf16`` autocasts the forward only, as Lightning's bf16-mixed does."""
    model.ilsd_enabled = ilsd
    model.ilsd_lambda = 0.5  # both ILSD terms live
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def interleaved(seconds, reps: int):
    """Median time of ``seconds(False)`` and ``seconds(True)`` and their ratio (True / False), with the
    order alternating every repetition so the machine's drift hits both kinds alike."""
    off, on, ratios = [], [], []
    for rep in range(reps):
        order = (False, True) if rep % 2 == 0 else (True, False)
        times = {kind: seconds(kind) for kind in order}
        off.append(times[False])
        on.append(times[True])
        ratios.append(times[True] / times[False])
    ratio = {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return statistics.median(off), statistics.median(on), ratio


def ratio_cell(row: dict, digits: int) -> str:
    """A results table's ratio cell: median (min–max) over the interleaved repetitions."""
    return f"{row['ratio_median']:.{digits}f} ({row['ratio_min']:.{digits}f}–{row['ratio_max']:.{digits}f})"


def table_lines(columns: list[str], cells: list[list[str]]) -> list[str]:
    """A results table's lines."""
    return grid_table(columns, cells).splitlines()


def machine() -> dict:
    """What a CPU timing depends on: the CPU, its vector / matrix flags, the CPU count, torch's threads and
    which library runs fp32 linears (elt.runtime.kernels)."""
    from elt.runtime.kernels import cpu_kernels, onednn_available
    from elt.runtime.precision import cpu_flags

    try:
        name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "")
    except OSError:
        name = ""
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    return {"cpu": name or platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "cpu_flags": " ".join(flags), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "fp32_linears": "oneDNN" if cpu_kernels() == "auto" and onednn_available() else "ATen"}


def machine_line(m: dict, label: str = "") -> str:
    """A results file's header line for machine ``m`` (``label``: the entries measured on it)."""
    kernels = f", fp32 linears on {m['fp32_linears']}" if "fp32_linears" in m else ""
    return (f"Machine{f' ({label})' if label else ''}: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']} with "
            f"{m['torch_threads']} thread(s){kernels}; CPU flags: {m['cpu_flags'] or 'none of avx / amx / fma'}.")


def machine_lines(machines: dict[str, dict | None]) -> list[str]:
    """The header of results gathered over several runs (entry name -> the machine it was measured on, None
    where not recorded): one line per machine, naming its entries when there is more than one."""
    groups: list[tuple[dict | None, list[str]]] = []
    for name, m in machines.items():
        group = next((g for g in groups if g[0] == m), None)
        if group is None:
            groups.append((m, [name]))
        else:
            group[1].append(name)
    if len(groups) == 1 and groups[0][0] is not None:
        return [machine_line(groups[0][0])]
    return [machine_line(m, ", ".join(names)) if m is not None
            else f"Machine ({', '.join(names)}): not recorded (measured before the results kept it)."
            for m, names in groups]


def write_results(out: str, meta: dict, rows: list[dict], table: list[str]) -> None:
    """``out`` (JSON: meta + rows) and the same name with ``.md`` (the table), then print the table. Both start
    with the machine (CPU, flags, CPU count, torch threads): a timing means nothing without it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    m = machine()
    header = machine_line(m)
    out.write_text(json.dumps({"meta": {**meta, "machine": m}, "results": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join([header, "", *table]) + "\n")
    print("\n".join([header, "", *table]))


def measure(family: str, args) -> dict:
    torch.manual_seed(0)
    model = build(family, args.width, args.N, args.Lmax).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 17, (args.batch, 1, 8, 8), generator=g).float() / 16,
             "label": torch.randint(0, 10, (args.batch,), generator=g)}
    step_time(model, opt, batch, True, 2)  # warm-up
    step_time(model, opt, batch, False, 2)
    plain, ilsd, ratio = interleaved(lambda kind: step_time(model, opt, batch, kind, args.steps), args.reps)
    return {
        "family": family, "width": args.width, "N": args.N, "Lmax": args.Lmax, "batch": args.batch,
        "plain_step_s": plain, "ilsd_step_s": ilsd, **ratio, "target": 1.05,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=["maskgit", "dit"])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--N", type=int, default=2)
    p.add_argument("--Lmax", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ilsd_overhead.json"))
    args = p.parse_args()
    rows = [measure(f, args) for f in args.families]
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    lines = table_lines(
        ["family", "N×L", "batch", "plain step (s)", "ILSD step (s)", "ILSD / plain (median, min–max)", "target"],
        [[r["family"], f"{r['N']}N×{r['Lmax']}L w{r['width']}", str(r["batch"]), f"{r['plain_step_s']:.3f}",
          f"{r['ilsd_step_s']:.3f}", ratio_cell(r, 3), f"≤ {r['target']}"] for r in rows])
    write_results(args.out, meta, rows, lines)


if __name__ == "__main__":
    main()
