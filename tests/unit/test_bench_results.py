"""Every benchmark results file starts with the machine its numbers come from (CPU, flags, CPU count, torch
threads, fp32 linear kernels): one writer for the scripts' single-run files, one header for the files that
gather entries over several runs (anytime, solvers)."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import anytime  # noqa: E402
import ilsd_overhead  # noqa: E402
import solvers  # noqa: E402


def test_write_results_starts_with_the_machine(tmp_path):
    ilsd_overhead.write_results(str(tmp_path / "r.json"), {"reps": 1}, [{"x": 1}], ["| x |", "|---|", "| 1 |"])
    recorded = json.loads((tmp_path / "r.json").read_text())["meta"]["machine"]
    first = (tmp_path / "r.md").read_text().splitlines()[0]
    assert first == ilsd_overhead.machine_line(recorded)
    assert f"with {torch.get_num_threads()} thread(s)" in first and "CPU flags: " in first


def test_gathered_results_name_each_entrys_machine():
    here = ilsd_overhead.machine()
    other = {**here, "torch_threads": here["torch_threads"] + 1}
    base = {"quality": 1.0, "quality_std": 0.1, "network_evals": 512, "seconds_per_sample": 1.0}
    entry = {"ckpt": "c", "samples_per_class": 1, "cfg_scale": 1.0, "baseline": base, "metric": "fid", "loops": 4,
             "limit": 1.05, "points": [], "cheapest": None}
    md = solvers.markdown([{**entry, "name": "a", "machine": here}, {**entry, "name": "b", "machine": other},
                           {**entry, "name": "c", "machine": here}, {**entry, "name": "d"}])
    assert md.splitlines()[2:6] == [ilsd_overhead.machine_line(here, "a, c"), ilsd_overhead.machine_line(other, "b"),
                                    "Machine (d): not recorded (measured before the results kept it).", ""]
    md = anytime.render({"a": {"machine": here}, "c": {"machine": here}})
    assert md.splitlines()[2] == ilsd_overhead.machine_line(here)
