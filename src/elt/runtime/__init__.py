"""Run-time plumbing every layer may use: configs, checkpoints, resume, precision, devices, files, loggers, the command-line wrapper."""
import os

from omegaconf import OmegaConf


def job_suffix() -> str:
    """``${elt.job_suffix:}`` (configs/hydra): ``_<array job>_<task>`` in a SLURM array, ``_<job id>`` in another
    SLURM job, else empty, so array tasks or jobs started in the same second never share a default run
    directory (every rank of one job gets the same suffix)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"_{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return f"_{env['SLURM_JOB_ID']}" if env.get("SLURM_JOB_ID") else ""


# registered on import: every entry point and config composer imports elt.runtime before Hydra resolves
OmegaConf.register_new_resolver("elt.job_suffix", job_suffix, replace=True)
