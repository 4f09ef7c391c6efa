# The README's two commands: `make train` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: train test test-slow test-all lint docs bench data clean lock

# The install takes the versions pinned in constraints.txt (the set the tests last passed with), through uv:
# resolving pyproject's ranges from scratch backtracks over old botocore releases for a minute, while the
# pinned set installs in about 25 s. `make lock` re-resolves the pins from pyproject.toml.
# dst itself is built without build isolation, after its build tools and jax are in the venv: the C++
# kernels (CMakeLists.txt) compile against the FFI headers of the very jaxlib that will load them.
# --compile-bytecode, as pip does: where PYTHONDONTWRITEBYTECODE is set, a venv without .pyc files parses
# jax, flax and wandb again in every process (make test took 6 min 14 s instead of about 5).
UV := $(VENV)/bin/uv

$(STAMP): pyproject.toml constraints.txt CMakeLists.txt $(wildcard dst/kernels/csrc/*)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet 'uv>=0.5,<1'
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -c constraints.txt scikit-build-core nanobind jax jaxlib
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -c constraints.txt -e '.[build,dev,launchers,docs]' \
		--no-build-isolation-package dst
	$(PY) -c "import dst.kernels as k; print('dst kernels:', k.status())"
	@touch $(STAMP)

lock: $(STAMP)
	$(UV) pip compile pyproject.toml --all-extras --universal --python-version 3.11 --quiet -o constraints.txt

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
