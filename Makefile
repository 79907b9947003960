# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned and installed before the rest: otherwise pip may pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint typecheck bench clean browser notebooks

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev,tensorboard,mlflow,wandb]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m pawlab demo

# Debian's Chromium for the browser tests (Playwright cannot download browsers here); where it
# cannot be installed, those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } \
		|| echo "chromium could not be installed: the browser tests will skip"

test: $(VENV)/.installed browser
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check pawlab tests examples $(wildcard bench)
	$(PY) -m mypy

# Run every walkthrough notebook in full on ../shared/data and write it with its outputs
# (about 15 minutes on 2 cores, from a cold cache); the tests run them on a small subset.
notebooks: $(VENV)/.installed
	$(PY) examples/notebooks/build.py

clean:
	rm -rf $(VENV) pawlab-demo .pytest_cache .mypy_cache
