"""Parameters are typed strictly wherever a job enters (Main API, the AI service, the worker all
call :func:`validate_parameters`), and a refusal reads as ``kubectl apply``'s does for the same
parameters: the CRD cases of ``test_crd_on_apiserver`` are replayed here without an API server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from aijobs.api.pipelines import PARAMETERS, PipelineError, validate_parameters
from tests.conftest import Kubectl
from tests.foundation.test_crd_on_apiserver import BAD

ROOT = Path(__file__).resolve().parents[2]


def _crd_parameter_cases() -> list[Any]:
    cases = []
    for case in BAD:
        manifest, message = case.values
        spec = manifest["spec"]
        if "parameters" in message and not message.startswith("unknown field"):
            cases.append(pytest.param(spec["pipeline"], spec.get("parameters", {}), message, id=case.id))
    return cases


def _as_the_crd_says(message: str) -> str:
    """The API server's wording of a schema refusal ("spec.parameters.width in body must be of type
    integer") in the services' form ("parameters.width: must be of type integer")."""
    return re.sub(r"^spec\.(\S+) in body ", r"\1: ", message)


@pytest.mark.parametrize(("pipeline", "parameters", "crd_says"), _crd_parameter_cases())
def test_parameters_the_crd_refuses_are_refused_with_the_crds_message(
    pipeline: str, parameters: dict[str, Any], crd_says: str
) -> None:
    with pytest.raises(PipelineError) as refused:
        validate_parameters(pipeline, parameters)
    assert _as_the_crd_says(crd_says) in str(refused.value)


WRONG_TYPES = {
    int: ["8", 8.5, True, None, [8]],
    float: ["0.5", True, None, {}],
    bool: ["yes", "true", 1, 0, None],
    str: [5, True, None, ["x"]],
}
JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}
VALID = {"resize": {"width": 8, "height": 8}, "user-model": {"model": "m.safetensors"}}


def _every_field_with_every_wrong_type() -> list[Any]:
    cases = []
    for pipeline, model in PARAMETERS.items():
        for name, info in model.model_fields.items():
            kind = info.annotation
            assert kind in WRONG_TYPES, f"{pipeline}.{name}: a new parameter type needs its wrong values here"
            for value in WRONG_TYPES[kind]:  # type: ignore[index]
                cases.append(pytest.param(pipeline, name, value, id=f"{pipeline}.{name}={value!r}"))
    return cases


@pytest.mark.parametrize(("pipeline", "name", "value"), _every_field_with_every_wrong_type())
def test_no_parameter_is_coerced_from_another_type(pipeline: str, name: str, value: Any) -> None:
    params = {**VALID.get(pipeline, {}), name: value}
    with pytest.raises(PipelineError) as refused:
        validate_parameters(pipeline, params)
    kind = JSON_TYPES[PARAMETERS[pipeline].model_fields[name].annotation]  # type: ignore[index]
    assert f"parameters.{name}: must be of type {kind}" in str(refused.value)


def test_an_integer_is_still_a_number() -> None:
    assert validate_parameters("denoise", {"strength": 1}) == {"strength": 1.0}


def test_an_integral_number_is_the_integer_it_is() -> None:
    assert validate_parameters("thumbnail", {"size": 64.0}) == {"size": 64}
    assert type(validate_parameters("thumbnail", {"size": 64.0})["size"]) is int


@pytest.mark.controlplane
@pytest.mark.parametrize("width", [8.0, 8.5, 8], ids=["integral-float", "fraction", "integer"])
def test_an_integer_parameter_is_read_as_kubectl_apply_reads_it(kubectl: Kubectl, width: float) -> None:
    """JSON writes the integer 8 as ``8`` or ``8.0``: whatever the API server makes of the CRD's
    ``integer``, every service makes the same (a job the cluster takes is one the services take)."""
    manifest = yaml.safe_load((ROOT / "examples" / "resize-url.yaml").read_text())
    manifest["spec"]["parameters"]["width"] = width
    applied = kubectl.run("apply", "-f", "-", stdin=json.dumps(manifest))
    try:
        validate_parameters("resize", manifest["spec"]["parameters"])
        services_take_it = True
    except PipelineError:
        services_take_it = False
    assert (applied.returncode == 0) == services_take_it, applied.stderr
    if services_take_it:
        stored = kubectl.json("get", "aij", manifest["metadata"]["name"])["spec"]["parameters"]["width"]
        assert stored == width == validate_parameters("resize", {"width": width, "height": 8})["width"]
