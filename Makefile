# edgeloop: `make demo` and `make test` each do their own set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EDGE_VENV := .venv-edge
EDGE_STAMP := $(EDGE_VENV)/.installed
# The legacy edge runtime (tflite-runtime 2.14) needs numpy<2; this is the numpy it is tested with.
EDGE_LEGACY_NUMPY := 1.26.4
DEMO_ARGS ?=
# The suite on two workers (pytest-xdist): most tests wait on brokers, hubs and agents, so two
# share the machine's two cores well. Each test file stays on one worker (its module fixtures are
# made once); every test has its own ports, folders, broker and database. Files are handed out in
# collection order, which tests/conftest.py starts with the long end-to-end files (xdist's own
# order, by number of tests, would leave them for last). PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
PYTEST_XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)
# The files of the tests marked serial: a new one must be listed here, or it runs nowhere. The
# workers' run leaves them out: collecting them is not free (schemathesis builds its cases at
# collection: 7 s of CPU on each worker), and they would only be deselected.
SERIAL_TESTS := tests/cloud_hub/test_api_schemathesis.py tests/cloud_hub/test_hot_updates.py
# The suite starts hundreds of Python processes (pytest and its workers, hubs, agents, CLIs).
# Without bytecode files each one compiles the project again, and each pytest process rewrites
# the asserts of every test module and plugin again (edge + shared collection: 10 s -> 6 s CPU).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test lint typecheck pytest pytest-workers pytest-serial test-edge-minimal setup \
	mosquitto chromium prometheus bench clean

demo: setup
	$(VENV)/bin/simulator demo $(DEMO_ARGS)

# Both venvs are built side by side; the serial tests (one process) and the minimal venv's edge
# tests share the two cores at the end. --output-sync keeps each one's output in one piece.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target $(STAMP) $(EDGE_STAMP)
	@$(MAKE) --no-print-directory setup lint typecheck pytest-workers
	@$(MAKE) --no-print-directory -j2 --output-sync=target pytest-serial test-edge-minimal

setup: $(STAMP) mosquitto chromium

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[hub,edge,dev]'
	@touch $(STAMP)

# Debian puts the broker in /usr/sbin, which is not on every PATH.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; then \
		echo "mosquitto: found"; \
	else \
		echo "mosquitto: installing with apt"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto; \
	fi

# The console's browser tests drive Debian's chromium through Playwright (never Playwright's own
# browser download, which these machines cannot reach).
chromium:
	@if command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium; then \
		echo "chromium: found"; \
	else \
		echo "chromium: installing with apt"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The Prometheus files in deploy/prometheus are tested with Debian's promtool and a real
# Prometheus scraping a test hub (tests/cloud_hub/test_prometheus.py); the demo needs neither.
prometheus:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then \
		echo "prometheus: found"; \
	else \
		echo "prometheus: installing with apt"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; \
	fi

# Tests marked serial run in one process after the others: schemathesis' parametrized tests
# are not distributed by xdist (on a worker the test ran no operation at all and passed).
pytest: $(STAMP) mosquitto chromium prometheus
ifeq ($(PYTEST_XDIST),)
	$(VENV)/bin/pytest
else
	@$(MAKE) --no-print-directory pytest-workers
	@$(MAKE) --no-print-directory pytest-serial
endif

pytest-workers: $(STAMP) mosquitto chromium prometheus
	$(VENV)/bin/pytest $(PYTEST_XDIST) -m "not serial" $(addprefix --ignore=,$(SERIAL_TESTS))

pytest-serial: $(STAMP) mosquitto
	$(VENV)/bin/pytest -p no:xdist -m serial $(SERIAL_TESTS)

# The edge tests again where the device would be: tflite-runtime, numpy<2, no TensorFlow.
$(EDGE_STAMP): pyproject.toml constraints.txt
	@test -x $(EDGE_VENV)/bin/python || $(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install --quiet --upgrade pip
	grep -v '^numpy==' constraints.txt > $(EDGE_VENV)/constraints.txt
	echo 'numpy==$(EDGE_LEGACY_NUMPY)' >> $(EDGE_VENV)/constraints.txt
	$(EDGE_VENV)/bin/python -m pip install --quiet -c $(EDGE_VENV)/constraints.txt -e '.[edge-legacy]' pytest pytest-timeout pytest-xdist hypothesis tomli-w
	@touch $(EDGE_STAMP)

test-edge-minimal: $(EDGE_STAMP) mosquitto
	$(EDGE_VENV)/bin/python -c "import importlib.util as u, sys; sys.exit(1 if u.find_spec('tensorflow') else 0)" \
		|| (echo "minimal edge venv must not contain tensorflow" && exit 1)
	$(EDGE_VENV)/bin/pytest -p no:cacheprovider $(PYTEST_XDIST) tests/shared tests/edge_agent

bench: setup
	$(PY) bench/edge.py

clean:
	rm -rf $(VENV) $(EDGE_VENV) reports .pytest_cache .mypy_cache .ruff_cache
