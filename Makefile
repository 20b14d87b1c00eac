# The single way to set up, run, test and benchmark deepfm-tfx.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed
# Python 3.10 from pyenv, or python3.10 on PATH.
PYTHON310 := $(shell p="$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.10.13/bin/python"; \
	if [ -x "$$p" ]; then echo "$$p"; else command -v python3.10; fi)
RUN_ARGS ?=
TEST_ARGS ?=
# Python keeps the bytecode it compiles (in .venv and __pycache__/, both ignored by git): with
# PYTHONDONTWRITEBYTECODE set, every process recompiled TensorFlow's and TFX's sources, about 6 s of
# CPU each, and the tests start dozens (Airflow tasks, servers, the CLI).
unexport PYTHONDONTWRITEBYTECODE

# apt-get needs root; sudo when this is not it.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TB_ARGS ?=

.PHONY: run test test-unit bench lock clean-venv chromium tensorboard

run: $(STAMP)
	$(VENV)/bin/deepfm-tfx run $(RUN_ARGS)

# Three workers on two cores, each taking whole files: the end-to-end tests spend much
# of their time waiting (process starts, ml-metadata, Airflow's task runs), so a third
# overlaps the others' work (docs/testing.md has the figures).
TEST_WORKERS ?= 3
# The tests' processes run on jemalloc when the system has it, as `deepfm-tfx run` and `serve`
# re-execute themselves onto it (--allocator): most runs are in the pytest workers' own processes,
# and the suite took 6% less CPU (docs/testing.md).
# deepfm_tfx/machine.py's JEMALLOC_PATHS, read here without starting Python.
JEMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2))

test: $(STAMP) chromium
	LD_PRELOAD="$(strip $(JEMALLOC) $(LD_PRELOAD))" $(VENV)/bin/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile $(TEST_ARGS)

# tests/test_report.py renders the run report in headless Chromium: from the
# operating system's packages, installed only when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "==> installing chromium (the report test renders in it)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || { \
	    $(SUDO) apt-get update -qq >/dev/null && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; }

# TensorBoard on the pipeline's runs, e.g. TB_ARGS="--pipeline-root workspace/simulation/pipeline".
tensorboard: $(STAMP)
	$(VENV)/bin/deepfm-tfx tensorboard $(TB_ARGS)

test-unit: $(STAMP)
	$(VENV)/bin/python -m pytest tests -m "not e2e" $(TEST_ARGS)

# DeepCTR is a benchmark-only extra, installed here and never at run time.
bench: $(STAMP)
	@$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python --no-deps -r requirements-bench.txt
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

# The environment is rebuilt whenever the lock file or setup.py changes; the
# resolver never runs here, uv only installs the pinned set.
$(STAMP): requirements.lock setup.py
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "error: Python 3.10 not found; install it with 'pyenv install 3.10.13' (or put python3.10 on PATH)" >&2; exit 1; fi
	@echo "==> creating $(VENV) with $(PYTHON310)"
	@rm -rf $(VENV)
	@$(PYTHON310) -m venv $(VENV)
	@$(VENV)/bin/python -m pip install -q --disable-pip-version-check "$$(grep -E '^uv==' requirements.lock)"
	@$(VENV)/bin/uv pip sync -q --python $(VENV)/bin/python requirements.lock
	@$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python --no-deps -e .
	@touch $(STAMP)

# Re-resolve the pinned set (needs the network; ~30 s with uv).
lock: $(STAMP)
	$(VENV)/bin/uv pip compile -q --python-version 3.10 --python $(VENV)/bin/python requirements.in -o requirements.lock

clean-venv:
	rm -rf $(VENV)
