"""The paper's tables: rows as configs, the plan's parameter check, a table without runs, wandb grouping."""
import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from elt.experiments.paper import plan, rows, run, shapes, tables
from elt.experiments.paper.__main__ import main as paper_main
from elt.runtime.config import ConfigError
from elt.jobs.train import resolved_config
from elt.runtime.batch import apply_global_batch
from elt.runtime.config import instantiate_group
from elt.runtime.loggers import eval_logger_config
from support.config import CONFIGS, compose_cfg

PAPER_DIR = Path(CONFIGS) / "experiment" / "paper"


def test_every_row_config_is_a_paper_row_and_says_what_the_paper_says():
    files = {p.stem for p in PAPER_DIR.glob("*.yaml") if not p.stem.startswith("base_")}
    assert files == {r.config for r in rows.ROWS if r.config}
    for r in rows.ROWS:
        if not r.config:
            continue
        cfg = rows.compose_row(r.config)
        spec = rows.eval_spec(cfg)
        assert spec["steps"] == r.steps, r.config
        if r.loops:  # an evaluation-time row: the paper's loop count is what its config evaluates
            assert spec["loops"] == [r.loops] and r.loops > cfg.Lmax
            assert rows.row_named(cfg.paper.train_row).config == cfg.paper.train_row
        nxl = re.search(r"(\d+)N×(\d+)L", r.label)
        layers = re.search(r"\((\d+) layers\)", r.label)
        if nxl and not r.loops:
            assert (cfg.N, cfg.Lmax, cfg.ilsd.enabled) == (int(nxl[1]), int(nxl[2]), True), r.config
        if layers:
            assert (cfg.N, cfg.Lmax, cfg.ilsd.enabled) == (int(layers[1]), 1, False), r.config
    maskgit = rows.compose_row("imagenet_elt_L_8Nx3L")
    assert maskgit.trainer.max_steps == 270 * (1_281_167 // 512)
    assert len(rows.eval_spec(maskgit)["cfg_scales"]) > 1  # "CFG scale swept"
    dit = rows.compose_row("imagenet_elt_dit_16Nx2L")
    assert (dit.trainer.max_steps, dit.model.sampler.steps, dit.model.sampler.cfg_scale, dit.model.prediction) == \
        (500_000, 512, 3.0, "x0")


def test_every_paper_row_follows_its_recipe_table():
    """recipes.yaml is the one list of the rows' training settings: every row composes to exactly its values."""
    for r in rows.ROWS:
        if not r.config:
            continue
        cfg = rows.compose_row(r.config)
        for v in rows.recipe_of(r.table).values:
            got = OmegaConf.select(cfg, v.key, default="<missing>")
            got = OmegaConf.to_container(got, resolve=True) if OmegaConf.is_config(got) else got
            assert got == v.value, f"{r.config}: {v.key} = {got!r}, recipes.yaml says {v.value!r} ({v.source})"
    assert {t for rec in rows.RECIPES for t in rec.tables} == set(rows.TABLES)


def test_recipe_sources_are_checked(tmp_path):
    bad = tmp_path / "recipes.yaml"
    bad.write_text("sources: {paper: p, ours: o}\nrecipes:\n  x:\n    tables: [t]\n    values:\n"
                   "      model.dropout: {value: 0.1, source: ours}\n")
    with pytest.raises(ConfigError, match="model.dropout: a deviation .* needs a why"):
        rows.load_recipes(bad)
    bad.write_text(bad.read_text().replace("source: ours", "source: MaskGIT"))
    with pytest.raises(ConfigError, match="unknown source 'MaskGIT'"):
        rows.load_recipes(bad)


def test_the_spec_row_alias_is_the_paper_row():
    alias = compose_cfg("train", ["experiment=ucf101_maskgit"])
    row = compose_cfg("train", ["experiment=paper/ucf101_elt_6Nx4L"])
    assert OmegaConf.to_container(alias.model) == OmegaConf.to_container(row.model)


def test_plan_prints_every_row_and_passes(capsys, tmp_path):
    assert paper_main(["plan", "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    for r in rows.ROWS:
        if r.config:
            assert f"| {r.label} | {r.config} |" in out
    planned = {d["config"]: d for d in json.loads((tmp_path / "plan.json").read_text())}
    for d in planned.values():
        if d["paper_params"]:
            assert abs(d["params_blocks"] / d["paper_params"] - 1) <= plan.TOLERANCE
    # the paper's GFLOPs convention gives its figure for every L row; the project's count is larger (attention, head)
    for name in ("imagenet_maskgit_L_24layers", "imagenet_elt_L_8Nx3L", "imagenet_elt_L_12Nx2L"):
        assert round(planned[name]["gflops_paper_convention"] / 100) == round(rows.row_named(name).gflops / 100)
        assert planned[name]["gflops_project"] > planned[name]["gflops_paper_convention"]
    assert planned["ucf101_elt_6Nx4L_L6_24steps"]["accelerator_hours"] is None  # trained by ucf101_elt_6Nx4L


@pytest.mark.parametrize("row,override", [("imagenet_elt_L_8Nx3L", "N=9"), ("imagenet_elt_dit_8Nx4L", "scale.width=1536"),
                                          ("ucf101_elt_6Nx4L", "scale=XL")])
def test_plan_fails_when_a_row_is_perturbed(row, override, capsys):
    assert paper_main(["plan", "--rows", row, override]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and row in captured.err


def test_models_build_on_meta_without_tokenizer_or_autoencoder_files():
    cfg = rows.compose_row("imagenet_elt_L_8Nx3L")
    assert cfg.data.tokenizer._target_ != "elt.experiments.paper.shapes.ShapeTokenizer"  # the real (pretrained) tokenizer is configured
    model = shapes.build_on_meta(cfg)
    assert (model.tokenizer.vocab_size, model.tokenizer.grid_shape) == (1024, (16, 16))
    assert next(model.parameters()).device.type == "meta"
    dit = shapes.build_on_meta(rows.compose_row("imagenet_elt_dit_1Nx32L"))
    assert dit.autoencoder.latent_shape == (4, 32, 32) and shapes.num_tokens(dit) == 256
    with pytest.raises(NotImplementedError, match="stand-in"):
        model.tokenizer.encode(torch.zeros(1))


def test_global_batch_sets_gradient_accumulation():
    cfg = rows.compose_row("imagenet_elt_L_8Nx3L", ["trainer=cpu", "data.batch_size=16", "+trainer.num_nodes=2",
                                                     "trainer.devices=4"])
    assert apply_global_batch(cfg) == 4 and cfg.trainer.accumulate_grad_batches == 4  # 512 / (16 × 4 × 2)
    assert apply_global_batch(cfg) == 4  # idempotent: the value it set is not a contradiction
    cfg.trainer.devices = [0, 1, 2]
    with pytest.raises(ConfigError, match=r"global_batch \(512\) must be a multiple .*\(16 x 3 x 2 = 96\)"):
        apply_global_batch(cfg)
    cfg = rows.compose_row("imagenet_elt_L_8Nx3L", ["trainer=cpu", "data.batch_size=16", "+trainer.accumulate_grad_batches=3"])
    with pytest.raises(ConfigError, match="contradicts global_batch"):
        apply_global_batch(cfg)
    assert apply_global_batch(compose_cfg("train", [])) is None  # no global_batch: nothing changes


def test_imagenet_tables_evaluate_by_adm_protocol_and_stop_at_start_without_its_file(tmp_path, capsys):
    ref = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    with pytest.raises(ConfigError, match=r"adm_fid50k: eval.reference_stats=.*VIRTUAL_imagenet256_labeled.npz not "
                                          r"found; ADM's ImageNet 256 reference batch is https://openaipublic"):
        run.tasks("imagenet_dit", tmp_path / "runs", configs=["imagenet_elt_dit_4Nx8L"], overrides=["trainer=cpu"])
    assert paper_main(["run", "imagenet_dit", "--rows", "imagenet_elt_dit_4Nx8L", "trainer=cpu"]) == 2  # one line, before any training
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: adm_fid50k: eval.reference_stats=")
    ref.write_bytes(b"")  # only its existence is checked here; eval.py reads and checks its arrays
    todo = run.tasks("imagenet_dit", tmp_path / "runs", configs=["imagenet_elt_dit_4Nx8L"], overrides=["trainer=cpu"],
                     eval_overrides=[f"eval.reference_stats={ref}"])
    train_cmd, eval_cmd = todo[0].cmd, todo[1].cmd
    assert "train.py" in train_cmd[1] and "eval.py" in eval_cmd[1]
    assert {"eval.samples_per_class=50", "eval.num_samples=null"} <= set(eval_cmd)  # FID-50k: 50 per class
    assert eval_cmd[-1] == f"eval.reference_stats={ref}"  # the user's file wins over the default path


def test_ucf101_follows_magvit_fvd_with_stylegan_v_as_an_option(tmp_path):
    spec = rows.eval_spec(rows.compose_row("ucf101_elt_6Nx4L"))
    assert spec["protocol"] == "magvit_fvd" and "10,000 samples" in spec["protocol_text"]
    (_, ev) = run.tasks("ucf101", tmp_path, configs=["ucf101_elt_6Nx4L"], overrides=["trainer=cpu"])
    assert {"eval.num_samples=10000", "eval.reference_split=train", "eval.reference_per_class=null"} <= set(ev.cmd)
    (_, ev) = run.tasks("ucf101", tmp_path, configs=["ucf101_elt_6Nx4L"], overrides=["trainer=cpu", "paper.eval.protocol=fvd2048_16f"])
    assert {"eval.num_samples=2048", "eval.reference_per_class=21"} <= set(ev.cmd)
    with pytest.raises(ConfigError, match="paper.eval.protocol='fvd' is not a protocol; choose from"):
        rows.eval_spec(rows.compose_row("ucf101_elt_6Nx4L", ["paper.eval.protocol=fvd"]))


def test_render_without_runs_shows_only_paper_numbers(tmp_path):
    md = tables.render_table("imagenet_dit", tmp_path / "nothing", tmp_path / "out").read_text()
    assert "Protocol (paper scale): ADM's FID-50k" in md and "VIRTUAL_imagenet256_labeled.npz" in md
    lines = [l for l in md.splitlines() if l.startswith("| DiT") or l.startswith("| ELT")]
    assert len(lines) == 6 and all("| 3.87 | – |" in l or "| – |" in l for l in lines)
    assert not re.search(r"\| \d+(\.\d+)? \(ours\)", md)


def test_wandb_groups_seeds_and_links_the_evaluation(tmp_path, monkeypatch):
    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(k, v)
    train_cfg = compose_cfg("train", ["logger=wandb", "N=2", "Lmax=4", "seed=3", "tags=[demo]"], tmp_path / "train")
    (lg,) = instantiate_group(train_cfg.logger)
    init = lg._wandb_init
    assert init["group"] == "digits_maskgit_elt_tiny" and init["job_type"] == "train"  # no experiment: train.yaml's study
    assert init["tags"] == ["demo", "2Nx4L", "ilsd_on", "seed3"]
    stored = OmegaConf.create(resolved_config(train_cfg))  # what a checkpoint carries
    eval_cfg = compose_cfg("eval", ["ckpt_path=x.ckpt", "logger=wandb"], tmp_path / "eval")
    (elg,) = instantiate_group(eval_logger_config(eval_cfg, stored))
    e = elg._wandb_init
    assert e["group"] == init["group"] and e["job_type"] == "eval" and "seed3" in e["tags"] and "eval" in e["tags"]
    assert e["config"]["train"]["N"] == 2 and e["config"]["train"]["seed"] == 3
