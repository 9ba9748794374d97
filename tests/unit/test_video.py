"""Videos: the moving_digits generator, (T, H, W) token grids, the UCF-101 shapes, and the
TorchScript seam that pretrained tokenizers come through."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from elt.runtime.cli import run_cli
from elt.data.moving_digits import DIRECTIONS, MovingDigitsDataModule, moving_digits_split, trajectory
from elt.models.maskgit import MaskGITELT
from elt.encoders.tokenizers import PixelTokenizer, ScriptedTokenizer
from elt.jobs.train import train
from support.config import compose_cfg
from support.stand_ins import save_magvit_stand_in, save_video_vae_stand_in

SMALL = dict(frames=3, canvas=10, videos_per_image=1)


# ---- moving_digits -------------------------------------------------------------------------------
def test_generator_is_deterministic_and_seeded(tmp_path):
    a_train, a_val = moving_digits_split(**SMALL, seed=0)
    b_train, b_val = moving_digits_split(**SMALL, seed=0)
    c_train, _ = moving_digits_split(**SMALL, seed=1)
    assert torch.equal(a_train.videos, b_train.videos) and torch.equal(a_val.videos, b_val.videos)
    assert torch.equal(a_train.labels, b_train.labels) and torch.equal(a_train.motions, b_train.motions)
    assert not torch.equal(a_train.videos, c_train.videos)  # the seed moves the digits
    assert torch.equal(a_train.labels, c_train.labels)  # ... over the same fixed split
    assert a_train.videos.shape[1:] == (1, 3, 10, 10) and len(a_val) == 300
    assert torch.bincount(a_val.labels).tolist() == [30] * 10


def test_cache_is_written_reused_and_rebuilt_when_corrupt(tmp_path, caplog):
    fresh, _ = moving_digits_split(**SMALL, cache_dir=tmp_path)
    (path,) = (tmp_path / "data").glob("moving_digits_*.npz")
    cached, _ = moving_digits_split(**SMALL, cache_dir=tmp_path)
    assert torch.equal(fresh.videos, cached.videos)
    path.write_bytes(b"truncated")
    rebuilt, _ = moving_digits_split(**SMALL, cache_dir=tmp_path)
    assert torch.equal(fresh.videos, rebuilt.videos) and "unreadable" in caplog.text
    assert np.load(path)["train_videos"].shape == tuple(fresh.videos.shape)  # and rewritten whole


def test_digits_move_one_pixel_per_frame_and_stay_whole():
    train_ds, _ = moving_digits_split(frames=6, canvas=12, videos_per_image=1)
    v = train_ds.videos[:200, 0]  # [n, T, H, W]
    ink = v.sum((2, 3))
    torch.testing.assert_close(ink, ink[:, :1].expand_as(ink))  # never clipped by the walls
    for i in range(200):  # each frame is the last one moved by one pixel; the label is the first move
        dy, dx = DIRECTIONS[int(train_ds.motions[i])]
        assert torch.equal(torch.roll(v[i, 0], (dy, dx), (0, 1)), v[i, 1])
        for t in range(1, v.shape[1]):
            assert any(torch.equal(torch.roll(v[i, t - 1], d, (0, 1)), v[i, t]) for d in DIRECTIONS)
    assert (v[:, 0] != v[:, -1]).any((1, 2)).all()  # every video moves


def test_trajectory_reflects_off_both_walls():
    assert trajectory(3, 1, 6, 4).tolist() == [3, 4, 3, 2, 1, 0]
    assert trajectory(0, -1, 3, 4).tolist() == [0, 1, 2]


def test_datamodule_checks_the_class_count():
    dm = MovingDigitsDataModule(digits=2, num_classes=100, **SMALL)
    assert dm.num_classes == 100 and dm.image_shape == (1, 3, 10, 10)
    dm.setup()
    assert int(dm.train_dataset.labels.max()) >= 90  # ordered pairs 10·a + b
    with pytest.raises(ValueError, match="data.num_classes"):
        MovingDigitsDataModule(digits=2, num_classes=10)


# ---- (T, H, W) token grids in MaskGIT-ELT -------------------------------------------------------------
@pytest.mark.parametrize("image_shape,frames", [((1, 8, 8), 1), ((1, 4, 12, 12), 4)])
def test_maskgit_token_grid_and_factorised_positions(image_shape, frames):
    torch.manual_seed(0)
    tok = PixelTokenizer(17, image_shape)
    model = MaskGITELT(tok, 10, N=1, Lmax=2, width=32, heads=2, mlp_dim=64)
    hw = image_shape[-1] * image_shape[-2]
    pos = model.positions()
    assert pos.shape == (1, 1 + frames * hw, 32) and model.pos_embed.shape == (1, 1 + hw, 32)
    if frames == 1:
        assert model.frame_embed is None  # images keep their single learned table
    else:
        t, i = 2, 17  # token (h, w) = divmod(17, 12) of frame 2
        torch.testing.assert_close(pos[0, 1 + t * hw + i], model.pos_embed[0, 1 + i] + model.frame_embed[t])
    videos = torch.randint(0, 17, (3, *image_shape)).float() / 16
    inputs, targets = model.training_inputs({"image": videos, "label": torch.arange(3)})
    assert inputs["tokens"].shape == (3, frames * hw)
    (logits,) = model.predict(inputs, loops=2, exits=[2])
    assert logits.shape == (3, frames * hw, 17)
    out = model.eval().sample(torch.arange(2), loops=1, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, *image_shape) and 0 <= out.min() and out.max() <= 1


def test_maskgit_sincos_positions_start_smooth_at_the_normal_scale():
    torch.manual_seed(0)
    tok = PixelTokenizer(17, (1, 4, 10, 10))
    model = MaskGITELT(tok, 10, N=1, Lmax=2, width=32, heads=2, mlp_dim=64, pos_init="sincos")
    space = model.pos_embed[0, 1:].detach().view(10, 10, 32)
    for table in (model.pos_embed[0, 1:], model.frame_embed):
        assert abs(table.detach().pow(2).mean().sqrt().item() - 0.02) < 1e-4  # same RMS as std-0.02 init
    cos = torch.nn.functional.cosine_similarity
    along_row = [cos(space[4, 0], space[4, d], dim=0).item() for d in (1, 3, 9)]
    assert along_row[0] > 0.8 and along_row[0] > along_row[1] + 0.3 and along_row[1] > along_row[2] + 0.3
    for table in (space.view(100, 32), model.frame_embed.detach()):
        assert table.mean(0).abs().max() < 1e-6  # centred: no code shared by every position
    torch.manual_seed(0)
    normal = MaskGITELT(tok, 10, N=1, Lmax=2, width=32, heads=2, mlp_dim=64).pos_embed[0].detach()
    assert abs(cos(normal[1 + 40], normal[1 + 41], dim=0)) < 0.6  # the default: neighbours unrelated
    torch.testing.assert_close(model.pos_embed[0, 0].detach(), normal[0])  # the class token's row is untouched
    assert model.positions().shape == (1, 401, 32)
    with pytest.raises(ValueError, match="pos_init"):
        MaskGITELT(tok, 10, N=1, Lmax=2, width=32, heads=2, mlp_dim=64, pos_init="rope")


# ---- UCF-101 shapes through a TorchScript tokenizer the test makes --------------------------------------
@pytest.fixture
def magvit_file(tmp_path):
    return save_magvit_stand_in(tmp_path / "magvit.pt")


def ucf_cfg(tmp_path, *overrides):
    return compose_cfg("train", ["data=ucf101", *overrides], tmp_path / "run")


def test_ucf101_maskgit_runs_a_4x16x16_token_video(tmp_path, magvit_file):
    cfg = ucf_cfg(tmp_path, f"data.tokenizer.path={magvit_file}", "scale=tiny", "scale.width=32", "scale.heads=2",
                  "scale.mlp_dim=64", "N=1", "Lmax=2")
    assert cfg.data.image_shape == [3, 16, 128, 128] and cfg.data.num_classes == 101
    model = instantiate(cfg.model, _convert_="all")
    model.ilsd_lambda = 0.5
    batch = {"image": torch.rand(2, 3, 16, 128, 128), "label": torch.tensor([0, 100])}
    inputs, _ = model.training_inputs(batch)
    assert inputs["tokens"].shape == (2, 4 * 16 * 16)
    assert model.positions().shape == (1, 1 + 1024, 32) and model.frame_embed.shape == (4, 32)
    loss, _ = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.frame_embed.grad.abs().sum() > 0
    video = model.eval().sample(torch.tensor([5]), loops=2, steps=2, generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, 16, 128, 128)


@pytest.mark.parametrize("patch,tokens", [(1, 4 * 16 * 16), (2, 4 * 8 * 8)])
def test_ucf101_dit_runs_on_a_4x16x16_latent_video(tmp_path, patch, tokens):
    vae = save_video_vae_stand_in(tmp_path / "vae.pt")
    cfg = ucf_cfg(tmp_path, "model=dit_elt", f"data.autoencoder.path={vae}", f"model.patch_size={patch}", "scale=tiny",
                  "scale.width=32", "scale.heads=2", "scale.mlp_dim=64", "N=1", "Lmax=2")
    model = instantiate(cfg.model, _convert_="all")
    assert model.autoencoder.latent_shape == (4, 4, 16, 16) and model.pos_embed.shape == (1, tokens, 32)
    model.ilsd_lambda = 0.5
    batch = {"image": torch.rand(2, 3, 16, 128, 128), "label": torch.tensor([0, 100])}
    loss, _ = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    video = model.eval().sample(torch.tensor([3]), loops=2, kind="ddim", steps=2, generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, 16, 128, 128) and torch.isfinite(video).all()


def test_ucf101_experiment_is_the_spec_row(tmp_path, magvit_file):
    cfg = compose_cfg("train", ["experiment=ucf101_maskgit", f"data.tokenizer.path={magvit_file}"], tmp_path / "run")
    assert (cfg.N, cfg.Lmax, cfg.scale.name, cfg.model.sampler.steps, cfg.model.sampler.cfg_scale) == (6, 4, "L", 12, 1.0)
    with torch.device("meta"):  # shapes only: 76M parameters need no memory here
        model = instantiate(cfg.model, _convert_="all")
    n = sum(p.numel() for p in model.backbone.parameters())
    assert 75e6 < n < 77e6  # the spec's 76M for ELT 6N×4L: the transformer, without embeddings and head
    assert sum(p.numel() for p in model.parameters()) - n < 3e6


def test_ucf101_without_files_fails_naming_them(tmp_path, capsys):
    cfg = ucf_cfg(tmp_path, "scale=tiny", "trainer.max_steps=1")
    with pytest.raises(SystemExit) as exit_:
        run_cli(train, cfg)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "tokenizer: file not found:" in err and "magvit_ucf101.pt" in err and "export a MAGVIT" in err
    dm = instantiate(cfg.data.module)
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        dm.setup("fit")


def test_scripted_tokenizer_checks_its_file_and_outputs(tmp_path, magvit_file):
    with pytest.raises(FileNotFoundError, match="nothing.pt.*how"):
        ScriptedTokenizer(tmp_path / "nothing.pt", 1024, (4, 16, 16), (3, 16, 128, 128), how_to_get="how")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="junk.pt is not a loadable TorchScript"):
        ScriptedTokenizer(junk, 1024, (4, 16, 16), (3, 16, 128, 128))
    wrong_grid = ScriptedTokenizer(magvit_file, 1024, (4, 8, 8), (3, 16, 128, 128))
    with pytest.raises(ValueError, match=r"encode\(\) gave shape \(4, 16, 16\)"):
        wrong_grid.encode(torch.rand(1, 3, 16, 128, 128))
    small_vocab = ScriptedTokenizer(magvit_file, 16, (4, 16, 16), (3, 16, 128, 128))
    with pytest.raises(ValueError, match="vocab_size"):
        small_vocab.encode(torch.ones(1, 3, 16, 128, 128))
    tok = ScriptedTokenizer(magvit_file, 1024, (4, 16, 16), (3, 16, 128, 128))
    videos = torch.rand(2, 3, 16, 128, 128)
    assert tok.decode(tok.encode(videos)).shape == videos.shape
