"""eval.py scores loop schedules as rows beside the fixed loop counts."""
import json

import pytest

from elt.jobs.evaluate import evaluate
from elt.jobs.train import train
from support.evaluation import eval_cfg


def test_eval_scores_schedules_as_rows_beside_fixed_l(train_cfg, eval_cache, tmp_path):
    ckpt = train(train_cfg("N=1", "Lmax=2"))["ckpt_path"]
    out = tmp_path / "eval"
    cfg = eval_cfg(ckpt, out, eval_cache, "eval.samples_per_class=2", "eval.grid_per_class=1", "eval.is_splits=2",
                   "eval.reference_rows=false", "eval.schedules=[linear:2-1,change:1.5,[1,2]]")
    result = evaluate(cfg)
    rows = {r["name"]: r for r in result["rows"]}
    fixed = {r["loops"]: r for r in result["rows"] if r["row"] == "model"}
    ramp = rows["schedule linear:2-1"]
    assert ramp["row"] == "schedule" and ramp["loops"] == 1.5
    assert ramp["gflops_per_sample"] == pytest.approx((fixed[1]["gflops_per_sample"] + fixed[2]["gflops_per_sample"]) / 2)
    assert "fid_digits_cnn" in ramp and "schedule change:1.5" in rows and "schedule [1,2]" in rows
    assert {p.name for p in (out / "loops").glob("S_*.json")} == {"S_linear_2-1.json", "S_change_1.5.json", "S__1_2_.json"}
    assert "| schedule linear:2-1 | 1.5 |" in result["table"]
    saved = json.loads((out / "loops" / "S_linear_2-1.json").read_text())
    assert saved["row"] == ramp
