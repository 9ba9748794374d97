"""A full disk while writing a checkpoint, an evaluation row or a sample grid: one line naming the
directory and the file, exit 2, and every file finished before is byte-identical."""
from __future__ import annotations

import errno
import pathlib
from pathlib import Path

import pytest

from elt.jobs.evaluate import evaluate
from elt.jobs.sample import sample_entry
from elt.jobs.train import train
from elt.runtime.cli import run_cli
from support.config import compose_cfg
from support.evaluation import eval_cfg


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def full_disk_line(capsys, job, cfg) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(job, cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]  # beside progress bars
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    return errors[0]


def test_a_full_disk_during_a_checkpoint_save_is_one_line(train_cfg, tmp_path, capsys, monkeypatch):
    out = train(train_cfg("trainer.max_steps=2"))
    ckpt_dir = Path(out["ckpt_path"]).parent
    before = snapshot(ckpt_dir)

    def disk_full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")  # what a write() says: no file name

    monkeypatch.setattr("elt.runtime.resume.torch.save", disk_full)
    line = full_disk_line(capsys, train, train_cfg("trainer.max_steps=4", "ckpt_path=last"))
    assert line.startswith(f"error: no space left on {ckpt_dir} while writing step000003.ckpt"), line
    assert line.endswith("; nothing finished was lost")
    assert snapshot(ckpt_dir) == before  # last.ckpt and the step checkpoints intact, no temporary left


def fail_writes_of(monkeypatch, fragment: str, method: str) -> list[str]:
    """``Path.<method>`` fails with ENOSPC for files whose name holds ``fragment``, after writing half."""
    original = getattr(pathlib.Path, method)
    failed = []

    def write(self, data, *a, **k):
        if fragment not in self.name:
            return original(self, data, *a, **k)
        failed.append(self.name)
        original(self, data[: len(data) // 2], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, method, write)
    return failed


def test_a_full_disk_while_writing_an_eval_row_keeps_the_finished_rows(tiny_ckpt, eval_cache, tmp_path, capsys,
                                                                      monkeypatch):
    out = tmp_path / "eval"
    evaluate(eval_cfg(tiny_ckpt, out, eval_cache, "eval.loops=[1]", "eval.reference_rows=false"))
    before = snapshot(out)
    failed = fail_writes_of(monkeypatch, "L2", "write_text")
    line = full_disk_line(capsys, evaluate, eval_cfg(tiny_ckpt, out, eval_cache, "eval.loops=[1,2]",
                                                    "eval.reference_rows=false"))
    assert failed, "the L2 row was never written"
    assert line == f"error: no space left on {out / 'loops'} while writing L2.json; nothing finished was lost"
    after = snapshot(out)
    assert {k: after.get(k) for k in before} == before  # the L1 row, results.* and figures as they were
    assert set(after) - set(before) == {"grids/L2.png"}  # L2's grid, written whole; no temporary, no L2 row


def test_a_full_disk_while_writing_a_sample_grid_is_one_line(train_cfg, tmp_path, capsys, monkeypatch):
    ckpt = train(train_cfg("N=1", "Lmax=2", "model.sampler.steps=2"))["ckpt_path"]
    out = tmp_path / "samples"
    out.mkdir()
    (out / "samples.png").write_bytes(b"an earlier grid")
    from PIL import Image

    original = Image.Image.save

    def save(self, fp, *a, **k):
        original(self, fp, *a, **k)  # written whole to the temporary, then the disk fills at close
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", save)
    cfg = compose_cfg("sample", [f"ckpt_path={ckpt}", "labels=[1]", "n=2", "front=null", "budget.gflops=1e9"], out)
    line = full_disk_line(capsys, sample_entry, cfg)
    assert line == f"error: no space left on {out} while writing samples.png; nothing finished was lost"
    assert snapshot(out) == {"samples.png": b"an earlier grid"}
