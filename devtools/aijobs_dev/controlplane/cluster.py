"""A real, throwaway Kubernetes control plane: etcd and kube-apiserver on loopback.

The flags follow controller-runtime's envtest (``pkg/internal/testing/controlplane``): secure port
on 127.0.0.1, RBAC authorization, service-account keys, and the ServiceAccount admission plugin
disabled because no controller-manager runs to create token secrets. No scheduler, no kubelet:
pods never run here, but every API object is stored, validated and watched for real.

Everything lives under one folder; ``state.json`` records the process ids so that ``down`` (or a
test session's teardown) finds and stops what ``up`` started, even from another process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import yaml

from aijobs_dev.controlplane.assets import Assets, ensure_assets
from aijobs_dev.controlplane.pki import FRONT_PROXY_CLIENT, Pki, write_pki

__all__ = ["SERVICE_CIDR", "ControlPlane", "ControlPlaneError", "free_port"]

SERVICE_CIDR = "10.0.0.0/24"  # Services' ClusterIPs

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    # Writes to our own resources are recorded so benchmarks can count API writes per job.
    "rules": [
        {
            "level": "Metadata",
            "verbs": ["create", "update", "patch", "delete"],
            "resources": [{"group": "aijobs.io"}],
        },
        {  # Events are API writes too: benchmarks count them per job
            "level": "Metadata",
            "verbs": ["create", "update", "patch"],
            "resources": [{"group": "", "resources": ["events"]}, {"group": "events.k8s.io"}],
        },
        {"level": "None"},
    ],
}


class ControlPlaneError(RuntimeError):
    """The control plane did not start or is not running; the message points at its logs."""


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on, and that this process has not handed out before
    (the kernel may offer a just-closed port again before its first owner binds it)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class _State:
    etcd_pid: int
    apiserver_pid: int
    api_port: int
    etcd_port: int
    kubeconfig: str


class ControlPlane:
    """One etcd and one kube-apiserver under ``root``. ``start`` returns once ``/readyz`` is ok
    and the ``default`` namespace exists; ``stop`` ends both and removes ``root``."""

    def __init__(self, root: Path, node_ip: str | None = None) -> None:
        """``node_ip``: serve on this address too and advertise it, for pods of a node
        (:mod:`aijobs_dev.controlplane.node`); ServiceAccount tokens are then mounted into pods."""
        self.root = root
        self.node_ip = node_ip
        self.kubeconfig = root / "kubeconfig"
        self.audit_log = root / "audit.log"
        self._state_file = root / "state.json"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, *, assets: Assets | None = None, timeout: float = 120.0) -> None:
        if self._state_file.exists():
            raise ControlPlaneError(f"a control plane already runs from {self.root}; run `down` first")
        assets = assets or ensure_assets()
        self.root.mkdir(parents=True, exist_ok=True)
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        pki = write_pki(self.root / "pki", (self.node_ip,) if self.node_ip else ())
        self.pki = pki
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()

        etcd = self._spawn(
            [
                str(assets.etcd),
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            logs / "etcd.log",
        )
        policy = self.root / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        apiserver = self._spawn(
            [str(assets.kube_apiserver), *self._apiserver_flags(pki, etcd_port, api_port, policy)],
            logs / "kube-apiserver.log",
        )
        state = _State(etcd.pid, apiserver.pid, api_port, etcd_port, str(self.kubeconfig))
        self._state_file.write_text(json.dumps(asdict(state)))
        self._write_kubeconfig(pki, api_port)
        try:
            self._wait_ready(pki, api_port, [etcd, apiserver], timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both processes (SIGTERM, then SIGKILL) and remove everything under ``root``."""
        if self._state_file.exists():
            state = _State(**json.loads(self._state_file.read_text()))
            for pid in (state.apiserver_pid, state.etcd_pid):
                _terminate(pid)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._state_file.exists()

    @property
    def api_url(self) -> str:
        state = _State(**json.loads(self._state_file.read_text()))
        return f"https://127.0.0.1:{state.api_port}"

    # -- internals ----------------------------------------------------------------------------
    def _apiserver_flags(self, pki: Pki, etcd_port: int, api_port: int, policy: Path) -> list[str]:
        if self.node_ip:
            where = [f"--advertise-address={self.node_ip}", "--bind-address=0.0.0.0"]
            where += [
                f"--kubelet-client-certificate={pki.admin_cert}",
                f"--kubelet-client-key={pki.admin_key}",
            ]
            where += ["--kubelet-preferred-address-types=InternalIP"]
            # An APIService's requests go to its Service's endpoints, as kube-proxy would pick
            # them, without depending on kube-proxy's rules for this process's own traffic.
            where += ["--enable-aggregator-routing=true"]
        else:  # no pods: no controller-manager to make tokens, so no ServiceAccount admission
            where = ["--advertise-address=127.0.0.1", "--bind-address=127.0.0.1"]
            where += ["--disable-admission-plugins=ServiceAccount"]
        return [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            *where,
            f"--secure-port={api_port}",
            f"--cert-dir={self.root / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            f"--service-account-issuer=https://127.0.0.1:{api_port}",
            f"--service-account-key-file={pki.sa_public}",
            f"--service-account-signing-key-file={pki.sa_private}",
            # The aggregation layer (``hack/local-up-cluster.sh``'s flags): requests to an
            # APIService are proxied with the front-proxy client certificate and the caller's
            # name and groups in these headers, which the extension server trusts from it only.
            f"--requestheader-client-ca-file={pki.front_proxy_ca}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
            f"--proxy-client-key-file={pki.front_proxy_client_key}",
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--v=0",
        ]

    @staticmethod
    def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            # A session of its own: `aijobs controlplane up` returns while these keep running,
            # and a Ctrl-C in the user's shell does not reach them.
            return subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def _write_kubeconfig(self, pki: Pki, api_port: int) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "aijobs-local",
                    "cluster": {
                        "server": f"https://127.0.0.1:{api_port}",
                        "certificate-authority": str(pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "aijobs-admin",
                    "user": {"client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)},
                }
            ],
            "contexts": [
                {
                    "name": "aijobs-local",
                    "context": {"cluster": "aijobs-local", "user": "aijobs-admin", "namespace": "default"},
                }
            ],
            "current-context": "aijobs-local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _wait_ready(
        self, pki: Pki, api_port: int, procs: list[subprocess.Popen[bytes]], timeout: float
    ) -> None:
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(base_url=f"https://127.0.0.1:{api_port}", verify=context, timeout=5) as client:
            while time.monotonic() < deadline:
                for proc in procs:
                    if proc.poll() is not None:
                        raise ControlPlaneError(
                            f"{Path(str(proc.args[0])).name} exited with {proc.returncode}; "  # type: ignore[index]
                            f"see {self.root / 'logs'}"
                        )
                try:
                    ready = client.get("/readyz")
                    if (
                        ready.status_code == 200
                        and client.get("/api/v1/namespaces/default").status_code == 200
                    ):
                        return
                    last = f"/readyz {ready.status_code}: {ready.text[-300:]}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
                time.sleep(0.25)
        raise ControlPlaneError(
            f"API server not ready after {timeout:.0f}s ({last}); see {self.root / 'logs'}"
        )


def _terminate(pid: int, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    # Reap our own child if it exited, so a zombie does not look alive.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
