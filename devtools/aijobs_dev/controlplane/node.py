"""A real single-node Kubernetes cluster on this machine: pods run, Services route, names resolve.

What :class:`~aijobs_dev.controlplane.cluster.ControlPlane` starts (etcd, kube-apiserver), served
on the node's address, plus, as processes of this machine (root is required):

- kube-controller-manager (Deployments, ReplicaSets, ServiceAccount tokens, PV binding) and
  kube-scheduler;
- containerd with its CRI plugin, its own socket and state under the cluster's folder, the pause
  image built here (:mod:`aijobs_dev.controlplane.pause`) and ``restrict_oom_score_adj`` (runc
  may not lower its own OOM score on these machines);
- kubelet (cgroupfs, no QoS cgroups, no image garbage collection: there is no registry to pull an
  evicted image back from) and the CNI bridge plugin for pod networking (10.244.0.0/24);
- kube-proxy in iptables mode for Services (10.0.0.0/24); a ClusterIP that kube-proxy has not
  (yet) rewritten is refused on this machine rather than routed out of it (see
  :meth:`NodeCluster._forward_rules`);
- CoreDNS serving ``cluster.local`` from the API on the node's address (the pods' resolver);
- a default StorageClass, ``local``, with hostPath PersistentVolumes made ahead under the
  cluster's folder (the chart's Storage and PostgreSQL claims bind to them).

Images come from the local Docker engine (``docker save`` into containerd's ``k8s.io`` namespace):
no registry is needed. ``down`` removes everything it made: pods' containers and mounts, the
bridge, kube-proxy's iptables rules and the folder.

This is how ``hack/local-up-cluster.sh`` in Kubernetes' own repository starts a cluster, reduced
to what aijobs needs and written for these machines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aijobs_dev.controlplane.assets import cache_root, ensure_assets, ensure_node_assets
from aijobs_dev.controlplane.cluster import (
    SERVICE_CIDR,
    ControlPlane,
    ControlPlaneError,
    _alive,
    _terminate,
    free_port,
)

__all__ = ["NodeCluster", "node_ip"]

NODE_NAME = "aijobs-node"
POD_CIDR = "10.244.0.0/24"
BRIDGE = "aijobs0"
PAUSE_IMAGE = "aijobs.local/pause:1"
PERSISTENT_VOLUMES = 4


def node_ip() -> str:
    """This machine's address on its default route (pods reach the API server and DNS there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the route
        return str(sock.getsockname()[0])


@dataclass
class _NodeState:
    pids: dict[str, int] = field(default_factory=dict)
    node_ip: str = ""


class NodeCluster:
    """``start`` returns once the node is Ready and DNS answers; ``stop`` undoes everything."""

    def __init__(self, root: Path, image_store: Path | None = None) -> None:
        """``image_store``: containerd's root (content and unpacked layers), kept across
        clusters so that an image unchanged since the last cluster is not loaded again
        (the worker's is ~6 GB); one running node at a time may use it."""
        self.root = root
        self.image_store = image_store or cache_root() / "node-images"
        self.kubeconfig = root / "plane" / "kubeconfig"
        self._state_file = root / "node-state.json"
        self.containerd_socket = root / "containerd" / "containerd.sock"

    @property
    def running(self) -> bool:
        return self._state_file.exists()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, *, log=print, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
        if os.geteuid() != 0:
            raise ControlPlaneError("a node runs containers: start it as root")
        for tool in ("containerd", "runc", "iptables", "ip"):
            if shutil.which(tool) is None:
                raise ControlPlaneError(f"`{tool}` is missing: run scripts/ensure-docker (Debian packages)")
        if self.running:
            raise ControlPlaneError(f"a cluster already runs from {self.root}; run `down` first")
        if _link_exists(BRIDGE):
            # A node whose `stop` never ran (its process was killed) leaves its pods on the
            # bridge with their addresses; this node's IPAM starts afresh and would hand out the
            # same addresses again, two pods answering for one. Refuse rather than misroute.
            raise ControlPlaneError(
                f"bridge {BRIDGE} is still up: a node that was not stopped keeps pods on it. Stop "
                f"it with `aijobs cluster down --dir <its folder>`, or `ip link delete {BRIDGE}`"
            )
        assets = ensure_node_assets(log=log)
        ip = node_ip()
        self.root.mkdir(parents=True, exist_ok=True)
        state = _NodeState(node_ip=ip)
        self._state_file.write_text(json.dumps(asdict(state)))
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        try:
            plane = ControlPlane(self.root / "plane", node_ip=ip)
            plane.start(assets=ensure_assets(log=log))
            pki = plane.pki
            ctr_dir = self.root / "containerd"
            ctr_dir.mkdir(exist_ok=True)
            self._write_cni(assets)
            self._forward_rules("-I")
            config = ctr_dir / "config.toml"
            config.write_text(self._containerd_config(assets))
            state.pids["containerd"] = self._spawn(["containerd", "--config", str(config)], "containerd")
            self._save(state)
            self._wait(lambda: self.containerd_socket.exists(), "containerd's socket", timeout)
            self._import_pause(assets)

            kubeconfig = str(self.kubeconfig)
            state.pids["kube-controller-manager"] = self._spawn(
                [
                    str(assets / "kube-controller-manager"),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    f"--service-account-private-key-file={pki.sa_private}",
                    f"--root-ca-file={pki.ca_cert}",
                    "--use-service-account-credentials=true",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    "--controllers=*,-nodeipam,-cloud-node-lifecycle",
                    "--node-monitor-grace-period=40s",
                ],
                "kube-controller-manager",
            )
            state.pids["kube-scheduler"] = self._spawn(
                [
                    str(assets / "kube-scheduler"),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                ],
                "kube-scheduler",
            )
            kubelet_config = self.root / "kubelet.yaml"
            kubelet_config.write_text(yaml.safe_dump(self._kubelet_config(str(pki.ca_cert), ip)))
            state.pids["kubelet"] = self._spawn(
                [
                    str(assets / "kubelet"),
                    f"--config={kubelet_config}",
                    f"--kubeconfig={kubeconfig}",
                    f"--hostname-override={NODE_NAME}",
                    f"--node-ip={ip}",
                    f"--root-dir={self.root / 'kubelet'}",
                    f"--cert-dir={self.root / 'kubelet-pki'}",
                    "--v=1",
                ],
                "kubelet",
            )
            state.pids["kube-proxy"] = self._spawn(
                [
                    str(assets / "kube-proxy"),
                    f"--kubeconfig={kubeconfig}",
                    f"--hostname-override={NODE_NAME}",
                    f"--cluster-cidr={POD_CIDR}",
                    "--proxy-mode=iptables",
                    "--conntrack-max-per-core=0",
                    f"--metrics-bind-address=127.0.0.1:{free_port()}",
                    f"--healthz-bind-address=127.0.0.1:{free_port()}",
                ],
                "kube-proxy",
            )
            corefile = self.root / "Corefile"
            corefile.write_text(self._corefile(ip, kubeconfig))
            state.pids["coredns"] = self._spawn([str(assets / "coredns"), "-conf", str(corefile)], "coredns")
            self._save(state)
            self._wait(self._node_ready, f"node {NODE_NAME} Ready", timeout, state)
            self.apply(*self._storage_objects())
        except BaseException:
            kept = self.root.with_name(self.root.name + "-failed-logs")
            shutil.rmtree(kept, ignore_errors=True)
            with contextlib.suppress(OSError):
                shutil.copytree(self.root / "logs", kept)
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process, then remove pods' containers, mounts, network and the folder."""
        if self._state_file.exists():
            state = _NodeState(**json.loads(self._state_file.read_text()))
            for name in ("kubelet", "kube-proxy", "coredns", "kube-scheduler", "kube-controller-manager"):
                if name in state.pids:
                    _terminate(state.pids[name])
            self._remove_containers()
            if "containerd" in state.pids:
                _terminate(state.pids["containerd"])
            self._kill_shims()
            ControlPlane(self.root / "plane").stop()
            self._cleanup_network()
        self._unmount_all()
        shutil.rmtree(self.root, ignore_errors=True)

    def load_image(self, image: str) -> bool:
        """Copy an image from the local Docker engine into the node's containerd (no registry),
        unpacked; False where the image store already holds this very image (same Docker id)."""
        inspect = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True
        )
        if inspect.returncode != 0:
            raise ControlPlaneError(f"no image {image} in the local Docker engine: {inspect.stderr.strip()}")
        marker = self.image_store / "loaded" / image.replace("/", "_").replace(":", "_")
        listed = self._ctr("images", "ls", "-q").stdout.split()
        reference = image if "/" in image else f"docker.io/library/{image}"
        if marker.is_file() and marker.read_text() == inspect.stdout.strip() and reference in listed:
            return False
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        assert save.stdout is not None
        proc = self._ctr("images", "import", "-", stdin=save.stdout)
        save.stdout.close()
        if save.wait() != 0 or proc.returncode != 0:
            raise ControlPlaneError(f"loading {image} into containerd failed: {proc.stderr[-2000:]}")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(inspect.stdout.strip())
        return True

    # -- configuration -----------------------------------------------------------------------
    def _containerd_config(self, assets: Path) -> str:
        ctr = self.root / "containerd"
        return f"""version = 2
root = "{ctr / "root"}"
state = "{ctr / "state"}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.containerd_socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{assets / "cni"}"
    conf_dir = "{self.root / "cni"}"
"""

    def _write_cni(self, assets: Path) -> None:
        folder = self.root / "cni"
        folder.mkdir(exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "aijobs",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.root / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (folder / "10-aijobs.conflist").write_text(json.dumps(conflist, indent=2))

    def _kubelet_config(self, ca: str, ip: str) -> dict[str, object]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "address": ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": ca},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDomain": "cluster.local",
            "clusterDNS": [ip],
            "resolvConf": "/etc/resolv.conf",
            # No registry to pull an evicted image back from: never collect images, and evict
            # pods only when the disk is really full.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "serializeImagePulls": False,
            "registerNode": True,
            "maxPods": 60,
        }

    @staticmethod
    def _corefile(ip: str, kubeconfig: str) -> str:
        return f""".:53 {{
    bind {ip}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} aijobs-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 5
}}
"""

    def _storage_objects(self) -> list[dict[str, object]]:
        objects: list[dict[str, object]] = [
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": "local",
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "WaitForFirstConsumer",
                "reclaimPolicy": "Retain",
            }
        ]
        for i in range(PERSISTENT_VOLUMES):
            path = self.root / "volumes" / f"pv{i}"
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)  # pods run as non-root users; fsGroup does not apply to hostPath
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": f"local-pv{i}"},
                    "spec": {
                        "capacity": {"storage": "100Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": "local",
                        "hostPath": {"path": str(path), "type": "Directory"},
                    },
                }
            )
        return objects

    # -- helpers -----------------------------------------------------------------------------
    def _ctr(self, *args: str, stdin: Any = None) -> subprocess.CompletedProcess[str]:
        """``ctr`` against this node's containerd, in the namespace kubelet uses."""
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]
        return subprocess.run(argv, stdin=stdin, capture_output=True, text=True)

    def _import_pause(self, assets: Path) -> None:
        """An image of one file, /pause, written as a Docker archive by hand: no builder needed."""
        build = self.root / "pause-image"
        subprocess.run(["rm", "-rf", str(build)], check=True)
        (build / "rootfs").mkdir(parents=True)
        shutil.copy2(assets / "pause", build / "rootfs" / "pause")
        subprocess.run(
            ["tar", "-C", str(build / "rootfs"), "-cf", str(build / "layer.tar"), "pause"], check=True
        )
        digest = hashlib.sha256((build / "layer.tar").read_bytes()).hexdigest()
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest}"]},
        }
        config_bytes = json.dumps(config).encode()
        config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        (build / config_name).write_bytes(config_bytes)
        manifest = [{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]
        (build / "manifest.json").write_text(json.dumps(manifest))
        archive = self.root / "pause.tar"
        subprocess.run(
            ["tar", "-C", str(build), "-cf", str(archive), "manifest.json", config_name, "layer.tar"],
            check=True,
        )
        proc = self._ctr("images", "import", str(archive))
        if proc.returncode != 0:
            raise ControlPlaneError(f"importing the pause image failed: {proc.stderr}")

    def _spawn(self, argv: list[str], name: str) -> int:
        return ControlPlane._spawn(argv, self.root / "logs" / f"{name}.log").pid

    def _save(self, state: _NodeState) -> None:
        self._state_file.write_text(json.dumps(asdict(state)))

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl (the one built beside kubelet) against this cluster."""
        argv = [str(ensure_node_assets() / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def _kubectl_json(self, *args: str) -> dict[str, Any] | None:
        proc = self.kubectl(*args, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def _node_ready(self) -> bool:
        node = self._kubectl_json("get", "node", NODE_NAME)
        if node is None:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def apply(self, *objects: dict[str, Any], namespace: str | None = None) -> None:
        """``kubectl apply`` of these objects (in ``namespace``, where given)."""
        where = ["-n", namespace] if namespace else []
        self.kubectl(*where, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects))

    def _wait(self, ready, what: str, timeout: float, state: _NodeState | None = None) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if state is not None:
                for name, pid in state.pids.items():
                    if not _alive(pid):
                        kept = self.root.with_name(self.root.name + "-failed-logs")
                        raise ControlPlaneError(f"{name} exited; see {kept / name}.log")
            if ready():
                return
            time.sleep(0.5)
        raise ControlPlaneError(f"no {what} after {timeout:.0f}s; see {self.root / 'logs'}")

    def _remove_containers(self) -> None:
        if not self.containerd_socket.exists():
            return
        for task in self._ctr("tasks", "list", "-q").stdout.split():
            self._ctr("tasks", "kill", "-s", "SIGKILL", task)
        deadline = time.monotonic() + 20
        while (tasks := self._ctr("tasks", "list", "-q").stdout.split()) and time.monotonic() < deadline:
            for task in tasks:
                self._ctr("tasks", "delete", "--force", task)
            time.sleep(0.5)
        for container in self._ctr("containers", "list", "-q").stdout.split():
            self._ctr("containers", "delete", container)

    def _kill_shims(self) -> None:
        """containerd's shims outlive it; each was started with our socket on its command line."""
        marker = str(self.containerd_socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if (
                    b"containerd-shim" in (proc / "cmdline").read_bytes()
                    and marker in (proc / "cmdline").read_bytes()
                ):
                    _terminate(int(proc.name), grace=2)

    def _unmount_all(self) -> None:
        """Pods' volumes (tmpfs for Secrets, bind mounts) and the snapshots, deepest first."""
        root = str(self.root.resolve()) if self.root.exists() else str(self.root)
        with contextlib.suppress(OSError):
            mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
            for target in sorted((m for m in mounts if m.startswith(root + "/")), key=len, reverse=True):
                subprocess.run(["umount", "-l", target], capture_output=True)
        for netns in Path("/var/run/netns").glob("cni-*") if Path("/var/run/netns").is_dir() else []:
            subprocess.run(["ip", "netns", "delete", netns.name], capture_output=True)

    @staticmethod
    def _forward_rules(action: str) -> None:
        """Let pods' traffic through the FORWARD chain (Docker sets its policy to DROP): bridged
        pod-to-pod packets after a Service's DNAT traverse it too (br_netfilter).

        And refuse any packet still addressed to a ClusterIP after the nat table, from a pod
        (FORWARD) or from this machine (OUTPUT): kube-proxy rewrites the address of a Service it
        knows, so such a packet is for a Service it has not programmed yet. Without this it
        would leave by the default route, and this machine's network answers there (HTTP 404
        for every path): a client that connected in that window, as KEDA's operator polling the
        AI service just after `helm install`, kept that keep-alive connection and read 404 for
        the rest of the run. Refused, it fails, reconnects, and reaches the Service."""
        refuse = ["-d", SERVICE_CIDR, "-m", "comment", "--comment", "aijobs-node", "-j", "REJECT"]
        rules = [
            *(
                ["FORWARD", direction, BRIDGE, "-m", "comment", "--comment", "aijobs-node", "-j", "ACCEPT"]
                for direction in ("-i", "-o")
            ),
            ["FORWARD", *refuse],  # inserted last, so first in the chain: before the ACCEPTs
            ["OUTPUT", *refuse],
        ]
        for rule in rules:
            present = subprocess.run(["iptables", "-C", *rule], capture_output=True).returncode == 0
            if action == "-I" and not present:
                subprocess.run(["iptables", "-I", *rule], check=True)
            elif action == "-D" and present:
                subprocess.run(["iptables", "-D", *rule], capture_output=True)

    def _cleanup_network(self) -> None:
        """The bridge, our FORWARD rules, and every KUBE-… chain kube-proxy and kubelet made (in
        IPv4 and IPv6, all tables), with the jumps to them from the built-in chains."""
        self._forward_rules("-D")
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
        for tool in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle"):
                dump = subprocess.run([f"{tool}-save", "-t", table], capture_output=True, text=True).stdout
                ours = [line for line in dump.splitlines() if line.startswith("-A ")]
                for line in ours:
                    chain, *rest = line.split()[1:]
                    if not chain.startswith(("KUBE-", "CNI-")) and any(
                        w.startswith(("KUBE-", "CNI-")) or POD_CIDR.rsplit(".", 2)[0] in w for w in rest
                    ):
                        subprocess.run([tool, "-t", table, "-D", chain, *_unquote(rest)], capture_output=True)
                chains = [line[1:].split()[0] for line in dump.splitlines() if line.startswith(":")]
                for chain in chains:
                    if chain.startswith(("KUBE-", "CNI-")):
                        subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
                for chain in chains:
                    if chain.startswith(("KUBE-", "CNI-")):
                        subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def _unquote(words: list[str]) -> list[str]:
    """iptables-save quotes comments with spaces; rejoin them into single arguments."""
    out: list[str] = []
    quoted: list[str] | None = None
    for word in words:
        if quoted is not None:
            quoted.append(word)
            if word.endswith('"'):
                out.append(" ".join(quoted)[1:-1])
                quoted = None
        elif word.startswith('"') and not (word.endswith('"') and len(word) > 1):
            quoted = [word]
        else:
            out.append(word[1:-1] if word.startswith('"') and word.endswith('"') and len(word) > 1 else word)
    return out
