# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := data/fashion_mnist
PRESET ?= configs/simclr_fmnist_quick.yaml
PYTEST_ARGS ?=

.PHONY: run test venv data clean

# pip installs without compiling (compiling every module of torch, ray and the rest took 80 of the install's 150 s);
# Python compiles each module the first time a process imports it and keeps the bytecode, so
# PYTHONDONTWRITEBYTECODE is emptied: with it set, each of the many processes Ray starts would compile again.
run: venv data
	PYTHONDONTWRITEBYTECODE= $(PY) -m pipelines.pretrain --config $(PRESET)

test: venv
	./scripts/fashion_mnist.sh
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest $(PYTEST_ARGS)

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --no-compile -r requirements.txt
	touch $@

data: $(DATA)/dataset.json

$(DATA)/dataset.json: | venv
	./scripts/fashion_mnist.sh
	PYTHONDONTWRITEBYTECODE= $(PY) -m pipelines.ingest fashion-mnist --out $(DATA)

clean:
	rm -rf runs mlartifacts mlflow.db $(DATA)
