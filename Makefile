# `make demo` and `make test` set everything up themselves (a virtualenv in .venv, the project
# and its test/train extras) and are quick when that is already done.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.revex-installed

.PHONY: demo test test-all lint bench setup clean

JSON_SERVER := tests/.node/node_modules/.bin/json-server

VERL := tests/.verl/verl/utils/reward_score/sandbox_fusion/utils.py

setup: $(STAMP) $(JSON_SERVER) $(VERL)

# Re-install only when the dependency list changes. torch is pinned to the CPU wheel 2.13.0:
# a looser spec would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,train,docker,ray]"
	@touch $@

# json-server (a third-party mock REST backend) for the HTTP tests, from the npm registry.
$(JSON_SERVER):
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --prefix tests/.node json-server@0.17.4; \
	else echo "warning: npm not found; the json-server HTTP tests will be skipped"; fi

# verl's own SandboxFusion client code for the service tests: the wheel only (--no-deps), into a
# git-ignored folder; verl's top-level package needs Ray and a GPU stack, so the tests load just
# its sandbox_fusion module from there.
$(VERL): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --target tests/.verl "verl==0.9.1" \
	  || echo "warning: verl could not be installed; the verl client test will be skipped"

demo: $(STAMP)
	$(VENV)/bin/revex demo

lint: $(STAMP)
	$(VENV)/bin/ruff check revex tests benchmarks
	$(VENV)/bin/mypy

test: $(STAMP) $(JSON_SERVER) $(VERL) lint
	$(PY) -m pytest -q

# the long versions: crash loop with hundreds of kills, 1,000-run leak test
test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) benchmarks/bench_undo.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
