"""Every config group option composes; bad values fail early with the key in the message."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from elt.jobs.train import validate_train
from elt.runtime.config import ConfigError
from support.config import CONFIGS, ROOT, compose_cfg
from support.miniature import save_fashion_stand_ins
from support.stand_ins import (save_imagenet_stand_ins, save_magvit_stand_in, save_tiny_kl, save_tiny_vq,
                              save_video_vae_stand_in)

GROUPS = ["data", "model", "scale", "ilsd", "trainer", "logger", "callbacks", "paths", "debug", "experiment", "depth"]


def options(group):
    return sorted(p.stem for p in (Path(CONFIGS) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option, tmp_path):
    extra = ["data.num_classes=3"] if (group, option) == ("data", "image_folder") else []  # counted from the folder
    cfg = compose_cfg("train", [f"{group}={option}", *extra], tmp_path)
    if cfg.data.name == "ucf101":  # its MAGVIT export is a local file; a stand-in of the same shapes
        cfg.data.tokenizer.path = str(save_magvit_stand_in(tmp_path / "magvit.pt"))
    if cfg.data.name in ("imagenet", "image_folder"):  # diffusers directories: tiny random models, same shapes
        vq, vae = save_imagenet_stand_ins(tmp_path)
        cfg.data.tokenizer.path, cfg.data.autoencoder.path = str(vq), str(vae)
    if cfg.data.name == "fashion_mnist":  # stage-one models (python -m elt.experiments.stage_one): untrained, same shapes
        vq, vae = save_fashion_stand_ins(tmp_path)
        cfg.data.tokenizer.path, cfg.data.autoencoder.path = str(vq), str(vae)
    validate_train(cfg)
    assert cfg.run_name  # every interpolation the run name needs resolves
    if group in ("data", "model", "scale", "ilsd", "experiment"):
        model = instantiate(cfg.model)  # the model really builds from this config
        assert model.N == cfg.N and model.Lmax == cfg.Lmax
    if group == "trainer" and option in ("default", "cpu"):
        assert instantiate(cfg.trainer, logger=False).max_steps == cfg.trainer.max_steps


def test_eval_config_composes(tmp_path):
    cfg = compose_cfg("eval", ["ckpt_path=some.ckpt"], tmp_path)
    assert cfg.ckpt_path == "some.ckpt"


def test_ablation_keys_reach_the_model(tmp_path):
    cfg = compose_cfg("train", ["N=8", "Lmax=1", "ilsd=off", "scale=tiny"], tmp_path)
    model = instantiate(cfg.model)
    assert (model.N, model.Lmax, model.ilsd_enabled, len(model.backbone.blocks)) == (8, 1, False, 8)
    cfg = compose_cfg("train", ["N=3", "Lmax=5", "ilsd.Lmin=2"], tmp_path)
    model = instantiate(cfg.model)
    assert (model.N, model.Lmax, model.Lmin, model.ilsd_enabled) == (3, 5, 2, True)


@pytest.mark.parametrize(
    "override,key",
    [
        ("N=0", "N"),
        ("N=1.5", "N"),
        ("Lmax=0", "Lmax"),
        ("ilsd.Lmin=4", "ilsd.Lmin"),
        ("ilsd.Lmin=0", "ilsd.Lmin"),
        ("scale.heads=3", "scale.width"),
        ("data.batch_size=0", "data.batch_size"),
        ("ilsd.schedule=exp", "ilsd.schedule"),
        ("ilsd.span=0", "ilsd.span"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("compile=yes", "compile"),
        ("model.pos_init=learned", "model.pos_init"),
        ("model=dit_elt +model.pos_init=sincos", "model.pos_init"),
    ],
)
def test_bad_values_name_the_key(override, key, tmp_path):
    cfg = compose_cfg("train", ["Lmax=4", *override.split()], tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_train(cfg)


def test_unknown_dataset_is_named(tmp_path):
    with pytest.raises((MissingConfigException, ConfigCompositionException), match="data"):
        compose_cfg("train", ["data=imagenet_typo"], tmp_path)


@pytest.mark.parametrize("data", ["fashion_mnist", "image_folder", "imagenet", "ucf101"])
def test_relocated_data_equal_data_configured_there(data, tmp_path):
    """eval.py's data.raw_root moves every reader of a stored (resolved) run config, so the judge and
    reference caches of a run evaluated elsewhere have the keys a run configured there would have."""
    from omegaconf import OmegaConf

    from elt.runtime.checkpoint import relocate_data
    from elt.evaluation.judges import data_key

    extra = ["data.num_classes=3"] if data == "image_folder" else []

    def resolved(raw_root):
        cfg = compose_cfg("train", [f"data={data}", f"data.raw_root={raw_root}", *extra], tmp_path)
        return OmegaConf.create({"data": OmegaConf.to_container(cfg.data, resolve=True)})

    moved = relocate_data(resolved("/trained/here"), raw_root="/evaluated/there")
    assert "/trained/here" not in OmegaConf.to_yaml(moved)
    assert data_key(moved.data.module) == data_key(resolved("/evaluated/there").data.module)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_help_lists_every_target_and_tool():
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z][a-z0-9-]*):(?!=)", makefile, flags=re.M)
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    listed = re.findall(r"^  make (\S+) +\S", out, flags=re.M)
    assert sorted(listed) == sorted(set(targets)) and len(listed) == len(set(listed))  # a "## " note on each
    entries = [p.name for p in ROOT.glob("*.py") if "@hydra.main" in p.read_text()]
    modules = [".".join(p.relative_to(ROOT / "src").with_suffix("").parts).removesuffix(".__main__")
               for p in (ROOT / "src").rglob("*.py") if 'if __name__ == "__main__"' in p.read_text()]
    assert len(entries) == 4 and modules
    for tool in [f"python {e}" for e in entries] + [f"python -m {m}" for m in modules]:
        assert re.search(rf"^  {re.escape(tool)}\b", out, flags=re.M), tool


def test_each_encoder_is_one_group_choice_with_its_own_shape_defaults(tmp_path):
    """data/tokenizer and data/autoencoder: a diffusers VQModel / AutoencoderKL, a TorchScript export or pixels,
    each selected alone; the diffusers choices take their shapes from the weights, TorchScript's must be given."""
    vq, kl = save_tiny_vq(tmp_path / "vq"), save_tiny_kl(tmp_path / "kl")  # downsampling 2: 128 -> 64
    ucf = ["data=ucf101"]

    def build(*overrides, node="tokenizer"):
        cfg = compose_cfg("train", [*ucf, *overrides], tmp_path / "run")
        return cfg, instantiate(cfg.data[node])

    cfg, tok = build("data/tokenizer=diffusers_vq", f"data.tokenizer.path={vq}")
    assert cfg.data.tokenizer.grid_shape is None and cfg.data.autoencoder.latent_shape == [4, 4, 16, 16]  # the rest stays
    assert (tok.vocab_size, tok.grid_shape) == (32, (16, 64, 64))  # from the weights, per frame of the 16
    _, ae = build("data/autoencoder=diffusers_kl", f"data.autoencoder.path={kl}", node="autoencoder")
    assert ae.latent_shape == (4, 16, 64, 64)
    magvit = save_magvit_stand_in(tmp_path / "magvit.pt")
    _, tok = build("data/tokenizer=torchscript", f"data.tokenizer.path={magvit}", "data.tokenizer.vocab_size=1024",
                   "data.tokenizer.grid_shape=[4,16,16]")
    assert (tok.vocab_size, tok.grid_shape) == (1024, (4, 16, 16))
    vae = save_video_vae_stand_in(tmp_path / "vae.pt")
    _, ae = build("data/autoencoder=torchscript", f"data.autoencoder.path={vae}", "data.autoencoder.latent_shape=[4,4,16,16]",
                  node="autoencoder")
    assert ae.latent_shape == (4, 4, 16, 16)
    _, tok = build("data/tokenizer=pixels", "data.tokenizer.levels=5")
    assert (tok.vocab_size, tok.grid_shape) == (5, (3, 16, 128, 128))  # one token per pixel and channel
    _, ae = build("data/autoencoder=pixels", node="autoencoder")
    assert ae.latent_shape == (3, 16, 128, 128)
    with pytest.raises(Exception, match="data.tokenizer.path"):  # a file-backed choice without its file
        instantiate(compose_cfg("train", [*ucf, "data/tokenizer=diffusers_vq"], tmp_path / "run").data.tokenizer)
    with pytest.raises(Exception, match="vocab_size"):  # TorchScript says nothing about its shapes
        build("data/tokenizer=torchscript", f"data.tokenizer.path={magvit}")
    # the datasets' own choices are presets of these: ImageNet's VQ and SD VAE, with the paper's shapes
    cfg = compose_cfg("train", ["data=imagenet"], tmp_path / "run")
    assert cfg.data.tokenizer._target_.endswith("DiffusersVQTokenizer") and cfg.data.tokenizer.grid_shape == [16, 16]
    assert cfg.data.autoencoder.latent_shape == [4, 32, 32]
    for group in ("tokenizer", "autoencoder"):
        assert {"pixels", "torchscript"} <= set(options(f"data/{group}"))
    assert {"diffusers_vq"} <= set(options("data/tokenizer")) and {"diffusers_kl"} <= set(options("data/autoencoder"))
