# Fresh-machine entry points: `make demo` and `make test`. Each one sets up .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-python test-qgis lint qgis-plugin benchmark clean

$(STAMP): pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull gigabytes of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,distributed,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m swimdiff_geo.demo --out demo_output

test: test-python test-qgis

test-python: $(STAMP)
	$(PY) -m pytest -q tests

test-qgis: qgis-plugin
	bash tests/qgis/run.sh

qgis-plugin: $(STAMP)
	$(PY) qgis_plugin/build_zip.py --out dist

lint: $(STAMP)
	$(VENV)/bin/ruff check swimdiff_geo cli tests benchmarks qgis_plugin

benchmark: $(STAMP)
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) .venv-qgis dist build *.egg-info demo_output
