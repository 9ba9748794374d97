"""A paper table rendered from finished evaluations: our numbers beside the paper's, and quality against
GFLOPs/sample and against parameters (the paper's points beside ours).

Reads ``<runs>/<row>/eval/<cfg…>/results.json`` (what ``run_table`` writes) and writes ``<out>/<table>.md``,
``<table>_vs_gflops.png`` and ``<table>_vs_params.png``. Our metric columns carry the measured key
(``fid`` is InceptionV3 FID; ``fid_digits_cnn`` is a Fréchet distance in a small judge's features and is
not FID). A row without a finished evaluation shows "–".
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

from omegaconf import OmegaConf

from elt.evaluation.plots import finite, save_figure
from elt.evaluation.tables import grid_table
from elt.experiments.paper.rows import compose_row, eval_spec, rows_of
from elt.experiments.paper.shapes import build_on_meta, param_counts
from elt.experiments.results import read_results
from elt.runtime.files import write_text_atomic

PAPER_NAMES = {"fid": "FID", "fvd": "FVD", "is": "IS"}


def our_key(rows: list[dict], base: str) -> str | None:
    """The measured column that stands for the paper's ``base`` metric: ``base`` itself (InceptionV3 FID,
    I3D FVD, Inception IS) when present, else ``base_<judge>`` (a judge's feature space)."""
    keys = [k for r in rows for k in r if r.get(k) is not None]
    if base in keys:
        return base
    return next((k for k in keys if k.startswith(base + "_") and not k.endswith("_std")), None)


def run_params(ckpt_path: str | None) -> dict | None:
    """Block and total parameter counts of the checkpoint's model, from its stored config (built on meta)."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    return _checkpoint_params(str(ckpt_path))


@functools.lru_cache(maxsize=None)  # rows evaluated from one run (6N×4L at L=4 and L=6) read it once
def _checkpoint_params(ckpt_path: str) -> dict:
    from elt.runtime.checkpoint import read_checkpoint

    cfg = OmegaConf.create(read_checkpoint(ckpt_path)["elt_config"])  # memory-mapped: no weights are read
    return param_counts(build_on_meta(cfg))


def measured(row, runs: Path) -> dict | None:
    """Our result for a paper row: its model row at the reported loop count, from the evaluation (over the
    guidance scales evaluated) with the best primary metric; None when nothing has finished."""
    base = "fid" if "fid" in row.metrics else "fvd"
    found = []
    for path in sorted((Path(runs) / row.config / "eval").glob("*/results.json")):
        res = read_results(path)
        L = row.loops or res["meta"]["hparams"]["Lmax"]
        found += [(res, r) for r in res["rows"] if r.get("row") == "model" and r.get("loops") == L]
    if not found:
        return None
    key = our_key([r for _, r in found], base)
    res, best = min(found, key=lambda f: f[1].get(key) if finite(f[1].get(key)) else math.inf)
    hp = res["meta"]["hparams"]
    reference = next((h.strip() for h in res["meta"].get("header", []) if h.startswith("Reference statistics")), None)
    return {"row": best, "key": key, "is_key": our_key([best], "is"), "hparams": hp, "dir": res["dir"],
            "params": run_params(hp.get("ckpt_path")), "reference": reference}


def _fmt(v, digits: int = 3) -> str:
    if not finite(v):
        return "–"
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:,.0f}"


def _params(v) -> str:
    if v is None:
        return "–"
    return f"{v / 1e9:.2f}B" if v >= 1e9 else f"{v / 1e6:.1f}M" if v >= 1e6 else f"{v / 1e3:.1f}K"


def with_std(v, std, paper: bool = False) -> str:
    """A paper number as printed there (``:g``), ours to 3 significant digits; ``± std`` when there is one."""
    text = (f"{v:g}" if finite(v) else "–") if paper else _fmt(v)
    return text + (f" ± {std:g}" if paper and finite(std) else f" ± {_fmt(std, 2)}" if finite(std) else "")


def metric_header(keys: set, base: str) -> str:
    """Our column is named by the measured key(s); before anything ran it claims no metric at all."""
    keys = sorted(k for k in keys if k)
    return " / ".join(keys) + " (ours)" if keys else f"ours (vs {PAPER_NAMES[base]}: not run)"


def table_rows(table: str, runs: Path) -> tuple[list, list[dict | None]]:
    rows = rows_of(table)
    return rows, [measured(r, runs) if r.config else None for r in rows]


def table_markdown(table: str, rows, ours) -> str:
    metric_bases = [m for m in ("fid", "fvd", "is") if any(m in r.metrics for r in rows)]
    keys = {m: {(o["key"] if m != "is" else o["is_key"]) for o in ours if o} for m in metric_bases}
    has_gflops = any(r.gflops for r in rows)
    cols = ["model", "config"]
    for m in metric_bases:
        cols += [f"{PAPER_NAMES[m]} (paper)", metric_header(keys[m], m)]
    cols += ["params (paper)", "params: blocks (ours)", "total (ours)"]
    cols += (["GFLOPs (paper)"] if has_gflops else []) + ["GFLOPs/sample (ours)", "steps (paper)", "steps (ours)",
                                                          "L (ours)", "CFG (ours)", "n (ours)", "note"]
    cells = []
    for r, o in zip(rows, ours):
        m_row, hp = (o["row"], o["hparams"]) if o else ({}, {})
        line = [r.label, f"`{r.config}`" if r.config else "–"]
        for m in metric_bases:
            key = (o["key"] if m != "is" else o["is_key"]) if o else None
            line += [with_std(r.metrics.get(m), r.metrics.get(f"{m}_std"), paper=True),
                     with_std(m_row.get(key), m_row.get(f"{key}_std")) if key else "–"]
        params = o["params"] if o else None
        line += [_params(r.params), _params(params and params["blocks"]), _params(params and params["total"])]
        line += ([f"{r.gflops:,.0f}" if r.gflops else "–"] if has_gflops else [])
        line += [_fmt(m_row.get("gflops_per_sample")), str(r.steps or "–"), str(hp.get("sampler/steps", "–")),
                 str(m_row.get("loops", "–")), _fmt(hp.get("sampler/cfg_scale")), str(m_row.get("num_samples", "–")),
                 r.note or ""]
        cells.append(line)
    notes = []
    for m in metric_bases:
        for k in sorted(k for k in keys[m] if k and k != m):
            notes.append(f"`{k}`: measured in the feature space of the project's `{k[len(m) + 1:]}` judge on the data "
                         f"this run used — not {PAPER_NAMES[m]}, not comparable with the paper's column.")
    notes.append("Ours: the evaluation at the reported loop count (Lmax unless the row says), best primary metric over "
                 "the guidance scales evaluated; parameters of the run's checkpoint (blocks: the looped backbone's unique "
                 "blocks, the convention the plan checks); GFLOPs/sample: the project's analytic count (eval.py). "
                 "\"–\": not run yet (or not stated by the paper).")
    return grid_table(cols, cells) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def scatter_panel(ax, points: list[tuple], xlabel: str, ylabel: str, title: str) -> None:
    """Looped rows (ELT) as circles, non-looped baselines as squares; labels of coinciding points stacked."""
    pts = [p for p in points if finite(p[0]) and finite(p[1])]
    seen: dict = {}
    for x, y, label in pts:
        looped = label.startswith("ELT")
        ax.scatter([x], [y], color="C0" if looped else "C1", marker="o" if looped else "s")
        k = seen[(x, y)] = seen.get((x, y), -1) + 1
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4 + 9 * k), fontsize=7)
    if not pts:
        ax.text(0.5, 0.5, "no numbers", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def table_figures(table: str, rows, ours, out: Path) -> dict[str, Path]:
    """Quality vs GFLOPs/sample and vs parameters: the paper's points (left) beside ours (right)."""
    from matplotlib.figure import Figure

    base = "fid" if any("fid" in r.metrics for r in rows) else "fvd"
    keys = sorted({o["key"] for o in ours if o and o["key"]})
    ylabel = " / ".join(keys) or base
    figures = {}
    for name, paper_x, our_x, xlabel in [
        ("gflops", lambda r: r.gflops, lambda o: o["row"].get("gflops_per_sample"), "GFLOPs per sample"),
        ("params", lambda r: r.params, lambda o: o["params"] and o["params"]["blocks"], "parameters (blocks)"),
    ]:
        fig = Figure(figsize=(9, 3.6))
        left, right = fig.subplots(1, 2)
        scatter_panel(left, [(paper_x(r), r.metrics.get(base), r.label) for r in rows], xlabel, PAPER_NAMES[base],
                      f"paper: {PAPER_NAMES[base]} vs {xlabel}")
        scatter_panel(right, [(our_x(o), o["row"].get(o["key"]), r.label) for r, o in zip(rows, ours) if o and o["key"]],
                      xlabel, ylabel, f"ours: {ylabel} vs {xlabel}")
        fig.suptitle(f"{table}", fontsize=10)
        fig.tight_layout()
        figures[name] = save_figure(fig, out / f"{table}_vs_{name}.png")
    return figures


def protocol_lines(table: str, rows, ours) -> list[str]:
    """The header's account of the evaluation: the published protocol the table's rows follow at paper scale
    (``paper.eval.protocol``), and the reference statistics each finished evaluation actually used."""
    first = next((r.config for r in rows if r.config), None)
    text = eval_spec(compose_row(first))["protocol_text"] if first else ""
    lines = [f"Protocol (paper scale): {text}." if text else "Protocol: none named by the rows' configs."]
    used = sorted({o["reference"] for o in ours if o and o.get("reference")})
    lines += [f"Measured: {u}" for u in used] or ["Measured: nothing finished yet."]
    return lines


def render_table(table: str, runs: Path, out: Path) -> Path:
    rows, ours = table_rows(table, Path(runs))
    out = Path(out)
    head = "".join(f"{line}  \n" for line in protocol_lines(table, rows, ours))
    md = (f"# {table}: the paper's rows beside ours\n\nRuns: `{runs}`.  \n{head}\n" + table_markdown(table, rows, ours)
          + f"\n![vs GFLOPs]({table}_vs_gflops.png)\n![vs parameters]({table}_vs_params.png)\n")
    table_figures(table, rows, ours, out)
    write_text_atomic(out / f"{table}.md", md)
    return out / f"{table}.md"
