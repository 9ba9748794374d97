"""Elastic Looped Transformers: looped MaskGIT/DiT generators with Intra-Loop Self-Distillation."""
import os

from omegaconf import OmegaConf

__version__ = "0.1.0"


def root_dir() -> str:
    """``${elt.root:}`` (configs/paths): $ELT_ROOT, else the directory the run was started from, absolute.
    Not ``${oc.env:ELT_ROOT,${hydra:runtime.cwd}}``: OmegaConf resolves that fallback even when ELT_ROOT is
    set, and ``hydra:`` fails before HydraConfig exists (a multirun resolves hydra.sweep.dir before any job)."""
    root = os.environ.get("ELT_ROOT")
    if not root:
        from hydra.core.hydra_config import HydraConfig  # a job's own launch dir, even with hydra.job.chdir=true

        cwd = OmegaConf.select(HydraConfig.get(), "runtime.cwd", default=None) if HydraConfig.initialized() else None
        root = cwd or os.getcwd()
    return os.path.abspath(os.path.expanduser(root))


def repo_root():
    """The checkout (the configs/ beside src/), else ``root_dir()`` for an installed package."""
    from pathlib import Path

    here = Path(__file__).resolve().parents[2]  # src/elt/__init__.py -> the checkout
    return here if (here / "configs").is_dir() else Path(root_dir())


def ilsd_suffix(name: str, Lmax) -> str:
    """``${elt.ilsd_suffix:${ilsd.name},${Lmax}}``, the run name's training mode (``_ilsd`` / ``_vanilla``):
    empty at Lmax = 1, where there is no exit below the teacher to distil and both modes train one model."""
    return "" if int(Lmax) <= 1 else f"_{name}"


# registered on import: train.py, eval.py and the tests import elt before Hydra resolves a config
OmegaConf.register_new_resolver("elt.root", root_dir, replace=True)
OmegaConf.register_new_resolver("elt.ilsd_suffix", ilsd_suffix, replace=True)
