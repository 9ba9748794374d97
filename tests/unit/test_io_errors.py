"""I/O failures of the machine as one line (elt.runtime.files.io_error_line through elt.runtime.cli)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from elt.runtime.cli import run_cli, run_tool
from elt.runtime.files import atomic_path, write_text_atomic


def fails_with(exc: BaseException):
    def job(cfg):
        raise exc
    return job


@pytest.mark.parametrize("exc, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/scratch/run/last.ckpt"),
     "error: no space left on /scratch/run while writing last.ckpt; nothing finished was lost"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/home/me/x.json"),
     "error: disk quota exceeded on /home/me while writing x.json; nothing finished was lost"),
    (OSError(errno.ENOSPC, "No space left on device"), "error: no space left on the device; nothing finished was lost"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/a.png"), "error: read-only file system: cannot write /ro/a.png"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/x"), "error: permission denied: /data/x"),
    (OSError(errno.EIO, "Input/output error", "/nfs/shard-000.tar"),
     "error: I/O error on /nfs/shard-000.tar (a failing disk or network file system); nothing finished was lost"),
])
def test_an_io_failure_is_one_line_and_exit_2(exc, line, capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli(fails_with(exc), None)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == line
    assert run_tool(lambda: fails_with(exc)(None)) == 2  # the python -m tools say the same
    assert capsys.readouterr().err.strip() == line


def test_an_os_error_naming_no_file_is_a_bug_with_its_traceback():
    with pytest.raises(ConnectionResetError):
        run_cli(fails_with(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")), None)


def test_an_atomic_write_that_fails_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "row.json"
    target.write_text("finished")
    original = Path.write_text

    def disk_full(self, text, *a, **k):
        original(self, text[:3], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError) as err:
        write_text_atomic(target, "new contents")
    assert err.value.filename == str(target) and err.value.errno == errno.ENOSPC
    assert target.read_text() == "finished" and os.listdir(tmp_path) == ["row.json"]


def test_an_error_naming_another_file_keeps_its_name(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        with atomic_path(tmp_path / "out.txt"):
            open(tmp_path / "missing-input")
    assert err.value.filename == str(tmp_path / "missing-input")


def test_a_full_disk_while_appending_metrics_names_metrics_csv(tmp_path, monkeypatch):
    from elt.runtime.loggers import AppendingExperimentWriter

    writer = AppendingExperimentWriter(log_dir=str(tmp_path))
    writer.log_metrics({"loss": 1.0}, step=0)
    writer.save()
    finished = (tmp_path / "metrics.csv").read_bytes()

    class FullDisk:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer._fs, "open", FullDisk)
    writer.log_metrics({"loss": 0.5}, step=1)
    with pytest.raises(OSError) as err:
        writer.save()
    assert err.value.filename == writer.metrics_file_path and err.value.errno == errno.ENOSPC
    assert (tmp_path / "metrics.csv").read_bytes() == finished
