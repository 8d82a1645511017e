# Two entry points for a new user: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= data/recsys.yaml
ROOT ?= artifacts

.PHONY: install demo test serve bench-deps clean

$(BIN)/recsys: setup.cfg pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -c constraints.txt -e '.[train,serve,dev]'
	touch $(BIN)/recsys

install: $(BIN)/recsys

demo: install
	$(BIN)/recsys demo --config $(CONFIG)

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(ROOT) *.egg-info

serve: install
	$(BIN)/recsys serve --config $(CONFIG)

bench-deps: install
	$(BIN)/pip install --quiet -c constraints.txt -e '.[train,serve,dev,bench]'
