"""Build the NetworkPolicy enforcer the single node would run, and say whether this kernel can.

The node's CNI is the reference ``bridge`` plugin, which ignores NetworkPolicy objects: without
an enforcer the chart's policies are documents, never tested. ``kube-network-policies``
(kubernetes-sigs) is a small enforcer that fits a node made of host processes: one binary with
host networking that adds an nftables table whose rules send the first packet of every new
connection of a pod to an NFQUEUE, where it decides accept or drop from the NetworkPolicy objects.

Its nftables rules use the native ``queue`` expression, so the kernel needs ``nft_queue``
(``CONFIG_NFT_QUEUE``) as well as ``nfnetlink_queue``. :func:`kernel_blockers` reads the running
kernel's configuration and names what is missing, so a node never starts an enforcer that would
fail open or drop everything. Its module (v0.8.0) has no replace lines, so it builds with a plain
``go install`` into the tool cache, like helm.

The node does not start it yet: the kernel this project's machines run lacks ``nft_queue``
(``python -m aijobs_dev.controlplane.netpol`` says so); the built v0.8.0 binary, run against a
real API server there, syncs its caches and then fails every nftables sync with ``netlink
receive: no such file or directory``, so it would enforce nothing.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

from aijobs_dev.controlplane.assets import AssetError, ensure_go_tool

KUBE_NETWORK_POLICIES_VERSION = "v0.8.0"
# v0.8.0 has one command package; its binary is named after the folder.
PACKAGE = "sigs.k8s.io/kube-network-policies/cmd"
NFT_TABLE = "kube-network-policies"  # the inet table it owns; removed on `down`

# Kernel options the enforcer's rules and its queue socket need (built in, =y, or a module, =m).
REQUIRED_KERNEL_OPTIONS = (
    "CONFIG_NF_TABLES",
    "CONFIG_NF_TABLES_INET",
    "CONFIG_NFT_CT",
    "CONFIG_NETFILTER_NETLINK_QUEUE",
    "CONFIG_NFT_QUEUE",
)

__all__ = ["KUBE_NETWORK_POLICIES_VERSION", "NFT_TABLE", "ensure_enforcer", "kernel_blockers"]


def ensure_enforcer(*, log=print) -> Path:  # type: ignore[no-untyped-def]
    """The enforcer's binary, built once (a few minutes on 2 cores) into the tool cache."""
    return ensure_go_tool(
        "kube-network-policies", KUBE_NETWORK_POLICIES_VERSION, PACKAGE, installed_as="cmd", log=log
    )


def kernel_blockers(config_text: str | None = None) -> list[str]:
    """The required kernel options this kernel lacks: empty when the enforcer can run.

    ``config_text`` is a kernel ``.config``; by default the running kernel's ``/proc/config.gz``.
    Where the kernel does not publish its configuration we cannot tell, and say so."""
    if config_text is None:
        published = Path("/proc/config.gz")
        if not published.is_file():
            return ["/proc/config.gz is absent: cannot tell whether nft_queue is available"]
        config_text = gzip.decompress(published.read_bytes()).decode()
    enabled = set()
    for line in config_text.splitlines():
        name, _, value = line.partition("=")
        if value in ("y", "m"):
            enabled.add(name)
    return [f"{option} is not set" for option in REQUIRED_KERNEL_OPTIONS if option not in enabled]


def main() -> int:
    """Say whether this host can enforce NetworkPolicies; ``--build`` also builds the enforcer."""
    blockers = kernel_blockers()
    for blocker in blockers:
        print(f"cannot enforce NetworkPolicies here: {blocker}", file=sys.stderr)
    if "--build" in sys.argv:
        try:
            print(ensure_enforcer(log=lambda msg: print(msg, file=sys.stderr, flush=True)))
        except AssetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 1 if blockers else 0


if __name__ == "__main__":
    raise SystemExit(main())
