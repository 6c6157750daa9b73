"""Whether a host can run the NetworkPolicy enforcer is read from its kernel's configuration: a
kernel without ``nft_queue`` must be named as the reason, not found out by a node whose policies
silently do nothing."""

from __future__ import annotations

import pytest
from aijobs_dev.controlplane.netpol import kernel_blockers

CAPABLE = """
CONFIG_NF_TABLES=y
CONFIG_NF_TABLES_INET=y
CONFIG_NFT_CT=y
CONFIG_NETFILTER_NETLINK_QUEUE=m
CONFIG_NFT_QUEUE=m
"""


@pytest.mark.parametrize(
    ("config", "blockers"),
    [
        pytest.param(CAPABLE, [], id="modules-are-enough"),
        pytest.param(
            CAPABLE.replace("CONFIG_NFT_QUEUE=m", "# CONFIG_NFT_QUEUE is not set"),
            ["CONFIG_NFT_QUEUE is not set"],
            id="no-nft-queue",
        ),
        pytest.param(
            CAPABLE.replace("CONFIG_NETFILTER_NETLINK_QUEUE=m\n", ""),
            ["CONFIG_NETFILTER_NETLINK_QUEUE is not set"],
            id="no-nfnetlink-queue",
        ),
    ],
)
def test_the_host_check_names_each_missing_kernel_feature(config: str, blockers: list[str]) -> None:
    assert kernel_blockers(config) == blockers
