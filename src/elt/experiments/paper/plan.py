"""The plan: every row's model built on the meta device, its parameters and GFLOPs/sample beside the
paper's, its training budget and accelerator-hours; a row more than ``TOLERANCE`` off the paper's
parameter count fails it."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from elt.evaluation.tables import grid_table
from elt.experiments.paper.rows import ROWS, PaperRow, compose_row, eval_spec, row_named
from elt.experiments.paper.shapes import build_on_meta, num_tokens, param_counts

TOLERANCE = 0.05  # a row whose block parameters are further than this from the paper's fails the plan
PEAK_FLOPS = 989e12  # H100 SXM bf16 dense tensor-core peak
MFU = 0.40  # assumed model FLOPs utilisation for the accelerator-hours column
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward ≈ 3 × forward


def paper_convention_gflops(blocks: int, loops: int, tokens: int, steps: int) -> float:
    """2 × block parameters × loops × tokens × steps: the count behind the paper's GFLOPs for the L rows."""
    return 2.0 * blocks * loops * tokens * steps / 1e9


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
        "eval.py prints (attention, class token, head; ×2 per step under guidance, cfg_scale ≠ 1). The paper's GFLOPs "
        "for the XL rows match neither (every count puts XL at ~1.47× L).",
        f"Accelerator-hours: {TRAIN_FLOPS_PER_FORWARD} × forward FLOPs (flops_per_eval(Lmax)) × samples seen, at "
        f"{PEAK_FLOPS / 1e12:.0f} TFLOP/s (H100 SXM bf16 dense) × {MFU:.0%} MFU.",
    ]
    return grid_table(cols, cells) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
