"""Shared by train.py and eval.py: bad input becomes one line on stderr and a non-zero exit."""
from __future__ import annotations

import os
import sys

from hydra.errors import InstantiationException

from elt.config import ConfigError

USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, FloatingPointError, NotImplementedError)


def user_error(e: BaseException) -> BaseException | None:
    """The error to show the user, or None for a bug (which keeps its traceback). Hydra wraps what
    a constructor raised (a missing weights file, a bad value) in InstantiationException: show the
    constructor's own message, or Hydra's for a wrong config key (a TypeError in the call)."""
    if isinstance(e, InstantiationException):
        cause = e.__cause__
        return cause if isinstance(cause, USER_ERRORS) else e
    return e if isinstance(e, USER_ERRORS) else None


def run_cli(job, cfg):
    try:
        return job(cfg)
    except (*USER_ERRORS, InstantiationException) as e:
        shown = user_error(e)
        if shown is None or os.environ.get("ELT_DEBUG"):  # full traceback when developing
            raise
        print("error: " + " ".join(str(shown).split()), file=sys.stderr)  # one line
        sys.exit(2)
