# moe-bench: `make run` (dashboard) and `make test` (pytest). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DB ?= data/bench.duckdb
HOST ?= 127.0.0.1
PORT ?= 8501

.PHONY: run test lint db clean-db screenshots pageload

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.test: $(VENV)/.runtime pyproject.toml
	$(PY) -m pip install -q --group test
	touch $@

$(DB): | $(VENV)/.runtime
	$(PY) -m bench build-db --db $(DB)

db: $(VENV)/.runtime
	$(PY) -m bench build-db --db $(DB)

run: $(VENV)/.runtime $(DB)
	$(PY) -m streamlit run app.py --server.headless true --server.address $(HOST) --server.port $(PORT) \
		--browser.gatherUsageStats false --server.fileWatcherType none

# README screenshots (docs/screenshots/*.png) from the default database in headless chromium; never run by `make test`.
screenshots: $(VENV)/.test
	$(PY) scripts/screenshots.py --out docs/screenshots

# Page-load times in headless chromium on a 100,000-point database (docs/PERF.md).
pageload: $(VENV)/.test
	$(PY) scripts/pageload.py --json pageload.json

test: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(VENV)/.test
	$(PY) -m ruff check .

clean-db:
	rm -f $(DB) $(DB).wal

# The duckdb wheel for the lent GPU machine (Python 3.12, no network there); carried by the device tool.
gpu-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 -d .wheels duckdb==2.0.1
