"""python -m elt.experiments.loops_steps_pool OUT STUDY_DIR [STUDY_DIR ...]: loops or steps, over training seeds.

Each STUDY_DIR is the output of ``elt.experiments.loops_steps`` on one checkpoint, the same grid and sampling
seeds on each: one per training seed of one recipe. One study's verdict sees the sampling seeds' spread only;
a claim about the recipe needs the spread between trained models. So a point's value per training seed is its
mean over the sampling seeds, and the matched-compute pairs are compared over the training seeds by the same
rule (``loops_steps.verdict``: Welch's t-test at the mini-paper's alpha, the project's rule; a paired test on
the per-checkpoint differences would have more power, so a tie here is no proof of equality). Writes
``OUT/pooled.{json,md,png}`` with the per-checkpoint verdicts beside the pooled one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from elt.experiments.loops_steps import iso_figure, setting, study_markdown, verdict
from elt.experiments.mini_paper.stats import mean_std
from elt.jobs.pareto import write_result
from elt.runtime.config import ConfigError

SCORES = ("per_seed", "quality", "quality_std", "seconds_per_sample")  # recomputed over training seeds


def load(study_dir: Path) -> dict:
    path = Path(study_dir) / "study.json"
    try:
        study = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing: run elt.experiments.loops_steps with hydra.run.dir={study_dir}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise ConfigError(f"{path} cannot be read: {e.strerror or e}") from None
    need = ("ckpt_path", "run", "metric", "seeds", "samples_per_class", "points", "verdict")
    if not isinstance(study, dict) or any(k not in study for k in need) or not study["points"]:
        raise ConfigError(f"{path} is not a loops_steps study (needs {', '.join(need)} and at least one point)")
    return study


def pool(studies: list[dict], dirs: list[str]) -> dict:
    """One result whose points carry, per training seed, the mean over that checkpoint's sampling seeds."""
    if len(studies) < 2:
        raise ConfigError("loops_steps_pool needs the studies of at least 2 checkpoints (training seeds)")
    first = studies[0]
    keys = [(setting(p), p["name"]) for p in first["points"]]
    if len({s["ckpt_path"] for s in studies}) < len(studies):
        raise ConfigError("two studies are of the same checkpoint: pool one study per trained model")
    same = ("seeds", "metric", "samples_per_class")
    for s, d in zip(studies[1:], dirs[1:]):
        if [(setting(p), p["name"], round(p["gflops"], 9)) for p in s["points"]] != \
                [(*k, round(p["gflops"], 9)) for k, p in zip(keys, first["points"])] \
                or any(s[k] != first[k] for k in same) or s["verdict"]["match"] != first["verdict"]["match"]:
            raise ConfigError(f"{d}: not the same grid, sampling seeds, samples per class and metric as {dirs[0]}: "
                              "pool only one grid")
    points = []
    for i, p in enumerate(first["points"]):
        per_model = [mean_std(s["points"][i]["per_seed"])[0] for s in studies]
        quality, std = mean_std(per_model)
        points.append({**{k: v for k, v in p.items() if k not in SCORES}, "per_seed": per_model, "quality": quality,
                       "quality_std": std,
                       "seconds_per_sample": sum(s["points"][i]["seconds_per_sample"] for s in studies) / len(studies)})
    match = first["verdict"]["match"]
    return {"runs": [s["run"] for s in studies], "run": f"{first['run']} × {len(studies)} training seeds",
            "ckpt_paths": [s["ckpt_path"] for s in studies], "metric": first["metric"],
            "seeds": list(dirs), "sampling_seeds": first["seeds"],
            "samples_per_class": first["samples_per_class"], "points": points, "verdict": verdict(points, match),
            "per_checkpoint": [{"dir": d, "answer": s["verdict"]["answer"], "wins": s["verdict"]["wins"]}
                               for s, d in zip(studies, dirs)]}


def markdown(result: dict) -> str:
    rows = [f"| {c['dir']} | {c['answer']} | {c['wins'].get('loops', 0)} | {c['wins'].get('steps', 0)} | "
            f"{c['wins'].get('tie', 0)} |" for c in result["per_checkpoint"]]
    head = (f"**{result['run']}**: {result['metric']} (mean ± std over {len(result['runs'])} training seeds, each the "
            f"mean over sampling seeds {result['sampling_seeds']} at {result['samples_per_class']} samples per class) "
            "against GFLOPs/sample.")
    body = study_markdown(result).split("\n", 1)[1]  # its own first line names sampling seeds only
    return (head + "\n" + body + "\nPer checkpoint (over its sampling seeds):\n\n"
            "| study | answer | won by more loops | won by more steps | no difference |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder for pooled.{json,md,png}")
    p.add_argument("studies", nargs="+", help="loops_steps output folders (each with study.json), one per training seed")
    args = p.parse_args(argv)
    try:
        result = pool([load(d) for d in args.studies], args.studies)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    write_result(Path(args.out) / "pooled", result, markdown(result), iso_figure(result, result["run"]))


if __name__ == "__main__":
    main()
