"""Cross-run reports from finished evaluations: a paper table rendered beside the paper's numbers
(``elt.experiments.paper.tables``) and any number of evaluations compared.

    python -m elt.experiments.report table <imagenet_maskgit|imagenet_dit|ucf101> --runs outputs/paper [--out outputs/tables]
    python -m elt.experiments.report compare 'outputs/demo/*/eval' other/eval ... [--out outputs/compare]
    python -m elt.experiments.report wandb --project elt --group <study> [--runs outputs logs] [--offline]

``compare`` merges the evaluations into ``compare.md`` and ``frontier.png``: quality against
GFLOPs/sample, one curve per run, one point per loop count, hollow beyond Lmax. ``wandb`` builds the same
comparison as a W&B Report of one study (``elt.experiments.wandb_report``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from elt.evaluation.plots import finite, save_figure
from elt.evaluation.tables import markdown_table, quality_metrics
from elt.experiments.paper.rows import TABLES
from elt.experiments.paper.tables import render_table
from elt.experiments.results import find_results, read_results
from elt.runtime.cli import run_tool
from elt.runtime.files import write_text_atomic


def run_label(res: dict) -> str:
    hp = res["meta"]["hparams"]
    return f"{hp.get('train_run', res['dir'].name)} {hp.get('N')}N×{hp.get('Lmax')}L ILSD {'on' if hp.get('ilsd') else 'off'}"


def labelled(results: list[dict]) -> list[tuple[str, dict]]:
    labels = [run_label(r) for r in results]
    return [(lab if labels.count(lab) == 1 else f"{lab} [{r['dir'].name}]", r) for lab, r in zip(labels, results)]


def frontier_figure(runs: list[tuple[str, dict]], metrics: list[str]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * len(metrics), 3.8))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, m in zip(axes, metrics):
        for i, (label, res) in enumerate(runs):
            pts = sorted((r for r in res["rows"] if r.get("row") == "model" and finite(r.get(m))
                          and finite(r.get("gflops_per_sample"))), key=lambda r: r["loops"])
            if not pts:
                continue
            color = f"C{i % 10}"
            ax.plot([r["gflops_per_sample"] for r in pts], [r[m] for r in pts], "-", color=color, label=label, zorder=1)
            for beyond in (False, True):
                sel = [r for r in pts if bool(r.get("extrapolated")) == beyond]
                ax.scatter([r["gflops_per_sample"] for r in sel], [r[m] for r in sel], edgecolors=color, zorder=2,
                           facecolors="white" if beyond else color)
            for r in pts:
                ax.annotate(f"L={r['loops']}", (r["gflops_per_sample"], r[m]), textcoords="offset points",
                            xytext=(3, 3), fontsize=6)
        ax.set_xlabel("GFLOPs per sample")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle("quality vs GFLOPs/sample (hollow: L > Lmax)", fontsize=10)
    fig.tight_layout()
    return fig


def compare(specs: list[str], out: Path) -> Path:
    runs = labelled([read_results(p) for p in find_results(specs)])
    rows = [{**r, "name": label} for label, res in runs for r in res["rows"] if r.get("row") == "model"]
    if not rows:
        raise ValueError("the evaluations hold no model rows")
    metrics = quality_metrics(rows)
    out = Path(out)
    save_figure(frontier_figure(runs, metrics), out / "frontier.png")
    sources = "\n".join(f"- {label}: `{res['dir']}`" for label, res in runs)
    md = (f"# {len(runs)} evaluations\n\n{sources}\n\n{markdown_table(rows)}\n\n"
          "Metrics named `*_<judge>` are in that judge's feature space (not Inception FID / I3D FVD); rows of "
          "different sample counts n or data do not compare.\n\n![frontier](frontier.png)\n")
    write_text_atomic(out / "compare.md", md)
    return out / "compare.md"


def wandb_report(args) -> int:
    """The report's spec is always written; publishing it needs the network, and says so in one line."""
    from elt.experiments.wandb_report import OfflineError, make_report

    try:
        spec, url = make_report(args.project, args.group, [Path(r) for r in args.runs], Path(args.out),
                                entity=args.entity, publish=not args.offline)
    except OfflineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"written: {spec}" + (f"\npublished: {url}" if url else ""))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elt.experiments.report", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="one paper table: ours beside the paper's")
    t.add_argument("table", choices=[x for x in TABLES if x != "throughput"])
    t.add_argument("--runs", default="outputs/paper", help="the run directories (python -m elt.experiments.paper run ... --runs)")
    t.add_argument("--out", default="outputs/tables")
    c = sub.add_parser("compare", help="many evaluations in one table and one frontier plot")
    c.add_argument("evals", nargs="+", help="evaluation directories, directories above them, or globs")
    c.add_argument("--out", default="outputs/compare")
    w = sub.add_parser("wandb", help="a saved W&B Report of one study (W&B group): quality vs loops and GFLOPs, runs, grids")
    w.add_argument("--project", required=True, help="the W&B project (logger.wandb.project, default elt)")
    w.add_argument("--group", required=True, help="the W&B group: the study's name (study=, default the experiment's)")
    w.add_argument("--entity", help="W&B entity (default: WANDB_ENTITY, else the runs', else your default)")
    w.add_argument("--runs", nargs="+", default=["outputs", "logs"], help="where the local runs are (their wandb/ dirs)")
    w.add_argument("--out", default="outputs/reports", help="where the report's JSON spec is written")
    w.add_argument("--offline", action="store_true", help="write the spec only, do not publish")
    args = p.parse_args(argv)

    def body() -> int:
        if args.cmd == "wandb":
            return wandb_report(args)
        path = render_table(args.table, Path(args.runs), Path(args.out)) if args.cmd == "table" else \
            compare(args.evals, Path(args.out))
        print(Path(path).read_text())
        print(f"written: {path}")
        return 0

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
