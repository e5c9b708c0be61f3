# Two commands do all the set-up on a fresh machine with Python 3.11 and pip:
#   make demo   - run the main job on the embedded default (local Ray, SQLite MLflow under mlflow/)
#   make test   - run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test typecheck bench install constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, at the tested version: the CPU wheel where one lies on disk, never a newer
	# CUDA build by accident (constraints.txt says torch==2.13.0, which 2.13.0+cpu satisfies)
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,postgres]'
	touch $(STAMP)

install: $(STAMP)

# The main job: the reduction-order study (smoke variant, ~1 minute on 2 cores) on an embedded
# local Ray, recorded in SQLite MLflow under mlflow/, analysed, and reported.
DEMO_STUDY ?= studies/reduction_order.py
DEMO_VARIANT ?= smoke
demo: $(STAMP)
	$(VENV)/bin/orchestrator run $(DEMO_STUDY) --variant $(DEMO_VARIANT) --no-progress
	$(VENV)/bin/orchestrator analyze $(DEMO_STUDY) --variant $(DEMO_VARIANT)
	$(VENV)/bin/orchestrator report $(DEMO_STUDY) --variant $(DEMO_VARIANT) --out reports/demo
	@echo
	@echo "MLflow UI:   $(VENV)/bin/orchestrator ui      (then open the printed http://127.0.0.1 URL)"
	@echo "HTML report: reports/demo/report.html"

# The type check runs first (mypy, config in pyproject.toml: strict on the core layers).
test: typecheck
	$(PY) -m pytest -q --durations=25

typecheck: $(STAMP)
	$(PY) -m mypy

# Rewrite constraints.txt from the venv: the exact versions of the dependency closure.
constraints: $(STAMP)
	$(PY) .ci/constraints.py > constraints.txt.new
	{ sed -n '1,3p' constraints.txt; cat constraints.txt.new; } > constraints.txt.tmp && rm constraints.txt.new && mv constraints.txt.tmp constraints.txt

bench: $(STAMP)
	$(PY) bench/bench_dispatch.py
	$(PY) bench/bench_analysis.py

clean:
	rm -rf $(VENV) build *.egg-info
