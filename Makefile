# Two commands do all the set-up on a fresh machine with Python 3.11 and pip:
#   make demo   - run the main job on the embedded default (local Ray, SQLite MLflow under mlflow/)
#   make test   - run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel where one lies on disk, never a newer CUDA build by accident
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/orchestrator plan studies/screening_demo.py --variant smoke

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/bench_dispatch.py
	$(PY) bench/bench_analysis.py

clean:
	rm -rf $(VENV) build *.egg-info
