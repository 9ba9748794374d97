"""diffusers VQModel / AutoencoderKL wrappers on tiny random models of the real classes, saved with
save_pretrained (support.stand_ins): shapes, what the codes and latents are (checked against the
diffusers model called directly), the config checks, missing directories, and both model families
running on them."""
import json
import shutil
import time

import pytest
import torch
from diffusers import AutoencoderKL, VQModel

from elt.runtime.config import ConfigError
from elt.models.dit import DiTELT
from elt.models.maskgit import MaskGITELT
from elt.encoders.pretrained import DiffusersAutoencoderKL, DiffusersVQTokenizer
from support.config import compose_cfg
from support.models import CallCounter
from support.stand_ins import save_imagenet_stand_ins, save_tiny_kl, save_tiny_vq


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory):
    return save_tiny_vq(tmp_path_factory.mktemp("vq") / "vqvae")


@pytest.fixture(scope="module")
def kl_dir(tmp_path_factory):
    return save_tiny_kl(tmp_path_factory.mktemp("kl") / "vae", scaling_factor=0.5)


def images(n, *shape, seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_vq_tokens_are_the_nearest_codes_and_decode_is_the_models_own(vq_dir):
    tok = DiffusersVQTokenizer(vq_dir, (3, 16, 16))
    assert (tok.vocab_size, tok.grid_shape, tok.num_tokens) == (32, (8, 8), 64)  # read from config.json
    x = images(5, 3, 16, 16)
    tokens = tok.encode(x)
    assert tokens.shape == (5, 64) and tokens.dtype == torch.long
    assert 0 <= tokens.min() and tokens.max() < 32 and len(tokens.unique()) > 4
    assert torch.equal(tok.encode(x), tokens)  # deterministic

    vq = VQModel.from_pretrained(str(vq_dir))
    with torch.no_grad():
        h = vq.encode(x * 2 - 1).latents  # [5, 4, 8, 8], row-major positions
        dist = torch.cdist(h.permute(0, 2, 3, 1).reshape(5, 64, 4), vq.quantize.embedding.weight[None].expand(5, -1, -1))
        assert torch.equal(tokens, dist.argmin(-1))
        decoded = tok.decode(tokens)
        assert decoded.shape == x.shape and decoded.dtype == torch.float32 and 0 <= decoded.min() and decoded.max() <= 1
        expected = ((vq.decode(h).sample + 1) / 2).clamp(0, 1)  # diffusers quantises inside decode()
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match=r"outside \[0, 32\)"):
        tok.decode(torch.full((1, 64), 32))
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        tok.encode(images(1, 3, 8, 8))


def test_vq_videos_are_tokenised_frame_by_frame_in_chunks(vq_dir):
    image_tok = DiffusersVQTokenizer(vq_dir, (3, 16, 16))
    video_tok = DiffusersVQTokenizer(vq_dir, (3, 3, 16, 16), grid_shape=[3, 8, 8], max_batch=2)
    v = images(2, 3, 3, 16, 16)
    calls = CallCounter(video_tok.net.net.encoder)
    tokens = video_tok.encode(v)
    assert calls.calls == 3  # 6 frames, at most 2 per encoder call
    assert tokens.shape == (2, 3 * 64) and video_tok.num_tokens == 192
    for t in range(3):  # frame-major: frame t's 64 tokens are the image tokenizer's on that frame
        assert torch.equal(tokens[:, t * 64:(t + 1) * 64], image_tok.encode(v[:, :, t]))
    decoded = video_tok.decode(tokens)
    assert decoded.shape == v.shape
    torch.testing.assert_close(decoded[:, :, 1], image_tok.decode(tokens[:, 64:128]))


def test_vq_that_looks_codes_up_itself_decodes_alike(vq_dir, tmp_path):
    """aMUSEd's VQModel has lookup_from_codebook=true (decode() takes ids) and takes [0, 1] images."""
    amused = tmp_path / "amused_vqvae"
    shutil.copytree(vq_dir, amused)
    cfg = json.loads((amused / "config.json").read_text())
    (amused / "config.json").write_text(json.dumps({**cfg, "lookup_from_codebook": True}))
    plain, lookup = DiffusersVQTokenizer(vq_dir, (3, 16, 16)), DiffusersVQTokenizer(amused, (3, 16, 16), normalize=False)
    x = images(3, 3, 16, 16)
    tokens = plain.encode(x)
    # plain maps the decoder's output y to clamp((y + 1) / 2); lookup (normalize=false) to clamp(y)
    torch.testing.assert_close(lookup.decode(tokens), (plain.decode(tokens) * 2 - 1).clamp(0, 1), atol=1e-5, rtol=0)
    assert torch.equal(lookup.encode(x * 2 - 1), tokens)  # normalize=false: the images go in unchanged
    assert lookup.fingerprint != plain.fingerprint


def test_kl_latents_are_the_scaled_posterior_and_decode_divides_back(kl_dir):
    vae = AutoencoderKL.from_pretrained(str(kl_dir))
    assert vae.config.scaling_factor == 0.5  # not the SD VAE's 0.18215: read from config.json
    x = images(3, 3, 16, 16)
    mean = DiffusersAutoencoderKL(kl_dir, (3, 16, 16), latent_shape=[4, 8, 8], sample=False)
    z = mean.encode(x)
    with torch.no_grad():
        posterior = vae.encode(x * 2 - 1).latent_dist
        torch.testing.assert_close(z, posterior.mode() * 0.5)
        torch.testing.assert_close(mean.decode(z), ((vae.decode(posterior.mode()).sample + 1) / 2).clamp(0, 1))
        sampled = DiffusersAutoencoderKL(kl_dir, (3, 16, 16))
        torch.manual_seed(1)
        a = sampled.encode(x)
        torch.manual_seed(1)
        torch.testing.assert_close(a, posterior.sample() * 0.5)
    assert not torch.allclose(a, z) and not torch.allclose(a, sampled.encode(x))  # a draw, not the mean

    video = DiffusersAutoencoderKL(kl_dir, (3, 2, 16, 16), sample=False, max_batch=3)
    v = images(2, 3, 2, 16, 16)
    zv = video.encode(v)
    assert video.latent_shape == (4, 2, 8, 8) and zv.shape == (2, 4, 2, 8, 8)
    torch.testing.assert_close(zv[:, :, 1], mean.encode(v[:, :, 1]))
    out = video.decode(zv)
    assert out.shape == v.shape and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(out[:, :, 0], mean.decode(zv[:, :, 0]))


@pytest.mark.parametrize("make, kwargs, match", [
    ("vq", {"vocab_size": 1024}, r"data.tokenizer.vocab_size=1024 but the VQModel at .*vqvae \(num_vq_embeddings\) gives 32"),
    ("vq", {"grid_shape": [16, 16]}, r"data.tokenizer.grid_shape=\[16, 16\] but .* gives \[8, 8\]"),
    ("vq", {"image_shape": [1, 16, 16]}, r"1 channels .* in_channels=3"),
    ("vq", {"image_shape": [3, 15, 15]}, r"15x15 is not divisible by the encoder's stride 2"),
    ("kl", {"latent_shape": [4, 32, 32]}, r"data.autoencoder.latent_shape=\[4, 32, 32\] but the AutoencoderKL .* "
                                          r"gives \[4, 8, 8\]"),
    ("kl", {"image_shape": [3, 8]}, r"\(C, H, W\) for images or \(C, T, H, W\)"),
])
def test_config_that_disagrees_with_the_weights_is_refused(vq_dir, kl_dir, make, kwargs, match):
    cls, path = (DiffusersVQTokenizer, vq_dir) if make == "vq" else (DiffusersAutoencoderKL, kl_dir)
    kwargs = {"image_shape": (3, 16, 16), **kwargs}
    with pytest.raises(ConfigError, match=match):
        cls(path, **kwargs)


def test_missing_or_wrong_directories_stop_at_once_naming_them(vq_dir, tmp_path, monkeypatch):
    import huggingface_hub

    def refuse(*a, **k):
        raise AssertionError("a download was attempted")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, refuse)
    t0 = time.perf_counter()
    cases = [
        (DiffusersAutoencoderKL, tmp_path / "sd-vae-ft-ema", FileNotFoundError,
         ["sd-vae-ft-ema", "hf download stabilityai/sd-vae-ft-ema --local-dir"]),
        (DiffusersVQTokenizer, tmp_path / "vq", FileNotFoundError,
         [str(tmp_path / "vq"), 'hf download amused/amused-256 --include "vqvae/*"']),
        (DiffusersVQTokenizer, None, FileNotFoundError, ["no path configured"]),
        (DiffusersVQTokenizer, vq_dir.parent, FileNotFoundError, ["no config.json in", "vqvae/: point path there"]),
        (DiffusersAutoencoderKL, vq_dir, ValueError, ["holds a diffusers VQModel, expected a AutoencoderKL"]),
    ]
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(vq_dir / "config.json", no_weights / "config.json")
    cases.append((DiffusersVQTokenizer, no_weights, ValueError, [f"{no_weights} could not be loaded as a VQModel"]))
    for cls, path, error, parts in cases:
        with pytest.raises(error) as e:
            cls(path, (3, 16, 16))
        assert all(p in str(e.value) for p in parts) and "\n" not in str(e.value), str(e.value)
    assert time.perf_counter() - t0 < 10  # nothing waited on a network


def test_fingerprint_follows_the_weights_not_the_path(vq_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(vq_dir, copy)
    a, b = DiffusersVQTokenizer(vq_dir, (3, 16, 16)), DiffusersVQTokenizer(copy, (3, 16, 16))
    assert a.fingerprint == b.fingerprint
    torch.manual_seed(5)
    vq = VQModel.from_pretrained(str(copy))
    vq.decoder.conv_out.weight.data.add_(0.01)  # a fine-tune: same config, same file size
    vq.save_pretrained(str(copy))
    assert DiffusersVQTokenizer(copy, (3, 16, 16)).fingerprint != a.fingerprint
    assert DiffusersVQTokenizer(vq_dir, (3, 16, 16), normalize=False).fingerprint != a.fingerprint


def test_both_families_train_and_sample_on_the_wrappers(vq_dir, kl_dir):
    """The frozen networks stay out of the models' parameters and checkpoints, get no gradient,
    and decode the samples."""
    tok = DiffusersVQTokenizer(vq_dir, (3, 16, 16))
    ae = DiffusersAutoencoderKL(kl_dir, (3, 16, 16))
    small = dict(num_classes=3, N=1, Lmax=2, width=32, heads=2, mlp_dim=64)
    torch.manual_seed(0)
    models = [MaskGITELT(tok, **small), DiTELT(ae, patch_size=2, **small)]
    batch = {"image": images(4, 3, 16, 16), "label": torch.tensor([0, 1, 2, 0])}
    for model, net in zip(models, (tok.net.net, ae.net.net)):
        own = {id(p) for p in model.parameters()}
        assert not own & {id(p) for p in net.parameters()}
        assert not any(k.startswith(("tokenizer", "autoencoder")) for k in model.state_dict())
        loss, _ = model.loss(batch)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is None for p in net.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        out = model.sample(torch.tensor([0, 2]), loops=2, generator=torch.Generator().manual_seed(0), steps=2)
        assert out.shape == (2, 3, 16, 16) and 0 <= out.min() and out.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_wrappers_follow_their_input_to_the_gpu(vq_dir, kl_dir):
    tok, ae = DiffusersVQTokenizer(vq_dir, (3, 16, 16)), DiffusersAutoencoderKL(kl_dir, (3, 16, 16), sample=False)
    x = images(2, 3, 16, 16)
    cpu_tokens, cpu_latents = tok.encode(x), ae.encode(x)
    model = MaskGITELT(tok, num_classes=3, N=1, Lmax=2, width=32, heads=2, mlp_dim=64).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):  # the wrappers run in fp32 regardless
        gpu_tokens = tok.encode(x.cuda())
        out = model.sample(torch.tensor([0, 1]), loops=1, generator=torch.Generator("cuda").manual_seed(0), steps=2)
    assert gpu_tokens.device.type == "cuda" and out.device.type == "cuda" and out.dtype == torch.float32
    assert (gpu_tokens.cpu() == cpu_tokens).float().mean() > 0.95
    torch.testing.assert_close(ae.encode(x.cuda()).cpu(), cpu_latents, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model", ["maskgit_elt", "dit_elt"])
def test_imagenet_config_builds_its_model_on_stand_ins(model, tmp_path):
    """configs/data/imagenet.yaml's tokenizer/autoencoder nodes fit these classes and their checks."""
    from hydra.utils import instantiate

    vq, vae = save_imagenet_stand_ins(tmp_path)
    cfg = compose_cfg("train", ["data=imagenet", f"model={model}", "scale=tiny", f"data.tokenizer.path={vq}",
                                f"data.autoencoder.path={vae}"], tmp_path)
    net = instantiate(cfg.model)
    if model == "maskgit_elt":
        assert (net.tokenizer.grid_shape, net.tokenizer.vocab_size) == ((16, 16), 1024)
    else:
        assert net.autoencoder.latent_shape == (4, 32, 32) and net.autoencoder.scale == 0.18215
