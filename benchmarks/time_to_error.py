"""Time from the command to its error line: train.py, eval.py and prepare.py given a mistyped key (Hydra's
own error) or a bad value that a config check catches, on this checkout and on an earlier revision.

Each command runs as a process (a user's view: imports included), the two checkouts interleaved with
alternating order; medians over the repetitions and the median ratio after / before. The earlier
revision is extracted with ``git archive`` into a temporary directory. Results go to
benchmarks/results/time_to_error.{json,md}.

    python benchmarks/time_to_error.py [--before a98651f] [--reps 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ilsd_overhead import interleaved, ratio_cell, table_lines, write_results  # noqa: E402  (same folder)

CASES = [  # (entry point, arguments, what it is)
    ("train.py", ["trainer.max_stepz=5"], "mistyped key (Hydra)"),
    ("train.py", ["N=0"], "bad value (config check)"),
    ("eval.py", ["eval.loopz=3"], "mistyped key (Hydra)"),
    ("eval.py", ["ckpt_path=/nonexistent/last.ckpt"], "missing checkpoint"),
    ("prepare.py", ["prepare.shard_sizee=3"], "mistyped key (Hydra)"),
    ("prepare.py", ["data.raw_root=/nonexistent"], "missing raw data"),
]


def run(tree: Path, script: str, args: list[str], scratch: Path) -> tuple[float, int, str]:
    """Seconds to exit, exit status and the last line of stderr."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "ELT_ROOT": str(scratch)}
    env.pop("ELT_DEBUG", None)
    cmd = [sys.executable, str(tree / script), *args, f"hydra.run.dir={scratch / 'run'}",
           f"data.root={scratch / 'shards'}" if script == "prepare.py" else "seed=0"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return seconds, proc.returncode, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="a98651f", help="the earlier revision (git)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/time_to_error.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        trees = {False: before, True: ROOT}
        rows = []
        for script, case_args, what in CASES:
            seen = {}

            def seconds(after: bool) -> float:
                scratch = Path(tempfile.mkdtemp(dir=tmp))
                s, rc, last = run(trees[after], script, case_args, scratch)
                seen[after] = (rc, last)
                return s

            b, a, ratio = interleaved(seconds, args.reps)
            rows.append({"command": f"{script} {' '.join(case_args)}", "case": what, "before_s": b, "after_s": a,
                         "before_exit": seen[False][0], "after_exit": seen[True][0],
                         "before_last_line": seen[False][1][:200], "after_last_line": seen[True][1][:200], **ratio})
    meta = {"before": args.before, "after": "this checkout", "reps": args.reps, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count()}
    table = [f"Time to the error line, median of {args.reps} interleaved runs per checkout (revision {args.before} "
             f"vs this checkout; {os.cpu_count()} CPUs, shared).", ""]
    table += table_lines(["command", "case", "before (s)", "after (s)", "after / before", "exit before → after",
                          "after: the line"],
                         [[f"`{r['command']}`", r["case"], f"{r['before_s']:.1f}", f"{r['after_s']:.1f}", ratio_cell(r, 2),
                           f"{r['before_exit']} → {r['after_exit']}", r["after_last_line"].replace("|", "\\|")[:90]]
                          for r in rows])
    write_results(args.out, meta, rows, table)


if __name__ == "__main__":
    main()
