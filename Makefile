# Two commands do all the set-up on a fresh machine (see README):
#   make demo   -> creates .venv, installs hpsearch, runs the demo study end to end
#   make test   -> same set-up, then the test suite
# For the edit-test loop: make test-fast (no real processes, no Ray: under 2 minutes).
VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
# The CPU build of torch; never let pip pick a multi-GB CUDA build on a CPU-only machine.
TORCH_SPEC  ?= torch==2.13.0
PYTEST_ARGS ?=
# test processes for make test (pytest-xdist; a module's tests stay in one process: --dist loadfile).
# The slow tests mostly wait on processes starting (Python, torch, Ray): two overlap them. 0: one process.
# Tests marked serial (a PostgreSQL restart) run after them, alone.
TEST_WORKERS ?= 2

.PHONY: setup demo examples test test-fast lint bench-smoke clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --no-compile "$(TORCH_SPEC)"
	# --no-compile: modules are byte-compiled when first imported, not all of Ray's and torch's files
	# at install time (the install took about 4 min with it on a 2-core machine, about 1 min without)
	$(PY) -m pip install -q --no-compile -e ".[dev,bench]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/hpsearch run examples/digits.yaml --storage sqlite:///demo.db
	$(VENV)/bin/hpsearch best digits-demo --storage sqlite:///demo.db

# every example but the demo, end to end (CI)
examples: setup
	$(VENV)/bin/hpsearch run examples/diabetes.yaml --storage sqlite:///examples.db
	$(VENV)/bin/hpsearch best diabetes-demo --storage sqlite:///examples.db
	$(VENV)/bin/hpsearch run examples/patients.yaml --storage sqlite:///examples.db
	$(VENV)/bin/hpsearch best patients-demo --storage sqlite:///examples.db
	$(VENV)/bin/hpsearch run examples/custom_loop.yaml --storage sqlite:///examples.db --n-trials 4
	$(VENV)/bin/hpsearch best custom-loop-demo --storage sqlite:///examples.db
	# your own model: the factory examples.digits_cnn:build (small budget: CI)
	$(VENV)/bin/hpsearch run examples/digits_cnn.yaml --storage sqlite:///examples.db
	$(VENV)/bin/hpsearch best digits-cnn --storage sqlite:///examples.db

test: setup
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS)
	# (exit 5: PYTEST_ARGS selected no serial test, e.g. PYTEST_ARGS=tests/trials)
	$(VENV)/bin/pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: setup
	$(VENV)/bin/pytest -m "not slow" -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench-smoke: setup
	$(PY) -m bench --smoke --out artifacts/bench-smoke $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo.db* examples.db* artifacts
