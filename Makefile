# The README's two commands: `make train` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: train test test-slow test-all lint docs bench data clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,launchers,docs]'
	@touch $(STAMP)

# On every core (pytest-xdist). A file whose tests share an expensive module fixture (a real run) is an
# xdist_group, kept on one worker so the fixture runs once.
XDIST := -n auto --dist loadgroup

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q $(XDIST)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q $(XDIST)

test-all: $(STAMP)
	$(PY) -m pytest -q $(XDIST)

lint: $(STAMP)
	$(VENV)/bin/ruff check dst tests benchmarks experiments docs

# The documentation (docs/, mkdocs.yml) with its API reference from the docstrings; any warning fails.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) benchmarks/step_time.py

# Fashion-MNIST comes from Debian's package; elsewhere the loader says how to get the files.
data:
	@if [ -d $(FMNIST_DIR) ] || [ -n "$$DST_DATA_DIR" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or put the four IDX files in a folder and set DST_DATA_DIR to it."; \
	fi

train: $(STAMP) data
	$(VENV)/bin/dst-train

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache site
