# syntax=docker/dockerfile:1
# Two images from one build:
#   --target aijobs  (default) the operator and the five services: slim Python, non-root
#   --target worker  the GPU worker on a CUDA-capable torch base (WORKER_BASE)
# Entrypoints are `aijobs` subcommands: operator, service NAME, worker.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG WORKER_BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md ./
COPY aijobs ./aijobs
# devtools/ (test bed, simulator, demo) is not copied: the images ship only what runs.
COPY operator ./operator
COPY services ./services
COPY gpu_worker ./gpu_worker
COPY crds ./crds
RUN python -m build --wheel --outdir /wheels .

FROM ${PYTHON_IMAGE} AS aijobs
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/aijobs-*.whl && rm -rf /wheels \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin aijobs
USER 10001
WORKDIR /tmp
ENTRYPOINT ["aijobs"]
CMD ["operator"]

FROM ${WORKER_BASE} AS worker
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
# torch comes with the base image; the worker extra adds the rest.
RUN pip install --no-cache-dir "$(ls /wheels/aijobs-*.whl)[worker]" && rm -rf /wheels \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin aijobs
USER 10001
WORKDIR /tmp
ENTRYPOINT ["aijobs"]
CMD ["worker"]
