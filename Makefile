# The two commands of the README: `make demo` and `make test`. Each installs what it needs.
# `make check` is the fast tier: lint and every test that needs no PostgreSQL, API server or cluster.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test check lint venv tools cluster-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,operator,services,worker,torch]'
	touch $@

venv: $(VENV)/.installed

# etcd + kube-apiserver: from KUBEBUILDER_ASSETS, or built once into ~/.cache/aijobs; with
# helm and a node's binaries (kubelet, kube-proxy, CoreDNS, CNI plugins: AIJOBS_NODE_ASSETS).
tools: venv
	scripts/ensure-postgres
	scripts/ensure-prometheus
	scripts/ensure-docker
	$(PY) -m aijobs_dev.controlplane.assets --helm --node >/dev/null
	$(PY) -m aijobs_dev.controlplane.keda >/dev/null

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: tools lint
	$(VENV)/bin/pytest

# The server markers come from the fixtures a test stands on (tests/conftest.py), so none is
# forgotten; `slow` marks minutes of CPU (training, the 20,000-schedule simulation). mypy is left
# to `make lint` / `make test`: it alone takes about as long as these tests.
FAST := not postgres and not controlplane and not cluster and not slow
check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q -m '$(FAST)'

demo: tools
	$(VENV)/bin/aijobs demo

# The chart on a real single-node cluster (root): images, node, helm install, one job Delivered.
# KEEP=1 leaves the cluster running.
cluster-demo: tools
	$(PY) -m aijobs_dev.clusterdemo $(if $(KEEP),--keep)
