"""One run per run directory, and a refused run leaves an existing one as it was.

A second process that would write into a directory held by a live run (two requeued jobs with one
fixed ``hydra.run.dir``, a sweep started twice in the same second) is refused in one line: one run's
checkpoints would overwrite the other's and ``metrics.csv`` would hold every step twice. The lock is
an ``flock`` on ``<run dir>/.run.lock``, which the kernel drops when its holder dies (also on
``kill -9``), so a crashed run never wedges its directory: the next run takes it over with a log line.
Where the file system has no ``flock``, the record in the file decides: a dead pid on this host, or an
earlier try of this same SLURM job (a requeue), is taken over; anything else is refused.

Hydra writes ``.hydra/`` and opens the job's log file before the job runs, so a run refused later (a
resume that does not fit, a bad value) would still have rewritten an existing directory's config.
``RunDirectory`` (a Hydra callback, configs/hydra/default.yaml) takes the lock before Hydra writes
anything and remembers the directory's ``.hydra/`` files and log sizes; ``run_cli`` puts them back when
the job is refused before it started work (``started()``, or any other file of the directory written)."""
from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from elt.runtime.config import ConfigError
from elt.runtime.files import io_error_line

log = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def launch_rank_zero() -> bool:
    """Whether this process is the launch's first (torchrun, srun, Lightning's DDP children): the other
    ranks share its run directory, so only it holds the lock."""
    for name in RANK_VARIABLES:
        try:
            if int(os.environ.get(name, 0)) != 0:
                return False
        except ValueError:
            continue
    return True


def describe_holder(record: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"])) if "started" in record else "?"
    return f"pid {record.get('pid', '?')} on {record.get('host', '?')} since {since}: {record.get('command', '?')}"


def pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # another user's process, or no pid to check: assume alive
    return True


class RunLock:
    """The lock of one run directory, held by this process until ``release``."""

    def __init__(self, directory):
        self.dir = Path(os.path.abspath(str(directory)))
        self.path = self.dir / LOCK_FILE
        self.fd: int | None = None
        self.taken_over: str | None = None  # the holder whose stale lock this one replaced

    @staticmethod
    def record() -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
                "slurm_job_id": os.environ.get("SLURM_JOB_ID")}

    def read(self, fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        """Take the lock or raise ConfigError naming the live run that holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self.read(fd)
                os.close(fd)
                raise ConfigError(f"{self.dir} is in use by a live run ({describe_holder(holder)}); wait for it to "
                                  f"end, or give this run its own hydra.run.dir") from None
            except OSError as e:
                if e.errno not in NO_FLOCK:
                    os.close(fd)
                    raise
                try:
                    self.refuse_unless_stale(self.read(fd), flock=False)
                except BaseException:
                    os.close(fd)
                    raise
            try:  # the file a holder unlinked while we waited is not the lock any more: retry on the new one
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            break
        try:
            previous = self.read(fd)
            if previous.get("pid") is not None and previous.get("pid") != os.getpid():
                self.taken_over = (f"{self.dir}: taking over the lock of a run that ended without releasing it "
                                   f"({describe_holder(previous)})")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self.record()).encode(), 0)
        except BaseException:  # a full disk while recording the holder: release the lock, nothing is held
            os.close(fd)
            raise
        self.fd = fd
        return self

    def refuse_unless_stale(self, holder: dict, flock: bool) -> None:
        """With flock, a record left behind is stale by construction; without, decide from the record."""
        if flock or not holder:
            return
        same_host = holder.get("host") == socket.gethostname()
        requeue = holder.get("slurm_job_id") is not None and holder.get("slurm_job_id") == os.environ.get("SLURM_JOB_ID")
        if (same_host and not pid_alive(holder.get("pid"))) or requeue:
            return
        raise ConfigError(f"{self.dir} is in use by another run ({describe_holder(holder)}; this file system has no "
                          f"flock, so a run on another host cannot be checked): if it has ended, delete {self.path}")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # drops the flock
            self.fd = None


@dataclass
class Snapshot:
    """An existing run directory's ``.hydra/`` files and log sizes, before Hydra rewrote them."""

    directory: Path
    hydra_sub: Path | None = None
    hydra_files: dict[str, bytes] = field(default_factory=dict)
    hydra_dir_existed: bool = False
    logs: dict[str, int] = field(default_factory=dict)
    others: dict[str, tuple[int, int]] = field(default_factory=dict)  # every other file: size, mtime
    started: bool = False

    def stamp(self) -> dict[str, tuple[int, int]]:
        """Size and mtime of the files that are neither Hydra's nor logs nor the lock: a job that wrote any
        of them did work, whatever it said (``started``)."""
        out = {}
        for p in self.directory.rglob("*"):
            if (p.is_file() and p.name != LOCK_FILE and not (p.parent == self.directory and p.suffix == ".log")
                    and (self.hydra_sub is None or self.hydra_sub not in p.parents)):
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
        return out

    @classmethod
    def take(cls, directory: Path, output_subdir: str | None) -> "Snapshot | None":
        if not directory.is_dir():
            return None  # a new directory: what a refused run leaves there is its own
        snap = cls(directory)
        if output_subdir:
            sub = directory / output_subdir
            snap.hydra_dir_existed = sub.is_dir()
            snap.hydra_files = {str(p): p.read_bytes() for p in sub.glob("*") if p.is_file()} if sub.is_dir() else {}
            snap.hydra_sub = sub
        snap.logs = {str(p): p.stat().st_size for p in directory.glob("*.log") if p.is_file()}
        snap.others = snap.stamp()
        return snap

    def restore(self) -> None:
        """Put back what Hydra rewrote: ``.hydra/`` byte for byte, the logs cut to their old length; not
        when the job wrote anything else there (then the new config and log lines describe it)."""
        if self.stamp() != self.others:
            return
        sub = self.hydra_sub
        if sub is not None and sub.is_dir():
            for p in sub.glob("*"):
                if p.is_file() and str(p) not in self.hydra_files:
                    p.unlink()
            for name, content in self.hydra_files.items():
                Path(name).write_bytes(content)
            if not self.hydra_dir_existed and not any(sub.iterdir()):
                sub.rmdir()
        for p in self.directory.glob("*.log"):
            size = self.logs.get(str(p))
            if size is None:
                p.unlink()
            elif p.stat().st_size > size:
                os.truncate(p, size)


# the directories this process holds: the callback takes them before Hydra writes, run_cli after
HELD: dict[str, RunLock] = {}
SNAPSHOTS: dict[str, Snapshot] = {}
TAKEN_OVER: list[str] = []  # logged once the job's logging (its log file) is set up


def started() -> None:
    """The job began its work (training, sampling, encoding): from now on a failure keeps what it wrote,
    the new ``.hydra/`` config and log lines included."""
    for snap in SNAPSHOTS.values():
        snap.started = True


def hold(directory) -> RunLock | None:
    """Lock ``directory`` for this process (once; only on the launch's first rank)."""
    key = os.path.realpath(str(directory))
    if key in HELD or not launch_rank_zero():
        return None
    HELD[key] = lock = RunLock(directory).acquire()
    if lock.taken_over:
        TAKEN_OVER.append(lock.taken_over)
    return lock


def release(directory) -> None:
    key = os.path.realpath(str(directory))
    lock = HELD.pop(key, None)
    SNAPSHOTS.pop(key, None)
    if lock is not None:
        lock.release()


@atexit.register
def release_all() -> None:
    """A run that ends outside its job (Hydra's own error after ``on_run_start``) leaves no lock file."""
    for key in list(HELD):
        release(key)


def run_directory(cfg) -> str | None:
    """The job's run directory (``paths.output_dir``), or None where it does not resolve."""
    if not isinstance(cfg, DictConfig):
        return None
    try:
        out = OmegaConf.select(cfg, "paths.output_dir", default=None, throw_on_resolution_failure=False)
    except Exception:  # an interpolation of a Hydra node that is not set up (a composed test config)
        return None
    return str(out) if out not in (None, "") else None


@contextmanager
def holding(cfg, refused):
    """The job's run directory locked while the job runs; ``refused(e)``: whether an exception is a
    refusal, after which the directory is put back as it was (when the job had not started)."""
    directory = run_directory(cfg)
    if directory is None:
        yield
        return
    hold(directory)
    while TAKEN_OVER:
        log.warning(TAKEN_OVER.pop(0))
    try:
        yield
    except BaseException as e:
        snap = SNAPSHOTS.get(os.path.realpath(directory))
        if snap is not None and not snap.started and refused(e):
            snap.restore()
        raise
    finally:  # also the lock RunDirectory took for this run
        release(directory)


class RunDirectory(Callback):
    """Before Hydra creates the run directory or writes ``.hydra/`` into it: lock it and remember it."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not launch_rank_zero():  # the other ranks of a launch write into the first rank's directory
            return
        HydraConfig.instance().set_config(config)  # resolves ${hydra:...} in the run dir's path
        directory = Path(os.path.abspath(str(config.hydra.run.dir)))
        try:
            snap = Snapshot.take(directory, OmegaConf.select(config, "hydra.output_subdir"))
            hold(directory)
        except (ConfigError, OSError) as e:  # as elt.runtime.cli.run_cli would say it
            line = io_error_line(e) if isinstance(e, OSError) else None
            print("error: " + (line or " ".join(str(e).split())), file=sys.stderr)
            sys.exit(2)
        if snap is not None:
            SNAPSHOTS[os.path.realpath(directory)] = snap
