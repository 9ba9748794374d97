"""Shared by the entry points (train.py, eval.py, sample.py, prepare.py): bad input, a renamed config
group on the command line included, becomes one line on stderr and a non-zero exit.

A single run exits 2 at once. In a multirun with Hydra's in-process launcher a bad job must not end the
sweep (``sys.exit`` inside a job escapes the launcher and skips every later job): the job prints its
line, leaves ``error.txt`` in its directory, and the sweep goes on; ``launch`` exits 2 at the end with
one summary line. Launchers that run jobs elsewhere get an exception, so they mark the job failed."""
from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from elt import repo_root
from elt.runtime.config import ConfigError
from elt.runtime import rundir
from elt.runtime.files import io_error_line

# MissingMandatoryValue: a ??? key left unset (data.num_classes=??? of an image folder)
USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, FloatingPointError, NotImplementedError, MissingMandatoryValue)
# old group name -> new: an override that picks an option by the old name gets one line naming the new one
# (Hydra's own error would not; ``budget`` is also sample.py's ``budget.gflops``, so only options count)
RENAMED_GROUPS = {"budget": "depth"}
# removed option -> what to pass instead
REMOVED_OPTIONS = {"experiment=digits_dit_vanilla": "experiment=digits_dit ilsd=off"}
IN_PROCESS_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
ERROR_FILE = "error.txt"


class SweepJobError(CompactHydraException):
    """A sweep job's user error, raised for out-of-process launchers: Hydra shows it as its message alone."""


@dataclass
class SweepJob:
    num: int
    overrides: list[str]
    error: str | None = None


@dataclass
class Sweep:
    """The jobs this process ran in the current multirun (the in-process launcher runs them all here)."""

    jobs: list[SweepJob] = field(default_factory=list)

    def failed(self) -> list[SweepJob]:
        return [j for j in self.jobs if j.error is not None]

    def summary(self) -> str | None:
        """One line naming every failed job by number and by the overrides that vary across the sweep."""
        failed = self.failed()
        if not failed:
            return None
        shared = set.intersection(*(set(j.overrides) for j in self.jobs)) if len(self.jobs) > 1 else set()
        parts = [f"#{j.num} ({' '.join(o for o in j.overrides if o not in shared)}): {j.error}" for j in failed]
        return f"error: {len(failed)} of {len(self.jobs)} sweep jobs failed: " + "; ".join(parts)


SWEEP = Sweep()


def user_error(e: BaseException) -> BaseException | None:
    """The error to show the user, or None for a bug (which keeps its traceback). Hydra wraps what
    a constructor raised (a missing weights file, a bad value) in InstantiationException: show the
    constructor's own message, or Hydra's for a wrong config key (a TypeError in the call). An I/O
    failure of the machine (a full disk, a file that cannot be read or written) is the user's too."""
    if isinstance(e, InstantiationException):
        cause = e.__cause__
        return cause if isinstance(cause, USER_ERRORS) or machine_error(cause) else e
    return e if isinstance(e, USER_ERRORS) or machine_error(e) else None


def machine_error(e: BaseException | None) -> bool:
    return isinstance(e, OSError) and io_error_line(e) is not None


def error_line(e: BaseException) -> str:
    """A user error's one line: an I/O failure in its own words (``elt.runtime.files.io_error_line``)."""
    return (io_error_line(e) if machine_error(e) else None) or one_line(e)


def one_line(e: BaseException, foreign: bool = False) -> str:
    """An error as one line: the project's own message whole, its line breaks folded. ``foreign``: a
    library's exception wrapped in one of ours, shown as its type and the start of its first line, since
    what follows is advice about the library's own API (torch's notes on ``weights_only``)."""
    if not foreign:
        return " ".join(str(e).split())
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__


def run_tool(body) -> int:
    """A ``python -m`` tool's body (argparse, not Hydra): a user error is one ``error:`` line and exit 2."""
    try:
        return body() or 0
    except (*USER_ERRORS, OSError) as e:
        if user_error(e) is None or os.environ.get("ELT_DEBUG"):
            raise
        print("error: " + error_line(e), file=sys.stderr)
        return 2


def sweep_job() -> tuple[SweepJob, Path | None] | None:
    """This multirun job and its directory, or None outside a multirun (a single run, a composed test config)."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if OmegaConf.select(hc, "mode", default=None) != RunMode.MULTIRUN:
        return None
    out = OmegaConf.select(hc, "runtime.output_dir", default=None)
    job = SweepJob(OmegaConf.select(hc, "job.num", default=0), list(OmegaConf.select(hc, "overrides.task", default=[])))
    return job, Path(out) if out else None


def run_cli(job, cfg):
    """Run ``job(cfg)`` holding its run directory (``elt.runtime.rundir``); a user error becomes one line
    (see the module docstring for sweeps), and a refused run leaves an existing directory as it was."""
    swept = sweep_job()
    if swept is not None:
        SWEEP.jobs.append(swept[0])
        if swept[1] is not None:
            (swept[1] / ERROR_FILE).unlink(missing_ok=True)  # a rerun into the same sweep dir
    try:
        with rundir.holding(cfg, refused=lambda e: user_error(e) is not None):
            return job(cfg)
    except (*USER_ERRORS, InstantiationException, OSError) as e:
        shown = user_error(e)
        if shown is None or os.environ.get("ELT_DEBUG"):  # full traceback when developing
            raise
        if swept is None:
            print("error: " + error_line(shown), file=sys.stderr)
            sys.exit(2)
        return fail_sweep_job(*swept, error_line(shown))


def fail_sweep_job(job: SweepJob, out: Path | None, message: str) -> None:
    """Report a failed multirun job and let the sweep go on (in-process) or raise it to its launcher."""
    job.error = message
    line = f"error: sweep job #{job.num} ({' '.join(job.overrides)}): {message}"
    print(line, file=sys.stderr)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / ERROR_FILE).write_text(line + "\n")
    if OmegaConf.select(HydraConfig.get(), "launcher._target_", default=None) != IN_PROCESS_LAUNCHER:
        raise SweepJobError(line)


def renamed_group(args: list[str]) -> str | None:
    """The error line for a command-line override that selects a renamed group's option by the old name,
    or a removed option."""
    for arg in args:
        bare = arg.lstrip("+~")
        if bare in REMOVED_OPTIONS:
            return f"error: {arg} is removed; pass {REMOVED_OPTIONS[bare]}"
        key, _, value = bare.partition("=")
        new = RENAMED_GROUPS.get(key)
        if new is None:
            continue
        options = {p.stem for p in (repo_root() / "configs" / new).glob("*.yaml")}
        if options & set(re.findall(r"[\w.-]+", value)):  # also in a sweep: a,b or choice(a,b)
            return f"error: {arg}: the config group {key} is called {new}; pass {new}={value}"
    return None


def config_keys(cfg) -> list[str]:
    """Every dotted key of a composed config (values unresolved)."""
    keys: list[str] = []

    def walk(node, prefix):
        for k in node.keys() if OmegaConf.is_dict(node) else ():
            key = f"{prefix}{k}"
            keys.append(key)
            child = node._get_node(k)
            if OmegaConf.is_dict(child):
                walk(child, key + ".")

    walk(cfg, "")
    return keys


def closest(word: str, candidates, what: str) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {what.format(match[0])}?" if match else ""


def closest_key(key: str, keys: list[str]) -> str:
    """The hint for a mistyped key: among its siblings by the last part (``trainer.max_stepz`` ->
    ``trainer.max_steps``), or, when its parent is mistyped too, among the keys as deep as it."""
    parent, _, leaf = key.rpartition(".")
    if parent == "" or parent in keys:
        siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
        match = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
        return f"; did you mean {siblings[match[0]]}?" if match else ""
    return closest(key, [k for k in keys if k.count(".") == key.count(".")], "{}")


def hydra_error(config_name: str, args: list[str]) -> str | None:
    """Hydra's own errors about the command line (bad override syntax, an unknown key, a config group
    option that does not exist) as the one ``error:`` line of every other bad input, naming the closest
    valid key or option; None when the overrides compose. Composes the config once more (cheap, and before
    the job's heavy imports); a command line with Hydra's own flags (``--cfg``, ``--help``, ...) is left to
    Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return None
    if not (repo_root() / "configs" / f"{config_name}.yaml").is_file():  # configs elsewhere: Hydra's own words
        return None
    given = [a for a in args if not a.startswith("-")]
    parser = OverridesParser.create()
    single, sweeps = [], []
    for i, arg in enumerate(given):
        try:
            override = parser.parse_overrides([arg])[0]
        except OverrideParseException as e:
            return f"{arg}: not a valid override ({str(e).splitlines()[0]}); write key=value, e.g. N=2 or eval.loops=[1,2]"
        if not override.is_sweep_override():
            single.append(arg)
            continue
        # a sweep (a,b / choice / range) composes as its first value; each other option of a config group
        # is checked too (a missing one would otherwise stop the sweep at its job)
        values = [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
        single.append(values[0] if values else arg)
        if (repo_root() / "configs" / override.key_or_group).is_dir():
            sweeps += [(i, v) for v in values[1:]]
    for trial in [single] + [single[:i] + [v] + single[i + 1:] for i, v in sweeps]:
        line = composition_error(config_name, trial, given)
        if line:
            return line
    return None


def composition_error(config_name: str, overrides: list[str], given: list[str]) -> str | None:
    """``hydra_error`` for one composition of the command line (``given``: the overrides as typed)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    from elt.runtime.config import compose

    try:
        compose(config_name, overrides)
        return None
    except MissingConfigException as e:
        group, _, option = (e.missing_cfg_file or "").partition("/")
        arg = next((a for a in given if group and a.lstrip("+~").startswith(group + "=")), None)
        options = sorted(e.options or [])
        listed = ", ".join(options[:12]) + (", ..." if len(options) > 12 else "")
        return (f"{arg or e.missing_cfg_file}: {group} has no option {option}{closest(option, options, group + '={}')}"
                f" (options: {listed or 'none'})")
    except ConfigCompositionException as e:
        text = " ".join(str(e).split())
        m = re.match(r"Could not (?:override|delete from config)\.? '?([\w.\-/@]+)'?", text) or \
            re.search(r"'([\w.\-/@]+)' does not exist", text)
        if m is None:
            return text
        key = m.group(1)
        arg = next((a for a in given if a.lstrip("+~").split("=")[0] == key), key)
        try:
            keys = config_keys(compose(config_name, [o for o, a in zip(overrides, given) if a != arg]))
        except Exception:  # another override is wrong too: the keys of the plain config
            keys = config_keys(compose(config_name, []))
        hint = "" if arg.startswith("~") else f" (a new key: +{arg.lstrip('+')})"
        return f"{arg}: {key} is not a config key{closest_key(key, keys)}{hint}"


def entry_config_name(entry) -> str | None:
    """The ``config_name`` a ``@hydra.main`` function was decorated with."""
    code, cells = getattr(entry, "__code__", None), getattr(entry, "__closure__", None) or ()
    names = dict(zip(code.co_freevars, cells)) if code is not None else {}
    cell = names.get("config_name")
    return cell.cell_contents if cell is not None else None


def launch(entry) -> None:
    """Call a ``@hydra.main`` function; after a multirun whose jobs failed, print the summary line and exit 2.
    Hydra's own errors about the command line are one line too (``hydra_error``)."""
    renamed = renamed_group(sys.argv[1:])
    config_name = entry_config_name(entry)
    hydra_line = hydra_error(config_name, sys.argv[1:]) if config_name and not renamed else None
    if renamed or hydra_line:
        print(renamed or f"error: {hydra_line}", file=sys.stderr)
        sys.exit(2)
    try:
        entry()
    finally:  # also after a bug ended the sweep: say which jobs had user errors too
        summary = SWEEP.summary()
        if summary:
            print(summary, file=sys.stderr)
    if summary:
        sys.exit(2)
