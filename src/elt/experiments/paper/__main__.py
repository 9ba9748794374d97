"""python -m elt.experiments.paper plan|run|docs (the package docstring says what each does)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from elt import repo_root
from elt.experiments import paper
from elt.experiments.paper import docs
from elt.experiments.paper.plan import TOLERANCE, plan, plan_markdown
from elt.experiments.paper.rows import TABLES
from elt.experiments.paper.run import run_table
from elt.runtime.cli import run_tool


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elt.experiments.paper", description=paper.__doc__.splitlines()[0])
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
    dc = sub.add_parser("docs", help="regenerate the paper's numbers in docs/paper_tables.md from rows.yaml")
    dc.add_argument("--check", action="store_true", help="only check that the doc is current (exit 1 if not)")
    args, rest = p.parse_known_args(argv)
    if any(a.startswith("-") for a in rest) or (rest and args.cmd == "docs"):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.cmd == "docs":
        current = docs.write(check=args.check)
        print(f"{docs.doc_path()}: " + ("current" if current else "out of date" if args.check else "rewritten"))
        return 0 if current or not args.check else 1
    args.overrides = [*args.overrides, *rest]  # Hydra overrides may stand before or after the options
    rows = args.rows.split(",") if args.rows else None

    def body() -> int:
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

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
