# Two commands do everything on a fresh machine:  make demo  and  make test.
# Both create the virtual environment in .venv first if it is missing or out of date.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := outputs/demo
# The README's demo tables were sampled in fp32: pin it, so bf16-capable CPUs print the same numbers
DEMO_EVAL := eval.precision=32
export ELT_ROOT := $(CURDIR)

.PHONY: install demo demo-maskgit demo-vanilla demo-baseline demo-dit demo-video demo-video-vanilla demo-video-dit test test-slow bench clean \
	paper-plan table-imagenet-maskgit table-imagenet-dit table-ucf101 table-throughput

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: demo-maskgit

# MaskGIT-ELT with ILSD on the embedded digits, then samples at every loop count.
demo-maskgit: install
	$(PY) train.py experiment=digits_maskgit hydra.run.dir=$(DEMO)/maskgit_ilsd ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/maskgit_ilsd/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/maskgit_ilsd/eval eval.extra_loops=2 $(DEMO_EVAL)

# The same model without ILSD: intermediate loops were never trained to be read out.
demo-vanilla: install
	$(PY) train.py experiment=digits_maskgit ilsd=off hydra.run.dir=$(DEMO)/maskgit_vanilla ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/maskgit_vanilla/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/maskgit_vanilla/eval eval.extra_loops=2 $(DEMO_EVAL)

# Non-looped baseline at the same effective depth: 8 unique layers run once.
demo-baseline: install
	$(PY) train.py experiment=digits_maskgit N=8 Lmax=1 hydra.run.dir=$(DEMO)/maskgit_8Nx1L ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/maskgit_8Nx1L/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/maskgit_8Nx1L/eval eval.extra_loops=2 $(DEMO_EVAL)

# DiT-ELT 2N×4L with ILSD on the digits (1500 steps; ~10 CPU-minutes of training).
demo-dit: install
	$(PY) train.py experiment=digits_dit hydra.run.dir=$(DEMO)/dit_ilsd ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/dit_ilsd/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/dit_ilsd/eval eval.extra_loops=2 $(DEMO_EVAL)

# Video: MaskGIT-ELT 2N×4L on the embedded moving digits (4 frames, 10×10), FVD in a domain 3D-CNN's
# features at every loop count 1..Lmax, animated GIF grids per loop count.
demo-video: install
	$(PY) train.py experiment=moving_digits_maskgit hydra.run.dir=$(DEMO)/video_maskgit_ilsd ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/video_maskgit_ilsd/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/video_maskgit_ilsd/eval $(DEMO_EVAL)

demo-video-vanilla: install
	$(PY) train.py experiment=moving_digits_maskgit ilsd=off hydra.run.dir=$(DEMO)/video_maskgit_vanilla ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/video_maskgit_vanilla/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/video_maskgit_vanilla/eval $(DEMO_EVAL)

demo-video-dit: install
	$(PY) train.py experiment=moving_digits_dit hydra.run.dir=$(DEMO)/video_dit_ilsd ckpt_path=last
	$(PY) eval.py ckpt_path=$(DEMO)/video_dit_ilsd/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/video_dit_ilsd/eval $(DEMO_EVAL)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
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

paper-plan: install
	$(PY) -m elt.experiments.paper plan

table-imagenet-maskgit: install
	$(PY) -m elt.experiments.paper run imagenet_maskgit $(TABLE)

table-imagenet-dit: install
	$(PY) -m elt.experiments.paper run imagenet_dit $(TABLE)

table-ucf101: install
	$(PY) -m elt.experiments.paper run ucf101 $(TABLE)

# Sampling throughput (batch 8) and peak training memory, ELT vs its same-scale baseline, interleaved
# on whatever device is present; on a CPU at reduced width and tokens (benchmarks/results/throughput.md).
table-throughput: install
	$(PY) benchmarks/throughput.py $(THROUGHPUT_ARGS)

clean:
	rm -rf outputs logs

# ---- any-time inference (issue 16; docs/anytime.md) ---------------------------------------------------
# anytime-ckpts: the four demo checkpoints (resumable); anytime: Pareto fronts and early exit on them,
# 3 sampling seeds, into benchmarks/results/anytime.{json,md} and docs/img/anytime_*.png (points cached).
.PHONY: anytime anytime-ckpts
ANYTIME_CKPTS := digits_maskgit digits_dit moving_digits_maskgit moving_digits_dit

anytime-ckpts: install
	for e in $(ANYTIME_CKPTS); do \
		$(PY) train.py experiment=$$e hydra.run.dir=outputs/anytime/ckpt/$$e ckpt_path=last || exit 1; done

anytime: anytime-ckpts
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

fashion-mnist-data:
	@test -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz || { \
		if [ "$(FASHION_MNIST)" = /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
			if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist; \
			elif sudo -n true 2>/dev/null; then sudo apt-get install -y -q dataset-fashion-mnist; fi; \
		fi; \
		test -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz || { \
			echo "error: no Fashion-MNIST in $(FASHION_MNIST): $(FASHION_HOW)" >&2; exit 1; }; }

mini-paper: install fashion-mnist-data
	OMP_NUM_THREADS=1 $(PY) -m elt.experiments.mini_paper run $(if $(filter quick,$(MINI)),--quick,) --jobs $(MINI_JOBS) \
		--raw-root $(FASHION_MNIST) --img-dir docs/img
# ---- end mini-paper -----------------------------------------------------------------------------------
