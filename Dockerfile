# Two images from one build:
#   --target aijobs  (default) the operator and the five services: slim Python, non-root
#   --target postgres  the chart's bundled PostgreSQL (postgresql.bundled): Debian's package
#   --target worker  the GPU worker: the same base with torch from PyPI (the CUDA build, which also
#                    runs on CPU), the very version the project pins: one torch everywhere
# Entrypoints are `aijobs` subcommands: operator, service NAME, worker.
#
# PYTHON_IMAGE is any Debian-style image with python3 and its venv module. The default is the
# public one; `python -m aijobs_dev.images` passes a base made locally with debootstrap where no
# registry is reachable. Everything installs into a virtual environment, /opt/aijobs, so that the
# same steps work on Debian's python3 (which refuses system-wide pip installs) and python:slim.
# Runs with a read-only root filesystem: nothing writes outside /tmp, which the chart mounts.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir -q build==1.2.2
COPY pyproject.toml README.md ./
COPY aijobs ./aijobs
# devtools/ (test bed, simulator, demo) is not copied: the images ship only what runs.
COPY operator ./operator
COPY services ./services
COPY gpu_worker ./gpu_worker
COPY crds ./crds
RUN /opt/build/bin/python -m build --wheel --outdir /wheels .

# The dependencies, read from pyproject.toml alone, so that their layers (torch's several GB)
# are rebuilt only when a pin changes, not with every change to the code. Each image installs the
# client's dependencies and exactly its extras: aijobs [operator,services], worker [worker,torch].
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml docker/requirements.py /src/
RUN python3 /src/requirements.py /src/pyproject.toml operator services > /src/aijobs.txt \
    && python3 /src/requirements.py /src/pyproject.toml worker torch > /src/worker.txt

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/aijobs/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp XDG_CACHE_HOME=/tmp/.cache
RUN python3 -m venv /opt/aijobs \
    && (getent passwd 10001 >/dev/null || useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin aijobs)

FROM runtime AS postgres
# postgresql-15 pins the major version; the exact Debian revision is left to the mirror, which
# drops old revisions as security updates land (a pinned one would stop building).
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH
COPY docker/postgres-entrypoint.sh /usr/local/bin/aijobs-postgres
USER 10001
WORKDIR /tmp
ENTRYPOINT ["aijobs-postgres"]

FROM runtime AS worker
COPY --from=requirements /src/worker.txt /opt/requirements.txt
RUN pip install -q -r /opt/requirements.txt
COPY --from=build /wheels /wheels
RUN pip install -q --no-deps /wheels/aijobs-*.whl && rm -rf /wheels
USER 10001
WORKDIR /tmp
ENTRYPOINT ["aijobs"]
CMD ["worker"]

FROM runtime AS aijobs
COPY --from=requirements /src/aijobs.txt /opt/requirements.txt
RUN pip install -q -r /opt/requirements.txt
COPY --from=build /wheels /wheels
RUN pip install -q --no-deps /wheels/aijobs-*.whl && rm -rf /wheels
USER 10001
WORKDIR /tmp
ENTRYPOINT ["aijobs"]
CMD ["operator"]
