"""The eval.py job: load a run, sweep its loop counts (elt.evaluation.sweep), write the report.

Writes ``results.{csv,json,md}``, the quality-vs-loops and quality-vs-GFLOPs figures and the sample
grids under ``eval.output_dir``, and sends the same numbers to the configured loggers. Under
torchrun every rank samples and rank 0 alone scores and writes.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from elt.core.flops import gflops_per_sample
from elt.evaluation.plots import add_schedule_points, quality_figure, save_figure
from elt.evaluation.preflight import check_sampler, require_creatable_dir
from elt.evaluation.scoring import load_reference_npz
from elt.evaluation.settings import Settings, read_settings
from elt.evaluation.tables import log_to_loggers, quality_metrics, write_tables
from elt.runtime import precision, rundir
from elt.runtime.checkpoint import load_run, relocate_data, require_ckpt_path
from elt.runtime.config import ConfigError, instantiate_group
from elt.runtime.devices import pick_device
from elt.runtime.distributed import Ranks
from elt.runtime.kernels import cpu_kernels, set_cpu_kernels

if TYPE_CHECKING:
    from elt.evaluation.sweep import LoopSweep

# Lightning (the sweep's models, the loggers) is imported where it is used, after the checks of
# load_for_evaluation: a missing checkpoint or a bad value is one line before those imports


def evaluate(cfg: DictConfig) -> dict:
    """Sweep the checkpoint's loop counts; write table, plots, grids; log. Returns rows and paths
    (on rank 0 of a torchrun launch; the other ranks return an empty dict)."""
    ranks = Ranks.from_env()
    if not ranks.main:  # one voice: rank 0 logs, the others only warn
        logging.getLogger().setLevel(logging.WARNING)
    model, train_cfg, s, sampler, device, sample_precision, npz = load_for_evaluation(cfg, ranks)
    rundir.started()  # every check passed: a later failure keeps what was written
    ranks.init(device)
    from elt.evaluation.sweep import LoopSweep

    try:
        sweep = LoopSweep(cfg, model, train_cfg, s, sampler, device, sample_precision, ranks, npz)
        rows = sweep.rows()
        result = report(cfg, train_cfg, model, s, sampler, sample_precision, sweep, rows) if ranks.main else {}
        ranks.barrier()  # the others wait for rank 0's files
        return result
    finally:
        ranks.close()


def stored_run(cfg: DictConfig):
    """-> (model, training config) of ``cfg.ckpt_path``, its data moved to where eval's ``data.*`` say."""
    model, train_cfg = load_run(cfg.ckpt_path)
    return model, relocate_data(train_cfg, **{k: OmegaConf.select(cfg, f"data.{k}") for k in ("raw_root", "root")})


def load_for_evaluation(cfg: DictConfig, ranks: Ranks):
    """Every check and load before a sweep (shared with elt.jobs.pareto): -> (model, train_cfg,
    settings, sampler, device, sampling precision, reference npz or None)."""
    require_ckpt_path(cfg)
    require_creatable_dir(cfg.eval.output_dir, "eval.output_dir")
    device = pick_device(cfg.eval.get("device", "auto"), ranks)
    sample_precision = precision.resolve(cfg.eval.get("precision", "auto"), device.type, "eval.precision")
    try:
        set_cpu_kernels(cfg.eval.get("cpu_kernels", "auto"))
    except ConfigError as e:
        raise ConfigError(f"eval.{e}") from None
    model, train_cfg = stored_run(cfg)
    model.to(device)
    s = read_settings(cfg, model.Lmax, model.num_classes)
    if cfg.eval.sampler is not None and not OmegaConf.is_dict(cfg.eval.sampler):
        raise ConfigError(f"eval.sampler must be a mapping like {{steps: 16}}, got {cfg.eval.sampler!r}")
    sampler = check_sampler(model.sampler_config(
        **(OmegaConf.to_container(cfg.eval.sampler, resolve=True) if cfg.eval.sampler else {})))
    npz = load_reference_npz(s.reference_stats, s.pr_k) if s.reference_stats is not None else None
    return model, train_cfg, s, sampler, device, sample_precision, npz


def report(cfg, train_cfg, model, s: Settings, sampler, sample_precision, sweep: LoopSweep, rows) -> dict:
    out_dir = sweep.out_dir
    meta = describe(cfg, train_cfg, model, s, sampler, sample_precision, sweep.extractors, sweep.reference_sources())
    table = write_tables(rows, meta, out_dir)
    print(table)
    metrics = quality_metrics(rows)
    title = f"{train_cfg.run_name}: {model.N}N×{model.Lmax}L"
    curve = [r for r in rows if r["row"] != "schedule"]  # schedule rows are points, not reference lines
    figures = {}
    for name, x, xlabel in [("quality_vs_loops", "loops", "loop count L"),
                            ("quality_vs_gflops", "gflops_per_sample", "GFLOPs per sample")]:
        fig = quality_figure(curve, metrics, x, xlabel, title)
        if x == "gflops_per_sample":
            add_schedule_points(fig, rows, metrics)
        figures[name] = save_figure(fig, out_dir / f"{name}.png")
    grids = {L: out_dir / "grids" / f"L{L}.png" for L in s.loops if (out_dir / "grids" / f"L{L}.png").is_file()}
    log_to_loggers(build_loggers(cfg, train_cfg), rows, meta, figures, grids)
    return {"rows": rows, "table": table, "output_dir": str(out_dir), "figures": {k: str(v) for k, v in figures.items()}}


def describe(cfg, train_cfg, model, s: Settings, sampler, sample_precision: str, extractors,
             references: dict[str, str]) -> dict:
    evals = model.network_evals_per_sample(**sampler)
    video = any(e.modality == "video" for e in extractors)
    items, standard = ("videos", "I3D FVD") if video else ("images", "InceptionV3 FID")
    hparams = {
        "ckpt_path": str(cfg.ckpt_path), "train_run": train_cfg.run_name, "model": train_cfg.model.name,
        "data": train_cfg.data.name, "N": model.N, "Lmax": model.Lmax,
        "ilsd": bool(OmegaConf.select(train_cfg, "ilsd.enabled", default=False)),
        "samples_per_class": s.samples_per_class, "seed": s.seed, "network_evals_per_sample": evals,
        "sampling_precision": sample_precision, "cpu_kernels": cpu_kernels(),
        **{f"sampler/{k}": v for k, v in sampler.items()},
        # the run's size, W&B config columns beside the training run's
        "params": sum(p.numel() for p in model.parameters()),
        "gflops_per_sample": round(gflops_per_sample(model, model.Lmax, sampler), 6),
    }
    header = [
        f"**{train_cfg.run_name}** ({hparams['model']} {model.N}N×{model.Lmax}L, ILSD {'on' if hparams['ilsd'] else 'off'}) "
        f"from `{cfg.ckpt_path}`",
        f"{s.samples_per_class * model.num_classes} samples per row ({s.samples_per_class} per class), seed {s.seed}, "
        f"{evals} network evaluations per sample, sampled in {'bf16 autocast' if sample_precision == 'bf16' else 'fp32'} "
        "(features in fp32); sampler: " + ", ".join(f"{k}={v}" for k, v in sampler.items()),
        "Reference statistics: " + ("; ".join(f"{k}: {v}" for k, v in references.items())
                                    if len(set(references.values())) > 1 else next(iter(references.values()))) + ".",
    ]
    for e in extractors:
        if e.info.get("val_accuracy") is not None:
            aux = (f" (auxiliary {e.info['aux_target']} head: {100 * e.info['val_aux_accuracy']:.1f}%)"
                   if e.info.get("aux_target") else "")
            header.append(f"Judge {e.name}: trained on the real training split, held-out accuracy "
                          f"{100 * e.info['val_accuracy']:.1f}% on {e.info['val_items']} {items}{aux}; "
                          f"*_{e.name} metrics are in its feature space, not comparable with {standard}.")
    return {"hparams": hparams, "header": [line + "  " for line in header[:-1]] + header[-1:],
            "extractors": {e.name: {"fingerprint": e.fingerprint, **e.info} for e in extractors}}


def build_loggers(cfg: DictConfig, train_cfg: DictConfig) -> list:
    """The eval config's loggers, resolved against the evaluated run's training config (W&B groups
    eval runs with their training runs): ``elt.runtime.loggers.eval_logger_config``."""
    from elt.runtime.loggers import eval_logger_config

    if not cfg.get("logger"):
        return []
    return instantiate_group(eval_logger_config(cfg, train_cfg))
