"""Precision follows the hardware: bf16 autocast only where the device computes bf16 natively."""
import pytest

from elt.runtime import precision
from elt.runtime.config import ConfigError


@pytest.mark.parametrize("flags, expected", [({"avx2", "avx512_bf16"}, "bf16-mixed"), ({"amx_bf16"}, "bf16-mixed"),
                                             ({"avx2", "fma"}, "32-true")])
def test_auto_reads_the_cpu(monkeypatch, caplog, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    with caplog.at_level("INFO"):
        assert precision.lightning_precision("auto", "cpu") == expected
    assert any("trainer.precision=auto on cpu" in r.getMessage() for r in caplog.records)  # one line says which


def test_explicit_choices_are_kept_and_bad_ones_refused(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    assert precision.lightning_precision("bf16-mixed", "cpu") == "bf16-mixed"  # asked for: honoured
    assert precision.lightning_precision("32-true", "gpu") == "32-true"
    assert precision.lightning_precision("16-mixed", "gpu") == "16-mixed"  # Lightning's own spellings pass through
    with pytest.raises(ConfigError, match="eval.precision must be auto"):
        precision.resolve("fp8", "cpu", what="eval.precision")


