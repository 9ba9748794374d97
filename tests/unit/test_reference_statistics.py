"""Reference statistics at ImageNet scale, on stand-ins: ADM's precomputed reference batch
(eval.reference_stats), class-balanced reference subsets read from ``.labels`` alone
(eval.reference_per_class), and the trivial row fitted on shard tokens."""
import numpy as np
import pytest
import torch

from elt.encoders.tokenizers import PixelTokenizer
from elt.evaluation.baselines import IndependentTokens
from elt.evaluation.metrics import FeatureStats
from elt.evaluation.scoring import balanced_subset, load_reference_npz, reference_statistics
from elt.runtime.config import ConfigError
from support.stand_ins import StandInInception, features_of, write_npz

CPU = torch.device("cpu")


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
