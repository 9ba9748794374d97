"""Does the framework run well on this GPU, and how fast? One script, one markdown report (make gpu-check).

On a GPU (about 10 minutes on one H100):

1. **Training**: both families at a paper row's full width (MaskGIT-ELT ELT-L 8N×3L, DiT-ELT ELT 8N×4L) trained
   ``--steps`` steps through Lightning in bf16 where the GPU has native bf16, eager and ``torch.compile``d, then with
   activation checkpointing, then under one-GPU FSDP (trainer=fsdp's strategy) with checkpointing. Per run: samples/s,
   TFLOP/s and MFU (``elt.jobs.speed.ThroughputMonitor``, last window, so compilation is not in it), data-wait share,
   peak memory, whether the loss stayed finite. The batches are random tokens / latents of the row's shapes (a stand-in
   for ImageNet shards: the check measures the model, not a dataset it would have to download).
   Then each GPU default (``elt.jobs.speed.SpeedDefaults``: TF32, fused AdamW, the SDPA kernels) on against off,
   in interleaved training steps of the DiT row: the measured reason for each default, on this GPU.
2. **Sampling throughput** at batch 8, each ELT row vs its same-scale baseline (benchmarks/throughput.py's models and
   timing, interleaved), beside the paper's ratios (1.0×, 2.9×, 3.3×, 3.5×).
3. **Evaluation on the device at L = 1..Lmax**: ``train.py`` then ``eval.py`` on the embedded digits, as a user would run
   them; the digits are scored by their domain judge, a stand-in for InceptionV3 / I3D, whose weights this check does
   not need (it says whether they are present).

``--tiny`` (a CPU runs it in the tests): the same code at 2N×2L, width 32 on a 4×4 grid, 3 steps, one sampling
scale at reduced size and a 2-step evaluation, so the script cannot rot between GPU runs. Its numbers mean nothing.
``--skip compile eval`` leaves out what costs a CPU minutes (inductor's C++ build, the judge's training).

    python benchmarks/gpu_check.py [--tiny] [--steps 30] [--batch 32] [--skip compile eval] [--out outputs/gpu_check]
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ilsd_overhead import interleaved, table_lines  # noqa: E402
from throughput import BenchTokenizer, sample_seconds  # noqa: E402
import throughput  # noqa: E402

from elt.experiments.paper.rows import THROUGHPUT, compose_row  # noqa: E402
from elt.experiments.paper.shapes import ShapeAutoencoder, shape_only  # noqa: E402
from elt.runtime import precision  # noqa: E402
from elt.runtime.precision import cpu_flags  # noqa: E402

TRAIN_ROWS = {"maskgit": "imagenet_elt_L_8Nx3L", "dit": "imagenet_elt_dit_8Nx4L"}
TINY = dict(width=32, heads=2, mlp_dim=64, N=2, Lmax=2, grid=(4, 4))
RUNS = [  # name, compile, activation checkpointing, FSDP
    ("eager", False, False, False),
    ("compiled", True, False, False),
    ("eager + checkpointing", False, True, False),
    ("FSDP (1 GPU) + checkpointing", False, True, True),
]


# ---- models and data of a paper row -------------------------------------------------------------
def build(config: str, tiny: bool, checkpointing: bool = False, fsdp: bool = False):
    """The row's model at its full width (``tiny``: 2N×2L at width 32 on a 4×4 grid), with shape-only stage-one models: the
    batches hold tokens / latents already. DiT under FSDP has no EMA (train.py refuses one there)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = shape_only(compose_row(config))
    kw = {"checkpointing": checkpointing}
    is_dit = str(cfg.model._target_).endswith("DiTELT")
    if tiny:
        kw.update({k: TINY[k] for k in ("width", "heads", "mlp_dim", "N", "Lmax")})
    if is_dit:
        latent = tuple(cfg.data.autoencoder.latent_shape)
        if tiny:
            latent = (latent[0], *(g * int(cfg.model.patch_size) for g in TINY["grid"]))
        kw["autoencoder"] = ShapeAutoencoder(latent, (3, 8 * latent[-2], 8 * latent[-1]))
        if fsdp:
            kw["ema_decay"] = None
    else:
        tok = OmegaConf.to_container(cfg.data.tokenizer, resolve=True)
        grid = TINY["grid"] if tiny else tuple(tok["grid_shape"])
        kw["tokenizer"] = BenchTokenizer(tok["vocab_size"], grid, (3, 16 * grid[-2], 16 * grid[-1]))
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="all", **kw)


class RandomBatches(torch.utils.data.Dataset):
    """Random items of a model's input shapes (tokens or latents, and a label): a stand-in for shards."""

    def __init__(self, model, n: int):
        self.model, self.n = model, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        label = int(torch.randint(0, self.model.num_classes, (), generator=g))
        if hasattr(self.model, "autoencoder"):
            return {"latent": torch.randn(self.model.autoencoder.latent_shape, generator=g), "label": label}
        tok = self.model.tokenizer
        return {"tokens": torch.randint(0, tok.vocab_size, (tok.num_tokens,), generator=g), "label": label}


# ---- 1. training through Lightning ------------------------------------------------------------------
def train_run(family: str, name: str, compiled: bool, checkpointing: bool, fsdp: bool, args, device) -> dict:
    import lightning as L

    from elt.core.backbone import fsdp_wrap_policy
    from elt.core.ilsd import ILSDCallback
    from elt.jobs.speed import SpeedDefaults, ThroughputMonitor

    row = {"family": family, "row": TRAIN_ROWS[family], "run": name}
    if fsdp and device.type != "cuda":
        return {**row, "status": "skipped: Lightning's FSDPStrategy needs a GPU"}
    model = build(TRAIN_ROWS[family], args.tiny, checkpointing, fsdp)
    width, N, Lmax = model.backbone.width, model.N, model.Lmax
    if compiled:
        model.backbone.compile_blocks()
    every = max(args.steps // 3, 1)
    monitor = ThroughputMonitor(every_n_steps=every, prog_bar=False)
    choice = precision.resolve("auto", device.type, "gpu-check precision")
    strategy = "auto"
    if fsdp:
        from lightning.pytorch.strategies import FSDPStrategy

        strategy = FSDPStrategy(sharding_strategy="FULL_SHARD", auto_wrap_policy=fsdp_wrap_policy(),
                                use_orig_params=True, state_dict_type="full")
    trainer = L.Trainer(max_steps=args.steps, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        strategy=strategy, precision="bf16-mixed" if choice == "bf16" else "32-true", logger=False,
                        callbacks=[ILSDCallback(), monitor, SpeedDefaults()], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, gradient_clip_val=1.0)
    loader = torch.utils.data.DataLoader(RandomBatches(model, args.steps * args.batch), batch_size=args.batch,
                                         pin_memory=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        trainer.fit(model, train_dataloaders=loader)
        wall = time.perf_counter() - start
        loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
        params = sum(p.numel() for p in model.parameters())
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    finally:  # the next run's peak memory must not hold this one's model, optimizer or compiled graphs
        del trainer, model, loader
        if compiled:
            torch._dynamo.reset()
        gc.collect()
    return {**row, "status": "ok" if math.isfinite(loss) else "non-finite loss", "precision": choice,
            "width": width, "N": N, "Lmax": Lmax, "params_m": params / 1e6,
            "batch": args.batch, "steps": args.steps, "wall_s": wall, "loss": loss, **monitor.last,
            "peak_source": monitor.peak_source, "peak_mem_gib": peak_mem}


def guarded(fn, row: dict) -> dict:
    """One check's row; a failure is reported in the row (the report lists every check) instead of ending the run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the report's job is to say what failed
        traceback.print_exc()
        return {**row, "status": f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}


# ---- 1b. the GPU defaults, each on against off ---------------------------------------------------------
def defaults_rows(args, device, choice) -> list[dict]:
    """Training steps of the DiT row with each default on and off, interleaved (plain PyTorch steps: the
    setting is all that differs). TF32 and the SDPA kernels only exist on CUDA; fused AdamW runs on CPUs too."""
    from elt.runtime.devices import set_sdpa_backend
    from elt.runtime.precision import set_tf32

    model = build(TRAIN_ROWS["dit"], args.tiny).to(device).train()
    model.ilsd_lambda = 0.5
    batch = next(iter(torch.utils.data.DataLoader(RandomBatches(model, args.batch), batch_size=args.batch)))
    batch = {k: v.to(device) for k, v in batch.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opts = {True: torch.optim.AdamW(params, lr=1e-5, fused=True), False: torch.optim.AdamW(params, lr=1e-5, foreach=True)}
    n, reps = (2, 1) if args.tiny else (3, min(args.reps, 3))  # a minute or two: fp32 steps without TF32 are slow

    def steps(opt, prec: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(n):
            with precision.autocast(device.type, prec):
                loss, _ = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / n

    def tf32(on: bool) -> float:
        set_tf32(on)
        return steps(opts[True], "32")

    def sdpa(on: bool) -> float:
        set_sdpa_backend("auto" if on else "math")
        return steps(opts[True], choice)

    checks = [("fused AdamW (vs foreach)", choice, lambda on: steps(opts[on], choice), True)]
    checks += [("TF32 matmuls (fp32 run)", "32", tf32, device.type == "cuda"),
               ("SDPA flash / efficient (vs math)", choice, sdpa, device.type == "cuda")]
    rows = []
    try:
        for name, prec, fn, applies in checks:
            row = {"setting": name, "precision": prec}
            if not applies:
                rows.append({**row, "status": "skipped: CUDA only"})
                continue
            fn(True), fn(False)  # warm-up both
            off, on, ratio = interleaved(fn, reps)
            rows.append({**row, "status": "ok", "on_step_s": on, "off_step_s": off, "speedup_median": 1 / ratio["ratio_median"],
                         "speedup_min": 1 / ratio["ratio_max"], "speedup_max": 1 / ratio["ratio_min"]})
    finally:
        set_tf32(True)
        set_sdpa_backend("auto")
        del model, opts
        gc.collect()
    return rows


# ---- 2. sampling throughput ---------------------------------------------------------------------------
def sampling_row(scale: str, args, device, choice) -> dict:
    elt_row, base_row, paper = THROUGHPUT[scale]
    mode = "reduced" if args.tiny else "full"
    models, steps = {}, None
    for kind, config in ((True, elt_row), (False, base_row)):
        models[kind], steps, _ = throughput.build(config, mode, device)
        models[kind].eval()
        sample_seconds(models[kind], 1, device, choice)  # warm-up
    if args.tiny:
        steps = 2
    base_s, elt_s, ratio = interleaved(lambda kind: sample_seconds(models[kind], steps, device, choice), args.reps)
    return {"scale": scale, "elt": elt_row, "baseline": base_row, "paper_ratio": paper, "steps": steps,
            "elt_images_per_s": throughput.BATCH / elt_s, "baseline_images_per_s": throughput.BATCH / base_s,
            "speedup_median": 1 / ratio["ratio_median"], "speedup_min": 1 / ratio["ratio_max"],
            "speedup_max": 1 / ratio["ratio_min"], "status": "ok"}


# ---- 3. evaluation through train.py / eval.py ---------------------------------------------------------
def evaluation(args, device, out: Path) -> dict:
    """train.py then eval.py on the digits, on this device: every loop count 1..Lmax (+1 extrapolated)."""
    run = out / "digits_maskgit"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "ELT_ROOT": str(ROOT)}
    gpu = device.type == "cuda"
    train = [sys.executable, str(ROOT / "train.py"), "experiment=digits_maskgit", f"hydra.run.dir={run}",
             "logger=none", "ckpt_path=last", f"trainer={'gpu' if gpu else 'cpu'}",
             f"trainer.max_steps={args.steps}", "trainer.val_check_interval=1000000",
             "trainer.enable_progress_bar=false"] + ([] if gpu else ["data.batch_size=16"])
    evaluate = [sys.executable, str(ROOT / "eval.py"), f"ckpt_path={run}/checkpoints/last.ckpt",
                f"hydra.run.dir={run}/eval", f"paths.cache_dir={out / 'cache'}", f"eval.device={device.type}",
                "eval.progress=false", "eval.extra_loops=1"]
    if args.tiny:
        evaluate += ["eval.samples_per_class=3", "eval.batch_size=16", "eval.grid_per_class=2", "eval.is_splits=3",
                     "eval.sampler={steps:2}"]
    start = time.perf_counter()
    for cmd in (train, evaluate):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"{Path(cmd[1]).name} exited {done.returncode}: {tail[0][:300]}")
    results = json.loads((run / "eval" / "results.json").read_text())
    rows = [r for r in results["rows"] if r["row"] == "model"]
    inception = Path(torch.hub.get_dir()) / "checkpoints"
    return {"status": "ok", "wall_s": time.perf_counter() - start, "device": device.type, "rows": rows,
            "inception_weights_present": any(inception.glob("*inception*")) if inception.is_dir() else False}


# ---- the report -----------------------------------------------------------------------------------
def fmt(v, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def report(meta: dict, train_rows: list[dict], defaults: list[dict], sampling: list[dict], ev: dict) -> list[str]:
    lines = [f"# gpu-check: {meta['device']}", "",
             f"torch {meta['torch']}, {meta['precision']}, {'TINY (numbers mean nothing: a test of the script)' if meta['tiny'] else 'full size'}; "
             f"{meta['cpu']}, {meta['threads']} CPU threads; {meta['wall_s']:.0f} s in all.", "",
             "## Training through Lightning", "",
             f"{meta['steps']} steps at batch {meta['batch']} of random tokens / latents of the row's shapes (a stand-in for "
             "the dataset); figures from the last logging window of ThroughputMonitor (compilation excluded); MFU against "
             "the peak named in the last column.", "",
             *table_lines(["family", "row", "run", "status", "params (M)", "samples/s", "TFLOP/s", "MFU", "data wait",
                           "peak mem (GiB)", "wall (s)", "peak from"],
                          [[r["family"], r["row"], r["run"], r["status"], fmt(r.get("params_m"), ".1f"),
                            fmt(r.get("samples_per_s")), fmt(r.get("tflops")), fmt(r.get("mfu"), ".1%"),
                            fmt(r.get("data_wait"), ".1%"), fmt(r.get("peak_mem_gib"), ".1f"), fmt(r.get("wall_s"), ".0f"),
                            r.get("peak_source") or "—"] for r in train_rows]), "",
             "## The GPU defaults, each on against off (the DiT row, plain training steps, interleaved)", "",
             *table_lines(["setting", "precision", "status", "step on (s)", "step off (s)", "speed-up on / off (median, min–max)"],
                          [[r["setting"], r.get("precision", "—"), r["status"], fmt(r.get("on_step_s")),
                            fmt(r.get("off_step_s")),
                            f"{r['speedup_median']:.2f}× ({r['speedup_min']:.2f}–{r['speedup_max']:.2f})"
                            if "speedup_median" in r else "—"] for r in defaults]), "",
             "## Sampling throughput at batch 8, ELT vs its same-scale baseline", "",
             *table_lines(["scale", "status", "images/s ELT", "images/s baseline", "ELT / baseline (median, min–max)",
                           "paper"],
                          [[r["scale"], r["status"], fmt(r.get("elt_images_per_s")), fmt(r.get("baseline_images_per_s")),
                            f"{r['speedup_median']:.2f}× ({r['speedup_min']:.2f}–{r['speedup_max']:.2f})"
                            if "speedup_median" in r else "—", f"{r['paper_ratio']:.1f}×"] for r in sampling]), "",
             "## Evaluation on the device at every loop count (train.py + eval.py, digits)", ""]
    if ev.get("status") != "ok":
        return lines + [f"status: {ev.get('status')}"]
    base = {"name", "row", "loops", "extrapolated", "num_samples", "gflops_per_sample", "wall_s_per_sample"}
    metrics = [k for k in ev["rows"][0] if k not in base]
    metric = next((k for k in metrics if k.startswith(("fid", "fvd"))), metrics[0] if metrics else "—")
    lines += [f"Scored by the digits' domain judge, a stand-in for InceptionV3 / I3D (InceptionV3 weights "
              f"{'present' if ev['inception_weights_present'] else 'absent'} in torch's hub cache; ImageNet / UCF-101 "
              f"evaluations need them). {ev['wall_s']:.0f} s for training and evaluation.", "",
              *table_lines(["L", "extrapolated", "images/s", "GFLOPs/sample", metric],
                           [[str(r["loops"]), str(r["extrapolated"]), fmt(1 / r["wall_s_per_sample"]),
                             fmt(r["gflops_per_sample"]), fmt(r.get(metric))] for r in ev["rows"]])]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="width 32, 3 steps, reduced sampling: the CPU test of this script")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 30; --tiny 3)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 32; --tiny 4)")
    p.add_argument("--reps", type=int, default=None, help="interleaved sampling repetitions (default 5; --tiny 1)")
    p.add_argument("--scales", nargs="+", default=None, choices=list(THROUGHPUT),
                   help="sampling scales (default all; --tiny B)")
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "compile", "defaults", "sampling", "eval"])
    p.add_argument("--out", default=str(ROOT / "outputs" / "gpu_check"))
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        print("gpu-check: no CUDA device here; running the --tiny CPU version (its numbers mean nothing)", file=sys.stderr)
        args.tiny = True
    args.steps = args.steps or (3 if args.tiny else 30)
    args.batch = args.batch or (4 if args.tiny else 32)
    args.reps = args.reps or (1 if args.tiny else 5)
    args.scales = args.scales or (["B"] if args.tiny else list(THROUGHPUT))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    choice = precision.resolve("auto", device.type, "gpu-check precision")
    start = time.perf_counter()

    train_rows = []
    if "train" not in args.skip:
        for family in TRAIN_ROWS:
            for name, compiled, ckpt, fsdp in RUNS:
                if compiled and "compile" in args.skip:
                    continue
                base = {"family": family, "row": TRAIN_ROWS[family], "run": name}
                train_rows.append(guarded(lambda: train_run(family, name, compiled, ckpt, fsdp, args, device), base))
                print(json.dumps(train_rows[-1]), flush=True)
    defaults = []
    if "defaults" not in args.skip:
        defaults = guarded(lambda: defaults_rows(args, device, choice), {"setting": "all", "status": ""})
        defaults = defaults if isinstance(defaults, list) else [defaults]
        print(json.dumps(defaults), flush=True)
    sampling = []
    if "sampling" not in args.skip:
        for scale in args.scales:
            sampling.append(guarded(lambda: sampling_row(scale, args, device, choice),
                                    {"scale": scale, "paper_ratio": THROUGHPUT[scale][2]}))
            print(json.dumps(sampling[-1]), flush=True)
    ev = {"status": "skipped"}
    if "eval" not in args.skip:
        ev = guarded(lambda: evaluation(args, device, out), {})

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    bf16_flags = sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx"))
    meta = {"device": f"{device.type} ({name})", "tiny": args.tiny, "torch": torch.__version__,
            "precision": "bf16 autocast" if choice == "bf16" else "fp32 (TF32 matmuls on CUDA)",
            "cpu": f"{platform.processor() or platform.machine()}, flags {' '.join(bf16_flags) or 'no bf16/amx'}",
            "threads": torch.get_num_threads(), "steps": args.steps, "batch": args.batch,
            "wall_s": time.perf_counter() - start}
    lines = report(meta, train_rows, defaults, sampling, ev)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps({"meta": meta, "train": train_rows, "defaults": defaults, "sampling": sampling,
                                                 "eval": ev}, indent=2, default=str) + "\n")
    print("\n".join(lines))
    failed = [r for r in train_rows + defaults + sampling if str(r.get("status", "")).startswith(("FAILED", "non-finite"))]
    failed += [ev] if str(ev.get("status", "")).startswith("FAILED") else []
    print(f"\nreport: {out / 'report.md'}; {len(failed)} check(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
