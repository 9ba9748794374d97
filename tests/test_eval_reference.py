"""Evaluation against real data at ImageNet scale, on miniatures: ADM's precomputed reference batch
(eval.reference_stats), class-balanced reference subsets read from ``.labels`` alone
(eval.reference_per_class), the trivial row fitted on a bounded subset or on shard tokens, and a
checkpoint whose tokenizer is a diffusers VQModel evaluated end to end."""
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from elt.runtime.checkpoint import load_run
from elt.runtime.cli import run_cli
from elt.runtime.config import ConfigError
from elt.evaluation.extractors import STANDARD_EXTRACTORS
from elt.jobs.evaluate import evaluate
from elt.evaluation.baselines import IndependentTokens
from elt.evaluation.extractors import FeatureExtractor
from elt.evaluation.metrics import FeatureStats, frechet_distance
from elt.evaluation.scoring import balanced_subset, load_reference_npz, reference_statistics
from elt.encoders.pretrained import DiffusersVQTokenizer
from elt.encoders.tokenizers import PixelTokenizer
from elt.jobs.train import train
from helpers import TinyI3D
from test_eval_entry import eval_cfg, forbid_work, tiny_ckpt  # noqa: F401  (tiny_ckpt: a fixture)
from test_pretrained import save_tiny_vq

CPU = torch.device("cpu")


class StandInInception(FeatureExtractor):
    """InceptionV3's name, metric and 2048-d pool features, from a fixed random projection (no
    weights here): what ADM's statistics are compared with, at test speed."""

    name, modality, fd_metric = "inception", "image", "fid"

    def __init__(self, weights_path=None, pixels: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(pixels, 2048, generator=g) / 8)
        self.fingerprint = "stand-in-inception"

    def forward(self, x):
        self.check_input(x)
        return {"features": torch.tanh(x.flatten(1) @ self.proj)}


def features_of(images: torch.Tensor) -> np.ndarray:
    return StandInInception(pixels=images[0].numel())(images)["features"].double().numpy()


def write_npz(path, mu, sigma, **extra):
    np.savez(path, mu=mu, sigma=sigma, **extra)
    return path


class CountingDataset:
    """A split whose ``.labels`` are known up front; records every item actually read."""

    def __init__(self, labels, shape=(1, 8, 8)):
        self.labels, self.read = list(labels), []
        g = torch.Generator().manual_seed(1)
        self.images = torch.rand(len(self.labels), *shape, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        self.read.append(i)
        return {"image": self.images[i], "label": self.labels[i]}


def test_adm_npz_is_validated_and_refuses_precision_recall(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=2048), np.eye(2048, dtype=np.float32)
    good = write_npz(tmp_path / "VIRTUAL_imagenet256_labeled.npz", mu, sigma,
                     arr_0=np.zeros((7, 4, 4, 3), np.uint8), mu_s=np.zeros(3))
    ref = load_reference_npz(good)
    assert ref["n"] == 7 and ref["mu"].dtype == np.float64 and "features" not in ref  # n from arr_0's header
    np.testing.assert_array_equal(ref["sigma"], sigma)
    with pytest.raises(ConfigError, match=r"eval.precision_recall=3 needs .* holds only their moments \(arr_0, mu"):
        load_reference_npz(good, pr_k=3)
    feats = rng.normal(size=(5, 2048))
    with_features = load_reference_npz(write_npz(tmp_path / "own.npz", mu, sigma, features=feats), pr_k=3)
    assert with_features["features"].shape == (5, 2048) and with_features["fingerprint"] != ref["fingerprint"]
    for name, arrays, match in [
        ("small.npz", dict(mu=mu[:1000], sigma=sigma), r"small.npz must hold finite 2048-d .* got mu \[1000\]"),
        ("nosigma.npz", dict(mu=mu), r"nosigma.npz has no sigma"),
        ("nan.npz", dict(mu=mu * np.nan, sigma=sigma), r"nan.npz must hold finite"),
    ]:
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=match):
            load_reference_npz(tmp_path / name)
    with pytest.raises(FileNotFoundError, match=r"missing.npz.*VIRTUAL_imagenet256_labeled.npz"):
        load_reference_npz(tmp_path / "missing.npz")


def test_bad_reference_settings_stop_before_any_work(tiny_ckpt, tmp_path, capsys, monkeypatch):  # noqa: F811
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


def test_reference_per_class_reads_only_a_balanced_subset_and_is_cached(tmp_path):
    data = CountingDataset([0, 1, 2] * 10)
    subset = balanced_subset(data, 2, 3)
    assert data.read == [] and sorted(subset.indices) == [0, 1, 2, 3, 4, 5]  # labels only: no image decoded
    extractor = StandInInception()
    args = ("toy_train", {"toy": 1}, tmp_path / "cache", 4, CPU)
    ref = reference_statistics(extractor, data, *args, per_class=2, num_classes=3)
    assert sorted(data.read) == list(range(6)) and int(ref["n"]) == 6
    mu, sigma = FeatureStats().add(features_of(data.images[:6])).mean_cov()
    np.testing.assert_allclose(ref["mu"], mu, atol=1e-6)
    np.testing.assert_allclose(ref["sigma"], sigma, atol=1e-6)

    data.read.clear()
    again = reference_statistics(extractor, data, *args, per_class=2, num_classes=3)
    assert data.read == [] and np.array_equal(again["mu"], ref["mu"])  # cached: not even the labels' subset is read
    whole = reference_statistics(extractor, data, *args)
    assert len(data.read) == 30 and int(whole["n"]) == 30 and not np.allclose(whole["mu"], ref["mu"])
    names = sorted(p.name for p in (tmp_path / "cache" / "reference").iterdir())
    assert len(names) == 2 and any(n.startswith("toy_train_2pc_inception_") for n in names)


def test_trivial_model_fits_shard_tokens_without_the_tokenizer_encoder():
    class NoEncoder(PixelTokenizer):
        def encode(self, images):
            raise AssertionError("shard tokens are there: nothing needs encoding")

    tok = NoEncoder(4, (1, 1, 2))
    data = [{"tokens": torch.tensor([3, i % 2]), "label": 0} for i in range(40)]
    data += [{"tokens": torch.tensor([1, 2]), "label": 1} for _ in range(10)]
    model = IndependentTokens(tok, 2).fit(data, batch_size=16)
    assert torch.equal(model.probs[1], torch.eye(4)[[1, 2]])
    torch.testing.assert_close(model.probs[0], torch.tensor([[0, 0, 0, 1.0], [0.5, 0.5, 0, 0]]))
    out = model.sample(torch.tensor([1, 1]), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.tensor([1 / 3, 2 / 3]).expand(2, 1, 1, 2))
    with pytest.raises(ValueError, match="do not fit 2 tokens from a vocabulary of 4"):
        IndependentTokens(tok, 2).fit([{"tokens": torch.tensor([4, 0]), "label": 0}])


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
