"""The Helm chart and the Dockerfile: lint, render, apply to the real API server, RBAC proven by
impersonation, bad values refused, the CRD kept in sync and upgraded by `helm upgrade`."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aijobs_dev.controlplane.assets import ensure_helm
from aijobs_dev.controlplane.cluster import ControlPlane
from aijobs_dev.controlplane.kubescore import ensure_kube_score, score

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


def _render(
    helm: Path, tmp: Path, values: dict[str, Any] | None, *flags: str, release: str = "t"
) -> list[dict[str, Any]]:
    """The chart's objects as ``helm template RELEASE`` renders them (``flags``: -n, --show-only…)."""
    out = _helm(
        helm, "template", release, str(CHART), "--kube-version", KUBE_VERSION, *flags, values=values, tmp=tmp
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


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


def _operator_env(helm: Path, tmp: Path, values: dict[str, Any] | None) -> dict[str, Any]:
    docs = _render(helm, tmp, values)
    operator = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    )
    return {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize(
    ("ttl", "env"), [(None, None), (0, "0"), (86400, "86400")], ids=["keep-forever", "zero", "a-day"]
)
def test_the_charts_ttl_default_reaches_the_operator(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ttl: int | None, env: str | None
) -> None:
    """``operator.ttlSecondsAfterFinished`` is the default for jobs without their own; null (the
    default) sets nothing, and the operator keeps finished jobs (0 is a TTL, not "unset")."""
    found = _operator_env(helm, tmp_path, {"operator": {"ttlSecondsAfterFinished": ttl}})
    assert found.get("AIJOBS_DEFAULT_TTL_SECONDS_AFTER_FINISHED") == env
    from aijobs_operator.config import OperatorSettings

    assert found["AIJOBS_AUDIT_RECHECK_SECONDS"] == "86400"  # a finished job's audit, again a day later
    if env is not None:
        monkeypatch.setenv("AIJOBS_DEFAULT_TTL_SECONDS_AFTER_FINISHED", env)
    assert OperatorSettings().default_ttl_seconds_after_finished == ttl


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
        pytest.param(
            {"operator": {"ttlSecondsAfterFinished": -1}},
            "/operator/ttlSecondsAfterFinished",
            id="negative-ttl",
        ),
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
    ("delete", "aiimagejobs.aijobs.io", "team-a"),  # a finished job past its TTL
]
CANNOT = [
    ("get", "secrets", "team-a"),
    ("list", "secrets", "aijobs-system"),
    ("delete", "namespaces", ""),
    ("create", "deployments.apps", "aijobs-system"),
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


# NetworkPolicies: the rendered objects, read with NetworkPolicy's own rules (a connection needs
# the source's egress and the destination's ingress), must allow exactly the call graph.

RELEASE_NS = "aijobs-system"
CALLS = {
    "operator": {"auth", "payment", "storage", "ai", "main"},
    "main": {"auth", "payment", "storage", "ai"},
    "worker": {"ai", "storage"},
}
SERVICES = ("auth", "payment", "storage", "ai", "main")
COMPONENTS = ("operator", "worker", *SERVICES, "postgresql")


@dataclass(frozen=True)
class Endpoint:
    """A pod (``labels`` set) in a namespace, or an address outside the cluster's pods."""

    ip: str
    namespace: str = ""
    namespace_labels: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] | None = None
    named_ports: tuple[tuple[str, int], ...] = ()  # its containers' ports, which rules may name


def _pod(component: str, index: int) -> Endpoint:
    labels = {"app.kubernetes.io/name": "aijobs", "app.kubernetes.io/instance": "t"}
    labels["app.kubernetes.io/component"] = component
    ns_labels = (("kubernetes.io/metadata.name", RELEASE_NS),)
    ports = {"operator": ("metrics", 8090), "worker": ("metrics", 9400), "postgresql": ("postgresql", 5432)}
    named = (ports.get(component, ("http", 8080)),)
    return Endpoint(f"10.244.0.{index + 10}", RELEASE_NS, ns_labels, tuple(labels.items()), named)


POD = {c: _pod(c, i) for i, c in enumerate(COMPONENTS)}
TENANT = Endpoint("10.244.1.5", "team-a", (("kubernetes.io/metadata.name", "team-a"),), (("run", "probe"),))
PROMETHEUS = Endpoint(
    "10.244.2.5", "monitoring", (("kubernetes.io/metadata.name", "monitoring"),), (("app", "prometheus"),)
)
COREDNS = Endpoint(
    "10.244.3.2", "kube-system", (("kubernetes.io/metadata.name", "kube-system"),), (("k8s-app", "kube-dns"),)
)
API_SERVER = Endpoint("10.96.0.1")  # the `kubernetes` Service's ClusterIP (port 443)
INTERNET = Endpoint("93.184.216.34")
PRIVATE_HOST = Endpoint("10.20.30.40")  # a cloud metadata or intranet address
EXTERNAL_DB = Endpoint("10.30.0.7")  # a managed PostgreSQL on the private network


def _selects(selector: dict[str, Any], labels: tuple[tuple[str, str], ...]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # the chart uses no matchExpressions
    return set((selector.get("matchLabels") or {}).items()) <= set(labels)


def _peer_matches(peer: dict[str, Any], policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if other.labels is None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = _selects(peer["namespaceSelector"], other.namespace_labels)
    else:
        in_namespace = other.namespace == policy_ns
    return in_namespace and _selects(peer.get("podSelector", {}), other.labels)


def _side_allows(
    policies: list[dict[str, Any]], pod: Endpoint, other: Endpoint, port: int, proto: str, kind: str
) -> bool:
    """Whether ``pod``'s policies of ``kind`` (Ingress or Egress) let ``other`` through."""
    if pod.labels is None:
        return True
    key = "from" if kind == "Ingress" else "to"
    isolating = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and kind in p["spec"]["policyTypes"]
        and _selects(p["spec"]["podSelector"], pod.labels)
    ]
    if not isolating:
        return True
    for policy in isolating:
        for rule in policy["spec"].get(kind.lower()) or []:
            peers_ok = not rule.get(key) or any(
                _peer_matches(peer, policy["metadata"]["namespace"], other) for peer in rule[key]
            )
            ports = rule.get("ports") or []
            target = other if kind == "Egress" else pod  # a named port is the destination's
            ports_ok = not ports or any(
                dict(target.named_ports).get(p.get("port"), p.get("port")) in (None, port)
                and p.get("protocol", "TCP") == proto
                for p in ports
            )
            if peers_ok and ports_ok:
                return True
    return False


def _connects(
    policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, proto: str = "TCP"
) -> bool:
    return _side_allows(policies, src, dst, port, proto, "Egress") and _side_allows(
        policies, dst, src, port, proto, "Ingress"
    )


def _policies(helm: Path, tmp: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    docs = _render(helm, tmp, values, "-n", RELEASE_NS, "--show-only", "templates/networkpolicies.yaml")
    for doc in docs:
        doc["metadata"]["namespace"] = RELEASE_NS
    return docs


@pytest.fixture(scope="module")
def bundled_policies(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _policies(helm, tmp_path_factory.mktemp("np"), {"postgresql": {"bundled": True}})


@pytest.mark.parametrize(("src", "dst"), [(s, d) for s in COMPONENTS for d in COMPONENTS if s != d])
def test_each_pod_reaches_exactly_the_pods_it_calls(
    bundled_policies: list[dict[str, Any]], src: str, dst: str
) -> None:
    port = 5432 if dst == "postgresql" else 8080
    expected = dst in CALLS.get(src, set()) or (dst == "postgresql" and src in SERVICES)
    assert _connects(bundled_policies, POD[src], POD[dst], port) is expected


@pytest.mark.parametrize(
    ("src", "dst", "port", "expected"),
    [
        pytest.param(TENANT, POD["postgresql"], 5432, False, id="tenant-cannot-reach-the-database"),
        pytest.param(TENANT, POD["payment"], 8080, False, id="tenant-cannot-reach-payment"),
        pytest.param(TENANT, POD["main"], 8080, True, id="tenant-reaches-main-the-front-door"),
        pytest.param(TENANT, POD["storage"], 8080, True, id="tenant-fetches-signed-downloads"),
        pytest.param(TENANT, POD["operator"], 8090, False, id="tenant-cannot-scrape-the-operator"),
        pytest.param(PROMETHEUS, POD["operator"], 8090, True, id="prometheus-scrapes-the-operator"),
        pytest.param(PROMETHEUS, POD["worker"], 9400, True, id="prometheus-scrapes-the-worker"),
        pytest.param(PROMETHEUS, POD["auth"], 8080, True, id="prometheus-scrapes-auth"),
        pytest.param(PROMETHEUS, POD["postgresql"], 5432, False, id="prometheus-cannot-reach-the-database"),
        pytest.param(POD["operator"], API_SERVER, 443, True, id="operator-reaches-the-api-server"),
        pytest.param(POD["main"], API_SERVER, 443, True, id="main-reaches-the-api-server"),
        pytest.param(POD["worker"], API_SERVER, 443, False, id="worker-cannot-reach-the-api-server"),
        pytest.param(POD["payment"], API_SERVER, 443, False, id="payment-cannot-reach-the-api-server"),
        pytest.param(POD["main"], INTERNET, 443, True, id="main-sends-webhooks"),
        pytest.param(POD["storage"], INTERNET, 443, True, id="storage-ingests-urls"),
        # (443 too once networkPolicies.apiServer.cidrs names the API server: the default is any address)
        pytest.param(POD["main"], PRIVATE_HOST, 80, False, id="main-cannot-reach-private-ranges"),
        pytest.param(POD["storage"], PRIVATE_HOST, 80, False, id="storage-cannot-reach-private-ranges"),
        pytest.param(POD["worker"], INTERNET, 443, False, id="worker-cannot-reach-the-internet"),
        pytest.param(POD["operator"], INTERNET, 80, False, id="operator-cannot-reach-the-internet"),
        pytest.param(POD["postgresql"], INTERNET, 443, False, id="database-cannot-reach-the-internet"),
        pytest.param(POD["auth"], POD["main"], 8080, False, id="auth-calls-nobody"),
    ],
)
def test_the_edges_of_the_cluster_are_closed_but_for_their_users(
    bundled_policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, expected: bool
) -> None:
    assert _connects(bundled_policies, src, dst, port) is expected


def test_every_pod_resolves_names_and_only_at_dns(bundled_policies: list[dict[str, Any]]) -> None:
    for component in COMPONENTS:
        for proto in ("UDP", "TCP"):
            assert _connects(bundled_policies, POD[component], COREDNS, 53, proto), (component, proto)
        assert not _connects(bundled_policies, POD[component], COREDNS, 8080), component


def test_an_external_database_is_reached_by_the_services_only(helm: Path, tmp_path: Path) -> None:
    values = {"networkPolicies": {"database": {"cidrs": ["10.30.0.0/24"], "port": 5433}}}
    policies = _policies(helm, tmp_path, values)
    for service in SERVICES:
        assert _connects(policies, POD[service], EXTERNAL_DB, 5433), service
        assert not _connects(policies, POD[service], EXTERNAL_DB, 5432), service
    for other in ("operator", "worker"):
        assert not _connects(policies, POD[other], EXTERNAL_DB, 5433), other
    assert not any(p["metadata"]["name"].endswith("-postgresql") for p in policies)


def test_naming_the_api_server_closes_its_port_elsewhere(helm: Path, tmp_path: Path) -> None:
    values = {
        "networkPolicies": {"apiServer": {"cidrs": ["10.96.0.1/32", "192.0.2.10/32"], "ports": [443, 6443]}}
    }
    policies = _policies(helm, tmp_path, values)
    assert _connects(policies, POD["operator"], API_SERVER, 443)
    assert _connects(policies, POD["main"], Endpoint("192.0.2.10"), 6443)
    assert not _connects(policies, POD["main"], PRIVATE_HOST, 443)


AUTOSCALING = {"worker": {"replicas": 1, "gpus": 1, "autoscaling": {"enabled": True, "cooldownPeriod": 60}}}


def _worker_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-aijobs-worker")


def _caller_check() -> Any:
    """What every route that needs a service token depends on."""
    import typing

    from aijobs_services.kit.callers import CallerDep

    return typing.get_args(CallerDep)[1].dependency


def _dependencies(dependant: Any) -> set[Any]:
    found = set()
    for sub in dependant.dependencies:
        found |= {sub.call, *_dependencies(sub)}
    return found


def test_without_autoscaling_the_worker_count_is_the_values_and_nothing_needs_keda(
    helm: Path, tmp_path: Path
) -> None:
    docs = _render(helm, tmp_path, None, "-n", "gpu", release="rel")
    assert not [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
    assert _worker_deployment(docs)["spec"]["replicas"] == 1


def test_with_autoscaling_keda_scales_the_worker_deployment_on_the_ai_queue_depth(
    helm: Path, tmp_path: Path
) -> None:
    from aijobs_services.ai.api import router

    docs = _render(helm, tmp_path, AUTOSCALING, "-n", "gpu", release="rel")
    [scaled] = [d for d in docs if d["kind"] == "ScaledObject"]
    spec = scaled["spec"]
    worker = _worker_deployment(docs)
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rel-aijobs-worker",
    }
    assert "replicas" not in worker["spec"]  # KEDA's HPA owns the count: helm never resets it
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 4, 60)
    [trigger] = spec["triggers"]
    assert trigger["type"] == "metrics-api" and trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    # KEDA, in its own namespace, reads the AI Service of this release by its qualified name…
    assert meta["url"] == "http://rel-aijobs-ai.gpu.svc:8080/v1/queue/depth"
    ai = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "rel-aijobs-ai")
    assert 8080 in [p["port"] for p in ai["spec"]["ports"]]
    # …at a route the AI service has, answering without a token (KEDA holds none).
    [route] = [r for r in router.routes if getattr(r, "path", "") == "/v1/queue/depth"]
    assert getattr(route, "methods", set()) == {"GET"}
    assert _caller_check() not in _dependencies(route.dependant)  # type: ignore[attr-defined]
    assert (meta["format"], meta["valueLocation"], meta["targetValue"]) == ("json", "demand", "8")
    # The network policies let KEDA's namespace reach the AI service's port, nothing more.
    [policy] = [
        d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("from-keda")
    ]
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "ai"
    assert policy["spec"]["ingress"] == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}],
            "ports": [{"port": "http"}],
        }
    ]


def test_autoscaling_with_more_minimum_than_maximum_workers_is_refused(helm: Path, tmp_path: Path) -> None:
    values = {
        "worker": {
            "replicas": 1,
            "gpus": 1,
            "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
        }
    }
    proc = _helm(helm, "template", "t", str(CHART), values=values, tmp=tmp_path, check=False)
    assert proc.returncode != 0 and "minReplicas (5) is above maxReplicas (2)" in proc.stderr


def test_the_scaled_object_is_valid_for_kedas_own_crd(
    helm: Path, bare_plane: ControlPlane, tmp_path: Path
) -> None:
    """The API server checks the rendered ScaledObject against the schema of KEDA's CRD, taken
    from the KEDA release the cluster tests run."""
    from aijobs_dev.controlplane.keda import keda_module

    crd = keda_module(log=lambda _: None) / "config" / "crd" / "bases" / "keda.sh_scaledobjects.yaml"
    applied = _kubectl(bare_plane, "apply", "--server-side", "-f", str(crd))
    assert applied.returncode == 0, applied.stderr
    established = _kubectl(
        bare_plane, "wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s"
    )
    assert established.returncode == 0, established.stderr
    _kubectl(bare_plane, "create", "namespace", "gpu")
    [scaled] = [
        d
        for d in _render(helm, tmp_path, AUTOSCALING, "-n", "gpu", release="rel")
        if d["kind"] == "ScaledObject"
    ]

    def dry_run(obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return _kubectl(
            bare_plane,
            "apply",
            "--server-side",
            "--dry-run=server",
            "-n",
            "gpu",
            "-f",
            "-",
            stdin=json.dumps(obj),
        )

    proc = dry_run(scaled)
    assert proc.returncode == 0 and "(server dry run)" in proc.stdout, proc.stderr
    broken = json.loads(json.dumps(scaled))
    broken["spec"]["minReplicaCount"] = "none"  # the check bites: a wrong type is refused
    refused = dry_run(broken)
    assert refused.returncode != 0 and "minReplicaCount" in refused.stderr, refused.stderr


# Spreading, limits and kube-score (issue 29, item 4).

WORKLOADS = ("Deployment", "StatefulSet")


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = doc["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize("values", [None, FULL_VALUES, SINGLE_NODE], ids=["defaults", "full", "single-node"])
def test_every_workload_spreads_over_nodes_yet_schedules_on_one(
    helm: Path, tmp_path: Path, values: dict[str, Any] | None
) -> None:
    docs = _render(helm, tmp_path, values)
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    assert len(workloads) == (8 if values is SINGLE_NODE else 7)
    for doc in workloads:
        spread = _pod_spec(doc)["topologySpreadConstraints"]
        # ScheduleAnyway: a preference, so the single-node cluster still runs every replica.
        assert spread == [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": doc["spec"]["selector"]["matchLabels"]},
            }
        ], doc["metadata"]["name"]


def test_a_components_own_placement_replaces_the_shared_default(helm: Path, tmp_path: Path) -> None:
    zone = {"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
    values = FULL_VALUES | {
        "scheduling": {
            "nodeSelector": {"pool": "general"},
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "operator": {"replicas": 3, "topologySpreadConstraints": [zone]},
        "services": {"payment": {"replicas": 2, "nodeSelector": {"pool": "payments"}}},
    }
    pods = {
        d["metadata"]["name"]: _pod_spec(d) for d in _render(helm, tmp_path, values) if d["kind"] in WORKLOADS
    }
    assert pods["t-aijobs-auth"]["nodeSelector"] == {"pool": "general"}
    assert pods["t-aijobs-auth"]["tolerations"][0]["key"] == "dedicated"
    assert pods["t-aijobs-payment"]["nodeSelector"] == {"pool": "payments"}
    assert pods["t-aijobs-worker"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pods["t-aijobs-worker"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "podAntiAffinity" in pods["t-aijobs-worker"]["affinity"]
    operator_spread = pods["t-aijobs-operator"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in operator_spread] == ["topology.kubernetes.io/zone"]
    assert operator_spread[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert pods["t-aijobs-auth"]["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"


@pytest.mark.parametrize("values", [None, FULL_VALUES, SINGLE_NODE], ids=["defaults", "full", "single-node"])
def test_no_pod_can_fill_its_nodes_disk(helm: Path, tmp_path: Path, values: dict[str, Any] | None) -> None:
    for doc in _render(helm, tmp_path, values):
        if doc["kind"] not in WORKLOADS:
            continue
        pod = _pod_spec(doc)
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            resources = container["resources"]
            assert "ephemeral-storage" in resources["requests"], (doc["metadata"]["name"], container["name"])
            assert "ephemeral-storage" in resources["limits"], (doc["metadata"]["name"], container["name"])
        for volume in pod.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"]["sizeLimit"], (doc["metadata"]["name"], volume["name"])


def test_disruption_budgets_let_drains_evict_pods_that_are_not_ready(helm: Path, tmp_path: Path) -> None:
    budgets = [d for d in _render(helm, tmp_path, None) if d["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == 5  # the operator, auth, payment, ai, main: two replicas each
    assert {b["spec"]["unhealthyPodEvictionPolicy"] for b in budgets} == {"AlwaysAllow"}


def test_the_bundled_databases_statefulset_is_governed_by_a_headless_service(
    helm: Path, tmp_path: Path
) -> None:
    docs = _render(helm, tmp_path, SINGLE_NODE)
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    governing = next(
        d
        for d in docs
        if d["kind"] == "Service" and d["metadata"]["name"] == statefulset["spec"]["serviceName"]
    )
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    # The services still reach the database through the ClusterIP Service they always used.
    client = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "t-aijobs-postgresql"
    )
    assert client["spec"].get("clusterIP") != "None"


@pytest.mark.parametrize(
    ("values", "says"),
    [
        pytest.param(
            {"scheduling": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "x"}]}},
            "whenUnsatisfiable",
            id="spread-without-policy",
        ),
        pytest.param(
            {"worker": {"replicas": 1, "gpus": 1, "resources": {"limits": {"ephemeral-storage": None}}}},
            "ephemeral-storage",
            id="unbounded-ephemeral-storage",
        ),
        pytest.param({"tmpSizeLimit": "big"}, "/tmpSizeLimit", id="bad-size-limit"),
    ],
)
def test_bad_placement_and_limit_values_fail_with_a_message_naming_them(
    helm: Path, tmp_path: Path, values: dict[str, Any], says: str
) -> None:
    proc = _helm(helm, "template", "t", str(CHART), values=values, tmp=tmp_path, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr and says in proc.stderr


def _kube_score_policy() -> tuple[set[str], dict[tuple[str, str], set[str]]]:
    """The chart README's kube-score section: the checks turned off, and for each (check, kind)
    the components whose warning is explained there."""
    section = (CHART / "README.md").read_text().split("## kube-score", 1)[1]
    turned_off, accepted_table = section.split("### Accepted warnings", 1)
    off = set(re.findall(r"^\| `([a-z0-9-]+)` \|", turned_off, re.MULTILINE))
    accepted: dict[tuple[str, str], set[str]] = {}
    for check, kind, objects in re.findall(
        r"^\| `([a-z0-9-]+)` \| (\w+) \| ([^|]+) \|", accepted_table, re.MULTILINE
    ):
        accepted.setdefault((check, kind), set()).update(o.strip() for o in objects.split(","))
    return off, accepted


@pytest.fixture(scope="module")
def kube_score() -> Path:
    return ensure_kube_score(log=lambda _: None)


@pytest.mark.parametrize("values", [None, SINGLE_NODE], ids=["defaults", "single-node"])
def test_kube_score_finds_nothing_critical_and_only_warnings_the_readme_explains(
    helm: Path, kube_score: Path, tmp_path: Path, values: dict[str, Any] | None
) -> None:
    out = _helm(
        helm,
        "template",
        "t",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--no-hooks",
        values=values,
        tmp=tmp_path,
    ).stdout
    off, accepted = _kube_score_policy()
    assert off == {"container-image-pull-policy"}  # a check turned off is a decision: make it visibly
    findings = score(kube_score, out, ignore=off)
    critical = [f for f in findings if f.grade == "CRITICAL"]
    assert not critical, "\n".join(f"{f.kind}/{f.name} {f.check}: {'; '.join(f.comments)}" for f in critical)
    unexplained = [
        f for f in findings if f.name.removeprefix("t-aijobs-") not in accepted.get((f.check, f.kind), set())
    ]
    assert not unexplained, "warnings not in charts/aijobs/README.md:\n" + "\n".join(
        f"{f.kind}/{f.name} {f.check}: {'; '.join(f.comments)}" for f in unexplained
    )


# What `helm install` tells its user (issue 29, item 6).


def test_the_install_notes_walk_through_a_credit_account_to_a_first_job(
    helm: Path, bare_plane: ControlPlane, installed: str
) -> None:
    notes = _helm(helm, "get", "notes", "rel", "-n", installed, kubeconfig=bare_plane.kubeconfig).stdout
    account_doc = yaml.safe_load((ROOT / "examples" / "tenancy" / "creditaccount.yaml").read_text())
    job_doc = yaml.safe_load((ROOT / "examples" / "upscale-inline.yaml").read_text())
    account = account_doc["metadata"]["name"]
    # In this order: the CreditAccount, its credits through the admin CLI, then a job.
    steps = [
        notes.index("examples/tenancy/creditaccount.yaml"),
        notes.index(f"aijobs admin top-up {account} "),
        notes.index("examples/upscale-inline.yaml"),
    ]
    assert steps == sorted(steps), notes
    assert job_doc["kind"] == "AIImageJob" and job_doc["spec"]["account"] == account
    # The job is applied in a namespace the account lists, so the commands work as pasted.
    job_namespaces = set(re.findall(r"kubectl apply -n (\S+) -f \S+upscale-inline.yaml", notes))
    assert job_namespaces and job_namespaces <= set(account_doc["spec"]["namespaces"]), notes
    assert "curl" not in notes and "/v1/" not in notes  # no raw calls to the services' APIs
    cli = subprocess.run(
        [sys.executable, "-m", "aijobs.cli", "admin", "top-up", "--help"], capture_output=True, text=True
    )
    assert cli.returncode == 0 and "--reason" in cli.stdout and "--reason" in notes
