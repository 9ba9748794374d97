"""The results table in three formats, and the same numbers sent to the configured loggers."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from elt.runtime.files import write_text_atomic

BASE_COLUMNS = ["name", "row", "loops", "extrapolated", "num_samples", "gflops_per_sample", "wall_s_per_sample"]
SHOWN = {"name": "row", "loops": "L", "num_samples": "n", "gflops_per_sample": "GFLOPs/sample", "wall_s_per_sample": "s/sample"}


def metric_columns(rows: list[dict]) -> list[str]:
    seen = []
    for r in rows:
        seen += [k for k in r if k not in BASE_COLUMNS and k not in seen]
    # Fréchet distances first (they rank models), then IS, accuracy, precision/recall
    order = ("fid", "fvd", "is", "acc", "precision", "recall")
    return sorted(seen, key=lambda k: (next((i for i, p in enumerate(order) if k.startswith(p)), len(order)), k))


def quality_metrics(rows: list[dict]) -> list[str]:
    """The columns worth a plot panel: no spreads."""
    return [m for m in metric_columns(rows) if not m.endswith("_std")]


def _fmt(key: str, v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        if key.startswith(("acc", "precision", "recall")):
            return f"{100 * v:.1f}%"
        if key == "wall_s_per_sample":
            return f"{v:.2g}"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    """Spreads (``*_std``) join their metric's cell as ``mean ± std`` instead of a column; a None
    spread (IS over a single split) shows the mean alone."""
    cols = [c for c in BASE_COLUMNS if c not in ("row", "extrapolated")] + quality_metrics(rows)
    lines = ["| " + " | ".join(SHOWN.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [_fmt(c, r.get(c)) + (f" ± {_fmt(c, r[c + '_std'])}" if r.get(f"{c}_std") is not None else "") for c in cols]
        if r.get("extrapolated"):
            cells[1] += " (>Lmax)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(rows: list[dict], meta: dict, out_dir: Path) -> str:
    """results.csv / results.json / results.md; returns the markdown (header + table)."""
    out_dir = Path(out_dir)
    cols = BASE_COLUMNS + metric_columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "results.csv", buf.getvalue())
    write_text_atomic(out_dir / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    md = "\n".join(meta.get("header", [])) + "\n\n" + markdown_table(rows) + "\n"
    write_text_atomic(out_dir / "results.md", md)
    return md


def log_to_loggers(loggers: list, rows: list[dict], meta: dict, figures: dict[str, Path], grids: dict[int, Path]) -> None:
    """Every logger gets the per-loop numbers (step = loop count); W&B also gets the table, line
    plots against loop count and GFLOPs, and the images, so runs of different N×L share a dashboard."""
    model_rows = [r for r in rows if r["row"] == "model"]
    metrics = quality_metrics(rows)
    for lg in loggers:
        lg.log_hyperparams(meta["hparams"])
        if type(lg).__name__ == "WandbLogger":
            _log_wandb(lg.experiment, rows, model_rows, metrics, figures, grids)
        else:
            for r in model_rows:
                lg.log_metrics({**{f"eval/{m}": r[m] for m in metrics + ["gflops_per_sample"] if m in r},
                                **images_per_s(r)}, step=r["loops"])
        lg.finalize("success")


def images_per_s(row: dict) -> dict:
    """A row's sampling speed as the logger entry ``eval/images_per_s`` (one device, scoring excluded)."""
    wall = row.get("wall_s_per_sample")
    return {"eval/images_per_s": 1.0 / wall} if wall else {}


def _log_wandb(run, rows, model_rows, metrics, figures, grids) -> None:
    import wandb

    run.define_metric("eval/loops")
    run.define_metric("eval/*", step_metric="eval/loops")
    for r in model_rows:
        run.log({"eval/loops": r["loops"], "eval/gflops_per_sample": r["gflops_per_sample"],
                 **{f"eval/{m}": r[m] for m in metrics if m in r}, **images_per_s(r)})
    cols = BASE_COLUMNS + metric_columns(rows)
    table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
    model_table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in model_rows])
    payload = {"eval/results": table}
    for m in metrics:
        payload[f"eval/plots/{m}_vs_loops"] = wandb.plot.line(model_table, "loops", m, title=f"{m} vs loop count")
        payload[f"eval/plots/{m}_vs_gflops"] = wandb.plot.line(model_table, "gflops_per_sample", m, title=f"{m} vs GFLOPs/sample")
    payload.update({f"eval/figures/{k}": wandb.Image(str(p)) for k, p in figures.items()})
    payload.update({f"eval/grids/L{L}": wandb.Image(str(p)) for L, p in grids.items()})
    # videos: the animated grid beside the filmstrip, playable in the dashboard
    payload.update({f"eval/videos/L{L}": wandb.Video(str(p.with_suffix(".gif")))
                    for L, p in grids.items() if p.with_suffix(".gif").is_file()})
    run.log(payload)
    run.finish()


def grid_table(columns: list[str], cells: list[list[str]]) -> str:
    """A markdown table from header names and already formatted cells."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
