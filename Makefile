# moe-bench: `make run` (dashboard) and `make test` (pytest). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DB ?= data/bench.duckdb
HOST ?= 127.0.0.1
PORT ?= 8501
# Extra wheel index for torch: on a machine without a GPU, `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu`
# installs the CPU build (~200 MB) instead of PyPI's CUDA wheels (~2.7 GB). Empty: pip's own configuration decides.
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: run test lint db clean-db gpu-wheels screenshots pageload

# pytest workers (pytest-xdist) for `make test`: one per CPU core by default; PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= auto
EDITABLE = $(PY) -m pip install -q --no-deps -e . || \
	echo "note: editable install skipped (no build backend reachable); python -m bench works from the repo"

$(VENV)/.pip:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	touch $@

$(VENV)/.runtime: requirements.txt | $(VENV)/.pip
	$(PY) -m pip install -q $(PIP_INDEX) -r requirements.txt
	$(EDITABLE)
	touch $@

# The runtime and the test group in one pip run (one resolve; `make test` on a fresh clone never installs twice).
$(VENV)/.test: requirements.txt pyproject.toml | $(VENV)/.pip
	$(PY) -m pip install -q $(PIP_INDEX) -r requirements.txt --group test
	$(EDITABLE)
	touch $(VENV)/.runtime $@

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

# Page-load times in headless chromium on a 100,000-point database (docs/PERF.md). PLOTLY_BUNDLE=FILE (a plotly.js
# partial bundle, e.g. npm's plotly.js-cartesian-dist-min; never committed) adds a baseline chart drawn with it.
pageload: $(VENV)/.test
	$(PY) scripts/pageload.py --json pageload.json $(if $(PLOTLY_BUNDLE),--plotly-bundle $(PLOTLY_BUNDLE))

test: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal

lint: $(VENV)/.test
	$(PY) -m ruff check .

clean-db:
	rm -f $(DB) $(DB).wal

# Wheels for the lent GPU machine (Python 3.12, torch there, no network): duckdb, and Dask + dask-cuda with the
# dependencies its image lacks (scripts/device_cluster.sh). Carried by the device tool as `.wheels`.
GPU_WHEELS := duckdb==2.0.1 dask==2026.7.1 distributed==2026.7.1 dask-cuda==26.10.0 tornado==6.6.1 zict==3.0.0 \
	tblib==3.2.2 locket==1.0.0 partd==1.4.2
gpu-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .wheels $(GPU_WHEELS)
