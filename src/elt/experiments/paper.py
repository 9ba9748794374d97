"""The paper's tables as data: one row per published number, each tied to an experiment config.

``python -m elt.experiments.paper plan`` composes every row's config (``experiment=paper/<row>``), builds its model
on the meta device (shapes only: a 2.1B-parameter DiT costs no memory, and no tokenizer, autoencoder
or dataset is opened) and prints parameters and GFLOPs/sample beside the paper's, the training budget
and its accelerator-hours. It exits 1 when a row's parameter count is more than 5% off the paper's.

``python -m elt.experiments.paper run <table>`` trains every row of a table (a fixed run directory per row,
``ckpt_path=last``, so a rerun resumes), evaluates each at every loop count and renders the table
(``elt.experiments.report``). ``--scale smoke`` runs the same commands for a few steps at tiny width on the
embedded data, so that every step of a table target is exercised.

Conventions (docs/paper_tables.md):

- **Parameters** are compared as the looped backbone's unique blocks (what N changes). The paper's
  MaskGIT counts are exactly 12·d²·layers (no embeddings or head), and its DiT counts put 1-3M outside
  the blocks where our DiT has 13.5M (a width×width time MLP, the class table, a 2·width final adaLN):
  comparing totals would flag the 1N×32L row (+16%) for parameters no N×L choice touches. Totals are
  printed beside.
- **GFLOPs/sample** two ways: the paper's convention, 2 × block parameters × L × tokens × steps (no
  attention scores, no guidance doubling; it gives the paper's 3.7k for the L rows), and the project's
  analytic count ``model.flops_per_eval(L) × network evaluations per sample`` (attention, class token,
  head and the ×2 of guidance included) that eval.py prints.
- **Global batch**: ``global_batch`` is the optimizer batch whatever the device count;
  ``trainer.accumulate_grad_batches = global_batch / (data.batch_size × devices × num_nodes)``
  (``apply_global_batch``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from elt import repo_root
from elt.runtime.config import ConfigError, compose
from elt.encoders.tokenizers import Autoencoder, Tokenizer
from elt.evaluation.tables import grid_table
from elt.runtime.batch import apply_global_batch

TOLERANCE = 0.05  # a row whose block parameters are further than this from the paper's fails the plan
PEAK_FLOPS = 989e12  # H100 SXM bf16 dense tensor-core peak
MFU = 0.40  # assumed model FLOPs utilisation for the accelerator-hours column
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward ≈ 3 × forward


@dataclass(frozen=True)
class PaperRow:
    """One published row. ``config`` is ``configs/experiment/paper/<config>.yaml`` (None: a reference row
    the paper quotes and this project does not train); ``loops`` is the loop count the paper reports
    (None: the config's Lmax); ``metrics`` are the paper's quality numbers under our metric names."""

    table: str
    label: str
    config: str | None
    params: float | None = None
    gflops: float | None = None
    metrics: dict = field(default_factory=dict)
    steps: int | None = None
    loops: int | None = None
    note: str = ""


ROWS: list[PaperRow] = [
    PaperRow("imagenet_maskgit", "MaskGIT-L (24 layers)", "imagenet_maskgit_L_24layers", 303e6, 3.7e3, {"fid": 2.1, "is": 270.1}, 24),
    PaperRow("imagenet_maskgit", "MaskGIT-XL (28 layers)", "imagenet_maskgit_XL_28layers", 446e6, 3.9e3, {"fid": 2.0, "is": 294.8}, 24,
             note="the paper's 3.9k GFLOPs matches no count: every convention puts XL at ~1.47x L"),
    PaperRow("imagenet_maskgit", "ELT-L 8N×3L", "imagenet_elt_L_8Nx3L", 101e6, 3.7e3, {"fid": 2.2, "is": 254.3}, 24),
    PaperRow("imagenet_maskgit", "ELT-L 12N×2L", "imagenet_elt_L_12Nx2L", 152e6, 3.7e3, {"fid": 2.1, "is": 281.8}, 24),
    PaperRow("imagenet_maskgit", "ELT-XL 7N×4L", "imagenet_elt_XL_7Nx4L", 111e6, 3.9e3, {"fid": 2.0, "is": 266.1}, 24,
             note="the paper's 3.9k GFLOPs matches no count (see MaskGIT-XL)"),
    PaperRow("imagenet_dit", "DiT 16 layers", "imagenet_dit_16layers", 1.1e9, None, {"fid": 3.87}, 512),
    PaperRow("imagenet_dit", "DiT 32 layers", "imagenet_dit_32layers", 2.1e9, None, {"fid": 3.43}, 512),
    PaperRow("imagenet_dit", "ELT 1N×32L", "imagenet_elt_dit_1Nx32L", 69e6, None, {"fid": 10.30}, 512),
    PaperRow("imagenet_dit", "ELT 4N×8L", "imagenet_elt_dit_4Nx8L", 271e6, None, {"fid": 3.96}, 512),
    PaperRow("imagenet_dit", "ELT 8N×4L", "imagenet_elt_dit_8Nx4L", 539e6, None, {"fid": 3.16}, 512,
             note="trains 1.4x faster than DiT 32 layers"),
    PaperRow("imagenet_dit", "ELT 16N×2L", "imagenet_elt_dit_16Nx2L", 1.1e9, None, {"fid": 2.83}, 512,
             note="trains 2x faster than DiT 32 layers; 34% less peak training memory"),
    PaperRow("ucf101", "MAGVIT-L", "ucf101_magvit_L_24layers", 306e6, None, {"fvd": 76, "fvd_std": 2, "is": 89.27}, 12),
    PaperRow("ucf101", "MaGNeTS", None, 306e6, None, {"fvd": 96.4, "fvd_std": 2, "is": 88.53}, 12,
             note="reference only: not trained here"),
    PaperRow("ucf101", "ELT 6N×4L", "ucf101_elt_6Nx4L", 76e6, None, {"fvd": 72.8, "fvd_std": 2.5, "is": 88.27}, 12),
    PaperRow("ucf101", "ELT 6N×6L (L=6 > Lmax=4)", "ucf101_elt_6Nx4L_L6_24steps", 76e6, None,
             {"fvd": 60.8, "fvd_std": 2.7, "is": 87.88}, 24, loops=6, note="the 6N×4L model sampled at L=6"),
    # throughput-only rows: the paper gives their ratio to the same-scale baseline (THROUGHPUT), nothing else
    PaperRow("throughput", "ELT-B 6N×2L", "imagenet_elt_B_6Nx2L", steps=24),
    PaperRow("throughput", "MaskGIT-B (12 layers)", "imagenet_maskgit_B_12layers", steps=24),
    PaperRow("throughput", "ELT-H 8N×4L", "imagenet_elt_H_8Nx4L", steps=24),
    PaperRow("throughput", "MaskGIT-H (32 layers)", "imagenet_maskgit_H_32layers", steps=24),
]
TABLES = ("imagenet_maskgit", "imagenet_dit", "ucf101", "throughput")
# scale -> (ELT row, same-scale baseline at the same effective depth, paper's sampling-throughput ratio at batch 8)
THROUGHPUT = {
    "B": ("imagenet_elt_B_6Nx2L", "imagenet_maskgit_B_12layers", 1.0),
    "L": ("imagenet_elt_L_8Nx3L", "imagenet_maskgit_L_24layers", 2.9),
    "XL": ("imagenet_elt_XL_7Nx4L", "imagenet_maskgit_XL_28layers", 3.3),
    "H": ("imagenet_elt_H_8Nx4L", "imagenet_maskgit_H_32layers", 3.5),
}


def rows_of(table: str) -> list[PaperRow]:
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; choose from {', '.join(TABLES)}")
    return [r for r in ROWS if r.table == table]


def row_named(config: str) -> PaperRow:
    for r in ROWS:
        if r.config == config:
            return r
    raise ConfigError(f"unknown paper row {config!r}; rows: {', '.join(r.config for r in ROWS if r.config)}")


# ---- shapes without weights ---------------------------------------------------------------------
class ShapeTokenizer(Tokenizer):
    """A tokenizer's shapes and nothing else: what a model needs to be built (the plan, benchmarks)."""

    def __init__(self, vocab_size: int, grid_shape, image_shape):
        self.vocab_size = int(vocab_size)
        self.grid_shape, self.image_shape = tuple(int(g) for g in grid_shape), tuple(int(s) for s in image_shape)

    def encode(self, images):
        raise NotImplementedError("ShapeTokenizer is a shape-only stand-in (elt.experiments.paper); it cannot encode images")

    def decode(self, tokens):
        raise NotImplementedError("ShapeTokenizer is a shape-only stand-in (elt.experiments.paper); it cannot decode tokens")


class ShapeAutoencoder(Autoencoder):
    def __init__(self, latent_shape, image_shape):
        self.latent_shape, self.image_shape = tuple(int(s) for s in latent_shape), tuple(int(s) for s in image_shape)

    def encode(self, images):
        raise NotImplementedError("ShapeAutoencoder is a shape-only stand-in (elt.experiments.paper); it cannot encode images")

    def decode(self, latents):
        raise NotImplementedError("ShapeAutoencoder is a shape-only stand-in (elt.experiments.paper); it cannot decode latents")


STAND_INS = {"tokenizer": ("elt.experiments.paper.ShapeTokenizer", ("vocab_size", "grid_shape", "image_shape")),
             "autoencoder": ("elt.experiments.paper.ShapeAutoencoder", ("latent_shape", "image_shape"))}


def shape_only(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose pretrained tokenizer / autoencoder (any node declaring its shapes, e.g.
    VQGAN 1024 codes on 16×16, the SD VAE's 4×32×32, MAGVIT's 4×16×16) is replaced by a shape-only
    stand-in; the pixel ones, which declare no such keys, are cheap and kept."""
    cfg = cfg.copy()
    for key, (target, keys) in STAND_INS.items():
        node = OmegaConf.select(cfg, f"data.{key}")
        if OmegaConf.is_dict(node) and all(k in node for k in keys):
            with open_dict(cfg):
                cfg.data[key] = {"_target_": target, **{k: OmegaConf.to_container(node, resolve=True)[k] for k in keys}}
    return cfg


def build_on_meta(cfg: DictConfig):
    """The configured model with every tensor on the meta device (parameters have shapes, no storage)."""
    import torch
    from hydra.utils import instantiate

    with torch.device("meta"):
        return instantiate(shape_only(cfg).model, _convert_="all")


def param_counts(model) -> dict:
    blocks = sum(p.numel() for p in model.backbone.blocks.parameters())
    return {"blocks": blocks, "total": sum(p.numel() for p in model.parameters())}


def num_tokens(model) -> int:
    return model.tokenizer.num_tokens if hasattr(model, "tokenizer") else math.prod(model.grid)


def paper_convention_gflops(blocks: int, loops: int, tokens: int, steps: int) -> float:
    """2 × block parameters × loops × tokens × steps: the count behind the paper's 3.7k for the L rows."""
    return 2.0 * blocks * loops * tokens * steps / 1e9


# ---- composing rows ------------------------------------------------------------------------------
def compose_row(config: str, overrides=()) -> DictConfig:
    """The training config of ``experiment=paper/<config>`` as train.py would see it (no Hydra run)."""
    return compose("train", [f"experiment=paper/{config}", *overrides])


def eval_spec(cfg: DictConfig) -> dict:
    """The row's evaluation: loop counts, sampler steps, guidance scales, sample count."""
    e = OmegaConf.to_container(cfg.get("paper", {}).get("eval", {}) or {}, resolve=True)
    steps = int(e.get("steps") or cfg.model.sampler.steps)
    scales = [float(s) for s in e.get("cfg_scales") or [cfg.model.sampler.cfg_scale]]
    return {"loops": e.get("loops", "all"), "steps": steps, "cfg_scales": scales, "num_samples": e.get("num_samples")}


def reported_loops(row: PaperRow, cfg: DictConfig) -> int:
    return int(row.loops or cfg.Lmax)


def describe(row: PaperRow, cfg: DictConfig) -> dict:
    """Everything the plan prints for one row."""
    from elt.core.flops import gflops_per_sample

    model = build_on_meta(cfg)
    counts = param_counts(model)
    spec = eval_spec(cfg)
    L = reported_loops(row, cfg)
    sampler = model.sampler_config(steps=spec["steps"])
    train_row = OmegaConf.select(cfg, "paper.train_row")
    gb = cfg.get("global_batch") or cfg.data.batch_size
    steps = int(cfg.trainer.max_steps)
    train_flops = TRAIN_FLOPS_PER_FORWARD * model.flops_per_eval(cfg.Lmax) * gb * steps
    deviation = counts["blocks"] / row.params - 1 if row.params else None
    return {
        "config": row.config, "label": row.label, "table": row.table, "N": int(cfg.N), "Lmax": int(cfg.Lmax), "L": L,
        "width": int(cfg.scale.width), "params_blocks": counts["blocks"], "params_total": counts["total"],
        "paper_params": row.params, "deviation": deviation,
        "ok": deviation is None or abs(deviation) <= TOLERANCE,
        "gflops_paper_convention": paper_convention_gflops(counts["blocks"], L, num_tokens(model), spec["steps"]),
        "gflops_project": gflops_per_sample(model, L, sampler), "paper_gflops": row.gflops,
        "sampler_steps": spec["steps"], "cfg_scale": float(sampler["cfg_scale"]),
        "train_row": train_row, "global_batch": None if train_row else int(gb), "train_steps": None if train_row else steps,
        "samples_seen": None if train_row else int(gb) * steps,
        "accelerator_hours": None if train_row else train_flops / (PEAK_FLOPS * MFU) / 3600,
    }


def plan(configs: list[str] | None = None, overrides=()) -> tuple[list[dict], bool]:
    rows = [r for r in ROWS if r.config and (configs is None or r.config in configs)]
    if configs:
        unknown = set(configs) - {r.config for r in rows}
        if unknown:
            row_named(sorted(unknown)[0])  # raises, naming the rows
    described = [describe(r, compose_row(r.config, overrides)) for r in rows]
    return described, all(d["ok"] for d in described)


def _num(v, unit: float = 1.0, fmt: str = "{:,.0f}") -> str:
    return "–" if v is None else fmt.format(v / unit)


def plan_markdown(described: list[dict]) -> str:

    cols = ["table", "row", "config", "N×Lmax", "L", "params: blocks (ours)", "paper", "Δ", "total (ours)",
            "GFLOPs/sample 2·P·L·T·S", "flops_per_eval × evals", "paper GFLOPs", "global batch", "steps",
            "samples seen", f"H100-hours @ {MFU:.0%} MFU", "check"]
    cells = []
    for d in described:
        check = "no paper count" if d["deviation"] is None else ("ok" if d["ok"] else f"FAIL (> {TOLERANCE:.0%})")
        cells.append([
            d["table"], d["label"], d["config"], f"{d['N']}N×{d['Lmax']}L", str(d["L"]),
            _num(d["params_blocks"], 1e6, "{:,.1f}M"), _num(d["paper_params"], 1e6, "{:,.0f}M"),
            "–" if d["deviation"] is None else f"{100 * d['deviation']:+.1f}%", _num(d["params_total"], 1e6, "{:,.1f}M"),
            _num(d["gflops_paper_convention"]), _num(d["gflops_project"]), _num(d["paper_gflops"]),
            _num(d["global_batch"]), _num(d["train_steps"]), _num(d["samples_seen"], 1e6, "{:,.0f}M"),
            _num(d["accelerator_hours"]) if not d["train_row"] else f"– (trained by {d['train_row']})", check,
        ])
    notes = [
        f"Parameters: the looped backbone's unique blocks, checked against the paper within ±{TOLERANCE:.0%} "
        "(the paper's MaskGIT counts are 12·d²·layers; our DiT has 13.5M outside the blocks where the paper's "
        "counts imply 1-3M). Totals include embeddings, heads, the time MLP and the final adaLN layer.",
        "GFLOPs/sample: `2·P·L·T·S` = 2 × block parameters × loops × tokens × sampling steps (the paper's convention: "
        "no attention scores, no guidance doubling); `flops_per_eval × evals` = the project's analytic count that "
        "eval.py prints (attention, class token, head; ×2 per step under guidance, cfg_scale ≠ 1). The paper's 3.9k "
        "for the XL rows matches neither (every count puts XL at ~1.47× L).",
        f"Accelerator-hours: {TRAIN_FLOPS_PER_FORWARD} × forward FLOPs (flops_per_eval(Lmax)) × samples seen, at "
        f"{PEAK_FLOPS / 1e12:.0f} TFLOP/s (H100 SXM bf16 dense) × {MFU:.0%} MFU.",
    ]
    return grid_table(cols, cells) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


# ---- running a table -----------------------------------------------------------------------------
SMOKE_TRAIN = ["trainer=cpu", "logger=csv", "scale.name=smoke", "scale.width=32", "scale.heads=2", "scale.mlp_dim=64",
               "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
               "trainer.enable_progress_bar=false", "callbacks.model_checkpoint.every_n_train_steps=2",
               "global_batch=16", "data.batch_size=8", "model.scheduler.warmup_steps=1"]
SMOKE_DATA = {"imagenet_maskgit": ["data=digits"], "imagenet_dit": ["data=digits"], "throughput": ["data=digits"],
              "ucf101": ["data=moving_digits", "data.canvas=10"]}
SMOKE_EVAL = ["eval.num_samples=null", "eval.samples_per_class=2", "eval.batch_size=20", "eval.grid_per_class=1",
              "eval.is_splits=1", "eval.reference_rows=false", "eval.progress=false"]
SMOKE_SAMPLER_STEPS = 2


def cfg_dir_name(scale: float) -> str:
    return f"cfg{scale:g}"


def ordered(rows: list[PaperRow], cfgs: dict) -> list[PaperRow]:
    """Trained rows first, evaluation-time rows (paper.train_row) after the run they read."""
    return sorted(rows, key=lambda r: OmegaConf.select(cfgs[r.config], "paper.train_row") is not None)


def commands(table: str, runs: Path, scale: str = "paper", configs: list[str] | None = None, overrides=(),
             eval_overrides=()) -> list[list[str]]:
    """The train.py / eval.py command lines of a table, in order; each resumes what it finds done."""
    if scale not in ("paper", "smoke"):
        raise ConfigError(f"--scale must be paper or smoke, got {scale!r}")
    root, py = repo_root(), sys.executable
    train_over = ([*SMOKE_DATA[table], *SMOKE_TRAIN] if scale == "smoke" else []) + list(overrides)
    rows = [r for r in rows_of(table) if r.config and (configs is None or r.config in configs)]
    cfgs = {r.config: compose_row(r.config, train_over) for r in rows}
    out = []
    for r in ordered(rows, cfgs):
        cfg = cfgs[r.config]
        train_row = OmegaConf.select(cfg, "paper.train_row")
        run_dir = runs / (train_row or r.config)
        if not train_row:
            k = apply_global_batch(cfg)
            out.append([py, str(root / "train.py"), f"experiment=paper/{r.config}", f"hydra.run.dir={run_dir}",
                        "ckpt_path=last", *train_over, *([f"++trainer.accumulate_grad_batches={k}"] if k else [])])
        spec = eval_spec(cfg)
        steps = min(spec["steps"], SMOKE_SAMPLER_STEPS) if scale == "smoke" else spec["steps"]
        loops = spec["loops"]
        loops = f"[{','.join(str(int(x)) for x in loops)}]" if isinstance(loops, (list, ListConfig)) else str(loops)
        for s in spec["cfg_scales"][:1] if scale == "smoke" else spec["cfg_scales"]:  # smoke: the first scale
            out.append([py, str(root / "eval.py"), f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                        f"hydra.run.dir={runs / r.config / 'eval' / cfg_dir_name(s)}", f"eval.loops={loops}",
                        f"eval.sampler={{steps:{steps},cfg_scale:{s:g}}}",
                        *([f"eval.num_samples={spec['num_samples']}"] if spec["num_samples"] and scale == "paper" else []),
                        *(SMOKE_EVAL if scale == "smoke" else []), *eval_overrides])
    return out


def run_table(table: str, runs: Path, out: Path, scale: str = "paper", configs=None, overrides=(), eval_overrides=(),
              dry_run: bool = False) -> Path | None:
    cmds = commands(table, Path(runs), scale, configs, overrides, eval_overrides)
    env = {**os.environ, "ELT_ROOT": str(repo_root())}
    for cmd in cmds:
        print("+ " + " ".join(cmd[1:]), flush=True)
        if not dry_run:
            proc = subprocess.run(cmd, env=env)
            if proc.returncode:
                raise SystemExit(f"error: {Path(cmd[1]).name} exited {proc.returncode} (command above); rerun the target "
                                 f"to resume")
    if dry_run:
        return None
    from elt.experiments.report import render_table

    return render_table(table, Path(runs), Path(out))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elt.experiments.paper", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("plan", help="parameters, GFLOPs and training cost of every row beside the paper's")
    pl.add_argument("--rows", help="comma-separated row configs (default: all)")
    pl.add_argument("--json", help="also write the plan as JSON here")
    pl.add_argument("overrides", nargs="*", help="Hydra overrides applied to every selected row, e.g. N=9")  # anywhere
    rn = sub.add_parser("run", help="train, evaluate and render one table")
    rn.add_argument("table", choices=[t for t in TABLES if t != "throughput"])
    rn.add_argument("--scale", default="paper", choices=["paper", "smoke"])
    rn.add_argument("--runs", help="run directories (default outputs/paper or outputs/paper_smoke)")
    rn.add_argument("--out", help="rendered tables (default outputs/tables or outputs/tables/smoke)")
    rn.add_argument("--rows", help="comma-separated row configs (default: the whole table)")
    rn.add_argument("--eval-override", action="append", default=[], help="an eval.py override (repeatable)")
    rn.add_argument("--dry-run", action="store_true", help="print the commands only")
    rn.add_argument("overrides", nargs="*", help="train.py overrides for every row")
    args, rest = p.parse_known_args(argv)
    if any(a.startswith("-") for a in rest):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides = [*args.overrides, *rest]  # Hydra overrides may stand before or after the options
    rows = args.rows.split(",") if args.rows else None
    try:
        if args.cmd == "plan":
            described, ok = plan(rows, args.overrides)
            print(plan_markdown(described))
            if args.json:
                Path(args.json).write_text(json.dumps(described, indent=2) + "\n")
            bad = [d["config"] for d in described if not d["ok"]]
            if bad:
                print(f"error: parameter count more than {TOLERANCE:.0%} off the paper's: {', '.join(bad)}", file=sys.stderr)
            return 0 if ok else 1
        smoke = args.scale == "smoke"
        runs = Path(args.runs or repo_root() / "outputs" / ("paper_smoke" if smoke else "paper"))
        out = Path(args.out or repo_root() / "outputs" / "tables" / ("smoke" if smoke else ""))
        path = run_table(args.table, runs, out, args.scale, rows, args.overrides, args.eval_override, args.dry_run)
        if path:
            print(f"table: {path}")
        return 0
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
