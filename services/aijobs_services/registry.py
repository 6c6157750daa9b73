"""The services by name, for ``aijobs service NAME`` and for tests that start them."""

from __future__ import annotations

import importlib

from fastapi import FastAPI

from aijobs_services.kit.app import ServiceSpec, create_app
from aijobs_services.kit.settings import ServiceSettings

SERVICES = {
    "payment": "aijobs_services.payment.service",
    "auth": "aijobs_services.auth.service",
    "storage": "aijobs_services.storage.service",
    "ai": "aijobs_services.ai.service",
    "main": "aijobs_services.main.service",
}


def spec(name: str) -> ServiceSpec:
    if name not in SERVICES:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(sorted(SERVICES))}")
    found: ServiceSpec = importlib.import_module(SERVICES[name]).SPEC
    return found


def app_from_env() -> FastAPI:
    """uvicorn factory: the service named by ``AIJOBS_SERVICE``, configured from the environment."""
    name = ServiceSettings().service  # type: ignore[call-arg]
    service = spec(name)
    return create_app(service, service.settings_class())  # type: ignore[call-arg]
