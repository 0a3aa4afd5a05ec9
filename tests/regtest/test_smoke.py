"""The fixtures work: 101 blocks, 50 BTC spendable, RPC reachable."""

from __future__ import annotations

from decimal import Decimal

from regtest.node import Node


def test_fixture_node_has_spendable_coins(regtest_node: Node) -> None:
    assert regtest_node.call("getblockcount") == 101
    assert regtest_node.call("getbalance") == Decimal("50.00000000")
