# Set-up is two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := out/demo

.PHONY: demo test bench venv clean browser-test

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

clean:
	rm -rf out .pytest_cache
