# Two commands set everything up on a fresh machine: `make train` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | md5sum | cut -c1-12)
FMNIST := /usr/share/datasets/fashion-mnist
CKPT ?=
ARGS ?=

.PHONY: install data train eval test lint gpu-test bench clean

install: $(STAMP)

# torch first from the local wheel cache (a CUDA build that runs on CPU); see docs/install.md
$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e ".[cuda,wandb,sweep,dev]"
	rm -f $(VENV)/.installed-* && touch $@

# Fashion-MNIST from Debian when missing and apt is available (root or sudo)
data:
	@if [ ! -f $(FMNIST)/t10k-labels-idx1-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST missing: install dataset-fashion-mnist or pass ARGS='data.root=DIR'"; fi; \
	fi

train: install data
	$(BIN)/python train.py $(ARGS)

eval: install
	@test -n "$(CKPT)" || { echo "usage: make eval CKPT=path/to/checkpoint.ckpt"; exit 2; }
	$(BIN)/python eval.py ckpt_path=$(CKPT) $(ARGS)

lint: install
	$(BIN)/ruff check src tests bench train.py eval.py
	$(BIN)/ruff format --check src tests bench train.py eval.py

test: install lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900 $(ARGS)

# on a CUDA machine: kernel tests + operator benchmark (see bench/gpu_session.sh)
gpu-test: install
	$(BIN)/python -m pytest -q -m gpu tests

bench: install
	$(BIN)/python bench/op_bench.py

clean:
	rm -rf $(VENV) logs outputs multirun
