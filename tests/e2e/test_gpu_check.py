"""benchmarks/gpu_check.py at tiny size on a CPU: the GPU check must not rot between GPU runs."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def run(tmp_path, *skip):
    import gpu_check

    assert gpu_check.main(["--tiny", "--steps", "2", "--out", str(tmp_path), "--skip", *skip]) == 0
    return json.loads((tmp_path / "report.json").read_text()), (tmp_path / "report.md").read_text()


def test_tiny_gpu_check_trains_both_families_and_samples(tmp_path):
    got, md = run(tmp_path, "compile", "eval")
    runs = {(r["family"], r["run"]): r for r in got["train"]}
    assert set(runs) == {(f, r) for f in ("maskgit", "dit") for r in ("eager", "eager + checkpointing",
                                                                        "FSDP (1 GPU) + checkpointing")}
    for (family, name), r in runs.items():
        if name.startswith("FSDP"):
            assert r["status"].startswith("skipped")  # Lightning's FSDP is GPU-only
            continue
        assert r["status"] == "ok" and r["samples_per_s"] > 0 and 0 < r["mfu"] < 1 and r["N"] == 2
    fused, tf32, sdpa = got["defaults"]
    assert fused["status"] == "ok" and fused["speedup_median"] > 0  # fused AdamW runs on CPUs too
    assert tf32["status"] == sdpa["status"] == "skipped: CUDA only"
    (sampling,) = got["sampling"]
    assert sampling["status"] == "ok" and sampling["paper_ratio"] == 1.0 and sampling["elt_images_per_s"] > 0
    assert "TINY" in md and "| B | ok |" in md and got["eval"]["status"] == "skipped"


@pytest.mark.slow
def test_tiny_gpu_check_compiles_and_evaluates_every_loop_count(tmp_path):
    got, md = run(tmp_path, "sampling")
    assert all(r["status"] in ("ok",) or r["status"].startswith("skipped") for r in got["train"])
    assert any(r["run"] == "compiled" and r["status"] == "ok" for r in got["train"])
    ev = got["eval"]
    assert ev["status"] == "ok" and [r["loops"] for r in ev["rows"]] == [1, 2, 3, 4, 5]
    assert "domain judge, a stand-in for InceptionV3" in md
