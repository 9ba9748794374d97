"""Pooling loops-x-steps studies over training seeds: each checkpoint's sampling-seed mean is one replicate."""
import json

import pytest

from elt.experiments import loops_steps_pool
from elt.experiments.loops_steps import verdict


def _study(tmp_path, name, loops_fd, steps_fd, seeds=(0, 1, 2)):
    def pt(steps, loops, fds, gflops):
        return {"name": f"{steps} steps x L={loops}", "steps": steps, "schedule": [loops], "mean_loops": loops,
                "gflops": gflops, "network_evals": steps, "per_seed": fds, "seconds_per_sample": 0.01,
                "solver": {"kind": "ddim", "spacing": "t"}}

    points = [pt(4, 2, loops_fd, 8.0), pt(8, 1, steps_fd, 8.0)]
    out = tmp_path / name
    out.mkdir()
    (out / "study.json").write_text(json.dumps({
        "ckpt_path": f"{name}/last.ckpt", "run": "digits", "metric": "fid_digits_cnn", "seeds": list(seeds),
        "samples_per_class": 10, "points": points, "verdict": verdict(points, 0.15)}))
    return str(out)


def test_pooled_verdict_uses_the_spread_between_checkpoints(tmp_path):
    # each checkpoint alone: more loops wins clearly over its sampling seeds; between checkpoints the
    # loops point's mean moves a lot, so over training seeds the difference is not significant
    dirs = [_study(tmp_path, "s0", [1.0, 1.1, 0.9], [3.0, 3.1, 2.9]),
            _study(tmp_path, "s1", [5.0, 5.1, 4.9], [3.0, 3.1, 2.9]),
            _study(tmp_path, "s2", [0.2, 0.3, 0.1], [3.1, 3.0, 3.2])]
    result = loops_steps_pool.pool([loops_steps_pool.load(d) for d in dirs], dirs)
    assert [c["answer"] for c in result["per_checkpoint"]] == ["more loops", "more steps", "more loops"]
    loops_pt = result["points"][0]
    assert loops_pt["per_seed"] == pytest.approx([1.0, 5.0, 0.2])
    assert result["verdict"]["answer"] == "no difference"
    consistent = [_study(tmp_path, f"c{i}", [1.0 + d, 1.1 + d, 0.9 + d], [3.0, 3.1, 2.9]) for i, d in enumerate((0, .1, .2))]
    pooled = loops_steps_pool.pool([loops_steps_pool.load(d) for d in consistent], consistent)
    assert pooled["verdict"]["answer"] == "more loops"
    loops_steps_pool.main([str(tmp_path / "out"), *consistent])
    assert "won by more loops" in (tmp_path / "out" / "pooled.md").read_text()
    assert (tmp_path / "out" / "pooled.png").stat().st_size > 0


def test_pool_refuses_other_grids_and_missing_studies(tmp_path):
    a = _study(tmp_path, "a", [1.0, 1.1, 0.9], [3.0, 3.1, 2.9])
    b = _study(tmp_path, "b", [1.0, 1.1], [3.0, 3.1], seeds=(0, 1))
    with pytest.raises(SystemExit, match="not the same grid, sampling seeds, samples per class and metric"):
        loops_steps_pool.main([str(tmp_path / "o"), a, b])
    with pytest.raises(SystemExit, match="same checkpoint"):
        loops_steps_pool.main([str(tmp_path / "o"), a, a])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.json").write_text('{"points": []}')
    with pytest.raises(SystemExit, match=r"^error: .*study.json is not a loops_steps study \(needs"):
        loops_steps_pool.main([str(tmp_path / "o"), a, str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="study.json is missing"):
        loops_steps_pool.main([str(tmp_path / "o"), a, str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="at least 2 checkpoints"):
        loops_steps_pool.main([str(tmp_path / "o"), a])
