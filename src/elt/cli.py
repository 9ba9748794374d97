"""Shared by train.py and eval.py: bad input becomes one line on stderr and a non-zero exit."""
from __future__ import annotations

import os
import sys

from elt.config import ConfigError


def run_cli(job, cfg):
    try:
        return job(cfg)
    except (ConfigError, FileNotFoundError, ValueError, FloatingPointError) as e:
        if os.environ.get("ELT_DEBUG"):  # full traceback when developing
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
