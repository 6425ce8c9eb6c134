# asyncstore developer entry points.
#
#   make venv    create .venv and install the package with its test extras
#   make lint    ruff and mypy --strict on the package
#   make test    lint, then the test suite against a Firestore emulator (PYTEST_ARGS=... passed on)
#   make demo    run the demo CLI
#   make bench   run the storage benchmark against a Firestore emulator
#   make clean   remove build outputs and caches (make distclean also removes .venv)

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
WITH_EMULATOR := bash scripts/with_emulator.sh

export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv lint test demo bench clean distclean

venv: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the local CPU wheel: any other spelling pulls a multi-GB CUDA
# build.  Reinstalls whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install torch==2.13.0
	$(VPY) -m pip install -e '.[test]'
	touch $@

# ruff and mypy --strict on the package: part of the test command, so CI enforces them.
lint: venv
	$(VENV)/bin/ruff check asyncstore benchmarks
	$(VENV)/bin/mypy asyncstore

test: lint
	$(WITH_EMULATOR) $(VPY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/asyncstore demo

bench: venv
	$(WITH_EMULATOR) $(VPY) benchmarks/bench_storage.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
