"""Every command in README.md and docs/*.md runs as written from a fresh clone after ``make install``.

Each ```bash block is read the way bash reads it (bash itself expands every line: quotes, braces,
comments, the block's own VAR=value lines), then each command is checked by what it is: a make target
that exists; Hydra overrides that Hydra's own parser accepts and that compose against configs/ (the
renamed-group check included); a ``python -m`` module that exists and whose argparse CLI accepts the
arguments; a console script the install provides. The cheap ones are run as well (slow).

A failure names the file, the line and the command; fix the doc (or, for a new kind of command, teach
``check`` below what it is)."""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from elt.runtime.cli import renamed_group
from support.config import child_env, compose_cfg

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRY_SCRIPTS = {"train.py": "train", "eval.py": "eval", "sample.py": "sample", "prepare.py": "prepare"}
SHELL_LANGS = {"bash", "sh", "shell"}
BIN = Path(sys.executable).parent  # the venv's console scripts (make install puts them in .venv/bin)
# Run by the slow test: quick, offline, need nothing that make demo or a dataset writes.
CHEAP = [
    ("python", "-m", "elt.experiments.report", "table"),
    ("python", "-m", "elt.experiments.mini_paper", "plan"),
    ("python", "-m", "elt.experiments.paper", "docs"),
]


SHELL_BUILTINS = {"cd", "export", "echo"}
SYSTEM_TOOLS = {"git", "ls", "cat", "mkdir", "head", "tail", "ffmpeg", "nvidia-smi"}  # must be on PATH here
CLUSTER_TOOLS = {"sbatch", "squeue", "scancel", "scontrol"}  # SLURM's, absent off a cluster


class Parsed(Exception):
    """Raised by the patched ArgumentParser.parse_args once a CLI has accepted its arguments."""


def shell_blocks(path: Path):
    """(first line number, block text) of each ```bash / ```sh / ```shell block."""
    text = path.read_text()
    for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        if m.group(1) in SHELL_LANGS:
            yield text[: m.start()].count("\n") + 2, m.group(2)


def logical_lines(block: str):
    """(offset, line) with backslash continuations joined; blank and comment-only lines dropped."""
    lines, start, buf = [], 0, ""
    for i, line in enumerate(block.splitlines()):
        if not buf:
            start = i
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip() and not buf.lstrip().startswith("#"):
            lines.append((start, buf))
        buf = ""
    return lines


def bash_words(line: str, assignments: list[str], cwd: Path) -> list[str]:
    """The words bash passes to the command on this line (after the block's earlier VAR=value lines)."""
    if re.search(r"\$\(|`", line):
        raise ValueError("command substitution: not expanded by this check")
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    if any(set(token) <= set("();<>|&") for token in lexer):
        raise ValueError("contains a shell operator (<, >, |, ;, &): a placeholder like <run> is a redirection to bash")
    script = "set -u\n" + "".join(f"{a}\n" for a in assignments) + "printf '%s\\0' " + line
    r = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    if r.returncode:
        raise ValueError(f"bash cannot read it: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    words = r.stdout.split("\0")[:-1]
    return words


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9][\w.-]*):(?!=)", (ROOT / "Makefile").read_text(), re.M))


def check_hydra(config: str, args: list[str]) -> None:
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    renamed = renamed_group(overrides)
    if renamed:
        raise ValueError(renamed)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # Hydra's OverrideParseException, said in one line
        raise ValueError(f"Hydra rejects the overrides: {str(e).splitlines()[0]}") from None
    keys = [o.key_or_group for o in parsed]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"sets {twice} twice (bash splits an unquoted {{a,b}} into two words: quote the override)")
    first = []  # a sweep composes as its first combination
    for o, text in zip(parsed, overrides):
        if o.is_sweep_override():
            key = text.split("=", 1)[0]
            first.append(f"{key}={next(iter(o.sweep_string_iterator()))}")
        else:
            first.append(text)
    try:
        cfg = compose_cfg(config, [o for o in first if not o.lstrip("+~").startswith("hydra.")])
        # eval/sample/pareto resolve their logger against the checkpoint's training config at run time
        body = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra" and (config == "train" or k != "logger")])
        OmegaConf.to_container(body, resolve=True)
    except Exception as e:
        raise ValueError(f"does not compose against configs/{config}.yaml: {str(e).splitlines()[0]}") from None


def hydra_config_of(module: str) -> str | None:
    """The config_name of a module's @hydra.main, if it has one."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ValueError(f"no module {module}")
    origin = Path(spec.origin)
    if origin.name == "__init__.py" and (origin.parent / "__main__.py").is_file():
        origin = origin.parent / "__main__.py"
    m = re.search(r"@hydra\.main\([^)]*config_name=\"(\w+)\"", origin.read_text())
    return m.group(1) if m else None


def check_argparse(module: str, args: list[str]) -> None:
    """The module's CLI parses ``args``: its top-level parse_args / parse_known_args is stopped right after,
    so nothing runs."""
    parse_args, parse_known_args = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    state = {"depth": 0, "in_parse_args": False}

    def parse_then_stop(self, a=None, namespace=None):
        state["in_parse_args"] = True
        parse_args(self, a, namespace)
        raise Parsed

    def parse_known_then_stop(self, a=None, namespace=None):
        state["depth"] += 1  # subparsers parse inside their parent's call
        try:
            result = parse_known_args(self, a, namespace)
        finally:
            state["depth"] -= 1
        if state["depth"] == 0 and not state["in_parse_args"]:
            raise Parsed
        return result

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", parse_known_then_stop), \
            mock.patch.object(sys, "argv", [module, *args]):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except Parsed:
            return
        except SystemExit as e:
            raise ValueError(f"its command line rejects the arguments (exit {e.code})") from None
    raise ValueError("the module ran without parsing a command line")


def check(words: list[str]) -> None:
    placeholders = [w for w in words if "..." in w or "…" in w]
    if placeholders:
        raise ValueError(f"placeholder {placeholders}: write a value that runs (or a $VARIABLE set in the block)")
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value before a command
        words = words[1:]
    if words[:1] == ["srun"]:
        words = words[1:]
    if words[:1] == ["torchrun"]:
        words = ["python", *[w for w in words[1:] if not w.startswith("--")]]
    cmd, args = words[0], words[1:]
    if cmd == "make":
        unknown = [a for a in args if "=" not in a and not a.startswith("-") and a not in makefile_targets()]
        if unknown:
            raise ValueError(f"no make target {unknown}")
    elif cmd == "source":
        if args != [".venv/bin/activate"]:
            raise ValueError("only `source .venv/bin/activate` is known to exist after make install")
    elif cmd in ("python", ".venv/bin/python"):
        if args[:1] == ["-m"] and not args[1].startswith("elt."):  # pytest, pip: installed, not run here
            if importlib.util.find_spec(args[1]) is None:
                raise ValueError(f"no module {args[1]}")
        elif args[:2] == ["-m", "elt.jobs.warm"]:  # composes train + eval itself: check both, run nothing
            from elt.jobs.warm import split_overrides

            to_train, to_eval = split_overrides(args[2:])
            if to_train is not None:
                check_hydra("train", to_train)
            check_hydra("eval", to_eval)
        elif args[:1] == ["-m"]:
            config = hydra_config_of(args[1])
            check_hydra(config, args[2:]) if config else check_argparse(args[1], args[2:])
        elif args and args[0] in ENTRY_SCRIPTS:
            check_hydra(ENTRY_SCRIPTS[args[0]], args[1:])
        elif not args or not (ROOT / args[0]).is_file():
            raise ValueError(f"no script {args[:1]}")
    elif cmd in SHELL_BUILTINS or cmd in CLUSTER_TOOLS or shutil.which(cmd) and cmd in SYSTEM_TOOLS:
        pass
    elif not (BIN / cmd).exists():
        raise ValueError(f"{cmd}: not a console script the install provides (none in {BIN}), nor a known system tool")


def doc_commands():
    """(place, command words or the reason bash could not read the line) of every command."""
    out = []
    cwd = Path(tempfile.mkdtemp())  # empty: an unquoted glob like [--quick] matches nothing, as in a fresh clone
    for path in DOCS:
        for first_line, block in shell_blocks(path):
            if block.startswith("#!"):  # a script to save: bash's syntax check, then its python lines
                r = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
                out.append((f"{path.name}:{first_line}", ValueError(r.stderr.strip()) if r.returncode else None))
                block = "\n".join(re.sub(r"\$\{?(\w+)\}?", r"\1", l) for l in block.splitlines()
                                  if re.match(r"\s*(srun\s+)?python", l) or l.startswith(" "))
            assignments: list[str] = []
            for offset, line in logical_lines(block):
                place = f"{path.relative_to(ROOT)}:{first_line + offset}: {line.split('  #')[0].strip()}"
                try:
                    words = bash_words(line, assignments, cwd)
                except ValueError as e:
                    out.append((place, e))
                    continue
                if words and all(re.fullmatch(r"[A-Za-z_]\w*=.*", w) for w in words):
                    assignments.append(line.split("#")[0].strip())
                elif words:
                    out.append((place, words))
    return out


def test_every_documented_command_parses():
    failures = []
    commands = doc_commands()
    for place, words in commands:
        if words is None:
            continue
        try:
            if isinstance(words, Exception):
                raise words
            check(words)
        except Exception as e:
            failures.append(f"{place}\n    -> {e}")
    assert len(commands) > 30, f"found only {len(commands)} commands: is the ```bash block detection broken?"
    assert not failures, (f"{len(failures)} documented command(s) would fail as written (fix the doc):\n"
                          + "\n".join(failures))


def test_the_check_catches_what_fails():
    """The failures the issue found, each caught with its reason."""
    tmp = Path(tempfile.mkdtemp())
    with pytest.raises(ValueError, match="placeholder"):
        check(bash_words("python train.py model=dit_elt scale=B ...", [], tmp))
    with pytest.raises(ValueError, match="Hydra rejects"):
        check(bash_words("python train.py 'eval.loops=[1,2'", [], tmp))
    with pytest.raises(ValueError, match="redirection"):
        bash_words("python eval.py ckpt_path=<run>/checkpoints/last.ckpt", [], tmp)
    with pytest.raises(ValueError, match="twice"):  # bash splits unquoted {a,b} into two words
        check(bash_words("python eval.py ckpt_path=x eval.sampler={steps:24,cfg_scale:2.0}", [], tmp))
    check(bash_words("python eval.py ckpt_path=x 'eval.sampler={steps:24,cfg_scale:2.0}'", [], tmp))
    with pytest.raises(ValueError, match="does not compose"):
        check(bash_words("python train.py scale=tinyy", [], tmp))
    with pytest.raises(ValueError, match="no make target"):
        check(["make", "demo-nothing"])
    with pytest.raises(ValueError, match="rejects the arguments"):
        check(["python", "-m", "elt.experiments.report", "tables"])
    with pytest.raises(ValueError, match="not a console script"):
        check(["huggingface-cli", "download", "x"])
    check(["python", "-m", "pytest", "-q"])  # another package's module: found, not run


@pytest.mark.slow
def test_the_cheap_commands_run(tmp_path):
    """The documented commands that need no checkpoint, data or GPU, run as written in a copy's root."""
    ran = []
    for place, words in doc_commands():
        if isinstance(words, list) and any(tuple(words[: len(c)]) == c for c in CHEAP):
            if words[:2] == ["python", "-m"] and words[2] == "elt.experiments.paper" and "docs" in words:
                words = [*words, "--check"]  # rewriting a doc is not cheap to undo
            r = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, env=child_env(),
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"{place}: exit {r.returncode}\n{r.stderr[-2000:]}"
            ran.append(place)
    assert len(ran) >= len(CHEAP), f"ran {ran}; expected one of each of {CHEAP}"
