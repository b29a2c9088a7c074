# The two commands of the README. Both work on a fresh machine with Python 3.11.
#   make run    install, then serve http://$(HOST):$(PORT): the first start builds the serving
#               models from the shipped default model (offline: MEMEFLY_ENCODER_WEIGHTS=random)
#   make test   install and run the test suite
# And for your own model:
#   make train  prepare ImgFlip575K, train a decoder for TRAIN_MINUTES, evaluate, export
#               (WEIGHTS=random offline; VERSION picks the exported version)
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
TRAIN_MINUTES ?= 20
RUN ?= runs/default
WEIGHTS ?= imagenet
VERSION ?= 1

.PHONY: run test test-fast lint install train

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/memefly serve --host $(HOST) --port $(PORT)

test: install
	$(VENV)/bin/python -m pytest

# The inner loop: everything but the tests marked slow (training, exports, servers, the browser).
test-fast: install
	$(VENV)/bin/python -m pytest -m "not slow"

# ruff's rules and line length, and mypy's strictness per package, are in pyproject.toml;
# `ruff format .` and `ruff check --fix .` mend most ruff findings.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

train: install
	$(VENV)/bin/memefly data prepare
	test -f $(RUN)/decoder.weights.h5 || $(VENV)/bin/memefly train --run $(RUN) --steps-per-epoch 500 --validation-steps 40 --epochs 100 --max-minutes $(TRAIN_MINUTES)
	$(VENV)/bin/memefly evaluate $(RUN)
	$(VENV)/bin/memefly export --run $(RUN) --weights $(WEIGHTS) --version $(VERSION) --overwrite
