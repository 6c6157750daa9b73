"""The Helm chart and the Dockerfile: lint, render, apply to the real API server, RBAC proven by
impersonation, bad values refused, the CRD kept in sync and upgraded by `helm upgrade`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aijobs_dev.controlplane.assets import ensure_helm
from aijobs_dev.controlplane.cluster import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "aijobs"
KUBE_VERSION = "1.34.4"
FULL_VALUES = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "worker": {
        "replicas": 4,
        "gpus": 1,
        "runtimeClassName": "nvidia",
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "worker"}},
                        },
                    }
                ]
            }
        },
        "modelsVolume": {"persistentVolumeClaim": {"claimName": "user-models"}},
    },
    "operator": {"replicas": 3, "watchNamespaces": ["team-a", "team-b"]},
    "storageVolume": {"size": "200Gi", "storageClassName": "fast", "accessModes": ["ReadWriteOnce"]},
    "imagePullSecrets": [{"name": "registry"}],
}


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_helm(log=lambda _: None)


def _helm(
    helm: Path,
    *args: str,
    values: dict[str, Any] | None = None,
    tmp: Path | None = None,
    kubeconfig: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    argv = [str(helm), *args]
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        argv += ["-f", str(path)]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {proc.stderr}")
    return proc


def test_the_chart_renders_without_a_kube_version(helm: Path, tmp_path: Path) -> None:
    """GitOps tools render with helm's default capabilities: the chart must not refuse them."""
    out = _helm(helm, "template", "t", str(CHART), values=FULL_VALUES, tmp=tmp_path).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    assert {"CustomResourceDefinition", "Deployment", "NetworkPolicy"} <= kinds


SINGLE_NODE = yaml.safe_load((CHART / "ci" / "single-node.yaml").read_text())


@pytest.mark.parametrize("values", [None, FULL_VALUES, SINGLE_NODE], ids=["defaults", "full", "single-node"])
def test_the_chart_lints_strictly_and_renders(
    helm: Path, tmp_path: Path, values: dict[str, Any] | None
) -> None:
    _helm(helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), values=values, tmp=tmp_path)
    out = _helm(
        helm, "template", "t", str(CHART), "--kube-version", KUBE_VERSION, values=values, tmp=tmp_path
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "ClusterRole",
        "Role",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "ConfigMap",
        "ServiceAccount",
    } <= kinds
    for doc in docs:  # recommended labels and hardened pods everywhere
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "aijobs", doc["metadata"]["name"]
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            for container in pod["containers"]:
                sc = container["securityContext"]
                assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert container["resources"]["limits"] and container["resources"]["requests"]
    worker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-worker"))
    limits = worker["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    if values is SINGLE_NODE:  # no GPU asked for: none in the limits (a node without GPUs fits it)
        assert "nvidia.com/gpu" not in limits
        assert {"StatefulSet", "Secret"} <= kinds  # the bundled PostgreSQL, the generated secrets
        return
    assert limits["nvidia.com/gpu"] == 1
    if values:
        assert "ServiceMonitor" in kinds
        assert worker["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"


@pytest.mark.parametrize("name", ["aijobs.io_aiimagejobs.yaml", "aijobs.io_creditaccounts.yaml"])
def test_the_charts_crds_are_the_repositorys_crds(name: str) -> None:
    assert (CHART / "files" / name).read_bytes() == (ROOT / "crds" / name).read_bytes()


@pytest.mark.parametrize(
    ("values", "says"),
    [
        pytest.param({"operator": {"replicas": "two"}}, "/operator/replicas", id="wrong-type"),
        pytest.param({"worker": {"replicas": -1, "gpus": 1}}, "/worker/replicas", id="negative-replicas"),
        pytest.param(
            {"services": {"payment": {"replicas": 1, "database": {"secretName": "", "secretKey": "u"}}}},
            "secretName",
            id="missing-database-secret",
        ),
        pytest.param({"storageVolume": {"size": "lots"}}, "/storageVolume/size", id="bad-size"),
        pytest.param({"colour": "blue"}, "colour", id="unknown-value"),
    ],
)
def test_bad_values_fail_with_a_message_naming_them(
    helm: Path, tmp_path: Path, values: dict[str, Any], says: str
) -> None:
    proc = _helm(
        helm,
        "template",
        "t",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        values=values,
        tmp=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr and says in proc.stderr


def _kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", f"--kubeconfig={plane.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def bare_plane(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A control plane of its own, without the CRD: the chart installs it, as on a new cluster."""
    plane = ControlPlane(tmp_path_factory.mktemp("bare") / "plane")
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def installed(helm: Path, bare_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real `helm install` on the test API server (nothing runs: there are no nodes)."""
    namespace = "aijobs-system"
    _kubectl(bare_plane, "create", "namespace", namespace)
    tmp = tmp_path_factory.mktemp("helm")
    _helm(
        helm,
        "install",
        "rel",
        str(CHART),
        "-n",
        namespace,
        values=FULL_VALUES | {"serviceMonitor": {"enabled": False}},
        tmp=tmp,
        kubeconfig=bare_plane.kubeconfig,
    )
    return namespace


def test_the_rendered_chart_is_valid_for_the_api_server(
    helm: Path, control_plane: ControlPlane, tmp_path: Path
) -> None:
    out = _helm(
        helm,
        "template",
        "t",
        str(CHART),
        "-n",
        "default",
        "--kube-version",
        KUBE_VERSION,
        values=FULL_VALUES | {"serviceMonitor": {"enabled": False}},
        tmp=tmp_path,
    ).stdout
    proc = _kubectl(
        control_plane, "apply", "--server-side", "--dry-run=server", "-n", "default", "-f", "-", stdin=out
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") >= 30


OPERATOR = "system:serviceaccount:aijobs-system:rel-aijobs-operator"
CAN = [
    ("patch", "aiimagejobs.aijobs.io", "team-a"),
    ("watch", "aiimagejobs.aijobs.io", ""),
    ("patch", "aiimagejobs.aijobs.io/status", "team-b"),
    ("create", "events", "team-a"),
    ("update", "leases.coordination.k8s.io", "aijobs-system"),
    ("create", "leases.coordination.k8s.io", "aijobs-system"),
    ("watch", "creditaccounts.aijobs.io", ""),
    ("patch", "creditaccounts.aijobs.io", ""),
    ("patch", "creditaccounts.aijobs.io/status", ""),
]
CANNOT = [
    ("get", "secrets", "team-a"),
    ("list", "secrets", "aijobs-system"),
    ("delete", "namespaces", ""),
    ("create", "deployments.apps", "aijobs-system"),
    ("delete", "aiimagejobs.aijobs.io", "team-a"),
    ("create", "aiimagejobs.aijobs.io", "team-a"),
    ("update", "leases.coordination.k8s.io", "kube-system"),
    ("get", "pods", "team-a"),
    ("create", "creditaccounts.aijobs.io", ""),
    ("delete", "creditaccounts.aijobs.io", ""),
]


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "allowed"),
    [(*c, True) for c in CAN] + [(*c, False) for c in CANNOT],
    ids=[f"can-{v}-{r}" for v, r, _ in CAN] + [f"cannot-{v}-{r}" for v, r, _ in CANNOT],
)
def test_the_operator_can_do_exactly_what_it_does(
    bare_plane: ControlPlane, installed: str, verb: str, resource: str, namespace: str, allowed: bool
) -> None:
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    proc = _kubectl(bare_plane, "auth", "can-i", verb, resource, *scope, f"--as={OPERATOR}")
    assert proc.stdout.strip() == ("yes" if allowed else "no"), proc.stderr


def test_the_admin_role_opens_credit_accounts_and_a_namespace_user_cannot(
    bare_plane: ControlPlane, installed: str
) -> None:
    _kubectl(
        bare_plane, "create", "clusterrolebinding", "ops", "--clusterrole=rel-aijobs-admin", "--user=ops"
    )
    _kubectl(
        bare_plane,
        "create",
        "rolebinding",
        "dev",
        "-n",
        "default",
        "--clusterrole=rel-aijobs-user",
        "--user=dev",
    )
    try:

        def can(user: str, verb: str, resource: str, *scope: str) -> str:
            proc = _kubectl(bare_plane, "auth", "can-i", verb, resource, *scope, f"--as={user}")
            return proc.stdout.strip()

        assert can("ops", "create", "creditaccounts.aijobs.io") == "yes"
        assert can("ops", "delete", "creditaccounts.aijobs.io") == "yes"
        assert can("ops", "get", "secrets", "-n", installed) == "no"
        assert can("dev", "create", "aiimagejobs.aijobs.io", "-n", "default") == "yes"
        assert can("dev", "create", "aiimagejobs.aijobs.io", "-n", installed) == "no"
        assert can("dev", "create", "creditaccounts.aijobs.io") == "no"
        assert can("dev", "patch", "aiimagejobs.aijobs.io/status", "-n", "default") == "no"
    finally:
        _kubectl(bare_plane, "delete", "clusterrolebinding", "ops")
        _kubectl(bare_plane, "delete", "rolebinding", "dev", "-n", "default")


def test_helm_upgrade_reaches_the_crd_schema(
    helm: Path, bare_plane: ControlPlane, installed: str, tmp_path: Path
) -> None:
    job = {
        "apiVersion": "aijobs.io/v1alpha1",
        "kind": "AIImageJob",
        "metadata": {"name": "prio"},
        "spec": {
            "account": "acme",
            "pipeline": "grayscale",
            "price": 1,
            "priority": 5,
            "input": {"url": "https://images.example.com/a.png"},
        },
    }
    before = _kubectl(bare_plane, "apply", "-n", installed, "-f", "-", stdin=json.dumps(job))
    assert before.returncode != 0 and 'unknown field "spec.priority"' in before.stderr
    chart = tmp_path / "aijobs"
    shutil.copytree(CHART, chart)
    crd = chart / "files" / "aijobs.io_aiimagejobs.yaml"
    text = crd.read_text()
    new_field = (
        "                priority:\n                  type: integer\n"
        "                  description: A newer field, as an upgrade would bring.\n"
    )
    text = re.sub(r"(\n                pipeline:\n)", "\n" + new_field.rstrip("\n") + r"\1", text, count=1)
    crd.write_text(text)
    _helm(
        helm,
        "upgrade",
        "rel",
        str(chart),
        "-n",
        installed,
        "--reuse-values",
        kubeconfig=bare_plane.kubeconfig,
    )
    after = _kubectl(bare_plane, "apply", "-n", installed, "-f", "-", stdin=json.dumps(job))
    assert after.returncode == 0, after.stderr
    _helm(
        helm,
        "upgrade",
        "rel",
        str(CHART),
        "-n",
        installed,
        "--reuse-values",
        kubeconfig=bare_plane.kubeconfig,
    )
    _kubectl(bare_plane, "delete", "-n", installed, "aij", "prio")


def test_the_dockerfile_lints_and_its_entrypoints_exist() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    commands = [json.loads(m) for m in re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)]
    entrypoints = re.findall(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.MULTILINE)
    assert sorted(entrypoints) == ['["aijobs"]', '["aijobs"]', '["aijobs-postgres"]']
    assert (ROOT / "docker" / "postgres-entrypoint.sh").stat().st_mode & 0o111
    chart_args = [["service", "payment"], ["operator"], ["worker"]]
    for args in [*commands, *chart_args]:
        proc = subprocess.run(
            [sys.executable, "-m", "aijobs.cli", *args, "--help"], capture_output=True, text=True
        )
        assert proc.returncode == 0, f"aijobs {' '.join(args)}: {proc.stderr}"
