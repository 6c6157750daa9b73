# The two commands of the README: `make demo` and `make test`. Each installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint venv tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,worker,torch]'
	touch $@

venv: $(VENV)/.installed

# etcd + kube-apiserver: from KUBEBUILDER_ASSETS, or built once into ~/.cache/aijobs.
tools: venv
	scripts/ensure-postgres
	scripts/ensure-prometheus
	$(PY) -m aijobs_dev.controlplane.assets --helm >/dev/null

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: tools lint
	$(VENV)/bin/pytest

demo: tools
	$(VENV)/bin/aijobs demo
