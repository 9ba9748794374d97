"""Stage one on miniature Fashion-MNIST IDX files: the saved diffusers models load through
elt.encoders.pretrained with the data config's shapes, training is deterministic and cached, and prepare.py
encodes the raw reader with them into shards."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hydra.utils import instantiate

from elt.experiments import stage_one
from elt.data.fashion_mnist import FashionMNISTRaw
from elt.encoders.pretrained import DiffusersAutoencoderKL, DiffusersVQTokenizer
from elt.jobs.prepare import prepare
from support.config import compose_cfg
from support.miniature import make_fashion_mnist

TINY = dict(val_per_class=2, val_items=8, batch_size=8)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fm"), train_per_class=6, test_per_class=1)


@pytest.fixture(scope="module")
def vq(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("w") / "vq"
    return out, stage_one.fit("vq", raw, out, steps=3, codes=16, **TINY)


def test_vq_loads_as_the_tokenizer_and_training_is_deterministic_and_cached(vq, raw, tmp_path, capsys):
    out, info = vq
    tok = DiffusersVQTokenizer(out, image_shape=[1, 28, 28], vocab_size=16, grid_shape=[7, 7])
    x = FashionMNISTRaw(raw, "val", val_per_class=2).tensors()[0]
    ids = tok.encode(x)
    assert ids.shape == (20, 49) and 0 <= ids.min() and ids.max() < 16
    assert tok.decode(ids).shape == (20, 1, 28, 28)
    assert info["val_items"] == 8 and info["train_items"] == 40 and 1 <= info["codes_used"] <= 16
    assert info["val_psnr_db"] == pytest.approx(10 * np.log10(1 / info["val_mse"]))
    assert json.loads((out / "stage_one.json").read_text()) == info
    again = stage_one.fit("vq", raw, tmp_path / "vq2", steps=3, codes=16, **TINY)  # same settings elsewhere
    assert again["val_mse"] == info["val_mse"]
    weights = sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors")
    assert weights and all((out / w).read_bytes() == (tmp_path / "vq2" / w).read_bytes() for w in weights)
    stamp = (out / "config.json").stat().st_mtime_ns
    capsys.readouterr()
    stage_one.fit("vq", raw, out, steps=3, codes=16, **TINY)  # up to date: kept, not retrained
    assert "up to date" in capsys.readouterr().out and (out / "config.json").stat().st_mtime_ns == stamp


def test_kl_latents_have_the_configured_shape_and_unit_scale(raw, tmp_path):
    out = tmp_path / "kl"
    info = stage_one.fit("kl", raw, out, steps=2, **TINY)
    ae = DiffusersAutoencoderKL(out, image_shape=[1, 28, 28], latent_shape=[4, 7, 7], sample=False)
    assert ae.scale == pytest.approx(info["scaling_factor"]) and info["scaling_factor"] > 0
    x = FashionMNISTRaw(raw, "val", val_per_class=2).tensors()[0][:8]
    z = ae.encode(x)
    assert z.shape == (8, 4, 7, 7) and z.std().item() == pytest.approx(1.0, rel=0.5)


def test_bad_settings_are_refused_in_one_line(raw, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown setting"):
        stage_one.fit("vq", raw, tmp_path / "x", latent_channels=4, **TINY)
    assert stage_one.main(["vq", "--raw-root", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: FashionMNIST: data.raw_root not found") and err.count("\n") == 1


def test_prepare_encodes_the_raw_reader_with_the_stage_one_tokenizer(vq, raw, tmp_path):
    out, _ = vq
    data = ["experiment=mini/fashion_maskgit", f"data.raw_root={raw}", f"data.root={tmp_path / 'shards'}",
            "data.val_per_class=2", f"data.tokenizer.path={out}", "data.tokenizer.vocab_size=16"]
    cfg = compose_cfg("prepare", [*data, "prepare.shard_size=16", "prepare.num_workers=0",
                                  f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / "prepare")
    result = prepare(cfg)
    s = result["train"]["settings"]
    assert (s["kind"], s["shape"], s["encoder"]) == ("tokens", [49], "DiffusersVQTokenizer")
    assert s["preprocessing"]["reader"] == "FashionMNISTRaw"
    assert result["train"]["num_samples"] == 40 and result["val"]["num_samples"] == 20
    tok = instantiate(cfg.data.tokenizer)
    assert s["fingerprint"] == tok.fingerprint
