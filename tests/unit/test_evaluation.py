"""Evaluation building blocks: metrics against closed forms, the extractors' loading paths on
random-weight files made here, the trivial model, grids, GFLOPs against the flop counter."""
import math
import time

import numpy as np
import pytest
import scipy.linalg
import torch
from omegaconf import OmegaConf

from elt.evaluation import extractors as ex
from elt.evaluation.baselines import IndependentTokens
from elt.core.flops import gflops_per_sample
from elt.evaluation.settings import parse_loops, read_settings
from elt.evaluation.sweep import balanced_labels
from elt.evaluation.metrics import FeatureStats, frechet_distance, inception_score, precision_recall
from elt.evaluation.plots import grid_array
from elt.evaluation.scoring import Scorer, reference_statistics
from elt.runtime.config import ConfigError
from elt.encoders.tokenizers import PixelTokenizer
from support.models import tiny_maskgit
from support.stand_ins import TinyI3D


def gaussian_stats(x):
    return FeatureStats().add(x).mean_cov()


# ---- Fréchet distance ---------------------------------------------------------------------------
def test_frechet_matches_the_closed_form_for_commuting_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-10)
    # rotating both covariances by the same orthogonal matrix changes nothing
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T) == pytest.approx(closed, rel=1e-8)


def test_frechet_matches_scipy_sqrtm_on_random_features():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16))
    y = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    (m1, s1), (m2, s2) = gaussian_stats(x), gaussian_stats(y)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-7)


def test_fid_of_a_set_against_itself_is_zero_even_with_singular_covariance():
    x = np.random.default_rng(2).normal(size=(40, 64)) * 3 + 7  # fewer samples than dimensions
    m, s = gaussian_stats(x)
    assert abs(frechet_distance(m, s, m, s)) < 1e-8
    far = frechet_distance(m, s, m + 1.0, s)
    assert far == pytest.approx(64.0, rel=1e-6)  # a pure mean shift of 1 in 64 dimensions


def test_streaming_stats_match_numpy_despite_a_large_offset():
    x = np.random.default_rng(3).normal(size=(1000, 8)) + 1e6  # naive sum-of-squares cancels here
    stats = FeatureStats()
    for chunk in np.array_split(x, [1, 10, 333, 700]):
        stats.add(torch.from_numpy(chunk))
    mu, sigma = stats.mean_cov()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-8, atol=1e-10)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---- Inception Score, precision/recall -------------------------------------------------------------
def test_inception_score_bounds():
    k, n = 10, 500
    uniform = np.full((n, k), 1 / k)
    assert inception_score(uniform, splits=10) == pytest.approx((1.0, 0.0))
    confident = np.eye(k)[np.arange(n) % k]  # one-hot, balanced in every split
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(k) and std == pytest.approx(0.0, abs=1e-12)
    one_class = np.eye(k)[np.zeros(n, dtype=int)]  # confident but no diversity
    assert inception_score(one_class, splits=5)[0] == pytest.approx(1.0)


def test_precision_recall_of_a_set_against_itself_and_a_distant_set():
    x = np.random.default_rng(4).normal(size=(200, 4))
    assert precision_recall(x, x, k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)


# ---- extractors: InceptionV3 ------------------------------------------------------------------------
@pytest.fixture
def no_downloads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a download was attempted")

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    monkeypatch.setattr(tfi, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_missing_inception_weights_fail_at_once_naming_the_file(tmp_path, monkeypatch, no_downloads):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # default: the torch hub cache, here empty
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=ex.INCEPTION_FILE):
        ex.InceptionV3(None)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        ex.InceptionV3(str(tmp_path / "nowhere.pth"))
    assert time.perf_counter() - t0 < 5
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt.pth"):
        ex.InceptionV3(str(corrupt))


def random_inception_weights(path, monkeypatch):
    """A state dict of torch-fidelity's exact architecture with random weights (init, no file)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = path.with_name("empty.pth")
    torch.save({}, empty)
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    torch.save(net.state_dict(), path)
    return path


def test_inception_loads_a_local_file_and_scores_images_end_to_end(tmp_path, monkeypatch, no_downloads):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    weights = random_inception_weights(tmp_path / "inception.pth", monkeypatch)
    inception = ex.InceptionV3(str(weights))
    assert (inception.fd_metric, inception.is_metric, inception.acc_metric) == ("fid", "is", None)
    # the real network at its smallest valid input (75 px, not 299): same layers, 16x fewer FLOPs
    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)
    real = [{"image": torch.rand(1, 8, 8), "label": i % 2} for i in range(4)]
    ref = reference_statistics(inception, real, "toy_train", {"toy": 1}, tmp_path / "cache", 2, torch.device("cpu"))
    assert ref["mu"].shape == (2048,) and ref["sigma"].shape == (2048, 2048) and int(ref["n"]) == 4
    scorer = Scorer([inception], torch.device("cpu"))
    scorer.add(torch.stack([r["image"] for r in real]), torch.tensor([r["label"] for r in real]))
    metrics = scorer.metrics({"inception": ref}, is_splits=2, pr_k=None)
    assert set(metrics) == {"fid", "is", "is_std"}
    assert abs(metrics["fid"]) < 1e-3  # the same images as the reference set
    assert metrics["is"] >= 1.0
    with pytest.raises(ValueError, match="image"):
        inception(torch.rand(2, 1, 3, 8, 8))  # a video


# ---- extractors: I3D --------------------------------------------------------------------------------
def test_i3d_loads_torchscript_and_gives_fvd(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    i3d = ex.I3D(str(path))
    videos = torch.rand(6, 1, 4, 8, 8)  # [B, C, T, H, W], gray
    ref = reference_statistics(i3d, [{"image": v, "label": 0} for v in videos], "toyvid_train", {}, tmp_path, 4,
                               torch.device("cpu"))
    scorer = Scorer([i3d], torch.device("cpu"))
    scorer.add(videos)
    assert abs(scorer.metrics({"i3d": ref}, 1, None)["fvd"]) < 1e-6
    other = Scorer([i3d], torch.device("cpu"))
    other.add(videos.flip(2) * 0.5)  # time reversed and darker
    assert set(other.metrics({"i3d": ref}, 1, None)) == {"fvd"} and other.metrics({"i3d": ref}, 1, None)["fvd"] > 0.1
    with pytest.raises(ValueError, match="video"):
        i3d(torch.rand(2, 1, 8, 8))


def test_i3d_bad_files_name_the_culprit(tmp_path):
    with pytest.raises(FileNotFoundError, match="i3d_torchscript.pt"):
        ex.I3D(str(tmp_path / "i3d_torchscript.pt"))
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="broken.pt"):
        ex.I3D(str(bad))


def test_reference_statistics_are_cached_per_extractor_weights(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    data = [{"image": v, "label": 0} for v in torch.rand(5, 1, 2, 4, 4)]
    a = reference_statistics(ex.I3D(str(path)), data, "v_train", {}, tmp_path / "c", 5, torch.device("cpu"))
    (cached,) = (tmp_path / "c" / "reference").glob("v_train_i3d_*.npz")
    b = reference_statistics(ex.I3D(str(path)), [], "v_train", {}, tmp_path / "c", 5, torch.device("cpu"))  # no data needed
    np.testing.assert_array_equal(a["sigma"], b["sigma"])
    torch.manual_seed(1)
    torch.jit.script(TinyI3D()).save(str(path))  # new weights: a new cache entry, not the stale one
    reference_statistics(ex.I3D(str(path)), data, "v_train", {}, tmp_path / "c", 5, torch.device("cpu"))
    assert len(list((tmp_path / "c" / "reference").glob("v_train_i3d_*.npz"))) == 2 and cached.exists()


# ---- trivial model, labels, grids, settings ---------------------------------------------------------
def test_independent_tokens_follow_the_per_class_marginals():
    tok = PixelTokenizer(17, (1, 2, 2))
    g = torch.Generator().manual_seed(0)
    ones = torch.bernoulli(torch.full((400, 1, 2, 2), 0.25), generator=g)  # class 1: pixels on w.p. 1/4
    data = [{"image": torch.zeros(1, 2, 2), "label": 0} for _ in range(50)] + [{"image": x, "label": 1} for x in ones]
    model = IndependentTokens(tok, 2).fit(data)
    out = model.sample(torch.tensor([0] * 1000 + [1] * 4000), generator=g)
    assert out.shape == (5000, 1, 2, 2)
    assert out[:1000].max() == 0  # class 0 never had ink
    assert set(out[1000:].unique().tolist()) == {0.0, 1.0}
    assert out[1000:].mean().item() == pytest.approx(ones.mean().item(), abs=0.02)
    with pytest.raises(ValueError, match="no training images"):
        IndependentTokens(tok, 3).fit(data)


def test_balanced_labels_are_interleaved():
    y = balanced_labels(3, 4)
    assert y.tolist() == [0, 1, 2] * 4 and torch.bincount(y).tolist() == [4, 4, 4]


def test_grids_have_one_row_per_class_and_accept_videos():
    labels = balanced_labels(3, 2)
    img = grid_array(torch.rand(6, 1, 8, 8), labels, per_class=2, classes=[0, 2])
    scale = math.ceil(64 / 8)
    assert img.shape == (2 * (8 * scale + 2) + 2, 2 * (8 * scale + 2) + 2, 3) and img.dtype == np.uint8
    vid = grid_array(torch.rand(6, 3, 4, 8, 8), labels, per_class=5, classes=[0, 1, 2])  # only 2 per class exist
    assert vid.shape == (3 * (8 * scale + 2) + 2, 2 * (4 * 8 * scale + 2) + 2, 3)


def eval_settings(**eval_overrides):
    base = {"loops": "all", "extra_loops": 0, "samples_per_class": 30, "num_samples": None, "batch_size": 300,
            "extractors": "auto", "is_splits": 10, "precision_recall": False, "reference_split": "train",
            "reference_rows": True, "floor_split": "val", "grid_per_class": 8, "grid_max_classes": 10,
            "gif_fps": 4}
    return OmegaConf.create({"seed": 0, "eval": {**base, **eval_overrides}})


def test_settings_parse_loops_and_round_num_samples():
    assert parse_loops("all", 2, 4) == [1, 2, 3, 4, 5, 6]
    assert parse_loops([4, 1, 4], 0, 4) == [1, 4]
    assert read_settings(eval_settings(num_samples=95), 4, 10).samples_per_class == 10
    assert read_settings(eval_settings(loops=3, extra_loops=1), 4, 10).loops == [3, 5]
    assert read_settings(eval_settings(gif_fps=2.5), 4, 10).gif_fps == 2.5


@pytest.mark.parametrize("key,value,match", [
    ("loops", [0, 2], "eval.loops"), ("loops", "most", "eval.loops"), ("extra_loops", -1, "eval.extra_loops"),
    ("samples_per_class", 0, "eval.samples_per_class"), ("extractors", ["clip"], "eval.extractors"),
    ("reference_split", "test", "eval.reference_split"), ("precision_recall", 0, "eval.precision_recall"),
    ("gif_fps", 0, "eval.gif_fps"), ("gif_fps", 60, "eval.gif_fps"), ("gif_fps", "fast", "eval.gif_fps"),
    ("gif_fps", True, "eval.gif_fps"), ("save_samples", "yes", "eval.save_samples must be true or false"),
])
def test_bad_settings_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        read_settings(eval_settings(**{key: value}), 4, 10)


# ---- GFLOPs: the table's count against the flop counter over a whole sample() -----------------------
def counted_flops(model, **sample_kw) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # the math attention backend: the counter does not see inside the fused CPU kernel
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.sample(torch.tensor([3]), generator=torch.Generator().manual_seed(0), **sample_kw)
    return counter.get_total_flops()


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_gflops_per_sample_counts_every_step_loop_and_guidance_maskgit(cfg_scale):
    model = tiny_maskgit(N=2, Lmax=3).eval()
    sampler = model.sampler_config(steps=3, cfg_scale=cfg_scale)
    counted = counted_flops(model, loops=2, **sampler)
    assert gflops_per_sample(model, 2, sampler) * 1e9 == pytest.approx(counted, rel=0.03)


@pytest.mark.parametrize("kind,interval", [("heun", None), ("heun", [-3.0, 3.0]), ("dpmpp_2m", [-3.0, 3.0]),
                                           ("euler_sde", [20.0, 30.0]), ("ddpm", [-20.0, 20.0])])
def test_gflops_per_sample_counts_every_solver_evaluation_and_the_guidance_interval(kind, interval):
    """Heun's 2 evaluations a step (the last step 1), guidance doubled only inside the interval, a
    loop plan per step: the analytic count against the flop counter over a whole sample()."""
    from elt.models.dit import DiTELT
    from elt.encoders.tokenizers import PixelAutoencoder

    torch.manual_seed(0)
    model = DiTELT(PixelAutoencoder((1, 8, 8)), num_classes=10, N=2, Lmax=3, width=32, heads=2, mlp_dim=64).eval()
    sampler = model.sampler_config(kind=kind, steps=4, spacing="logsnr", cfg_scale=3.0, cfg_interval=interval)
    for loops in (3, [1, 3, 2, 2]):
        counted = counted_flops(model, loops=loops, **sampler)
        assert gflops_per_sample(model, loops, sampler) * 1e9 == pytest.approx(counted, rel=0.03)
    passes = {None: 14, (-3.0, 3.0): 9, (20.0, 30.0): 4, (-20.0, 20.0): 8}[None if interval is None else tuple(interval)]
    if kind != "heun":
        passes = {(-3.0, 3.0): 5, (20.0, 30.0): 4, (-20.0, 20.0): 8}[tuple(interval)]
    assert model.network_evals_per_sample(**sampler) == passes


def test_gflops_per_sample_counts_every_step_loop_and_guidance_dit():
    from elt.models.dit import DiTELT
    from elt.encoders.tokenizers import PixelAutoencoder

    torch.manual_seed(0)
    model = DiTELT(PixelAutoencoder((1, 8, 8)), num_classes=10, N=2, Lmax=3, width=32, heads=2, mlp_dim=64).eval()
    sampler = model.sampler_config(steps=2, cfg_scale=3.0)
    counted = counted_flops(model, loops=3, **sampler)
    assert gflops_per_sample(model, 3, sampler) * 1e9 == pytest.approx(counted, rel=0.03)
