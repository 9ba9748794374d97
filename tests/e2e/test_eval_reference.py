"""Evaluation against real data at ImageNet scale, through eval's entry: bad reference settings stop
before any work, and a checkpoint whose tokenizer is a diffusers VQModel is scored end to end against
an ADM reference batch and a bounded trivial fit."""
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from elt.encoders.pretrained import DiffusersVQTokenizer
from elt.evaluation.baselines import IndependentTokens
from elt.evaluation.extractors import STANDARD_EXTRACTORS
from elt.evaluation.metrics import FeatureStats, frechet_distance
from elt.evaluation.scoring import balanced_subset
from elt.jobs.evaluate import evaluate
from elt.jobs.train import train
from elt.runtime.checkpoint import load_run
from elt.runtime.cli import run_cli
from support.evaluation import eval_cfg, forbid_work
from support.stand_ins import StandInInception, TinyI3D, features_of, save_tiny_vq, write_npz


def test_bad_reference_settings_stop_before_any_work(tiny_ckpt, tmp_path, capsys, monkeypatch):
    sigma = np.eye(2048)
    good = write_npz(tmp_path / "ref.npz", np.zeros(2048), sigma)
    write_npz(tmp_path / "bad.npz", np.zeros(10), sigma)
    i3d = tmp_path / "i3d.pt"
    torch.jit.script(TinyI3D()).save(str(i3d))
    forbid_work(monkeypatch)
    for overrides, culprit in [
        ([f"eval.reference_stats={tmp_path / 'bad.npz'}"], "bad.npz must hold finite 2048-d"),
        ([f"eval.reference_stats={tmp_path / 'nope.npz'}"], "nope.npz"),
        ([f"eval.reference_stats={good}", "eval.precision_recall=3"], "eval.precision_recall=3 needs"),
        ([f"eval.reference_stats={good}", "eval.extractors=[i3d]", f"eval.weights.i3d={i3d}"],
         "add inception to eval.extractors"),
        (["eval.reference_per_class=0"], "eval.reference_per_class must be an integer >= 1"),
        (["eval.trivial_fit_items=-5"], "eval.trivial_fit_items must be an integer >= 1"),
    ]:
        with pytest.raises(SystemExit) as exc:
            run_cli(evaluate, eval_cfg(tiny_ckpt, tmp_path / "eval", tmp_path / "cache", *overrides))
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and culprit in err and len(err.splitlines()) == 1, err


@pytest.fixture
def vq_ckpt(train_cfg, tmp_path):
    """MaskGIT-ELT on the digits through the real train(), its tokenizer a diffusers VQModel
    directory (1 channel, stride 2: a 4x4 grid of 16 codes)."""
    vq = save_tiny_vq(tmp_path / "weights" / "vq", in_channels=1, codes=16)
    overrides = ["data.tokenizer._target_=elt.encoders.pretrained.DiffusersVQTokenizer", "~data.tokenizer.levels",
                 f"+data.tokenizer.path={vq}", "+data.tokenizer.vocab_size=16", "N=1", "Lmax=2", "trainer.max_steps=1"]
    return train(train_cfg(*overrides))["ckpt_path"]


def test_vq_checkpoint_scored_against_an_adm_reference_and_a_bounded_trivial_fit(vq_ckpt, tmp_path, monkeypatch):
    model, train_cfg = load_run(vq_ckpt)
    assert isinstance(model.tokenizer, DiffusersVQTokenizer) and model.tokenizer.num_tokens == 16
    monkeypatch.setitem(STANDARD_EXTRACTORS, "inception", StandInInception)
    datamodule = instantiate(train_cfg.data.module)
    datamodule.setup()
    val = datamodule.val_dataset
    npz = write_npz(tmp_path / "VIRTUAL_toy.npz", *FeatureStats().add(features_of(val.images)).mean_cov(),
                    arr_0=np.zeros((len(val), 8, 8, 1), np.uint8))

    fitted, decoded = [], []
    original_fit, original_decode = IndependentTokens.fit, DiffusersVQTokenizer.decode

    def fit(self, dataset, *a, **k):
        fitted.append([int(dataset[i]["label"]) for i in range(len(dataset))])
        return original_fit(self, dataset, *a, **k)

    def decode(self, tokens):
        decoded.append(len(tokens))
        return original_decode(self, tokens)

    monkeypatch.setattr(IndependentTokens, "fit", fit)
    monkeypatch.setattr(DiffusersVQTokenizer, "decode", decode)
    cache, out = tmp_path / "cache", tmp_path / "eval"
    result = evaluate(eval_cfg(vq_ckpt, out, cache, "eval.extractors=[inception]", f"eval.reference_stats={npz}",
                                  "eval.loops=[1]", "eval.trivial_fit_items=20"))
    rows = result["rows"]
    assert [r["row"] for r in rows] == ["real", "trivial", "model"] and all(r["fid"] > 0 for r in rows)
    assert f"Reference statistics: ADM reference batch {npz} ({len(val)} images)." in result["table"]
    assert not (cache / "reference").exists()  # the npz replaced the train split's statistics
    assert len(fitted) == 1 and np.bincount(fitted[0]).tolist() == [2] * 10  # 20 items, class-balanced
    assert sum(decoded) == 2 * 30  # trivial and model rows' samples both decoded by the VQ decoder
    # the real row against the npz: its own 3 per class from the val split vs the npz moments
    floor = balanced_subset(val, 3, 10)
    mu, sigma = FeatureStats().add(features_of(torch.stack([floor[i]["image"] for i in range(30)]))).mean_cov()
    with np.load(npz) as z:
        assert rows[0]["fid"] == pytest.approx(frechet_distance(mu, sigma, z["mu"], z["sigma"]), rel=1e-4)

    # the same checkpoint against a bounded real split instead: the header says which
    result = evaluate(eval_cfg(vq_ckpt, tmp_path / "eval2", cache, "eval.extractors=[inception]", "eval.loops=[1]",
                                  "eval.reference_rows=false", "eval.reference_per_class=5"))
    assert "Reference statistics: real train split, 50 images (at most 5 per class), cached." in result["table"]
    assert [p.name.split("_inception_")[0] for p in (cache / "reference").iterdir()] == ["digits_train_5pc"]
