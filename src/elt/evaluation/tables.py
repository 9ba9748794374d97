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


REFERENCE_ROWS = ("real", "trivial", "reconstructed")  # the eval rows that do not depend on L


def lower_is_better(metric: str) -> bool:
    """Fréchet distances fall as samples improve; IS, accuracy, precision and recall rise."""
    return metric.startswith(("fid", "fvd"))


def best_rows(rows: list[dict], metrics: list[str]) -> dict[str, dict]:
    """metric -> the model row (fixed L) that scores best on it."""
    out = {}
    for m in metrics:
        scored = [r for r in rows if r["row"] == "model" and isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
        if scored:
            out[m] = (min if lower_is_better(m) else max)(scored, key=lambda r: r[m])
    return out


def log_to_loggers(loggers: list, rows: list[dict], meta: dict, figures: dict[str, Path], grids: dict[int, Path]) -> None:
    """Every logger gets the per-loop numbers (step = loop count); W&B also gets them against GFLOPs, the
    reference rows, the table, the figures and the grids, so runs of different N×L share its charts."""
    model_rows = [r for r in rows if r["row"] == "model"]
    metrics = quality_metrics(rows)
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":  # under eval/: the run's columns (its training seed, ILSD on/off) stay
            hp = meta["hparams"]
            lg.log_hyperparams({"eval": hp, **{k: hp[k] for k in ("params", "gflops_per_sample") if k in hp}})
            _log_wandb(lg.experiment, rows, model_rows, metrics, figures, grids)
        else:
            lg.log_hyperparams(meta["hparams"])
            for r in model_rows:
                lg.log_metrics({**{f"eval/{m}": r[m] for m in metrics + ["gflops_per_sample"] if m in r},
                                **images_per_s(r)}, step=r["loops"])
        lg.finalize("success")


def wandb_keys(metric: str, kind: str = "model") -> tuple[str, str]:
    """The W&B keys of a metric against loop count and against GFLOPs per sample: the model's, or a
    reference row's (``kind`` real / trivial / reconstructed), a flat line on the same chart.
    elt.experiments.report builds its panels from these names."""
    prefix = "eval" if kind == "model" else f"eval/{kind}"
    return f"{prefix}/{metric}", f"{prefix}/vs_gflops/{metric}"


def images_per_s(row: dict) -> dict:
    """A row's sampling speed as the logger entry ``eval/images_per_s`` (one device, scoring excluded)."""
    wall = row.get("wall_s_per_sample")
    return {"eval/images_per_s": 1.0 / wall} if wall else {}


def _log_wandb(run, rows, model_rows, metrics, figures, grids) -> None:
    """One log call per loop count L, at step L: the metrics against ``eval/loops`` and, under
    ``eval/vs_gflops/``, against ``eval/gflops_per_sample`` (W&B step metrics: runs of different N×L overlay
    on one workspace chart); the reference rows' values at every L (flat lines on those charts); the
    sample grid under one key, ``eval/grid``, so the media panel steps through L. The summary holds each
    metric's best score, its L and GFLOPs; then the table, line plots and figures."""
    import wandb

    refs = [r for r in rows if r["row"] in REFERENCE_ROWS]
    run.define_metric("eval/loops")
    run.define_metric("eval/gflops_per_sample")
    for kind in ["model", *[r["row"] for r in refs]]:
        for m in metrics:
            by_loops, by_gflops = wandb_keys(m, kind)
            run.define_metric(by_loops, step_metric="eval/loops")
            run.define_metric(by_gflops, step_metric="eval/gflops_per_sample")
    for key in ("eval/grid", "eval/video", "eval/images_per_s"):
        run.define_metric(key, step_metric="eval/loops")
    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    for r in sorted(model_rows, key=lambda r: r["loops"]):
        L = r["loops"]
        payload = {"eval/loops": L, "eval/gflops_per_sample": r["gflops_per_sample"], **images_per_s(r)}
        for source in [r, *refs]:
            kind = "model" if source is r else source["row"]
            payload.update({k: source[m] for m in metrics if finite(source.get(m)) for k in wandb_keys(m, kind)})
        if L in grids:
            payload["eval/grid"] = wandb.Image(str(grids[L]), caption=f"L={L}")
            if grids[L].with_suffix(".gif").is_file():  # videos: the animated grid beside the filmstrip
                payload["eval/video"] = wandb.Video(str(grids[L].with_suffix(".gif")), caption=f"L={L}")
        run.log(payload, step=L)  # _step = L: the media panel's slider is the loop count
    for m, r in best_rows(rows, metrics).items():
        run.summary.update({f"eval/best/{m}": r[m], f"eval/best/{m}/loops": r["loops"],
                            f"eval/best/{m}/gflops_per_sample": r["gflops_per_sample"]})
    cols = BASE_COLUMNS + metric_columns(rows)
    table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
    model_table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in model_rows])
    payload = {"eval/results": table}
    for m in metrics:
        payload[f"eval/plots/{m}_vs_loops"] = wandb.plot.line(model_table, "loops", m, title=f"{m} vs loop count")
        payload[f"eval/plots/{m}_vs_gflops"] = wandb.plot.line(model_table, "gflops_per_sample", m, title=f"{m} vs GFLOPs/sample")
    payload.update({f"eval/figures/{k}": wandb.Image(str(p)) for k, p in figures.items()})
    run.log(payload)
    run.finish()


def grid_table(columns: list[str], cells: list[list[str]]) -> str:
    """A markdown table from header names and already formatted cells."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
