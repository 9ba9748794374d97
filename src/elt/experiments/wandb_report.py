"""A W&B Report of one study (one W&B group): quality against loop count and against GFLOPs per sample
for every evaluation in the group, the reference rows as flat lines, a runs table and the sample grids
per L, built with ``wandb-workspaces`` (W&B's library for reports; ``pip install -e ".[report]"``).

    python -m elt.experiments.report wandb --project elt --group digits_maskgit [--runs outputs logs] [--offline]

The panels come from the key names eval.py logs (``elt.evaluation.tables.wandb_keys``); the runs table
and the metric list from the local runs' own records (``run-*.wandb`` under ``--runs``), so the report
is built without the network and written as its JSON spec. Publishing it (the default unless offline)
needs the network and a ``wandb login``.
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
from pathlib import Path
from urllib.parse import urlparse

from elt.evaluation.tables import REFERENCE_ROWS, lower_is_better, metric_columns, wandb_keys
from elt.runtime.files import write_text_atomic

BEST = "eval/best/"
_BLOCK, _HEADER = 32768, 7  # the .wandb file: a LevelDB-style log of protobuf records in 32 KiB blocks


class OfflineError(RuntimeError):
    """Not published: no network, no login, or WANDB_MODE=offline. The spec is written all the same."""


def wandb_records(path: Path) -> list:
    """The protobuf records of a ``run-<id>.wandb`` file (what ``wandb sync`` uploads)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    out, pending, pos = [], b"", _HEADER
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        pos += _HEADER
        if kind == 0 and length == 0 or pos + length > len(data):  # the end, or a run still being written
            break
        chunk, pos = data[pos:pos + length], pos + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first, then middle / last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def _value(item):
    key = item.key or "/".join(item.nested_key)
    return key, json.loads(item.value_json)


def read_run(path: Path) -> dict:
    """project, group, job_type, name, config, summary, history and step metrics of one local run."""
    run = {"file": str(path), "config": {}, "summary": {}, "history": [], "step_metrics": {}}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.update(id=r.run.run_id, project=r.run.project, group=r.run.run_group, job_type=r.run.job_type,
                       name=r.run.display_name, entity=r.run.entity)
            run["config"].update(dict(_value(i) for i in r.run.config.update))
        elif kind == "config":
            run["config"].update(dict(_value(i) for i in r.config.update))
        elif kind == "summary":
            run["summary"].update(dict(_value(i) for i in r.summary.update))
        elif kind == "history":
            run["history"].append(dict(_value(i) for i in r.history.item))
        elif kind == "metric" and r.metric.name and r.metric.step_metric:
            run["step_metrics"][r.metric.name] = r.metric.step_metric
    run["config"] = {k: v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v
                     for k, v in run["config"].items() if k != "_wandb"}
    return run


def local_runs(roots: list[Path], project: str, group: str) -> list[dict]:
    """Every local run of ``project`` in ``group`` under ``roots`` (offline and synced runs keep a .wandb file)."""
    files = sorted({f for root in roots if Path(root).is_dir() for f in Path(root).rglob("run-*.wandb")})
    runs = [read_run(f) for f in files]
    return [r for r in runs if r.get("project") == project and r.get("group") == group]


def study_metrics(runs: list[dict]) -> tuple[list[str], list[str]]:
    """(the quality metrics the group's evaluations logged, best-ranking first; the reference rows they logged)."""
    found = {k[len(BEST):] for r in runs for k in r["summary"] if k.startswith(BEST) and k.count("/") == 2}
    ordered = metric_columns([dict.fromkeys(sorted(found))])
    keys = {k for r in runs for h in r["history"] for k in h}
    refs = [kind for kind in REFERENCE_ROWS if any(wandb_keys(m, kind)[0] in keys for m in ordered)]
    return ordered, refs


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:.{digits}g}"
    return "–" if v is None else str(v)


def runs_table(runs: list[dict], metric: str) -> str:
    """The group's evaluations, one line each: what the run is, its size, its best score and where."""
    cols = ["eval run", "N×Lmax", "ILSD", "seed", "params (M)", "GFLOPs/sample at Lmax", f"best {metric}", "at L",
            "at GFLOPs/sample"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    evals = sorted((r for r in runs if r.get("job_type") == "eval"),
                   key=lambda r: (r["config"].get("depth") or 0, r["config"].get("N") or 0, r.get("name", "")))
    for r in evals:
        c, s = r["config"], r["summary"]
        params = c.get("params")
        cells = [r.get("name", r.get("id")), c.get("NxLmax", f"{c.get('N')}Nx{c.get('Lmax')}L"), c.get("ilsd"), c.get("seed"),
                 _fmt(params / 1e6) if isinstance(params, (int, float)) else "–", _fmt(c.get("gflops_per_sample")),
                 _fmt(s.get(BEST + metric)), _fmt(s.get(f"{BEST}{metric}/loops")),
                 _fmt(s.get(f"{BEST}{metric}/gflops_per_sample"))]
        lines.append("| " + " | ".join("–" if v is None else str(v) for v in cells) + " |")
    return "\n".join(lines)


def build_report(project: str, group: str, runs: list[dict], entity: str = "", online: bool = False):
    """The report as a ``wandb_workspaces`` object. Offline its run sets name no project (resolving one
    asks the server for its id); the report itself names it, and the filters select the group."""
    import wandb_workspaces.reports.v2 as wr

    metrics, refs = study_metrics(runs)
    if not metrics:
        raise ValueError(f"no evaluation of group {group!r} in project {project!r} logged metrics: run eval.py with "
                         "logger=wandb (and study=<group> if the runs are not in it)")
    where = {"entity": entity, "project": project} if online else {}
    first = metrics[0]
    columns = ["run:displayName", "config:NxLmax.value", "config:ilsd.value", "config:seed.value", "config:params.value",
               "config:gflops_per_sample.value", f"summary:{BEST}{first}", f"summary:{BEST}{first}/loops",
               f"summary:{BEST}{first}/gflops_per_sample"]
    evals = wr.Runset(name=f"{group}: evaluations", filters=f"Group = '{group}' and JobType = 'eval'",
                      pinned_columns=columns, **where)
    trains = wr.Runset(name=f"{group}: training", filters=f"Group = '{group}' and JobType = 'train'", **where)
    curves = []
    for m in metrics:
        by_loops = [wandb_keys(m, kind)[0] for kind in ["model", *refs]]
        by_gflops = [wandb_keys(m, kind)[1] for kind in ["model", *refs]]
        direction = "lower is better" if lower_is_better(m) else "higher is better"
        curves += [wr.LinePlot(title=f"{m} vs loop count L ({direction})", x="eval/loops", y=by_loops,
                               title_x="loop count L", title_y=m),
                   wr.LinePlot(title=f"{m} vs GFLOPs per sample ({direction})", x="eval/gflops_per_sample", y=by_gflops,
                               title_x="GFLOPs per sample", title_y=m)]
    n_eval = sum(r.get("job_type") == "eval" for r in runs)
    n_train = sum(r.get("job_type") == "train" for r in runs)
    ref_note = (f" Flat lines: the reference rows ({', '.join(refs)}), the same at every L." if refs else "")
    blocks = [
        wr.H1(f"{group}: quality against loops and compute"),
        wr.P(f"Every evaluation of the W&B group {group} ({n_eval} evaluations, {n_train} training runs when built). "
             f"Each evaluation is one curve, one point per loop count L.{ref_note}"),
        wr.PanelGrid(runsets=[evals], panels=curves),
        wr.H2("Runs"),
        wr.MarkdownBlock(runs_table(runs, first)),
        wr.H2("Sample grids per loop count"),
        wr.P("One image per L (rows = classes); the slider steps through L, one column per run."),
        wr.PanelGrid(runsets=[evals], panels=[wr.MediaBrowser(title="sample grids by L", media_keys=["eval/grid"],
                                                               gallery_axis="step")]),
        wr.H2("Training"),
        wr.PanelGrid(runsets=[trains], panels=[wr.LinePlot(title="validation loss at Lmax", x="Step",
                                                           y=["val/loss_Lmax"])]),
    ]
    return wr.Report(project=project, entity=entity, title=f"{group}: loop budgets compared"[:128],
                     description=f"ELT study {group}: quality vs loops and GFLOPs, runs, sample grids", blocks=blocks)


def report_spec(report) -> dict:
    """The report's JSON spec (what W&B stores), without contacting W&B."""
    return report._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def offline() -> bool:
    return os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")


def make_report(project: str, group: str, roots: list[Path], out: Path, entity: str | None = None,
                publish: bool = True) -> tuple[Path, str | None]:
    """Write the report's spec to ``out`` and, unless offline, publish it: -> (spec path, report URL or None)."""
    runs = local_runs(roots, project, group)
    if not runs:
        raise ValueError(f"no local W&B run of project {project!r} in group {group!r} under "
                         f"{', '.join(map(str, roots))} (pass --runs DIR: where train.py / eval.py logger=wandb wrote)")
    entity = entity or os.environ.get("WANDB_ENTITY") or next((r["entity"] for r in runs if r.get("entity")), "")
    spec = report_spec(build_report(project, group, runs, entity=entity))
    path = Path(out) / f"{group}.report.json"
    write_text_atomic(path, json.dumps(spec, indent=2))
    if not publish:
        return path, None
    if offline():
        raise OfflineError(f"WANDB_MODE={os.environ['WANDB_MODE']}: the report is not published (that needs the "
                           f"network); its spec is {path}")
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:  # a quick look first: W&B's own client retries for minutes without a network
        socket.create_connection((host.hostname, host.port or (443 if host.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise OfflineError(f"publishing the report needs the network ({host.hostname}: {e.strerror or e}); "
                           f"its spec is {path}") from None
    try:
        report = build_report(project, group, runs, entity=entity or _default_entity(), online=True)
        report.save()
    except Exception as e:  # no network, no login, no such project: one line, the spec stays
        reason = type(e).__name__ + (f": {str(e).strip().splitlines()[0]}" if str(e).strip() else "")
        raise OfflineError(f"publishing the report needs the network and a W&B login ({reason}); "
                           f"its spec is {path}") from None
    return path, report.url


def _default_entity() -> str:
    import wandb

    return wandb.Api().default_entity
