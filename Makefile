# hss-pu: two commands do everything on a fresh Debian machine: `make run`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
# The web console's player libraries (package-lock.json), fetched once per lock change.
NPM_STAMP := node_modules/.setup-stamp
# A Raspberry Pi gets a venv that sees apt's picamera2/lgpio (and python3-opencv, for
# person detection) and the `pi` extra; elsewhere the `people` extra brings OpenCV, so
# the person-detection tests run rather than skip.
IS_PI  := $(shell grep -qas "Raspberry Pi" /proc/device-tree/model && echo 1)
comma  := ,
EXTRAS := dev$(if $(IS_PI),$(comma)pi,$(comma)people)
CONFIG ?=

.PHONY: setup system-deps test lint typecheck pytest run install clean soak

setup: system-deps $(STAMP) $(NPM_STAMP)

system-deps:
	@PYTHON=$(PYTHON) scripts/setup-system.sh

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(if $(IS_PI),--system-site-packages) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json | system-deps
	npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# Most tests wait on real time (cameras, sockets, back-offs), not on the CPU: three
# workers on two cores run the suite in about a third of the time (pytest-xdist).
# PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 3
pytest: setup
	$(BIN)/pytest -n $(PYTEST_WORKERS)

test: lint typecheck pytest

# The fault-injection soak (bench/soak.py): SOAK_MINUTES=30 unless told.
SOAK_MINUTES ?= 30
soak: setup
	SOAK_MINUTES=$(SOAK_MINUTES) $(BIN)/python bench/soak.py

run: setup
	$(BIN)/hss-pu run $(if $(CONFIG),--config $(CONFIG))

# On a Pi (or any systemd host): the package into /opt/hss-pu, the unit, a config.
install:
	scripts/install.sh

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache build dist
