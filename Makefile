# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := data/fashion_mnist
PRESET ?= configs/byol_fmnist_quick.yaml
PYTEST_ARGS ?=

.PHONY: run test venv data clean

run: venv data
	$(PY) -m pipelines.pretrain --config $(PRESET)

# PYTHONDONTWRITEBYTECODE emptied: with it set (as in this workplace's shells), each of the hundreds of processes
# the suite's Ray runs start compiled the project's modules again (0.12 s each); pip compiles the packages' own.
test: venv
	./scripts/fashion_mnist.sh
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest $(PYTEST_ARGS)

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

data: $(DATA)/dataset.json

$(DATA)/dataset.json: | venv
	./scripts/fashion_mnist.sh
	$(PY) -m pipelines.ingest fashion-mnist --out $(DATA)

clean:
	rm -rf runs mlartifacts mlflow.db $(DATA)
