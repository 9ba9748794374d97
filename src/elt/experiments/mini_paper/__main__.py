"""python -m elt.experiments.mini_paper plan|run|report (the package docstring says what each does)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from elt import repo_root
from elt.data.fashion_mnist import DEFAULT_ROOT
from elt.experiments import mini_paper
from elt.experiments.mini_paper.plan import plan
from elt.experiments.mini_paper.report import report
from elt.experiments.runner import run_tasks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elt.experiments.mini_paper", description=mini_paper.__doc__.splitlines()[0])
    p.add_argument("cmd", choices=["plan", "run", "report"])
    p.add_argument("--quick", action="store_true", help="1 seed, MaskGIT-ELT only (MINI=quick)")
    p.add_argument("--jobs", type=int, default=2, help="commands run in parallel (one thread each)")
    p.add_argument("--runs", help="run directories (default outputs/mini_paper/runs, shared by --quick)")
    p.add_argument("--out", help="report directory (default outputs/mini_paper, --quick: outputs/mini_paper/quick)")
    p.add_argument("--raw-root", default=DEFAULT_ROOT, help="folder of the four Fashion-MNIST IDX .gz files")
    p.add_argument("--img-dir", help="also copy the plots here (docs/img)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    # quick and full share run directories: MINI=quick's runs are the full run's MaskGIT-ELT seed 0
    base = repo_root() / "outputs" / "mini_paper"
    out = Path(args.out or (base / "quick" if args.quick else base))
    runs = Path(args.runs or base / "runs")
    if args.cmd == "run" and not Path(args.raw_root, "train-images-idx3-ubyte.gz").is_file():
        print(f"error: no Fashion-MNIST IDX files in {args.raw_root}: sudo apt-get install dataset-fashion-mnist, "
              f"or pass --raw-root <folder of the four IDX .gz files>", file=sys.stderr)
        return 2
    tasks = plan(runs, args.quick, args.raw_root)
    if args.cmd == "plan":
        for t in tasks:
            print(f"[{'done' if t.is_done() else 'todo'}] {t.name}: {' '.join(t.cmd[1:])}")
        return 0
    if args.cmd == "run":
        run_tasks(tasks, args.jobs, out / "logs", env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    path = report(runs, out, args.quick, args.raw_root, Path(args.img_dir) if args.img_dir else None)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
